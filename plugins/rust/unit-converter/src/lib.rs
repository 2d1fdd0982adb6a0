//! `unit-converter`: a tool plugin that converts a value between units of
//! the same kind.
//!
//! One tool, `convert`, with the arguments schema
//! `{"type":"object","properties":{"value":{"type":"number"},"from":{"type":"string"},"to":{"type":"string"}},"required":["value","from","to"],"additionalProperties":false}`
//! (the properties also carry short descriptions for the model).
//!
//! Units, by dimension, with their canonical symbols:
//!
//! | dimension   | units |
//! |-------------|-------|
//! | length      | `m`, `km`, `cm`, `mm`, `mi` (international mile, 1609.344 m), `yd` (0.9144 m), `ft` (0.3048 m), `in` (0.0254 m) |
//! | mass        | `kg`, `g`, `mg`, `lb` (0.45359237 kg), `oz` (avoirdupois, 28.349523125 g), `t` (metric tonne, 1000 kg) |
//! | time        | `s`, `min`, `h`, `day` (86,400 s) |
//! | temperature | `°C`, `°F`, `K`: affine, through kelvin (`K = °C + 273.15`, `K = (°F + 459.67) × 5/9`) |
//! | volume      | `l`, `ml`, `gal` (US gallon, 3.785411784 l), `qt` (US liquid quart, ¼ gal), `cup` (US customary cup, 1/16 gal) |
//!
//! Unit names are matched after trimming, lower-casing and collapsing inner
//! whitespace, so `KM`, ` Km ` and `km` are the same. Besides the symbols,
//! common names are accepted in singular and plural, with British and
//! American spellings: `meter`, `metres`, `kilometers`, `miles`, `feet`,
//! `inches`, `grams`, `kilos`, `pounds`, `lbs`, `ounces`, `tonnes`, `metric
//! ton`, `sec`, `minutes`, `hr`, `hours`, `d`, `days`, `liters`, `litres`,
//! `gallons`, `us gallon`, `quarts`, `cups`, … (see [`UNITS`]). Temperatures
//! take `c`, `°c`, `℃`, `celsius`, `centigrade`, `f`, `°f`, `℉`,
//! `fahrenheit`, `k`, `kelvin`, optionally after `degree`, `degrees` or
//! `deg` (`degrees Celsius`, `deg F`). `ton` alone is refused as ambiguous
//! (short, long or metric), and `fl oz` is not a unit here (`oz` is mass).
//!
//! Output, `tool-output::json`, fields in this order:
//!
//! ```json
//! {"value":1.926250696,"unit":"mi","text":"3.1 km = 1.926 mi"}
//! ```
//!
//! - `value`: the converted value rounded to 10 significant digits (which
//!   drops floating-point noise: 0 °C gives `32`, not `32.00000000000003`),
//!   written as a JSON integer when it is a whole number below 2^53 in
//!   magnitude;
//! - `unit`: the canonical symbol of the target unit;
//! - `text`: `"<input> <from symbol> = <result> <to symbol>"` for people and
//!   models: the input rounded to 10 significant digits, the result to 4
//!   significant digits but never fewer than its whole digits (`1609.344`
//!   shows as `1609`, `123456.7` as `123457`), trailing zeros dropped,
//!   and in scientific notation (`1.235e-7`, `6.2e20`) when the magnitude is
//!   below 1e-6 or at least 1e15.
//!
//! Errors, all `invalid-input`: an unknown unit (naming the argument, `from`
//! or `to`, and listing the known units); units of different dimensions
//! (`cannot convert kg (mass) to km (length)`); a temperature below
//! absolute zero; a result too large for a 64-bit float; a missing or
//! mistyped argument or an unknown one. An unknown tool name is `not-found`.

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::tool::{self, Guest};
use deepwasm_sdk::types::{Error, ToolOutput, ToolSpec};
use serde::Serialize;

const SCHEMA: &str = r#"{"type":"object","properties":{"value":{"type":"number","description":"the number to convert"},"from":{"type":"string","description":"the unit of the value, for example km"},"to":{"type":"string","description":"the unit to convert to, for example mi"}},"required":["value","from","to"],"additionalProperties":false}"#;

