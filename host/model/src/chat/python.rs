//! The Python side of chat templates: what Hugging Face's jinja2 environment
//! offers that minijinja does not do the same way by itself.
//!
//! Templates are written against Python: they print values with `str()`,
//! call string methods, and use `tojson` as transformers defines it
//! (`json.dumps` with `ensure_ascii=False`, not jinja2's HTML-safe
//! variant, in [`super::json`]). Each difference would change prompts.
//!
//! Known gaps, which none of the tested model templates touch: minijinja has
//! no tuples, so `dictsort` and `items` pairs print as lists (`['a', 1]`
//! where Python prints `('a', 1)`; unpacking them in a `for` works the
//! same); `~` and `|string` format floats the Rust way (`1e16` comes out
//! positional); and only the common non-printable characters are escaped in
//! reprs.

use std::borrow::Cow;
use std::fmt::Write as _;

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};

/// The environment every chat template is compiled in: jinja2 as
/// transformers configures it.
pub(super) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    // Spans of errors, so that syntax errors can name their column.
    env.set_debug(true);
    env.set_formatter(|out, _state, value| {
        if let Some(s) = value.as_str() {
            return out.write_str(s).map_err(Error::from);
        }
        let mut text = String::new();
        write_str(&mut text, value);
        out.write_str(&text).map_err(Error::from)
    });
    env.set_unknown_method_callback(method);
    env.add_filter("tojson", super::json::tojson);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", super::time::strftime_now);
    env
}

/// The message of a template's `raise_exception`, carried as the source of
/// the render error so that it can be told apart from other failures.
#[derive(Debug)]
pub(super) struct Raised(pub String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// transformers registers a `{% generation %}…{% endgeneration %}` block
/// that marks assistant text for training masks and renders its body
/// unchanged; minijinja does not know the tag. An `if true` block renders the
/// same, whitespace control included. The keywords are padded to their
/// original length so that error columns stay right.
pub(super) fn rewrite_generation_tags(source: &str) -> Cow<'_, str> {
    if !source.contains("generation") {
        return Cow::Borrowed(source);
    }
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        out.push_str(&rest[..open + 2]);
        rest = &rest[open + 2..];
        let body = rest.strip_prefix(['-', '+']).unwrap_or(rest);
        let keyword_at = rest.len() - body.trim_start().len();
        out.push_str(&rest[..keyword_at]);
        rest = &rest[keyword_at..];
        for (keyword, replacement) in [
            ("endgeneration", "endif        "),
            ("generation", "if true   "),
        ] {
            if let Some(tail) = rest.strip_prefix(keyword)
                && tail.starts_with(|c: char| c.is_whitespace() || matches!(c, '-' | '+' | '%'))
            {
                out.push_str(replacement);
                rest = tail;
                break;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// 1-based line and column (in characters) of byte `offset` in `source`.
pub(super) fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..source.floor_char_boundary(offset.min(source.len()))];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

// ---------------------------------------------------------------------------
// Printing values as Python's str() does.

/// `str(value)`: what `{{ value }}` prints in jinja2.
fn write_str(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::String => out.push_str(value.as_str().unwrap_or_default()),
        ValueKind::Number if !value.is_integer() => out.push_str(&float_repr(
            f64::try_from(value.clone()).unwrap_or(f64::NAN),
        )),
        ValueKind::Seq | ValueKind::Map => write_repr(out, value),
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

/// `repr(value)`, which is how Python prints the items of lists and dicts.
fn write_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => out.push_str("Undefined"),
        ValueKind::String => string_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &item);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &key);
                out.push_str(": ");
                write_repr(out, &value.get_item(&key).unwrap_or_default());
            }
            out.push('}');
        }
        _ => write_str(out, value),
    }
}

