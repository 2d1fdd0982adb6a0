//! Each format's markers, call parsing and writing.

use serde_json::{Map, Value};

use super::{
    DEEPSEEK_CALL_BEGIN, DEEPSEEK_CALL_END, DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALLS_END, DEEPSEEK_SEP,
    DeepSeekStyle, HERMES_BEGIN, HERMES_END, LLAMA_PYTHON_TAG, ToolCallFormat,
};
use crate::chat::ToolCall;

/// How far a piece of text matches a marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Match {
    /// The whole marker is there.
    Full,
    /// The text ends inside the marker: more text may complete it.
    Partial,
    No,
}

/// One element of a marker's shape.
#[derive(Clone, Copy)]
enum P {
    Lit(&'static str),
    /// Zero or more whitespace characters.
    Ws,
}

fn literal(rest: &str, lit: &str) -> Match {
    if rest.starts_with(lit) {
        Match::Full
    } else if lit.starts_with(rest) {
        Match::Partial
    } else {
        Match::No
    }
}

fn shape(mut rest: &str, parts: &[P]) -> Match {
    for part in parts {
        match part {
            P::Ws => {
                rest = rest.trim_start();
                if rest.is_empty() {
                    return Match::Partial;
                }
            }
            P::Lit(lit) => match literal(rest, lit) {
                Match::Full => rest = &rest[lit.len()..],
                other => return other,
            },
        }
    }
    Match::Full
}

fn any(matches: impl IntoIterator<Item = Match>) -> Match {
    let mut best = Match::No;
    for m in matches {
        match m {
            Match::Full => return Match::Full,
            Match::Partial => best = Match::Partial,
            Match::No => {}
        }
    }
    best
}

const GENERIC_KEY: &str = "\"tool_calls\"";

fn generic_start(rest: &str) -> Match {
    use P::{Lit, Ws};
    any([
        shape(rest, &[Lit("{"), Ws, Lit(GENERIC_KEY)]),
        shape(rest, &[Lit("```json"), Ws, Lit("{"), Ws, Lit(GENERIC_KEY)]),
        shape(rest, &[Lit("```"), Ws, Lit("{"), Ws, Lit(GENERIC_KEY)]),
    ])
}

fn llama_json_start(rest: &str) -> Match {
    use P::{Lit, Ws};
    any([
        shape(rest, &[Lit("{"), Ws, Lit("\"name\"")]),
        shape(rest, &[Lit("{"), Ws, Lit("\"type\"")]),
        shape(rest, &[Lit("{"), Ws, Lit("\"function\"")]),
        shape(rest, &[Lit("["), Ws, Lit("{"), Ws, Lit("\"name\"")]),
    ])
}

/// The first place in `text` where a call may begin: its byte offset, and
/// whether the marker is complete there (else `text` ends inside it).
/// `at_content_start`: nothing but whitespace has been shown as content
/// yet, so a Llama call may begin at the first visible character.
pub(super) fn find_marker(
    format: ToolCallFormat,
    text: &str,
    at_content_start: bool,
) -> Option<(usize, bool)> {
    let first_visible = text.len() - text.trim_start().len();
    for (i, c) in text.char_indices() {
        let rest = &text[i..];
        let m = match (format, c) {
            (ToolCallFormat::DeepSeek(_), '<') => any([
                literal(rest, DEEPSEEK_CALLS_BEGIN),
                literal(rest, DEEPSEEK_CALL_BEGIN),
            ]),
            (ToolCallFormat::Hermes, '<') => literal(rest, HERMES_BEGIN),
            (ToolCallFormat::Llama, '<') => literal(rest, LLAMA_PYTHON_TAG),
            (ToolCallFormat::Llama, '{' | '[') if at_content_start && i == first_visible => {
                llama_json_start(rest)
            }
            (ToolCallFormat::Generic, '{' | '`') => generic_start(rest),
            _ => continue,
        };
        match m {
            Match::Full => return Some((i, true)),
            Match::Partial => return Some((i, false)),
            Match::No => {}
        }
    }
    None
}

/// Calls read from the start of some text.
struct Found {
    /// Bytes of the text they took.
    consumed: usize,
    /// `(name, arguments as compact JSON)`.
    calls: Vec<(String, String)>,
    /// Text inside what was taken that is not a call (broken calls among
    /// good ones in a DeepSeek section).
    leftover: String,
}

/// Parse `tail`, which starts with a complete call marker: the text that
/// is not a call (as written), and the calls. `cut`: the reply was cut
/// short (a length limit), so a last call that does not parse is a call
/// cut off, not text, and is dropped.
pub(super) fn parse_tail(
    format: ToolCallFormat,
    tail: &str,
    cut: bool,
) -> (String, Vec<(String, String)>) {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = tail;
    let mut first = true;
    loop {
        match find_marker(format, rest, first) {
            Some((at, true)) => {
                content.push_str(&rest[..at]);
                rest = &rest[at..];
                match parse_one(format, rest) {
                    Some(found) if found.consumed > 0 => {
                        calls.extend(found.calls);
                        content.push_str(&found.leftover);
                        rest = &rest[found.consumed..];
                    }
                    _ => {
                        let n = rest.chars().next().map_or(0, char::len_utf8);
                        if cut && !matches!(find_marker(format, &rest[n..], false), Some((_, true)))
                        {
                            // The last call, cut off by the limit.
                            break;
                        }
                        // Not a call after all: its first character is
                        // text, and the search goes on after it.
                        content.push_str(&rest[..n]);
                        rest = &rest[n..];
                    }
                }
            }
            _ => {
                content.push_str(rest);
                break;
            }
        }
        first = false;
    }
    (content, calls)
}

fn parse_one(format: ToolCallFormat, text: &str) -> Option<Found> {
    match format {
        ToolCallFormat::DeepSeek(_) => deepseek(text),
        ToolCallFormat::Hermes => hermes(text),
        ToolCallFormat::Llama => llama(text),
        ToolCallFormat::Generic => generic(text),
    }
}

fn single(consumed: usize, call: (String, String)) -> Found {
    Found {
        consumed,
        calls: vec![call],
        leftover: String::new(),
    }
}

/// `<tool_call>` JSON up to `</tool_call>` (or the next `<tool_call>`, or
/// the end).
fn hermes(text: &str) -> Option<Found> {
    let start = HERMES_BEGIN.len();
    let after = text.get(start..)?;
    let close = after.find(HERMES_END);
    let next = after.find(HERMES_BEGIN);
    let (body, consumed) = match (close, next) {
        (Some(c), n) if n.is_none_or(|n| c < n) => (&after[..c], start + c + HERMES_END.len()),
        (_, Some(n)) => (&after[..n], start + n),
        (_, None) => (after, text.len()),
    };
    let value: Value = serde_json::from_str(strip_fence(body)).ok()?;
    let call = call_from_object(&value, &["arguments", "parameters"])?;
    Some(single(consumed, call))
}

/// Llama: `<|python_tag|>`, then call objects (or arrays of them)
/// separated by whitespace or `;`.
fn llama(text: &str) -> Option<Found> {
    let mut pos = if text.starts_with(LLAMA_PYTHON_TAG) {
        LLAMA_PYTHON_TAG.len()
    } else {
        0
    };
    let mut calls = Vec::new();
    let mut end = 0;
    loop {
        let rest = &text[pos..];
        let skipped = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_whitespace() || c == ';')
                .len();
        let at = pos + skipped;
        if at >= text.len() {
            break;
        }
        let mut values = serde_json::Deserializer::from_str(&text[at..]).into_iter::<Value>();
        let Some(Ok(value)) = values.next() else {
            break;
        };
        let found = match &value {
            Value::Array(items) if !items.is_empty() => items
                .iter()
                .map(|item| call_from_object(item, &["parameters", "arguments"]))
                .collect::<Option<Vec<_>>>(),
            other => call_from_object(other, &["parameters", "arguments"]).map(|c| vec![c]),
        };
        let Some(found) = found else {
            break;
        };
        calls.extend(found);
        pos = at + values.byte_offset();
        end = pos;
    }
    (!calls.is_empty()).then_some(Found {
        consumed: end,
        calls,
        leftover: String::new(),
    })
}

