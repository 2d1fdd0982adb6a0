//! `calculator`: a tool plugin that evaluates arithmetic exactly, with
//! rational numbers over big integers.
//!
//! One tool, `calculate`, with the arguments schema
//! `{"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"],"additionalProperties":false}`.
//!
//! Expressions: decimal literals (`3`, `0.1`, `.5`, `5.`, read exactly, so
//! `0.1+0.2` is `3/10`), `+ - * /`, `^` (also written `**`) with an integer
//! exponent, parentheses, unary `+`/`-`, whitespace anywhere between tokens.
//! Precedence from low to high: `+ -`, then `* /`, then unary signs, then `^`
//! (right-associative, so `-2^2 = -4`, `2^3^2 = 512`, `2^-1 = 1/2`).
//!
//! Output, `tool-output::json`:
//!
//! ```json
//! {"expression":"1/3+1/6","result":"1/2","decimal":"0.5"}
//! ```
//!
//! - `expression`: the input as given;
//! - `result`: the exact value in lowest terms, `n` or `n/d` (`d > 0`);
//! - `decimal`: the exact decimal when it terminates (`"0.125"`, `"-3"`);
//!   otherwise the value rounded (half away from zero) to 12 significant
//!   digits, trailing zeros dropped, with a leading `~` to mark it inexact:
//!   `"~0.333333333333"`, or in scientific notation when the magnitude is at
//!   least 1e12 or below 1e-6: `"~3.33333333333e15"`, `"~1.42857142857e-8"`.
//!
//! Limits, refused with `invalid-input` before any work: an expression over
//! 10,000 characters, parentheses (or signs, or powers) nested deeper than 100, any number
//! (literal, intermediate or result) whose numerator or denominator would
//! pass 100,000 bits (about 30,000 digits), and thus `2^100000000`.
//!
//! Errors: a syntax error says what was expected and at which character
//! position (counted from 0); division by zero (also `0^-1`) and a
//! non-integer exponent are `invalid-input`; an unknown tool name is
//! `not-found`.

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::tool::{self, Guest};
use deepwasm_sdk::types::{Error, ToolOutput, ToolSpec};
use num_bigint::{BigInt, Sign};
use num_integer::Integer;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};

/// Largest numerator or denominator, in bits, of any value.
pub const MAX_BITS: u64 = 100_000;
/// Longest accepted expression, in characters.
pub const MAX_CHARS: usize = 10_000;
/// Deepest accepted nesting of parentheses and unary signs.
pub const MAX_DEPTH: usize = 100;
/// Significant digits of an inexact decimal.
pub const SIGNIFICANT: usize = 12;

const SCHEMA: &str = r#"{"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"],"additionalProperties":false}"#;