/// Python's string repr: single quotes unless the text has a single quote
/// and no double quote; unprintable characters escaped.
fn string_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let n = c as u32;
                let _ = match n {
                    0..=0xff => write!(out, "\\x{n:02x}"),
                    0x100..=0xffff => write!(out, "\\u{n:04x}"),
                    _ => write!(out, "\\U{n:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable` for the characters that show up in practice:
/// controls, separators other than space, and the common format characters.
/// (Unassigned code points, which Python also escapes, are printed as is.)
fn is_printable(c: char) -> bool {
    !(c.is_control()
        || matches!(c,
            '\u{a0}' | '\u{ad}' | '\u{600}'..='\u{605}' | '\u{61c}' | '\u{6dd}' | '\u{70f}'
            | '\u{1680}' | '\u{180e}' | '\u{2000}'..='\u{200f}' | '\u{2028}'..='\u{202f}'
            | '\u{205f}'..='\u{2064}' | '\u{2066}'..='\u{206f}' | '\u{3000}' | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}' | '\u{e000}'..='\u{f8ff}'))
}

/// `repr(float)`: the shortest text that reads back as the same number, in
/// positional notation for exponents -4 to 15 and scientific otherwise.
pub(super) fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f < 0.0 { "-inf" } else { "inf" }.into();
    }
    // Rust's `{:e}` is also the shortest round-trip form: "-1.25e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` has an integer exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.push_str(&"0".repeat((-exp - 1) as usize));
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.push_str(&"0".repeat(int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(mantissa);
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

// ---------------------------------------------------------------------------
// Methods.

/// Python methods on values: a few string methods that minijinja-contrib's
/// pycompat lacks, then pycompat itself.
fn method(state: &State, value: &Value, name: &str, args: &[Value]) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        let string_arg = |i: usize| args.get(i).and_then(|a| a.as_str());
        match (name, args.len()) {
            ("removeprefix", 1) => {
                if let Some(prefix) = string_arg(0) {
                    return Ok(Value::from(s.strip_prefix(prefix).unwrap_or(s)));
                }
            }
            ("removesuffix", 1) => {
                if let Some(suffix) = string_arg(0) {
                    return Ok(Value::from(s.strip_suffix(suffix).unwrap_or(s)));
                }
            }
            ("rsplit", 0..=2) => return rsplit(s, args),
            // Python counts characters; pycompat would answer in bytes.
            ("find" | "rfind", 1) => {
                if let Some(needle) = string_arg(0) {
                    let found = if name == "find" {
                        s.find(needle)
                    } else {
                        s.rfind(needle)
                    };
                    return Ok(Value::from(
                        found.map_or(-1, |i| s[..i].chars().count() as i64),
                    ));
                }
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, name, args)
}

/// `str.rsplit(sep=None, maxsplit=-1)`.
fn rsplit(s: &str, args: &[Value]) -> Result<Value, Error> {
    let sep = match args.first() {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(v.as_str().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                "rsplit: the separator must be a string",
            )
        })?),
    };
    let max = match args.get(1) {
        Some(v) => i64::try_from(v.clone())?,
        None => -1,
    };
    let mut parts: Vec<&str> = match (sep, max) {
        (Some(""), _) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "rsplit: empty separator",
            ));
        }
        (Some(sep), m) if m < 0 => s.rsplit(sep).collect(),
        (Some(sep), m) => s.rsplitn(m as usize + 1, sep).collect(),
        (None, m) => {
            let mut parts = Vec::new();
            let mut rest = s.trim_end();
            while !rest.is_empty() {
                if m >= 0 && parts.len() as i64 == m {
                    parts.push(rest);
                    break;
                }
                match rest.rfind(char::is_whitespace) {
                    Some(i) => {
                        let ws_len = rest[i..].chars().next().map_or(1, char::len_utf8);
                        parts.push(&rest[i + ws_len..]);
                        rest = rest[..i].trim_end();
                    }
                    None => {
                        parts.push(rest);
                        rest = "";
                    }
                }
            }
            parts
        }
    };
    parts.reverse();
    Ok(Value::from_iter(parts.into_iter().map(Value::from)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1.2345e16, "1.2345e+16"),
            (123456789012345.6, "123456789012345.6"),
            (1e100, "1e+100"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "{f:e}");
        }
    }

    #[test]
    fn rsplit_matches_python() {
        let split = |s: &str, args: &[Value]| -> Vec<String> {
            rsplit(s, args)
                .unwrap()
                .try_iter()
                .unwrap()
                .map(|v| v.to_string())
                .collect()
        };
        assert_eq!(
            split("a,b,c", &[Value::from(","), Value::from(1)]),
            ["a,b", "c"]
        );
        assert_eq!(split("  a  b c ", &[]), ["a", "b", "c"]);
        assert_eq!(
            split("  a  b c ", &[Value::from(()), Value::from(1)]),
            ["  a  b", "c"]
        );
    }

    #[test]
    fn generation_tags_become_if_blocks_of_the_same_length() {
        let src = "a{%- generation %}b{% endgeneration -%}c{% generations %}{{ generation }}";
        let out = rewrite_generation_tags(src);
        assert_eq!(
            out,
            "a{%- if true    %}b{% endif         -%}c{% generations %}{{ generation }}"
        );
        assert_eq!(out.len(), src.len());
    }

    #[test]
    fn positions_count_characters() {
        let src = "ab\n｜x｜{{";
        assert_eq!(line_column(src, src.find("{{").unwrap()), (2, 4));
        assert_eq!(line_column(src, 0), (1, 1));
    }
}