/// Significant digits of the `value` field (and of the input in `text`).
pub const VALUE_DIGITS: usize = 10;
/// Significant digits of the result in `text`.
pub const TEXT_DIGITS: usize = 4;

/// What a unit measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    /// Base unit: metre.
    Length,
    /// Base unit: kilogram.
    Mass,
    /// Base unit: second.
    Time,
    /// Base unit: kelvin.
    Temperature,
    /// Base unit: litre.
    Volume,
}

impl Dimension {
    fn name(self) -> &'static str {
        match self {
            Dimension::Length => "length",
            Dimension::Mass => "mass",
            Dimension::Time => "time",
            Dimension::Temperature => "temperature",
            Dimension::Volume => "volume",
        }
    }
}

/// A unit: a value `v` in it is `(v + offset) * scale` in the dimension's
/// base unit.
#[derive(Debug)]
pub struct Unit {
    /// The canonical symbol, as written in the output.
    pub symbol: &'static str,
    /// What it measures.
    pub dimension: Dimension,
    /// Base units per unit (after the offset).
    pub scale: f64,
    /// Added before scaling (non-zero for °C and °F only).
    pub offset: f64,
    /// Accepted names besides the symbol, lower-case, single-spaced.
    pub aliases: &'static [&'static str],
}

const fn linear(
    symbol: &'static str,
    dimension: Dimension,
    scale: f64,
    aliases: &'static [&'static str],
) -> Unit {
    Unit {
        symbol,
        dimension,
        scale,
        offset: 0.0,
        aliases,
    }
}

use Dimension::{Length, Mass, Temperature, Time, Volume};

/// Every known unit.
pub static UNITS: &[Unit] = &[
    linear("m", Length, 1.0, &["meter", "meters", "metre", "metres"]),
    linear(
        "km",
        Length,
        1000.0,
        &["kilometer", "kilometers", "kilometre", "kilometres", "kms"],
    ),
    linear(
        "cm",
        Length,
        0.01,
        &["centimeter", "centimeters", "centimetre", "centimetres"],
    ),
    linear(
        "mm",
        Length,
        0.001,
        &["millimeter", "millimeters", "millimetre", "millimetres"],
    ),
    linear("mi", Length, 1609.344, &["mile", "miles"]),
    linear("yd", Length, 0.9144, &["yard", "yards", "yds"]),
    linear("ft", Length, 0.3048, &["foot", "feet", "′", "'"]),
    linear("in", Length, 0.0254, &["inch", "inches", "″", "\""]),
    linear(
        "kg",
        Mass,
        1.0,
        &[
            "kilogram",
            "kilograms",
            "kilogramme",
            "kilogrammes",
            "kilo",
            "kilos",
            "kgs",
        ],
    ),
    linear("g", Mass, 0.001, &["gram", "grams", "gramme", "grammes"]),
    linear(
        "mg",
        Mass,
        1e-6,
        &["milligram", "milligrams", "milligramme", "milligrammes"],
    ),
    linear("lb", Mass, 0.453_592_37, &["lbs", "pound", "pounds"]),
    linear("oz", Mass, 0.028_349_523_125, &["ounce", "ounces"]),
    linear(
        "t",
        Mass,
        1000.0,
        &[
            "tonne",
            "tonnes",
            "metric ton",
            "metric tons",
            "metric tonne",
        ],
    ),
    linear("s", Time, 1.0, &["sec", "secs", "second", "seconds"]),
    linear("min", Time, 60.0, &["mins", "minute", "minutes"]),
    linear("h", Time, 3600.0, &["hr", "hrs", "hour", "hours"]),
    linear("day", Time, 86_400.0, &["d", "days"]),
    Unit {
        symbol: "°C",
        dimension: Temperature,
        scale: 1.0,
        offset: 273.15,
        aliases: &["c", "℃", "celsius", "centigrade"],
    },
    Unit {
        symbol: "°F",
        dimension: Temperature,
        scale: 5.0 / 9.0,
        offset: 459.67,
        aliases: &["f", "℉", "fahrenheit"],
    },
    Unit {
        symbol: "K",
        dimension: Temperature,
        scale: 1.0,
        offset: 0.0,
        aliases: &["kelvin", "kelvins"],
    },
    linear(
        "l",
        Volume,
        1.0,
        &["liter", "liters", "litre", "litres", "ltr"],
    ),
    linear(
        "ml",
        Volume,
        0.001,
        &["milliliter", "milliliters", "millilitre", "millilitres"],
    ),
    linear(
        "gal",
        Volume,
        3.785_411_784,
        &["gallon", "gallons", "us gal", "us gallon", "us gallons"],
    ),
    linear(
        "qt",
        Volume,
        0.946_352_946,
        &["quart", "quarts", "us quart", "us quarts"],
    ),
    linear(
        "cup",
        Volume,
        0.236_588_236_5,
        &["cups", "us cup", "us cups"],
    ),
];

