//! `math-accuracy`: a reward plugin that checks the final `\boxed{}` answer
//! of a completion against the ground truth, comparing numbers exactly.
//!
//! Config:
//!
//! ```json
//! {"field": "answer"}
//! ```
//!
//! `field` (string, default `"answer"`) names the field of the sample's
//! `extra` JSON object that holds the ground truth (a string or a number).
//!
//! Score of each sample:
//! - `none` when `extra` has no such field (or it is `null`);
//! - `1.0` when the last boxed answer matches the ground truth;
//! - `0.0` when it does not match, or when there is no boxed answer.
//!
//! The answer is the argument of the last `\boxed{…}` or `\fbox{…}` (braces
//! balanced, `\{`/`\}` not counted; `\boxed 5` also works) of the completion,
//! searched only after the last `</think>` when there is one.
//!
//! Both sides are normalised by [`normalize`]: trimmed; `−` read as `-`;
//! `\dfrac`/`\tfrac` → `\frac`; the wrappers `\boxed`, `\fbox`, `\text`,
//! `\textbf`, `\textrm`, `\mathrm`, `\mathbf`, `\mbox` unwrapped; `$`, `\$`,
//! `\left`, `\right`, `\!`, `\,`, `\;`, `\:`, `\ ` dropped; `^\circ`,
//! `^{\circ}`, `°`, `\%` and `%` dropped; `{,}` → `,`; `\frac{a}{b}` and
//! `\frac ab` → `a/b` (parts with operators get parentheses); all whitespace
//! dropped; trailing `.` dropped; thousands separators dropped
//! (`1,234,567.5` → `1234567.5`, only when the whole answer has that shape).
//!
//! When both normalised strings are numbers — an optionally signed integer or
//! decimal, or a quotient `a/b` of two such — they are compared as exact
//! rationals (so `\frac{3}{4}`, `0.75`, `6/8` and `3/4` are equal, and so are
//! `-3/4`, `-\frac{3}{4}` and `-0.75`). Otherwise the normalised strings must
//! be equal.
//!
//! Errors (`invalid-input`, naming the field): a bad config, an `extra` that
//! is not a JSON object, a ground truth that is not a string or a number.

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::reward::{Guest, Sample};
use deepwasm_sdk::types::Error;
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::Zero;
use serde_json::Value;

/// The argument of the last `\boxed{…}` / `\fbox{…}` of `completion`, looking
/// only after the last `</think>` when there is one.
pub fn last_boxed(completion: &str) -> Option<&str> {
    let text = match completion.rfind("</think>") {
        Some(i) => &completion[i + "</think>".len()..],
        None => completion,
    };
    let mut found = None;
    let mut i = 0;
    while let Some((pos, cmd)) = find_command(text, i, &["\\boxed", "\\fbox"]) {
        let after = pos + cmd.len();
        let arg_start = skip_spaces(text, after);
        if text[arg_start..].starts_with('{') {
            if let Some(close) = matching_brace(text, arg_start) {
                found = Some(&text[arg_start + 1..close]);
                i = close + 1;
                continue;
            }
        } else if arg_start > after && arg_start < text.len() {
            // `\boxed 5`: up to the next whitespace or `$`.
            let rest = &text[arg_start..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '$')
                .unwrap_or(rest.len());
            found = Some(&rest[..end]);
            i = arg_start + end;
            continue;
        }
        i = after;
    }
    found
}

/// The first of `cmds` (LaTeX commands with their backslash) at or after
/// byte `from` that is not the start of a longer command name.
fn find_command<'c>(s: &str, from: usize, cmds: &[&'c str]) -> Option<(usize, &'c str)> {
    let mut from = from;
    loop {
        let (pos, cmd) = cmds
            .iter()
            .filter_map(|c| s[from..].find(c).map(|p| (from + p, *c)))
            .min_by_key(|&(p, _)| p)?;
        let end = pos + cmd.len();
        if s.as_bytes().get(end).is_some_and(u8::is_ascii_alphabetic) {
            from = end;
            continue;
        }
        return Some((pos, cmd));
    }
}

fn skip_spaces(s: &str, i: usize) -> usize {
    i + s[i..].len() - s[i..].trim_start().len()
}

/// The index of the `}` matching the `{` at `open`; `\{` and `\}` are literal.
fn matching_brace(s: &str, open: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut j = open;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 1,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
        j += 1;
    }
    None
}