/// Evaluate `expression` exactly. Errors are messages for `invalid-input`.
pub fn evaluate(expression: &str) -> Result<BigRational, String> {
    let chars: Vec<char> = expression.chars().collect();
    if chars.len() > MAX_CHARS {
        return Err(format!(
            "the expression has {} characters; the limit is {MAX_CHARS}",
            chars.len()
        ));
    }
    let mut p = Parser {
        chars,
        pos: 0,
        depth: 0,
    };
    let value = p.expr()?;
    p.skip_ws();
    if p.pos < p.chars.len() {
        return Err(p.unexpected("an operator or the end of the expression"));
    }
    Ok(value)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    /// Skip whitespace and look at the next character.
    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.chars.get(self.pos).copied()
    }

    fn unexpected(&self, expected: &str) -> String {
        match self.chars.get(self.pos) {
            Some(c) => format!("expected {expected} at position {}, found '{c}'", self.pos),
            None => format!(
                "expected {expected} at position {}, found the end",
                self.pos
            ),
        }
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!(
                "nesting deeper than {MAX_DEPTH} at position {}",
                self.pos
            ));
        }
        Ok(())
    }

    /// expr := term (('+' | '-') term)*
    fn expr(&mut self) -> Result<BigRational, String> {
        let mut acc = self.term()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.pos += 1;
            let rhs = self.term()?;
            acc = checked(if op == '+' { acc + rhs } else { acc - rhs })?;
        }
        Ok(acc)
    }

    /// term := unary (('*' | '/') unary)*
    fn term(&mut self) -> Result<BigRational, String> {
        let mut acc = self.unary()?;
        loop {
            match self.peek() {
                Some('*') if self.chars.get(self.pos + 1) != Some(&'*') => {
                    self.pos += 1;
                    let rhs = self.unary()?;
                    acc = checked(acc * rhs)?;
                }
                Some('/') => {
                    let at = self.pos;
                    self.pos += 1;
                    let rhs = self.unary()?;
                    if rhs.is_zero() {
                        return Err(format!("division by zero at position {at}"));
                    }
                    acc = checked(acc / rhs)?;
                }
                _ => return Ok(acc),
            }
        }
    }

    /// unary := ('+' | '-') unary | power
    fn unary(&mut self) -> Result<BigRational, String> {
        match self.peek() {
            Some(op @ ('+' | '-')) => {
                self.pos += 1;
                self.enter()?;
                let v = self.unary()?;
                self.depth -= 1;
                Ok(if op == '-' { -v } else { v })
            }
            _ => self.power(),
        }
    }

    /// power := primary (('^' | '**') unary)?
    fn power(&mut self) -> Result<BigRational, String> {
        let base = self.primary()?;
        let at = match self.peek() {
            Some('^') => {
                let at = self.pos;
                self.pos += 1;
                at
            }
            Some('*') if self.chars.get(self.pos + 1) == Some(&'*') => {
                let at = self.pos;
                self.pos += 2;
                at
            }
            _ => return Ok(base),
        };
        self.enter()?;
        let exponent = self.unary()?;
        self.depth -= 1;
        pow(base, &exponent, at)
    }

    /// primary := number | '(' expr ')'
    fn primary(&mut self) -> Result<BigRational, String> {
        match self.peek() {
            Some('(') => {
                self.pos += 1;
                self.enter()?;
                let v = self.expr()?;
                self.depth -= 1;
                if self.peek() != Some(')') {
                    return Err(self.unexpected("')'"));
                }
                self.pos += 1;
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() || c == '.' => self.number(),
            _ => Err(self.unexpected("a number or '('")),
        }
    }

    /// number := digits ('.' digits?)? | '.' digits
    fn number(&mut self) -> Result<BigRational, String> {
        let start = self.pos;
        let digits = |p: &mut Parser| {
            let s = p.pos;
            while p.chars.get(p.pos).is_some_and(char::is_ascii_digit) {
                p.pos += 1;
            }
            p.chars[s..p.pos].iter().collect::<String>()
        };
        let int = digits(self);
        let frac = if self.chars.get(self.pos) == Some(&'.') {
            self.pos += 1;
            digits(self)
        } else {
            String::new()
        };
        if int.is_empty() && frac.is_empty() {
            self.pos = start;
            return Err(self.unexpected("a number"));
        }
        let numer: BigInt = format!("{int}{frac}").parse().unwrap_or_default();
        let denom = num_traits::pow(BigInt::from(10u8), frac.len());
        checked(BigRational::new(numer, denom))
    }
}

/// `value`, or an error when it is larger than [`MAX_BITS`] allows.
fn checked(value: BigRational) -> Result<BigRational, String> {
    let bits = value.numer().bits().max(value.denom().bits());
    if bits > MAX_BITS {
        return Err(format!(
            "a value would have {bits} bits; the limit is {MAX_BITS}"
        ));
    }
    Ok(value)
}

/// `base ^ exponent`, with the exponent an integer and the size checked first.
fn pow(base: BigRational, exponent: &BigRational, at: usize) -> Result<BigRational, String> {
    if !exponent.is_integer() {
        return Err(format!("the exponent at position {at} is not an integer"));
    }
    let e = exponent.to_integer();
    if base.is_zero() {
        return match e.sign() {
            Sign::Minus => Err(format!(
                "division by zero (0 to a negative power) at position {at}"
            )),
            Sign::NoSign => Ok(BigRational::one()),
            Sign::Plus => Ok(BigRational::zero()),
        };
    }
    if base.abs().is_one() {
        let odd = e.is_odd();
        return Ok(if base.is_negative() && odd {
            -BigRational::one()
        } else {
            BigRational::one()
        });
    }
    let size = base
        .numer()
        .bits()
        .max(base.denom().bits())
        .saturating_sub(1)
        .max(1);
    let n = e
        .abs()
        .to_u64()
        .filter(|n| n.saturating_mul(size) <= MAX_BITS);
    let Some(n) = n else {
        return Err(format!(
            "the power at position {at} is too large: the result would pass {MAX_BITS} bits"
        ));
    };
    let n = n as u32; // n <= MAX_BITS
    let magnitude = BigRational::new(
        num_traits::pow(base.numer().clone(), n as usize),
        num_traits::pow(base.denom().clone(), n as usize),
    );
    checked(if e.is_negative() {
        magnitude.recip()
    } else {
        magnitude
    })
}

/// The exact value as `n` or `n/d`.
pub fn exact(value: &BigRational) -> String {
    if value.is_integer() {
        value.numer().to_string()
    } else {
        format!("{}/{}", value.numer(), value.denom())
    }
}

