//! Properties of the parsers of model output, for any output: nothing
//! panics, what is found is well formed, and the streaming splitter gives
//! what [`ToolCallFormat::parse`] gives however the reply is cut into
//! deltas.

use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Map, Value};

use super::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // A failure is kept as a regular test, not in a file beside the source.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn formats() -> impl Strategy<Value = ToolCallFormat> {
    select(vec![
        ToolCallFormat::DeepSeek(DeepSeekStyle::Typed),
        ToolCallFormat::DeepSeek(DeepSeekStyle::Untyped),
        ToolCallFormat::DeepSeek(DeepSeekStyle::NameFirst),
        ToolCallFormat::Hermes,
        ToolCallFormat::Llama,
        ToolCallFormat::Generic,
    ])
}

/// Every format's markers and the pieces of JSON calls are made of.
const MARKERS: &[&str] = &[
    THINK_BEGIN,
    THINK_END,
    DEEPSEEK_CALLS_BEGIN,
    DEEPSEEK_CALLS_END,
    DEEPSEEK_CALL_BEGIN,
    DEEPSEEK_CALL_END,
    DEEPSEEK_SEP,
    HERMES_BEGIN,
    HERMES_END,
    LLAMA_PYTHON_TAG,
    "function",
    "```json\n",
    "```",
    "{\"tool_calls\": [",
    "{\"name\": \"calc\", \"arguments\": ",
    "{\"name\": \"calc\", \"parameters\": ",
    "{\"type\": \"function\", \"function\": ",
    "{\"x\": 1}",
    "\"{\\\"x\\\": 1}\"",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\",
    ",",
    ":",
    ";",
    "\n",
    " ",
    "\t",
];

/// Keys that the call shapes look for, and a few that they do not.
fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "name",
            "arguments",
            "parameters",
            "tool_calls",
            "function",
            "type",
            "x",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,4}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(Value::from),
        select(vec!["calc", "get_weather", "", " ", "a b", "<x>"]).prop_map(Value::from),
        "\\PC{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Calls as `format` (mostly) or another format writes them, with any
/// name and any JSON as arguments.
fn written_calls(format: ToolCallFormat) -> impl Strategy<Value = String> {
    let name = prop_oneof![
        select(vec!["calc", "get_weather", "a.b-c_d"]).prop_map(str::to_owned),
        "\\PC{0,6}",
    ];
    let call =
        (name, json_value()).prop_map(|(name, args)| ToolCall::new("", name, args.to_string()));
    let writer = prop_oneof![3 => Just(format), 1 => formats()];
    (writer, prop::collection::vec(call, 1..3)).prop_map(|(f, calls)| f.write_calls(&calls))
}

/// One piece of a reply: a marker, the start of one (text that may be
/// completed by the next delta), JSON, calls, or any text.
fn fragment(format: ToolCallFormat) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(MARKERS).prop_map(str::to_owned),
        3 => written_calls(format),
        2 => (select(MARKERS), any::<Index>()).prop_map(|(m, at)| {
            let n = m.chars().count();
            m.chars().take(at.index(n.max(1))).collect()
        }),
        2 => json_value().prop_map(|v| v.to_string()),
        2 => "\\PC{0,12}",
        1 => any::<String>(),
    ]
}

/// A format and a reply made of fragments: most of what a model could
/// write that comes near a call in that format, plus text that has nothing
/// to do with one.
fn reply() -> impl Strategy<Value = (ToolCallFormat, String)> {
    formats().prop_flat_map(|format| {
        let parts = prop::collection::vec(fragment(format), 0..16);
        (Just(format), parts.prop_map(|parts| parts.concat()))
    })
}

/// `text` cut at character boundaries chosen by `cuts`.
fn cut(text: &str, cuts: &[Index]) -> Vec<String> {
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let mut at: Vec<usize> = cuts.iter().map(|c| bounds[c.index(bounds.len())]).collect();
    at.push(0);
    at.push(text.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| text[w[0]..w[1]].to_owned()).collect()
}