/// Replace every `cmd{X}` by `X` (recursively).
fn unwrap_command(s: &str, cmd: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    let mut i = 0;
    while let Some((pos, _)) = find_command(s, i, &[cmd]) {
        let open = skip_spaces(s, pos + cmd.len());
        match s[open..]
            .starts_with('{')
            .then(|| matching_brace(s, open))
            .flatten()
        {
            Some(close) => {
                out.push_str(&s[last..pos]);
                out.push_str(&unwrap_command(&s[open + 1..close], cmd));
                last = close + 1;
                i = close + 1;
            }
            None => i = pos + cmd.len(),
        }
    }
    out.push_str(&s[last..]);
    out
}

/// Drop every `cmd` that is not the start of a longer command name.
fn remove_command(s: &str, cmd: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    let mut i = 0;
    while let Some((pos, _)) = find_command(s, i, &[cmd]) {
        out.push_str(&s[last..pos]);
        last = pos + cmd.len();
        i = last;
    }
    out.push_str(&s[last..]);
    out
}

/// Rewrite `\frac{a}{b}` and `\frac ab` as `a/b`, parenthesising parts that
/// hold an operator.
fn convert_fracs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    let mut i = 0;
    while let Some((pos, cmd)) = find_command(s, i, &["\\frac"]) {
        let Some((num, after_num)) = frac_arg(s, pos + cmd.len()) else {
            i = pos + cmd.len();
            continue;
        };
        let Some((den, after_den)) = frac_arg(s, after_num) else {
            i = pos + cmd.len();
            continue;
        };
        out.push_str(&s[last..pos]);
        out.push_str(&wrap(&convert_fracs(num)));
        out.push('/');
        out.push_str(&wrap(&convert_fracs(den)));
        last = after_den;
        i = after_den;
    }
    out.push_str(&s[last..]);
    out
}

/// One argument of `\frac` starting at or after `i`: a braced group, a
/// command name, or a single character. Returns it and the index after it.
fn frac_arg(s: &str, i: usize) -> Option<(&str, usize)> {
    let start = skip_spaces(s, i);
    let rest = &s[start..];
    if rest.starts_with('{') {
        let close = matching_brace(s, start)?;
        return Some((&s[start + 1..close], close + 1));
    }
    if let Some(name) = rest.strip_prefix('\\') {
        let len = name
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count()
            .max(1);
        let end = start + 1 + len.min(name.len());
        return (end > start + 1).then(|| (&s[start..end], end));
    }
    let c = rest.chars().next()?;
    (c != '}').then(|| (&rest[..c.len_utf8()], start + c.len_utf8()))
}

/// `x` alone when it is a plain term, `(x)` when it holds an operator.
fn wrap(x: &str) -> String {
    let x = x.trim();
    let body = x.strip_prefix('-').unwrap_or(x);
    if body.contains(|c: char| "+-*/^ ".contains(c)) {
        format!("({x})")
    } else {
        x.to_string()
    }
}

/// Normalise an answer for comparison (see the crate documentation).
pub fn normalize(answer: &str) -> String {
    let mut s = answer.trim().replace('\u{2212}', "-");
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac");
    for cmd in [
        "\\boxed", "\\fbox", "\\text", "\\textbf", "\\textrm", "\\mathrm", "\\mathbf", "\\mbox",
    ] {
        s = unwrap_command(&s, cmd);
    }
    for cmd in ["\\left", "\\right"] {
        s = remove_command(&s, cmd);
    }
    for lit in [
        "\\!",
        "\\,",
        "\\;",
        "\\:",
        "\\ ",
        "\\$",
        "$",
        "^{\\circ}",
        "^\\circ",
        "\u{b0}",
        "\\%",
        "%",
    ] {
        s = s.replace(lit, "");
    }
    s = s.replace("{,}", ",");
    s = convert_fracs(&s);
    s.retain(|c| !c.is_whitespace());
    while s.ends_with('.') {
        s.pop();
    }
    if is_thousands(&s) {
        s.retain(|c| c != ',');
    }
    s
}

/// Whether `s` is a number written with thousands separators: an optional
/// sign, 1 to 3 digits, one or more `,ddd` groups, an optional decimal part.
fn is_thousands(s: &str) -> bool {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    if frac.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    let mut groups = int.split(',');
    let first = groups.next().unwrap_or("");
    let rest: Vec<&str> = groups.collect();
    !rest.is_empty()
        && (1..=3).contains(&first.len())
        && first.bytes().all(|b| b.is_ascii_digit())
        && rest
            .iter()
            .all(|g| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()))
}