/// Trim, lower-case and collapse inner whitespace.
fn normalize(name: &str) -> String {
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn find(name: &str) -> Option<&'static Unit> {
    UNITS
        .iter()
        .find(|u| u.symbol.to_lowercase() == name || u.aliases.contains(&name))
}

/// The unit called `name`, if it is known (see the crate docs for the
/// matching rules).
pub fn lookup(name: &str) -> Option<&'static Unit> {
    let name = normalize(name);
    if let Some(unit) = find(&name) {
        return Some(unit);
    }
    // Temperatures may be written with a degree word or sign in front.
    let mut rest = name.as_str();
    for prefix in ["degrees ", "degree ", "deg ", "deg. "] {
        if let Some(r) = rest.strip_prefix(prefix) {
            rest = r;
            break;
        }
    }
    let rest = rest.trim_start_matches(['°', 'º']).trim_start();
    find(rest).filter(|u| u.dimension == Temperature)
}

fn unit_arg(name: &str, arg: &str) -> Result<&'static Unit, Error> {
    lookup(name).ok_or_else(|| {
        let known: Vec<&str> = UNITS.iter().map(|u| u.symbol).collect();
        let hint = if normalize(name) == "ton" || normalize(name) == "tons" {
            " (\"ton\" is ambiguous; say \"t\" for the metric tonne)"
        } else {
            ""
        };
        Error::invalid_input(format!(
            "unknown unit {name:?} in \"{arg}\"{hint}; known units: {} \
             (case-insensitive; names like \"meters\" or \"degrees Celsius\" work too)",
            known.join(", ")
        ))
    })
}

/// A conversion's result.
#[derive(Debug, Serialize)]
pub struct Converted {
    /// The result rounded to [`VALUE_DIGITS`] significant digits.
    pub value: serde_json::Value,
    /// The target unit's symbol.
    pub unit: &'static str,
    /// `"<input> <from> = <result> <to>"`.
    pub text: String,
}

/// Convert `value` from the unit named `from` to the unit named `to`.
pub fn convert(value: f64, from: &str, to: &str) -> Result<Converted, Error> {
    if !value.is_finite() {
        return Err(Error::invalid_input("arguments.value: not a finite number"));
    }
    let source = unit_arg(from, "from")?;
    let target = unit_arg(to, "to")?;
    if source.dimension != target.dimension {
        return Err(Error::invalid_input(format!(
            "cannot convert {} ({}) to {} ({}): the units measure different things",
            source.symbol,
            source.dimension.name(),
            target.symbol,
            target.dimension.name()
        )));
    }
    let base = (value + source.offset) * source.scale;
    if source.dimension == Temperature && base < -1e-9 {
        return Err(Error::invalid_input(format!(
            "{} {} is below absolute zero",
            format_number(value, VALUE_DIGITS, false),
            source.symbol
        )));
    }
    let result = if source.symbol == target.symbol {
        value
    } else {
        base / target.scale - target.offset
    };
    if !result.is_finite() {
        return Err(Error::invalid_input(format!(
            "the result of converting {} {} to {} is out of range",
            format_number(value, VALUE_DIGITS, false),
            source.symbol,
            target.symbol
        )));
    }
    let rounded = round_significant(result, VALUE_DIGITS);
    Ok(Converted {
        value: json_number(rounded),
        unit: target.symbol,
        text: format!(
            "{} {} = {} {}",
            format_number(value, VALUE_DIGITS, false),
            source.symbol,
            format_number(result, TEXT_DIGITS, true),
            target.symbol
        ),
    })
}