/// Generic: an optional code fence, `{"tool_calls": [...]}`, the fence's
/// end.
fn generic(text: &str) -> Option<Found> {
    let mut pos = 0;
    let fenced = text.starts_with("```");
    if fenced {
        pos = 3;
        if text[pos..].starts_with("json") {
            pos += 4;
        }
        pos += text[pos..].len() - text[pos..].trim_start().len();
    }
    let mut values = serde_json::Deserializer::from_str(&text[pos..]).into_iter::<Value>();
    let value = values.next()?.ok()?;
    let mut consumed = pos + values.byte_offset();
    let object = value.as_object()?;
    let (key, list) = object.iter().next()?;
    if key != "tool_calls" {
        return None;
    }
    let calls = match list {
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| call_from_object(item, &["arguments", "parameters"]))
            .collect::<Option<Vec<_>>>()?,
        _ => return None,
    };
    if fenced {
        let after = &text[consumed..];
        let trimmed = after.trim_start();
        if trimmed.starts_with("```") {
            consumed += after.len() - trimmed.len() + 3;
        }
    }
    Some(Found {
        consumed,
        calls,
        leftover: String::new(),
    })
}

/// DeepSeek: a `<｜tool▁calls▁begin｜>` section up to
/// `<｜tool▁calls▁end｜>` (or the end) with one or more call blocks, or a
/// call block on its own.
fn deepseek(text: &str) -> Option<Found> {
    if let Some(after) = text.strip_prefix(DEEPSEEK_CALLS_BEGIN) {
        let start = DEEPSEEK_CALLS_BEGIN.len();
        let (mut body, consumed) = match after.find(DEEPSEEK_CALLS_END) {
            Some(e) => (&after[..e], start + e + DEEPSEEK_CALLS_END.len()),
            None => (after, text.len()),
        };
        let mut calls = Vec::new();
        let mut leftover = String::new();
        loop {
            let Some(at) = body.find(DEEPSEEK_CALL_BEGIN) else {
                if !body.trim().is_empty() {
                    leftover.push_str(body);
                }
                break;
            };
            let between = &body[..at];
            if !between.trim().is_empty() {
                leftover.push_str(between);
            }
            let inner_start = at + DEEPSEEK_CALL_BEGIN.len();
            let (inner, taken) = call_block(&body[inner_start..]);
            let block_end = inner_start + taken;
            match deepseek_call(inner) {
                Some(call) => calls.push(call),
                None => leftover.push_str(&body[at..block_end]),
            }
            body = &body[block_end..];
        }
        (!calls.is_empty()).then_some(Found {
            consumed,
            calls,
            leftover,
        })
    } else {
        let after = text.strip_prefix(DEEPSEEK_CALL_BEGIN)?;
        let (inner, taken) = call_block(after);
        let call = deepseek_call(inner)?;
        let mut consumed = DEEPSEEK_CALL_BEGIN.len() + taken;
        // A closing `<｜tool▁calls▁end｜>` without its opening.
        let rest = &text[consumed..];
        let trimmed = rest.trim_start();
        if trimmed.starts_with(DEEPSEEK_CALLS_END) {
            consumed += rest.len() - trimmed.len() + DEEPSEEK_CALLS_END.len();
        }
        Some(single(consumed, call))
    }
}