/// The exact value of a normalised number: `[+-]d[.d]` or a quotient of two.
pub fn as_rational(s: &str) -> Option<BigRational> {
    match s.split_once('/') {
        None => decimal(s),
        Some((n, d)) => {
            let (n, d) = (decimal(n)?, decimal(d)?);
            (!d.is_zero()).then(|| n / d)
        }
    }
}

fn decimal(s: &str) -> Option<BigRational> {
    let (negative, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !digits(int) || !digits(frac) {
        return None;
    }
    let all = format!("{int}{frac}");
    let numer: BigInt = all.parse().ok()?;
    let denom = num_traits::pow(BigInt::from(10u8), frac.len());
    let value = BigRational::new(numer, denom);
    Some(if negative { -value } else { value })
}

/// Whether the predicted answer matches the ground truth after
/// normalisation: exactly as numbers when both are numbers, else as strings.
pub fn answers_match(predicted: &str, truth: &str) -> bool {
    let (p, t) = (normalize(predicted), normalize(truth));
    if p.is_empty() {
        return false;
    }
    match (as_rational(&p), as_rational(&t)) {
        (Some(a), Some(b)) => a == b,
        _ => p == t,
    }
}

/// Score one completion against a ground truth: 1.0 or 0.0.
pub fn score_one(completion: &str, truth: &str) -> f64 {
    match last_boxed(completion) {
        Some(answer) if answers_match(answer, truth) => 1.0,
        _ => 0.0,
    }
}

/// The ground truth of a sample, `None` when it has none.
fn ground_truth(index: usize, extra: &str, field: &str) -> Result<Option<String>, Error> {
    let extra = Fields::parse(&format!("samples[{index}].extra"), extra)?;
    match extra.raw(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(extra.error(field, "expected a string or a number")),
    }
}

struct MathAccuracy;

impl Guest for MathAccuracy {
    fn score(samples: Vec<Sample>, config: String) -> Result<Vec<Option<f64>>, Error> {
        let cfg = Fields::parse("config", &config)?;
        cfg.only(&["field"])?;
        let field: String = cfg.get_or("field", "answer".to_string())?;
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Ok(ground_truth(i, &s.extra, &field)?.map(|t| score_one(&s.completion, &t)))
            })
            .collect()
    }
}