/// The decimal form: exact when it terminates, else `~` and 12 significant digits.
pub fn decimal(value: &BigRational) -> String {
    let negative = value.is_negative();
    let sign = if negative { "-" } else { "" };
    let v = value.abs();
    let ten = BigInt::from(10u8);
    // Terminating iff the denominator is 2^a 5^b.
    let mut d = v.denom().clone();
    let (mut twos, mut fives) = (0usize, 0usize);
    while d.is_even() {
        d >>= 1;
        twos += 1;
    }
    while (&d % 5u8).is_zero() {
        d /= 5u8;
        fives += 1;
    }
    if d.is_one() {
        let places = twos.max(fives);
        let scaled = (v * BigRational::from_integer(num_traits::pow(ten, places))).to_integer();
        return format!("{sign}{}", with_point(&scaled.to_string(), places));
    }
    // Inexact: e = floor(log10 v), then round v * 10^(11 - e) to an integer.
    let e = floor_log10(&v);
    let shift = SIGNIFICANT as i64 - 1 - e;
    let scaled = if shift >= 0 {
        &v * BigRational::from_integer(num_traits::pow(ten.clone(), shift as usize))
    } else {
        &v / BigRational::from_integer(num_traits::pow(ten.clone(), (-shift) as usize))
    };
    let mut digits = scaled.round().to_integer().to_string(); // half away from zero
    let mut e = e;
    if digits.len() > SIGNIFICANT {
        // Rounding carried into a new digit (9.99… → 10.0…).
        digits.truncate(SIGNIFICANT);
        e += 1;
    }
    if (-6..12).contains(&e) {
        let places = (SIGNIFICANT as i64 - 1 - e) as usize;
        let text = with_point(&digits, places);
        format!("~{sign}{}", trim_zeros(&text))
    } else {
        let mantissa = trim_zeros(&with_point(&digits, SIGNIFICANT - 1));
        format!("~{sign}{mantissa}e{e}")
    }
}

/// `floor(log10(v))` for `v > 0`.
fn floor_log10(v: &BigRational) -> i64 {
    let (n, d) = (v.numer(), v.denom());
    // Estimate from the digit counts, then correct by at most one.
    let mut e = n.to_string().len() as i64 - d.to_string().len() as i64;
    let ten = BigInt::from(10u8);
    let at_least = |e: i64| -> bool {
        // v >= 10^e  <=>  n * 10^-e >= d (e < 0) or n >= d * 10^e (e >= 0)
        if e >= 0 {
            *n >= d * num_traits::pow(ten.clone(), e as usize)
        } else {
            n * num_traits::pow(ten.clone(), (-e) as usize) >= *d
        }
    };
    while !at_least(e) {
        e -= 1;
    }
    while at_least(e + 1) {
        e += 1;
    }
    e
}

/// Put a decimal point `places` digits from the right of `digits`.
fn with_point(digits: &str, places: usize) -> String {
    if places == 0 {
        return digits.to_string();
    }
    let padded = if digits.len() <= places {
        format!("{}{digits}", "0".repeat(places + 1 - digits.len()))
    } else {
        digits.to_string()
    };
    let (int, frac) = padded.split_at(padded.len() - places);
    format!("{int}.{frac}")
}

/// Drop trailing zeros after a decimal point, and the point if nothing is left.
fn trim_zeros(s: &str) -> String {
    if !s.contains('.') {
        return s.to_string();
    }
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[derive(serde::Serialize)]
struct Output<'a> {
    expression: &'a str,
    result: String,
    decimal: String,
}

/// The JSON answer for `expression`.
pub fn calculate(expression: &str) -> Result<String, Error> {
    let value = evaluate(expression).map_err(Error::invalid_input)?;
    let out = Output {
        expression,
        result: exact(&value),
        decimal: decimal(&value),
    };
    serde_json::to_string(&out).map_err(|e| Error::failed(e.to_string()))
}

struct Calculator;

impl Guest for Calculator {
    fn describe() -> Vec<ToolSpec> {
        vec![tool::spec(
            "calculate",
            "Evaluate an arithmetic expression exactly with rational numbers: + - * /, \
             ^ with an integer exponent, parentheses and decimal numbers. Returns the exact \
             result (an integer or a fraction) and its decimal form.",
            SCHEMA,
        )]
    }

    fn call(name: String, arguments: String) -> Result<ToolOutput, Error> {
        if name != "calculate" {
            return Err(Error::not_found(format!(
                "no tool named {name:?}; this plugin has only \"calculate\""
            )));
        }
        let args = Fields::parse("arguments", &arguments)?;
        args.only(&["expression"])?;
        let expression: String = args.require("expression")?;
        calculate(&expression).map(ToolOutput::Json)
    }
}