/// The inside of a call block that starts `text` (just after
/// `<｜tool▁call▁begin｜>`), and the bytes the block takes: up to and with
/// `<｜tool▁call▁end｜>`, or up to the next call or the end of the calls.
fn call_block(text: &str) -> (&str, usize) {
    let end = text.find(DEEPSEEK_CALL_END);
    let stop = [
        text.find(DEEPSEEK_CALL_BEGIN),
        text.find(DEEPSEEK_CALLS_END),
    ]
    .into_iter()
    .flatten()
    .min();
    match (end, stop) {
        (Some(e), s) if s.is_none_or(|s| e < s) => (&text[..e], e + DEEPSEEK_CALL_END.len()),
        (_, Some(s)) => (&text[..s], s),
        (_, None) => (text, text.len()),
    }
}

/// One DeepSeek call: `[function]<｜tool▁sep｜>NAME\nARGS` or
/// `NAME<｜tool▁sep｜>ARGS`, ARGS in an optional code fence.
fn deepseek_call(inner: &str) -> Option<(String, String)> {
    let (head, rest) = inner.split_once(DEEPSEEK_SEP)?;
    let typed = || {
        let kind = head.trim();
        if !(kind.is_empty() || kind == "function") {
            return None;
        }
        let (name, args) = rest.split_once('\n')?;
        named_call(name, args)
    };
    typed().or_else(|| named_call(head, rest))
}