deepwasm_sdk::export_reward!(MathAccuracy);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction() {
        assert_eq!(
            last_boxed(r"so \boxed{1} then \boxed{\frac{1}{2}}."),
            Some(r"\frac{1}{2}")
        );
        assert_eq!(last_boxed(r"\fbox{7}"), Some("7"));
        assert_eq!(last_boxed(r"\boxed {x^{2}}"), Some("x^{2}"));
        assert_eq!(last_boxed(r"$\boxed 5$"), Some("5"));
        assert_eq!(last_boxed(r"\boxed{\{1,2\}}"), Some(r"\{1,2\}"));
        assert_eq!(last_boxed(r"\boxed{unbalanced"), None);
        assert_eq!(last_boxed("no answer"), None);
        assert_eq!(last_boxed(r"\boxedx{3}"), None);
        assert_eq!(last_boxed(r"\boxed{\boxed{3}}"), Some(r"\boxed{3}"));
        // After </think> only.
        assert_eq!(last_boxed(r"<think>\boxed{1}</think> \boxed{2}"), Some("2"));
        assert_eq!(last_boxed(r"<think>\boxed{1}</think> it is 2"), None);
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize(r" $\dfrac{3}{4}$ "), "3/4");
        assert_eq!(normalize(r"\frac 34"), "3/4");
        assert_eq!(normalize(r"\tfrac{a+b}{2}"), "(a+b)/2");
        assert_eq!(normalize(r"\frac{\pi}{2}"), r"\pi/2");
        assert_eq!(normalize(r"\frac\pi2"), r"\pi/2");
        assert_eq!(normalize(r"\frac{\frac{1}{2}}{3}"), "(1/2)/3");
        assert_eq!(normalize(r"\left( 1, 2 \right)"), "(1,2)");
        assert_eq!(normalize(r"\leftarrow"), r"\leftarrow");
        assert_eq!(normalize(r"90^\circ"), "90");
        assert_eq!(normalize(r"90^{\circ}"), "90");
        assert_eq!(normalize(r"50\%"), "50");
        assert_eq!(normalize("50 %"), "50");
        assert_eq!(normalize(r"\text{Monday}."), "Monday");
        assert_eq!(normalize(r"\mathrm{ kg }"), "kg");
        assert_eq!(normalize("1,234,567.5"), "1234567.5");
        assert_eq!(normalize("1{,}000"), "1000");
        assert_eq!(normalize("1,2"), "1,2");
        assert_eq!(normalize("12,34"), "12,34");
        assert_eq!(normalize(r"10\!000\,000"), "10000000");
        assert_eq!(normalize(r"\boxed{42}"), "42");
        assert_eq!(normalize("\u{2212}3"), "-3");
        assert_eq!(normalize(r"3\ \text{apples}"), "3apples");
    }

    #[test]
    fn rationals() {
        let r = |s: &str| as_rational(s);
        assert_eq!(r("0.75"), r("3/4"));
        assert_eq!(r("6/8"), r("3/4"));
        assert_eq!(r("-3/4"), r("-0.75"));
        assert_eq!(r("3/-4"), r("-0.75"));
        assert_eq!(r("+2"), r("2.000"));
        assert_eq!(r(".5"), r("1/2"));
        assert_eq!(r("5."), r("5"));
        assert!(r("1/0").is_none());
        assert!(r("").is_none() && r("-").is_none() && r(".").is_none());
        assert!(r("1e3").is_none() && r("x").is_none() && r("1/2/3").is_none());
        assert_eq!(
            r("123456789012345678901234567890"),
            Some(BigRational::from_integer(
                "123456789012345678901234567890".parse().unwrap()
            ))
        );
    }

    #[test]
    fn matching() {
        assert!(answers_match(r"\frac{3}{4}", "0.75"));
        assert!(answers_match("6/8", r"\dfrac34"));
        assert!(answers_match(r"-\frac{3}{4}", "-0.75"));
        assert!(answers_match(r"\frac{-3}{4}", "-3/4"));
        assert!(answers_match("1,234", "1234"));
        assert!(answers_match("42.", "42"));
        assert!(answers_match("42.0", "42"));
        assert!(answers_match(r"\text{(B)}", "(B)"));
        assert!(answers_match(r"\pi/2", r"\frac{\pi}{2}"));
        assert!(!answers_match("0.76", "3/4"));
        assert!(!answers_match("", ""));
        assert!(!answers_match("x+1", "1+x"));
    }

    fn sample(completion: &str, extra: &str) -> Sample {
        Sample {
            prompt: String::new(),
            completion: completion.into(),
            completion_tokens: vec![],
            extra: extra.into(),
        }
    }

    #[test]
    fn scoring() {
        let samples = vec![
            sample(
                r"<think>hmm</think>The answer is $\boxed{\frac{1}{2}}$.",
                r#"{"answer": "0.5"}"#,
            ),
            sample(r"\boxed{3}", r#"{"answer": 4}"#),
            sample("no box", r#"{"answer": "4"}"#),
            sample(r"\boxed{3}", "{}"),
            sample(r"\boxed{3}", r#"{"answer": null}"#),
            sample(r"\boxed{2.5}", r#"{"answer": 2.5}"#),
        ];
        let got = MathAccuracy::score(samples, "{}".into()).unwrap();
        assert_eq!(
            got,
            vec![Some(1.0), Some(0.0), Some(0.0), None, None, Some(1.0)]
        );

        let s = vec![sample(r"\boxed{7}", r#"{"gt": "7"}"#)];
        let got = MathAccuracy::score(s, r#"{"field": "gt"}"#.into()).unwrap();
        assert_eq!(got, vec![Some(1.0)]);
    }

    #[test]
    fn errors_name_the_field() {
        let e = MathAccuracy::score(vec![sample("", "{oops")], "{}".into()).unwrap_err();
        assert!(e.message().starts_with("samples[0].extra"), "{e}");
        let e = MathAccuracy::score(vec![sample("", "[]")], "{}".into()).unwrap_err();
        assert!(e.message().starts_with("samples[0].extra"), "{e}");
        let e =
            MathAccuracy::score(vec![sample("", r#"{"answer": [1]}"#)], "{}".into()).unwrap_err();
        assert!(e.message().starts_with("samples[0].extra.answer"), "{e}");
        let e = MathAccuracy::score(vec![], r#"{"field": 3}"#.into()).unwrap_err();
        assert!(e.message().starts_with("config.field"), "{e}");
        let e = MathAccuracy::score(vec![], r#"{"feld": "x"}"#.into()).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)));
    }
}