/// `x`'s shortest decimal representation rounded half away from zero to
/// `digits` significant digits (at least 1): the digits, without trailing
/// zeros, and the decimal exponent of the first one (`x = ±d.ddd × 10^e`).
/// `keep_whole` keeps every digit before the decimal point.
fn decimal_digits(x: f64, digits: usize, keep_whole: bool) -> (Vec<u8>, i32) {
    let s = format!("{:e}", x.abs());
    let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
    let mut exp: i32 = exponent.parse().unwrap_or(0);
    let mut ds: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    let keep = if keep_whole {
        digits.max(usize::try_from(exp + 1).unwrap_or(0))
    } else {
        digits
    }
    .max(1);
    if ds.len() > keep {
        let up = ds[keep] >= b'5';
        ds.truncate(keep);
        if up {
            let mut i = keep;
            loop {
                if i == 0 {
                    // 999… rounded up: one digit more.
                    ds.insert(0, b'1');
                    ds.pop();
                    exp += 1;
                    break;
                }
                i -= 1;
                if ds[i] == b'9' {
                    ds[i] = b'0';
                } else {
                    ds[i] += 1;
                    break;
                }
            }
        }
    }
    while ds.len() > 1 && ds.last() == Some(&b'0') {
        ds.pop();
    }
    (ds, exp)
}

/// `x` rounded to `digits` significant digits (at least 1), half away from
/// zero on its shortest decimal representation.
pub fn round_significant(x: f64, digits: usize) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let (ds, exp) = decimal_digits(x, digits, false);
    let sign = if x < 0.0 { "-" } else { "" };
    let ds = String::from_utf8(ds).unwrap_or_default();
    format!("{sign}0.{ds}e{}", exp + 1).parse().unwrap_or(x)
}

/// A whole number below 2^53 as a JSON integer, anything else as a float.
fn json_number(x: f64) -> serde_json::Value {
    if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 {
        serde_json::Value::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
    }
}

/// `x` rounded to `digits` significant digits (or to its whole digits, when
/// `keep_whole` and it has more), half away from zero on its shortest
/// decimal representation, trailing zeros dropped; in scientific notation
/// below 1e-6 and from 1e15 (after rounding).
pub fn format_number(x: f64, digits: usize, keep_whole: bool) -> String {
    if x == 0.0 || !x.is_finite() {
        return if x == 0.0 {
            "0".to_string()
        } else {
            x.to_string()
        };
    }
    let (ds, exp) = decimal_digits(x, digits, keep_whole);
    let ds: Vec<char> = ds.into_iter().map(char::from).collect();
    let mut out = String::new();
    if x < 0.0 {
        out.push('-');
    }
    if !(-6..15).contains(&exp) {
        out.push(ds[0]);
        if ds.len() > 1 {
            out.push('.');
            out.extend(&ds[1..]);
        }
        out.push_str(&format!("e{exp}"));
    } else if exp < 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
        out.extend(&ds);
    } else {
        let whole = exp as usize + 1;
        for i in 0..whole {
            out.push(ds.get(i).copied().unwrap_or('0'));
        }
        if ds.len() > whole {
            out.push('.');
            out.extend(&ds[whole..]);
        }
    }
    out
}

struct Converter;

impl Guest for Converter {
    fn describe() -> Vec<ToolSpec> {
        vec![tool::spec(
            "convert",
            "Convert a value between units of length (m, km, cm, mm, mi, yd, ft, in), \
             mass (kg, g, mg, lb, oz, t), time (s, min, h, day), temperature (C, F, K) \
             or volume (l, ml, gal, qt, cup).",
            SCHEMA,
        )]
    }

    fn call(name: String, arguments: String) -> Result<ToolOutput, Error> {
        if name != "convert" {
            return Err(Error::not_found(format!(
                "no tool named {name:?}; this plugin has only \"convert\""
            )));
        }
        let args = Fields::parse("arguments", &arguments)?;
        args.only(&["value", "from", "to"])?;
        let value: f64 = args.require("value")?;
        let from: String = args.require("from")?;
        let to: String = args.require("to")?;
        let converted = convert(value, &from, &to)?;
        serde_json::to_string(&converted)
            .map(ToolOutput::Json)
            .map_err(|e| Error::failed(format!("cannot write the result: {e}")))
    }
}