/// What a splitter shows over a whole reply: (content, reasoning).
fn shown(pieces: impl IntoIterator<Item = Piece>) -> (String, String) {
    let (mut content, mut reasoning) = (String::new(), String::new());
    for piece in pieces {
        match piece {
            Piece::Content(t) => content.push_str(&t),
            Piece::Reasoning(t) => reasoning.push_str(&t),
        }
    }
    (content, reasoning)
}

/// What [`ToolCallFormat::parse`] promises of its result, whatever the text.
fn check_parsed(parsed: &ParsedOutput) -> Result<(), TestCaseError> {
    prop_assert_eq!(parsed.content.trim(), parsed.content.as_str());
    if let Some(reasoning) = &parsed.reasoning {
        prop_assert!(!reasoning.is_empty());
        prop_assert_eq!(reasoning.trim(), reasoning.as_str());
    }
    for (i, call) in parsed.tool_calls.iter().enumerate() {
        prop_assert_eq!(&call.id, &format!("call_{i}"));
        prop_assert!(!call.name.is_empty() && call.name.trim() == call.name);
        let args: Value = serde_json::from_str(&call.arguments)
            .map_err(|e| TestCaseError::fail(format!("arguments {:?}: {e}", call.arguments)))?;
        prop_assert!(args.is_object(), "arguments {:?}", call.arguments);
        prop_assert_eq!(
            serde_json::to_string(&args).unwrap(),
            call.arguments.as_str()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn parse_takes_any_text(text in any::<String>(), format in formats(), opened in any::<bool>()) {
        check_parsed(&format.parse(&text, opened))?;
    }

    #[test]
    fn parse_takes_any_mix_of_markers_and_json(
        (format, text) in reply(),
        opened in any::<bool>(),
    ) {
        check_parsed(&format.parse(&text, opened))?;
    }

    #[test]
    fn streaming_in_any_deltas_gives_what_parse_gives(
        (format, text) in reply(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
        opened in any::<bool>(),
    ) {
        let expected = format.parse(&text, opened);
        let deltas = cut(&text, &cuts);

        let mut whole = OutputSplitter::new(format, opened);
        whole.push(&text);
        let mut splitter = OutputSplitter::new(format, opened);
        let mut pieces = Vec::new();
        for delta in &deltas {
            pieces.extend(splitter.push(delta));
        }
        prop_assert_eq!(splitter.call_start(), whole.call_start(), "{:?}", deltas);
        let (rest, calls) = splitter.finish();
        pieces.extend(rest);
        let (content, reasoning) = shown(pieces);
        prop_assert_eq!(&content, &expected.content, "{:?}", deltas);
        prop_assert_eq!(
            (!reasoning.is_empty()).then_some(reasoning),
            expected.reasoning,
            "{:?}",
            deltas
        );
        prop_assert_eq!(calls, expected.tool_calls, "{:?}", deltas);
    }

    #[test]
    fn the_reasoning_splitter_in_any_deltas_gives_what_it_gives_whole(
        (_, text) in reply(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
        opened in any::<bool>(),
    ) {
        let mut whole = OutputSplitter::reasoning_only(opened);
        let mut expected = whole.push(&text);
        let (rest, calls) = whole.finish();
        prop_assert!(calls.is_empty());
        expected.extend(rest);

        let mut splitter = OutputSplitter::reasoning_only(opened);
        let mut pieces = Vec::new();
        for delta in cut(&text, &cuts) {
            pieces.extend(splitter.push(&delta));
        }
        let (rest, calls) = splitter.finish();
        prop_assert!(calls.is_empty());
        pieces.extend(rest);
        prop_assert_eq!(shown(pieces), shown(expected));
    }

    #[test]
    fn template_readers_take_any_text(
        template in prop_oneof![reply().prop_map(|(_, t)| t), any::<String>(), "[{}%\\PC]{0,40}"],
    ) {
        let _ = ToolCallFormat::from_template(&template);
        let _ = deepseek_style(&template);
        let _ = jinja_uses_variable(&template, "tools");
        let _ = prompt_opens_reasoning(&template);
    }
}