deepwasm_sdk::export_tool!(Calculator);

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &str) -> String {
        exact(&evaluate(s).unwrap())
    }

    fn err(s: &str) -> String {
        evaluate(s).unwrap_err()
    }

    #[test]
    fn arithmetic() {
        assert_eq!(ev("1/3+1/6"), "1/2");
        assert_eq!(ev("0.1 + 0.2"), "3/10");
        assert_eq!(ev("2*(3+4)"), "14");
        assert_eq!(ev("-2^2"), "-4");
        assert_eq!(ev("(-2)^2"), "4");
        assert_eq!(ev("2^3^2"), "512");
        assert_eq!(ev("2**10"), "1024");
        assert_eq!(ev("2^-1"), "1/2");
        assert_eq!(ev("(2/3)^-2"), "9/4");
        assert_eq!(ev("--3"), "3");
        assert_eq!(ev("+.5 - 5."), "-9/2");
        assert_eq!(ev("10 - 2 - 3"), "5");
        assert_eq!(ev("8 / 2 / 2"), "2");
        assert_eq!(ev("(-1)^1000001"), "-1");
        assert_eq!(ev("1^100000000000000000000"), "1");
        assert_eq!(ev("0^0"), "1");
        assert_eq!(ev("2^100"), "1267650600228229401496703205376");
        assert_eq!(ev(" ( ( 7 ) ) "), "7");
    }

    #[test]
    fn errors() {
        assert_eq!(err("1/0"), "division by zero at position 1");
        assert!(err("1/(2-2)").contains("division by zero"));
        assert!(err("0^-1").contains("division by zero"));
        assert_eq!(
            err("1 +"),
            "expected a number or '(' at position 3, found the end"
        );
        assert_eq!(
            err("2 3"),
            "expected an operator or the end of the expression at position 2, found '3'"
        );
        assert_eq!(err("(1"), "expected ')' at position 2, found the end");
        assert_eq!(
            err("x"),
            "expected a number or '(' at position 0, found 'x'"
        );
        assert_eq!(
            err("1.2.3"),
            "expected an operator or the end of the expression at position 3, found '.'"
        );
        assert!(err("2^0.5").contains("not an integer"));
        assert!(err("2^100000000").contains("too large"));
        assert!(err("2^99999999999999999999999").contains("too large"));
        assert!(err("(2^60000)*(2^60000)").contains("limit"));
        assert!(err(&"(".repeat(1000)).contains("nesting"));
        assert!(err(&"-".repeat(1000)).contains("nesting"));
        assert!(err(&"1".repeat(MAX_CHARS + 1)).contains("limit"));
        assert!(err("").contains("position 0"));
    }

    #[test]
    fn decimals() {
        let d = |s: &str| decimal(&evaluate(s).unwrap());
        assert_eq!(d("1/2"), "0.5");
        assert_eq!(d("-3"), "-3");
        assert_eq!(d("1/8"), "0.125");
        assert_eq!(d("-1/40"), "-0.025");
        assert_eq!(d("1/3"), "~0.333333333333");
        assert_eq!(d("2/3"), "~0.666666666667");
        assert_eq!(d("-2/3"), "~-0.666666666667");
        assert_eq!(d("100/3"), "~33.3333333333");
        assert_eq!(d("1/7"), "~0.142857142857");
        assert_eq!(d("1/3000"), "~0.000333333333333");
        assert_eq!(d("10^15/3"), "~3.33333333333e14");
        assert_eq!(d("1/(7*10^7)"), "~1.42857142857e-8");
        assert_eq!(d("(10^12-1/3)"), "~1e12");
        assert_eq!(d("1/6"), "~0.166666666667");
        assert_eq!(d("2^-10"), "0.0009765625");
        assert_eq!(d("0"), "0");
    }

    #[test]
    fn tool_interface() {
        let out =
            Calculator::call("calculate".into(), r#"{"expression": "1/3+1/6"}"#.into()).unwrap();
        match out {
            ToolOutput::Json(j) => {
                assert_eq!(
                    j,
                    r#"{"expression":"1/3+1/6","result":"1/2","decimal":"0.5"}"#
                )
            }
            other => panic!("{other:?}"),
        }
        let e = Calculator::call("calc".into(), "{}".into()).unwrap_err();
        assert!(matches!(e, Error::NotFound(_)));
        let e = Calculator::call("calculate".into(), "{}".into()).unwrap_err();
        assert!(e.message().contains("arguments.expression"), "{e}");
        let e =
            Calculator::call("calculate".into(), r#"{"expression": "1/0"}"#.into()).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)));
        let spec = &Calculator::describe()[0];
        assert_eq!(spec.name, "calculate");
        let _: serde_json::Value = serde_json::from_str(&spec.parameters).unwrap();
    }
}