deepwasm_sdk::export_tool!(Converter);

#[cfg(test)]
mod tests {
    use super::*;

    fn json(value: f64, from: &str, to: &str) -> String {
        serde_json::to_string(&convert(value, from, to).unwrap()).unwrap()
    }

    fn text(value: f64, from: &str, to: &str) -> String {
        convert(value, from, to).unwrap().text
    }

    fn err(value: f64, from: &str, to: &str) -> String {
        match convert(value, from, to).unwrap_err() {
            Error::InvalidInput(m) => m,
            other => panic!("expected invalid-input, got {other:?}"),
        }
    }

    #[test]
    fn the_documented_example() {
        assert_eq!(
            json(3.1, "km", "mi"),
            r#"{"value":1.926250696,"unit":"mi","text":"3.1 km = 1.926 mi"}"#
        );
    }

    #[test]
    fn length_mass_time_volume() {
        assert_eq!(text(1.0, "in", "cm"), "1 in = 2.54 cm");
        assert_eq!(text(1.0, "mi", "m"), "1 mi = 1609 m");
        assert_eq!(
            json(1.0, "mi", "m"),
            r#"{"value":1609.344,"unit":"m","text":"1 mi = 1609 m"}"#
        );
        assert_eq!(text(3.0, "ft", "yd"), "3 ft = 1 yd");
        assert_eq!(text(12.0, "in", "ft"), "12 in = 1 ft");
        assert_eq!(text(1.0, "lb", "oz"), "1 lb = 16 oz");
        assert_eq!(text(2.5, "t", "kg"), "2.5 t = 2500 kg");
        assert_eq!(text(1.0, "kg", "lb"), "1 kg = 2.205 lb");
        assert_eq!(text(500.0, "mg", "g"), "500 mg = 0.5 g");
        assert_eq!(text(1.0, "day", "min"), "1 day = 1440 min");
        assert_eq!(text(90.0, "min", "h"), "90 min = 1.5 h");
        assert_eq!(text(1.0, "gal", "qt"), "1 gal = 4 qt");
        assert_eq!(text(1.0, "qt", "cup"), "1 qt = 4 cup");
        assert_eq!(text(1.0, "gal", "l"), "1 gal = 3.785 l");
        assert_eq!(text(250.0, "ml", "cup"), "250 ml = 1.057 cup");
        assert_eq!(text(-2.0, "m", "cm"), "-2 m = -200 cm");
        assert_eq!(text(7.0, "km", "km"), "7 km = 7 km");
    }

    #[test]
    fn temperatures_are_affine() {
        assert_eq!(
            json(0.0, "C", "F"),
            r#"{"value":32,"unit":"°F","text":"0 °C = 32 °F"}"#
        );
        assert_eq!(text(100.0, "celsius", "fahrenheit"), "100 °C = 212 °F");
        assert_eq!(text(-40.0, "°F", "°C"), "-40 °F = -40 °C");
        assert_eq!(text(0.0, "K", "C"), "0 K = -273.2 °C");
        assert_eq!(
            json(0.0, "K", "C")[..29],
            *r#"{"value":-273.15,"unit":"°C""#
        );
        assert_eq!(text(98.6, "F", "C"), "98.6 °F = 37 °C");
        assert_eq!(text(300.0, "kelvin", "F"), "300 K = 80.33 °F");
        assert_eq!(text(20.0, "degrees Celsius", "K"), "20 °C = 293.2 K");
        assert!(err(-300.0, "C", "K").contains("below absolute zero"));
        assert!(err(-1.0, "K", "C").contains("below absolute zero"));
        // Absolute zero itself is fine in every scale.
        assert_eq!(text(-459.67, "F", "K"), "-459.67 °F = 0 K");
    }