fn named_call(name: &str, args: &str) -> Option<(String, String)> {
    let name = name.trim();
    if !valid_name(name) {
        return None;
    }
    let args: Value = serde_json::from_str(strip_fence(args)).ok()?;
    if !args.is_object() {
        return None;
    }
    Some((name.to_owned(), serde_json::to_string(&args).ok()?))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>{}\"'`".contains(c))
}

/// `text` trimmed, without a surrounding ```` ``` ```` fence (with or
/// without a language).
fn strip_fence(text: &str) -> &str {
    let text = text.trim();
    let Some(inner) = text.strip_prefix("```") else {
        return text;
    };
    let inner = match inner.find('\n') {
        Some(nl) => &inner[nl + 1..],
        None => inner.strip_prefix("json").unwrap_or(inner),
    };
    inner.strip_suffix("```").unwrap_or(inner).trim()
}

/// `{"name": …, KEY: {…}}` with KEY the first of `keys` present; arguments
/// may also be JSON text of an object, or absent (no arguments). An
/// OpenAI-style `{"type": "function", "function": {…}}` is read inside.
fn call_from_object(value: &Value, keys: &[&str]) -> Option<(String, String)> {
    let object = value.as_object()?;
    if !object.contains_key("name")
        && let Some(inner @ Value::Object(_)) = object.get("function")
    {
        return call_from_object(inner, keys);
    }
    let name = object.get("name")?.as_str()?.trim();
    if !valid_name(name) {
        return None;
    }
    let args = match keys.iter().find_map(|k| object.get(*k)) {
        None => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(Value::String(text)) => match serde_json::from_str(text).ok()? {
            v @ Value::Object(_) => v,
            _ => return None,
        },
        Some(_) => return None,
    };
    Some((name.to_owned(), serde_json::to_string(&args).ok()?))
}

/// The text `format` writes for `calls`.
pub(super) fn write_calls(format: ToolCallFormat, calls: &[ToolCall]) -> String {
    let quoted = |name: &str| serde_json::to_string(name).unwrap_or_default();
    let args = |call: &ToolCall| {
        let a = call.arguments.trim();
        if a.is_empty() { "{}" } else { a }.to_owned()
    };
    match format {
        ToolCallFormat::DeepSeek(style) => {
            let mut out = String::from(DEEPSEEK_CALLS_BEGIN);
            for (i, call) in calls.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                out.push_str(DEEPSEEK_CALL_BEGIN);
                match style {
                    DeepSeekStyle::Typed | DeepSeekStyle::Untyped => {
                        if style == DeepSeekStyle::Typed {
                            out.push_str("function");
                        }
                        out.push_str(DEEPSEEK_SEP);
                        out.push_str(&call.name);
                        out.push_str("\n```json\n");
                        out.push_str(&args(call));
                        out.push_str("\n```");
                    }
                    DeepSeekStyle::NameFirst => {
                        out.push_str(&call.name);
                        out.push_str(DEEPSEEK_SEP);
                        out.push_str(&args(call));
                    }
                }
                out.push_str(DEEPSEEK_CALL_END);
            }
            out.push_str(DEEPSEEK_CALLS_END);
            out
        }
        ToolCallFormat::Hermes => calls
            .iter()
            .map(|call| {
                format!(
                    "{HERMES_BEGIN}\n{{\"name\": {}, \"arguments\": {}}}\n{HERMES_END}",
                    quoted(&call.name),
                    args(call)
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        ToolCallFormat::Llama => calls
            .iter()
            .map(|call| {
                format!(
                    "{{\"name\": {}, \"parameters\": {}}}",
                    quoted(&call.name),
                    args(call)
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        ToolCallFormat::Generic => {
            let list = calls
                .iter()
                .map(|call| {
                    format!(
                        "{{\"name\": {}, \"arguments\": {}}}",
                        quoted(&call.name),
                        args(call)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("{{\"tool_calls\": [{list}]}}")
        }
    }
}