    #[test]
    fn names_and_aliases() {
        for (name, symbol) in [
            ("meter", "m"),
            ("Metres", "m"),
            (" KM ", "km"),
            ("Kilometres", "km"),
            ("miles", "mi"),
            ("feet", "ft"),
            ("Inches", "in"),
            ("lbs", "lb"),
            ("Pounds", "lb"),
            ("ounce", "oz"),
            ("metric  ton", "t"),
            ("tonnes", "t"),
            ("hours", "h"),
            ("hr", "h"),
            ("Minutes", "min"),
            ("days", "day"),
            ("°C", "°C"),
            ("°c", "°C"),
            ("℃", "°C"),
            ("degrees Fahrenheit", "°F"),
            ("deg F", "°F"),
            ("° F", "°F"),
            ("Kelvin", "K"),
            ("k", "K"),
            ("Litres", "l"),
            ("L", "l"),
            ("mL", "ml"),
            ("US gallons", "gal"),
            ("cups", "cup"),
        ] {
            assert_eq!(lookup(name).map(|u| u.symbol), Some(symbol), "{name:?}");
        }
        // Degree words and signs are for temperatures only.
        assert!(lookup("°m").is_none());
        assert!(lookup("degrees meter").is_none());
        assert!(lookup("furlong").is_none());
        assert!(lookup("fl oz").is_none());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = err(1.0, "kg", "km");
        assert_eq!(
            e,
            "cannot convert kg (mass) to km (length): the units measure different things"
        );
        assert!(err(1.0, "C", "l").contains("°C (temperature) to l (volume)"));
        let e = err(1.0, "furlong", "m");
        assert!(
            e.starts_with("unknown unit \"furlong\" in \"from\"; known units: m, km"),
            "{e}"
        );
        assert!(err(1.0, "m", "parsec").contains("in \"to\""));
        assert!(err(1.0, "ton", "kg").contains("ambiguous"));
        assert!(err(1e308, "mi", "mm").contains("out of range"));
    }

    #[test]
    fn number_formatting() {
        assert_eq!(format_number(1.926250696, 4, true), "1.926");
        assert_eq!(format_number(123456.7, 4, true), "123457");
        assert_eq!(format_number(0.000123456, 4, true), "0.0001235");
        assert_eq!(format_number(1.2345e-7, 4, true), "1.235e-7");
        assert_eq!(format_number(6.2e20, 4, true), "6.2e20");
        assert_eq!(format_number(0.99996, 4, true), "1");
        assert_eq!(format_number(-0.00001, 4, true), "-0.00001");
        assert_eq!(format_number(3.1, 10, false), "3.1");
        assert_eq!(format_number(-1e-30, 4, false), "-1e-30");
        assert_eq!(format_number(9.9996e14, 4, false), "1e15");
        // Half away from zero, on the shortest decimal form.
        assert_eq!(format_number(2.5, 1, false), "3");
        assert_eq!(format_number(-2.5, 1, false), "-3");
        assert_eq!(format_number(0.125, 2, false), "0.13");
        assert_eq!(format_number(-273.15, 4, true), "-273.2");
        assert_eq!(format_number(1e15, 4, true), "1e15");
        assert_eq!(round_significant(32.00000000000003, 10), 32.0);
        assert_eq!(round_significant(-1.926250696, 4), -1.926);
        assert_eq!(round_significant(0.1 + 0.2, 10), 0.3);
        assert_eq!(json_number(-3.0), serde_json::json!(-3));
        assert_eq!(json_number(1e20), serde_json::json!(1e20));
    }

    #[test]
    fn every_unit_round_trips() {
        for a in UNITS {
            for b in UNITS.iter().filter(|b| b.dimension == a.dimension) {
                let there = convert(12.5, a.symbol, b.symbol).unwrap();
                let x = there.value.as_f64().unwrap();
                let back = convert(x, b.symbol, a.symbol).unwrap();
                let y = back.value.as_f64().unwrap();
                assert!(
                    (y - 12.5).abs() < 1e-6,
                    "{} -> {} -> {}: {y}",
                    a.symbol,
                    b.symbol,
                    a.symbol
                );
            }
            // Every symbol and alias finds its own unit, and none is shared.
            for name in std::iter::once(&a.symbol).chain(a.aliases) {
                assert!(std::ptr::eq(lookup(name).unwrap(), a), "{name}");
            }
        }
    }
}
