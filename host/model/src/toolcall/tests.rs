//! The specification of tool-call handling, as tests. Marker strings and
//! call shapes come from the real templates in the model cache.

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::{Value, json};

use super::*;
use crate::chat::{ChatMessage, ChatTemplate, ToolCall, ToolSpec};
use crate::tokenizer::Tokenizer;

// ---------------------------------------------------------------------------
// Model files

fn models_dir() -> PathBuf {
    let base = std::env::var_os("DEEPWASM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/deepwasm")
        });
    base.join("models")
}

fn model_file(name: &str) -> PathBuf {
    let path = models_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup",
        path.display()
    );
    path
}

fn tokenizer_config(dir: &str) -> Value {
    let path = model_file(dir).join("tokenizer_config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/setup", path.display()));
    serde_json::from_str(&text).expect("tokenizer_config.json is JSON")
}

fn template_source(dir: &str) -> String {
    tokenizer_config(dir)["chat_template"]
        .as_str()
        .expect("a chat template")
        .to_owned()
}

fn r1_template() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| template_source("deepseek-r1-tokenizer"))
}

fn qwen3_template() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| template_source("qwen3-tokenizer"))
}

fn r1_tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        Tokenizer::from_hf_dir(&model_file("deepseek-r1-tokenizer")).expect("R1 tokenizer")
    })
}

/// SmolLM2's tokenizer and chat template, from its GGUF file.
fn smollm2() -> &'static (Tokenizer, String) {
    static T: OnceLock<(Tokenizer, String)> = OnceLock::new();
    T.get_or_init(|| {
        let path = model_file("SmolLM2-135M-Instruct.Q4_1.gguf");
        let mut file = std::fs::File::open(&path).expect("open the GGUF file");
        let content =
            candle_core::quantized::gguf_file::Content::read(&mut file).expect("GGUF metadata");
        let template = content.metadata["tokenizer.chat_template"]
            .to_string()
            .expect("a chat template")
            .clone();
        let tokenizer = Tokenizer::from_gguf(&content.metadata).expect("SmolLM2 tokenizer");
        (tokenizer, template)
    })
}

/// The calls part of an assistant turn as the real template renders it.
/// `content` is the turn's content: DeepSeek's template tests for `None`,
/// Qwen's needs a string.
fn rendered_calls(
    config_dir: &str,
    calls: &[ToolCall],
    content: Option<&str>,
    start: &str,
    end: &str,
) -> String {
    let template = ChatTemplate::from_tokenizer_config(&tokenizer_config(config_dir))
        .unwrap()
        .unwrap();
    let messages = [
        ChatMessage::user("What is 2+2, and the weather in Paris?"),
        ChatMessage {
            content: content.map(str::to_owned),
            ..ChatMessage::tool_calls(calls.to_vec())
        },
        ChatMessage::tool("call_0", "4"),
    ];
    let prompt = template.render(&messages, &[calculator()], false).unwrap();
    // After the user's turn: the tools' description before it may show
    // the markers too.
    let asked = prompt.find("What is 2+2").expect("the user's turn");
    let from = prompt[asked..].find(start).expect("the calls start") + asked;
    let to = prompt[from..].find(end).expect("the calls end") + from + end.len();
    prompt[from..to].to_owned()
}

// ---------------------------------------------------------------------------
// Tools and helpers

fn calculator() -> ToolSpec {
    ToolSpec {
        name: "calculator".into(),
        description: "Evaluate an arithmetic expression.".into(),
        parameters: json!({
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        }),
    }
}

fn weather() -> ToolSpec {
    ToolSpec {
        name: "get_weather".into(),
        description: "Current weather in a city.".into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        }),
    }
}

fn call(id: &str, name: &str, args: &str) -> ToolCall {
    ToolCall::new(id, name, args)
}

const R1: ToolCallFormat = ToolCallFormat::DeepSeek(DeepSeekStyle::Typed);

fn all_formats() -> [ToolCallFormat; 6] {
    [
        R1,
        ToolCallFormat::DeepSeek(DeepSeekStyle::Untyped),
        ToolCallFormat::DeepSeek(DeepSeekStyle::NameFirst),
        ToolCallFormat::Hermes,
        ToolCallFormat::Llama,
        ToolCallFormat::Generic,
    ]
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::validator_for(schema).expect("a valid JSON Schema")
}

// ---------------------------------------------------------------------------
// The markers are the templates' own

#[test]
fn markers_are_spelled_as_in_the_real_templates() {
    let r1 = r1_template();
    for marker in [
        DEEPSEEK_CALLS_BEGIN,
        DEEPSEEK_CALLS_END,
        DEEPSEEK_CALL_BEGIN,
        DEEPSEEK_CALL_END,
        DEEPSEEK_SEP,
        THINK_END,
    ] {
        assert!(r1.contains(marker), "R1's template has {marker}");
    }
    // Fullwidth vertical bars and lower one-eighth blocks, not ASCII.
    assert_eq!(
        DEEPSEEK_CALL_BEGIN,
        "<\u{ff5c}tool\u{2581}call\u{2581}begin\u{ff5c}>"
    );
    // The R1 tokenizer has them as single tokens.
    for marker in [
        DEEPSEEK_CALLS_BEGIN,
        DEEPSEEK_CALL_BEGIN,
        DEEPSEEK_SEP,
        THINK_BEGIN,
    ] {
        let ids = r1_tokenizer().encode(marker, false).unwrap();
        assert_eq!(ids.len(), 1, "{marker} is one token");
    }
    let qwen = qwen3_template();
    for marker in [HERMES_BEGIN, HERMES_END, THINK_BEGIN, THINK_END] {
        assert!(qwen.contains(marker), "Qwen3's template has {marker}");
    }
}

// ---------------------------------------------------------------------------
// Parsing each format's real shape

#[test]
fn parses_deepseek_r1_calls_as_its_template_writes_them() {
    let calls = [
        call("call_0", "calculator", r#"{"expression": "2+2"}"#),
        call("call_1", "get_weather", r#"{"city": "Paris"}"#),
    ];
    let text = rendered_calls(
        "deepseek-r1-tokenizer",
        &calls,
        None,
        DEEPSEEK_CALLS_BEGIN,
        DEEPSEEK_CALLS_END,
    );
    // The shape, as the template writes it.
    assert_eq!(
        text,
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>calculator\n```json\n{\"expression\": \"2+2\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
    );
    let out = R1.parse(&text, false);
    assert_eq!(out.content, "");
    assert_eq!(out.reasoning, None);
    assert_eq!(
        out.tool_calls,
        [
            call("call_0", "calculator", r#"{"expression":"2+2"}"#),
            call("call_1", "get_weather", r#"{"city":"Paris"}"#),
        ]
    );
    // What R1 itself generates: reasoning first, text before the calls,
    // EOS stripped by the engine.
    let generated = format!("<think>\nThe user wants a sum.\n</think>\n\nI'll compute it.{text}");
    let out = R1.parse(&generated, false);
    assert_eq!(out.reasoning.as_deref(), Some("The user wants a sum."));
    assert_eq!(out.content, "I'll compute it.");
    assert_eq!(out.tool_calls.len(), 2);
}

#[test]
fn parses_the_deepseek_variants_without_the_function_type() {
    let untyped = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜><｜tool▁sep｜>calculator\n```json\n{\"expression\": \"1+1\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    let name_first = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>calculator<｜tool▁sep｜>{\"expression\": \"1+1\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    let fenced_name_first = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>calculator<｜tool▁sep｜>```json\n{\"expression\": \"1+1\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    // A call block without the outer begin, as models sometimes write.
    let bare = "<｜tool▁call▁begin｜>function<｜tool▁sep｜>calculator\n```json\n{\"expression\": \"1+1\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    let expected = [call("call_0", "calculator", r#"{"expression":"1+1"}"#)];
    for style in [
        DeepSeekStyle::Typed,
        DeepSeekStyle::Untyped,
        DeepSeekStyle::NameFirst,
    ] {
        let format = ToolCallFormat::DeepSeek(style);
        for text in [untyped, name_first, fenced_name_first, bare] {
            let out = format.parse(text, false);
            assert_eq!(out.tool_calls, expected, "{style:?}: {text}");
            assert_eq!(out.content, "", "{style:?}: {text}");
        }
    }
}

#[test]
fn parses_qwen_calls_as_its_template_writes_them() {
    let calls = [
        call("call_0", "calculator", r#"{"expression": "2+2"}"#),
        call(
            "call_1",
            "get_weather",
            r#"{"city": "Paris", "unit": "celsius"}"#,
        ),
    ];
    let text = rendered_calls(
        "qwen3-tokenizer",
        &calls,
        Some(""),
        HERMES_BEGIN,
        "</tool_call><|im_end|>",
    );
    let text = text.strip_suffix("<|im_end|>").unwrap();
    assert_eq!(
        text,
        "<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": \"2+2\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>"
    );
    let out = ToolCallFormat::Hermes.parse(text, false);
    assert_eq!(
        out.tool_calls,
        [
            call("call_0", "calculator", r#"{"expression":"2+2"}"#),
            call(
                "call_1",
                "get_weather",
                r#"{"city":"Paris","unit":"celsius"}"#
            ),
        ]
    );
    assert_eq!(out.content, "");

    // Qwen3 thinking, then text, then a call; the last call unclosed (the
    // model stopped at EOS right after the JSON).
    let generated = "<think>\nNeed the calculator.\n</think>\n\nLet me check.\n<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": \"6*7\"}}";
    let out = ToolCallFormat::Hermes.parse(generated, false);
    assert_eq!(out.reasoning.as_deref(), Some("Need the calculator."));
    assert_eq!(out.content, "Let me check.");
    assert_eq!(
        out.tool_calls,
        [call("call_0", "calculator", r#"{"expression":"6*7"}"#)]
    );
}

#[test]
fn parses_llama_json_calls() {
    let llama = ToolCallFormat::Llama;
    let expected = [call("call_0", "calculator", r#"{"expression":"2+2"}"#)];
    for text in [
        r#"{"name": "calculator", "parameters": {"expression": "2+2"}}"#,
        "<|python_tag|>{\"name\": \"calculator\", \"parameters\": {\"expression\": \"2+2\"}}",
        "\n\n{\"name\": \"calculator\", \"arguments\": {\"expression\": \"2+2\"}}",
        r#"{"type": "function", "function": {"name": "calculator", "parameters": {"expression": "2+2"}}}"#,
        r#"[{"name": "calculator", "parameters": {"expression": "2+2"}}]"#,
    ] {
        let out = llama.parse(text, false);
        assert_eq!(out.tool_calls, expected, "{text}");
        assert_eq!(out.content, "", "{text}");
    }
    let out = llama.parse(
        r#"{"name": "calculator", "parameters": {"expression": "1"}}; {"name": "get_weather", "parameters": {"city": "Oslo"}}"#,
        false,
    );
    assert_eq!(
        out.tool_calls,
        [
            call("call_0", "calculator", r#"{"expression":"1"}"#),
            call("call_1", "get_weather", r#"{"city":"Oslo"}"#),
        ]
    );
    // JSON in the middle of prose is prose; JSON that is not a call is
    // content.
    for text in [
        r#"The answer is {"name": "calculator", "parameters": {}}."#,
        r#"{"answer": 4}"#,
    ] {
        let out = llama.parse(text, false);
        assert!(out.tool_calls.is_empty(), "{text}");
        assert_eq!(out.content, text);
    }
}

#[test]
fn parses_the_generic_json_form() {
    let generic = ToolCallFormat::Generic;
    let expected = [
        call("call_0", "calculator", r#"{"expression":"2+2"}"#),
        call("call_1", "get_weather", r#"{"city":"Paris"}"#),
    ];
    let bare = r#"{"tool_calls": [{"name": "calculator", "arguments": {"expression": "2+2"}}, {"name": "get_weather", "arguments": {"city": "Paris"}}]}"#;
    let fenced = format!("```json\n{bare}\n```");
    let with_text = format!("I will use two tools.\n{fenced}");
    for text in [bare, fenced.as_str(), with_text.as_str()] {
        let out = generic.parse(text, false);
        assert_eq!(out.tool_calls, expected, "{text}");
    }
    assert_eq!(
        generic.parse(&with_text, false).content,
        "I will use two tools."
    );
    // Other JSON is content, and so is an empty list of calls.
    for text in [
        r#"{"answer": 4}"#,
        r#"{"tool_calls": []}"#,
        "```json\n{\"x\": 1}\n```",
    ] {
        let out = generic.parse(text, false);
        assert!(out.tool_calls.is_empty(), "{text}");
        assert_eq!(out.content, text);
    }
}

#[test]
fn written_calls_parse_back_in_every_format() {
    let calls = [
        call("call_0", "calculator", r#"{"expression":"2+2"}"#),
        call(
            "call_1",
            "get_weather",
            r#"{"city":"Paris","unit":"celsius"}"#,
        ),
    ];
    for format in all_formats() {
        let text = format.write_calls(&calls);
        let out = format.parse(&text, false);
        assert_eq!(out.tool_calls, calls, "{format:?}: {text}");
        assert_eq!(out.content, "", "{format:?}");
    }
}

#[test]
fn arguments_may_be_json_text_and_may_be_absent() {
    let out = ToolCallFormat::Hermes.parse(
        "<tool_call>\n{\"name\": \"calculator\", \"arguments\": \"{\\\"expression\\\": \\\"3\\\"}\"}\n</tool_call>",
        false,
    );
    assert_eq!(
        out.tool_calls,
        [call("call_0", "calculator", r#"{"expression":"3"}"#)]
    );
    let out = ToolCallFormat::Hermes.parse("<tool_call>\n{\"name\": \"now\"}\n</tool_call>", false);
    assert_eq!(out.tool_calls, [call("call_0", "now", "{}")]);
}

// ---------------------------------------------------------------------------
// Reasoning

#[test]
fn reasoning_is_separated() {
    let f = ToolCallFormat::Hermes;
    let out = f.parse("<think>\nHmm.\n</think>\n\nHello!", false);
    assert_eq!(out.reasoning.as_deref(), Some("Hmm."));
    assert_eq!(out.content, "Hello!");

    // The prompt opened <think>: the reply starts inside the reasoning.
    let out = f.parse("Hmm, 2+2.\n</think>\n\nIt is 4.", true);
    assert_eq!(out.reasoning.as_deref(), Some("Hmm, 2+2."));
    assert_eq!(out.content, "It is 4.");
    // ... and a repeated <think> is not part of it.
    let out = f.parse("<think>\nHmm.</think>4", true);
    assert_eq!(out.reasoning.as_deref(), Some("Hmm."));
    assert_eq!(out.content, "4");

    // Reasoning cut off by the token limit is all reasoning.
    let out = f.parse("<think>\nStill thinking", false);
    assert_eq!(out.reasoning.as_deref(), Some("Still thinking"));
    assert_eq!(out.content, "");
    let out = f.parse("Still thinking", true);
    assert_eq!(out.reasoning.as_deref(), Some("Still thinking"));

    // Without an opening, a </think> later on is just text, and so is a
    // <think> that is not at the start.
    let out = f.parse("Use </think> to close.", false);
    assert_eq!(out.reasoning, None);
    assert_eq!(out.content, "Use </think> to close.");
    let out = f.parse("Write <think> first.", false);
    assert_eq!(out.content, "Write <think> first.");

    // Empty reasoning (Qwen3 with thinking off) is none.
    let out = f.parse("<think>\n\n</think>\n\nHi.", false);
    assert_eq!(out.reasoning, None);
    assert_eq!(out.content, "Hi.");
}

#[test]
fn calls_inside_the_reasoning_are_not_calls() {
    let text = "<think>\nMaybe <tool_call>\n{\"name\": \"calculator\", \"arguments\": {}}\n</tool_call>?\n</think>\nNo tool needed.";
    let out = ToolCallFormat::Hermes.parse(text, false);
    assert!(out.tool_calls.is_empty());
    assert!(out.reasoning.unwrap().contains("<tool_call>"));
    assert_eq!(out.content, "No tool needed.");
}

#[test]
fn reasoning_and_calls_together() {
    let calls = [call("call_0", "calculator", r#"{"expression":"2+2"}"#)];
    for format in all_formats() {
        let text = format!(
            "<think>\nI need the calculator.\n</think>\n\n{}",
            format.write_calls(&calls)
        );
        let out = format.parse(&text, false);
        assert_eq!(
            out.reasoning.as_deref(),
            Some("I need the calculator."),
            "{format:?}"
        );
        assert_eq!(out.tool_calls, calls, "{format:?}");
        assert_eq!(out.content, "", "{format:?}");
        // The same with the prompt having opened the reasoning.
        let opened = text.strip_prefix("<think>").unwrap();
        assert_eq!(format.parse(opened, true), out, "{format:?}");
    }
}

#[test]
fn prompt_opening_reasoning_is_recognised() {
    assert!(prompt_opens_reasoning(
        "<｜User｜>Hi<｜Assistant｜><think>\n"
    ));
    assert!(prompt_opens_reasoning("<|im_start|>assistant\n<think>\n"));
    assert!(!prompt_opens_reasoning(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    ));
    assert!(!prompt_opens_reasoning("<｜User｜>Hi<｜Assistant｜>"));
}

// ---------------------------------------------------------------------------
// Broken calls and ids

#[test]
fn broken_calls_stay_in_the_content() {
    let cases = [
        (
            ToolCallFormat::Hermes,
            "Checking.\n<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": 2+2}}\n</tool_call>",
        ),
        (
            ToolCallFormat::Hermes,
            "<tool_call>\n{\"arguments\": {}}\n</tool_call>",
        ),
        (ToolCallFormat::Hermes, "<tool_call>\n{\"name\": \"calc"),
        (
            R1,
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>calculator\n```json\n{\"expression\": \n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        ),
        (R1, "<｜tool▁calls▁begin｜>nothing here<｜tool▁calls▁end｜>"),
        (R1, "<｜tool▁call▁begin｜>function calculator {}"),
        (
            ToolCallFormat::Llama,
            "<|python_tag|>brave_search.call(query=\"weather\")",
        ),
        (
            ToolCallFormat::Llama,
            "{\"name\": \"calculator\", \"parameters\": {",
        ),
        (
            ToolCallFormat::Generic,
            "{\"tool_calls\": [{\"name\": \"calculator\", \"arguments\": 5}]}",
        ),
        (
            ToolCallFormat::Generic,
            "{\"tool_calls\": [{\"name\": \"calc",
        ),
    ];
    for (format, text) in cases {
        let out = format.parse(text, false);
        assert!(out.tool_calls.is_empty(), "{format:?}: {text}");
        assert_eq!(out.content, text.trim(), "{format:?}");
    }
}

#[test]
fn a_broken_call_among_good_ones_stays_content_alone() {
    let text = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>calculator\n```json\n{\"expression\": \"1\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>calculator\n```json\n{oops}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>calculator\n```json\n{\"expression\": \"3\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
    let out = R1.parse(text, false);
    assert_eq!(
        out.tool_calls,
        [
            call("call_0", "calculator", r#"{"expression":"1"}"#),
            call("call_1", "calculator", r#"{"expression":"3"}"#),
        ]
    );
    assert_eq!(
        out.content,
        "<｜tool▁call▁begin｜>function<｜tool▁sep｜>calculator\n```json\n{oops}\n```<｜tool▁call▁end｜>"
    );

    let text = "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\nnot json\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>";
    let out = ToolCallFormat::Hermes.parse(text, false);
    assert_eq!(
        out.tool_calls,
        [call("call_0", "a", "{}"), call("call_1", "b", "{}")]
    );
    assert_eq!(out.content, "<tool_call>\nnot json\n</tool_call>");
}

#[test]
fn ids_are_unique_within_a_response() {
    let calls: Vec<ToolCall> = (0..5)
        .map(|i| call("", "calculator", &format!("{{\"expression\":\"{i}\"}}")))
        .collect();
    for format in all_formats() {
        let out = format.parse(&format.write_calls(&calls), false);
        let ids: Vec<&str> = out.tool_calls.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            ["call_0", "call_1", "call_2", "call_3", "call_4"],
            "{format:?}"
        );
    }
    let mut splitter =
        OutputSplitter::new(ToolCallFormat::Hermes, false).with_id_prefix("call_r7_");
    splitter.push(&ToolCallFormat::Hermes.write_calls(&calls[..2]));
    let (_, calls) = splitter.finish();
    assert_eq!(calls[0].id, "call_r7_0");
    assert_eq!(calls[1].id, "call_r7_1");
}

#[test]
fn never_panics_on_odd_text() {
    let odd = [
        "",
        "<",
        "<｜",
        "<think>",
        "</think>",
        "<think></think><think>",
        "{",
        "[{",
        "```",
        "```json",
        "<tool_call>",
        "<tool_call></tool_call>",
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>",
        "<｜tool▁call▁begin｜><｜tool▁sep｜>",
        "<｜tool▁call▁begin｜>function<｜tool▁sep｜>\n",
        "<|python_tag|>",
        "{\"tool_calls\"",
        "{\"tool_calls\": {}}",
        "é<tool_call>ü{\"name\":\"ñ\"}",
        "\u{0}\u{ffff}",
    ];
    for format in all_formats() {
        for text in odd {
            for opened in [false, true] {
                let _ = format.parse(text, opened);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Streaming

/// Replies to stream, with whether the prompt opened the reasoning.
fn streaming_samples() -> Vec<(ToolCallFormat, bool, String)> {
    let calls = [
        call("", "calculator", r#"{"expression":"2 < 3"}"#),
        call("", "get_weather", r#"{"city":"Paris"}"#),
    ];
    let mut samples = Vec::new();
    for format in all_formats() {
        let written = format.write_calls(&calls);
        samples.push((format, false, written.clone()));
        samples.push((
            format,
            false,
            format!("<think>\nIs 2 < 3? Let me see </thin k>.\n</think>\n\nChecking {{this}} <b>now</b>.\n\n{written}"),
        ));
        samples.push((format, true, format!("Thinking...\n</think>\n{written}")));
        samples.push((
            format,
            false,
            "Plain answer: a < b, {x} and ``` code ```.".into(),
        ));
        samples.push((
            format,
            false,
            format!("Text {written} and more text after."),
        ));
        samples.push((format, true, "Only reasoning, cut off <".into()));
        samples.push((format, false, "Ends with a partial <tool_c".into()));
        samples.push((format, false, "Ends with a partial <｜tool▁ca".into()));
    }
    samples.push((
        ToolCallFormat::Hermes,
        false,
        "<tool_call>\n{bad json}\n</tool_call> then text".into(),
    ));
    samples.push((
        ToolCallFormat::Generic,
        false,
        "```json\n{\"answer\": 1}\n```".into(),
    ));
    samples.push((
        ToolCallFormat::Llama,
        false,
        "  {\"answer\": {\"name\": 1}}".into(),
    ));
    samples
}

/// `text` cut into deltas of `sizes` characters (cycled).
fn chunks(text: &str, sizes: &[usize]) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < chars.len() {
        let n = sizes[i % sizes.len()].max(1).min(chars.len() - at);
        out.push(chars[at..at + n].iter().collect());
        at += n;
        i += 1;
    }
    out
}

fn chunkings(text: &str) -> Vec<Vec<String>> {
    let mut all: Vec<Vec<String>> = (1..=9).map(|n| chunks(text, &[n])).collect();
    let mut seed = 0x2545_f491_u64;
    for _ in 0..12 {
        let sizes: Vec<usize> = (0..16)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as usize % 12 + 1
            })
            .collect();
        all.push(chunks(text, &sizes));
    }
    all.push(vec![text.to_owned()]);
    all
}

fn markers(format: ToolCallFormat) -> Vec<&'static str> {
    let mut m = vec![THINK_BEGIN, THINK_END];
    m.extend(match format {
        ToolCallFormat::DeepSeek(_) => vec![DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALL_BEGIN],
        ToolCallFormat::Hermes => vec![HERMES_BEGIN],
        ToolCallFormat::Llama => vec![LLAMA_PYTHON_TAG],
        ToolCallFormat::Generic => vec!["{\"tool_calls\""],
    });
    m
}

#[test]
fn streaming_reassembles_to_what_parse_finds() {
    for (format, opened, text) in streaming_samples() {
        let expected = format.parse(&text, opened);
        for deltas in chunkings(&text) {
            let mut splitter = OutputSplitter::new(format, opened);
            let mut content = String::new();
            let mut reasoning = String::new();
            for delta in &deltas {
                for piece in splitter.push(delta) {
                    match piece {
                        Piece::Content(t) => content.push_str(&t),
                        Piece::Reasoning(t) => reasoning.push_str(&t),
                    }
                }
                // What was shown so far is where the final text starts.
                assert!(
                    expected.content.starts_with(&content),
                    "{format:?} {deltas:?}: shown {content:?}, final {:?}",
                    expected.content
                );
                let final_reasoning = expected.reasoning.clone().unwrap_or_default();
                assert!(
                    final_reasoning.starts_with(&reasoning),
                    "{format:?} {deltas:?}: shown {reasoning:?}"
                );
            }
            let (rest, calls) = splitter.finish();
            for piece in rest {
                match piece {
                    Piece::Content(t) => content.push_str(&t),
                    Piece::Reasoning(t) => reasoning.push_str(&t),
                }
            }
            assert_eq!(content, expected.content, "{format:?} {deltas:?}");
            assert_eq!(
                (!reasoning.is_empty()).then_some(reasoning),
                expected.reasoning,
                "{format:?} {deltas:?}"
            );
            assert_eq!(calls, expected.tool_calls, "{format:?} {deltas:?}");
        }
    }
}

#[test]
fn streaming_never_shows_a_marker_or_part_of_one() {
    let calls = [call("", "calculator", r#"{"expression":"7"}"#)];
    for format in all_formats() {
        // A Llama call is the whole reply: text before it makes it text.
        let before = if format == ToolCallFormat::Llama {
            ""
        } else {
            "Sure.\n"
        };
        let text = format!("{before}{}", format.write_calls(&calls));
        for deltas in chunkings(&text) {
            let mut splitter = OutputSplitter::new(format, false);
            let mut shown = String::new();
            for delta in &deltas {
                for piece in splitter.push(delta) {
                    let Piece::Content(t) = piece else {
                        panic!("no reasoning here")
                    };
                    shown.push_str(&t);
                }
            }
            // Before the end, only the text before the call was shown.
            assert!(
                "Sure.".starts_with(&shown),
                "{format:?} {deltas:?}: {shown:?}"
            );
            for marker in markers(format) {
                assert!(!shown.contains(marker));
            }
            let (rest, parsed) = splitter.finish();
            assert!(rest.is_empty(), "{format:?}: {rest:?}");
            assert_eq!(parsed.len(), 1);
        }
    }

    // Character by character, a marker's first characters are held back
    // until it is clear they are not one.
    let mut splitter = OutputSplitter::new(ToolCallFormat::Hermes, false);
    let mut shown = Vec::new();
    for c in "a <tool_x> b".chars() {
        shown.push(splitter.push(&c.to_string()));
    }
    let flat: Vec<String> = shown
        .iter()
        .map(|p| {
            p.iter()
                .map(|p| match p {
                    Piece::Content(t) | Piece::Reasoning(t) => t.clone(),
                })
                .collect()
        })
        .collect();
    assert_eq!(
        flat,
        ["a", "", "", "", "", "", "", "", " <tool_x", ">", "", " b"]
    );

    // Reasoning holds back a partial </think>.
    let mut splitter = OutputSplitter::new(R1, true);
    assert_eq!(splitter.push("abc</th"), [Piece::Reasoning("abc".into())]);
    assert_eq!(splitter.push("ink>hi"), [Piece::Content("hi".into())]);
}

#[test]
fn call_start_is_where_the_marker_begins() {
    let calls = [call("", "calculator", r#"{"expression":"7"}"#)];
    for format in all_formats() {
        let written = format.write_calls(&calls);
        let before = if format == ToolCallFormat::Llama {
            "<think>x</think>"
        } else {
            "<think>x</think>Let me check. "
        };
        let text = format!("{before}{written}");
        for deltas in chunkings(&text) {
            let mut splitter = OutputSplitter::new(format, false);
            let mut pushed = 0;
            for delta in &deltas {
                splitter.push(delta);
                pushed += delta.len();
                if pushed <= before.len() {
                    assert_eq!(splitter.call_start(), None, "{format:?} {deltas:?}");
                }
            }
            assert_eq!(
                splitter.call_start(),
                Some(before.len()),
                "{format:?} {deltas:?}"
            );
        }
    }
    let mut splitter = OutputSplitter::new(ToolCallFormat::Generic, false);
    splitter.push("No call: {\"answer\": 1}");
    assert_eq!(splitter.call_start(), None);
}

#[test]
fn reasoning_only_splitter_holds_nothing_back_for_calls() {
    let mut splitter = OutputSplitter::reasoning_only(false);
    let mut pieces = splitter.push("<think>x</think><tool_call>\n{}");
    let (rest, calls) = splitter.finish();
    pieces.extend(rest);
    assert!(calls.is_empty());
    assert_eq!(
        pieces,
        [
            Piece::Reasoning("x".into()),
            Piece::Content("<tool_call>\n{}".into())
        ]
    );
}

// ---------------------------------------------------------------------------
// Detection on the real templates

#[test]
fn detects_deepseek_r1() {
    let r1 = r1_template();
    assert_eq!(ToolCallFormat::from_template(r1), Some(R1));
    assert_eq!(ToolCallFormat::detect(Some(r1), r1_tokenizer()), R1);
    // The tokenizer's own template.
    assert_eq!(ToolCallFormat::detect(None, r1_tokenizer()), R1);
    // R1's template prints calls and tool results but not the tools.
    assert!(!ToolCallFormat::template_renders_tools(r1));
}

#[test]
fn detects_qwen3() {
    let qwen = qwen3_template();
    assert_eq!(
        ToolCallFormat::from_template(qwen),
        Some(ToolCallFormat::Hermes)
    );
    // The template decides over a vocabulary without tool tokens.
    assert_eq!(
        ToolCallFormat::detect(Some(qwen), &smollm2().0),
        ToolCallFormat::Hermes
    );
    assert!(ToolCallFormat::template_renders_tools(qwen));
}

#[test]
fn detects_smollm2_as_generic() {
    let (tokenizer, template) = smollm2();
    assert_eq!(ToolCallFormat::from_template(template), None);
    assert_eq!(
        ToolCallFormat::detect(Some(template), tokenizer),
        ToolCallFormat::Generic
    );
    assert_eq!(
        ToolCallFormat::detect(None, tokenizer),
        ToolCallFormat::Generic
    );
    assert!(!ToolCallFormat::template_renders_tools(template));
}

#[test]
fn detection_falls_back_to_the_vocabulary() {
    // A template that says nothing of tools, on R1's vocabulary.
    let (_, smol_template) = smollm2();
    assert_eq!(
        ToolCallFormat::detect(Some(smol_template), r1_tokenizer()),
        R1
    );
}

#[test]
fn detects_deepseek_styles_and_llama_from_template_text() {
    let v31 = "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['function']['name'] + '<｜tool▁sep｜>' + tool['function']['arguments'] + '<｜tool▁call▁end｜>'}}";
    assert_eq!(
        ToolCallFormat::from_template(v31),
        Some(ToolCallFormat::DeepSeek(DeepSeekStyle::NameFirst))
    );
    let untyped = "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜><｜tool▁sep｜>' + tool['function']['name'] + '\\n```json\\n'}}";
    assert_eq!(
        ToolCallFormat::from_template(untyped),
        Some(ToolCallFormat::DeepSeek(DeepSeekStyle::Untyped))
    );
    let llama = "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{{- '{\"name\": \"' + tool_call.name + '\", ' }}{{- '\"parameters\": ' }}";
    assert_eq!(
        ToolCallFormat::from_template(llama),
        Some(ToolCallFormat::Llama)
    );
}

#[test]
fn template_tools_fall_back_to_reading_the_code() {
    // Renders nothing without an extra variable, so the code is read.
    let needs_more = "{{ custom.x }}{% for t in tools %}{{ t }}{% endfor %}";
    assert!(ToolCallFormat::template_renders_tools(needs_more));
    let string_only = "{{ 'tools' }}{{ custom.x }}";
    assert!(!ToolCallFormat::template_renders_tools(string_only));
}

// ---------------------------------------------------------------------------
// Constraints

#[test]
fn hermes_constraint_accepts_a_correct_call_and_rejects_a_wrong_name() {
    let c = ToolCallFormat::Hermes
        .call_constraint(&[calculator()], None)
        .unwrap();
    let CallConstraint::Json {
        prefix,
        schema,
        suffix,
    } = &c
    else {
        panic!("JSON constraint expected");
    };
    assert_eq!(prefix, "<tool_call>\n");
    assert_eq!(suffix, "\n</tool_call>");
    assert_eq!(c.sampler_config(), json!({"schema": schema}));
    let v = validator(schema);
    assert!(v.is_valid(&json!({"name": "calculator", "arguments": {"expression": "2+2"}})));
    assert!(!v.is_valid(&json!({"name": "calc", "arguments": {"expression": "2+2"}})));
    assert!(!v.is_valid(&json!({"name": "calculator", "arguments": {"expr": "2+2"}})));
    assert!(!v.is_valid(&json!({"name": "calculator"})));
    assert!(!v.is_valid(&json!({"name": "calculator", "arguments": {"expression": 4}})));
    // The model's spacing: Python's json.dumps separators.
    assert_eq!(
        schema["x-guidance"],
        json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
    );
}

/// Parameters that list their properties allow no others in a call, down
/// to nested objects, unless the schema itself says what others may be.
#[test]
fn constrained_calls_take_no_keys_their_tool_does_not_list() {
    let tool = ToolSpec {
        name: "book".into(),
        description: "Book a room.".into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "room": {"type": "string"},
                "guest": {"type": "object", "properties": {"name": {"type": "string"}}},
                "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                "note": {"const": {"properties": 1}},
            },
            "required": ["room"],
        }),
    };
    let c = ToolCallFormat::Hermes
        .call_constraint(&[tool], None)
        .unwrap();
    let CallConstraint::Json { schema, .. } = &c else {
        panic!("JSON constraint expected");
    };
    let v = validator(schema);
    let call = |args: Value| json!({"name": "book", "arguments": args});
    assert!(v.is_valid(&call(
        json!({"room": "12", "guest": {"name": "Ada"}, "tags": {"a": "b"}})
    )));
    assert!(
        !v.is_valid(&call(json!({"room": "12", "floor": 3}))),
        "an unlisted key"
    );
    assert!(
        !v.is_valid(&call(
            json!({"room": "12", "guest": {"name": "Ada", "age": 3}})
        )),
        "nested"
    );
    // A schema's own word on other keys stands, and values are left alone.
    assert!(v.is_valid(&call(json!({"room": "12", "tags": {"any": "thing"}}))));
    assert!(v.is_valid(&call(json!({"room": "12", "note": {"properties": 1}}))));
}

#[test]
fn constraints_of_every_json_format_validate_the_call() {
    let tools = [calculator(), weather()];
    for format in [
        ToolCallFormat::Hermes,
        ToolCallFormat::Llama,
        ToolCallFormat::Generic,
    ] {
        let args_key = if format == ToolCallFormat::Llama {
            "parameters"
        } else {
            "arguments"
        };
        let wrap = |v: Value| {
            if format == ToolCallFormat::Generic {
                json!({ "tool_calls": [v] })
            } else {
                v
            }
        };
        let good =
            wrap(json!({"name": "get_weather", args_key: {"city": "Oslo", "unit": "celsius"}}));
        let wrong_name = wrap(json!({"name": "weather", args_key: {"city": "Oslo"}}));
        let mixed = wrap(json!({"name": "calculator", args_key: {"city": "Oslo"}}));
        let bad_enum =
            wrap(json!({"name": "get_weather", args_key: {"city": "Oslo", "unit": "kelvin"}}));

        let any = format.call_constraint(&tools, None).unwrap();
        let CallConstraint::Json {
            schema,
            prefix,
            suffix,
        } = &any
        else {
            panic!("JSON constraint expected")
        };
        let v = validator(schema);
        assert!(v.is_valid(&good), "{format:?}");
        assert!(!v.is_valid(&wrong_name), "{format:?}");
        assert!(!v.is_valid(&mixed), "{format:?}");
        assert!(!v.is_valid(&bad_enum), "{format:?}");

        // The forced text around a valid JSON part parses as the call.
        let text = format!("{prefix}{good}{suffix}");
        let out = format.parse(&text, false);
        assert_eq!(out.tool_calls.len(), 1, "{format:?}: {text}");
        assert_eq!(out.tool_calls[0].name, "get_weather");
        assert_eq!(out.content, "");

        // Named: only that tool.
        let named = format.call_constraint(&tools, Some("calculator")).unwrap();
        let CallConstraint::Json { schema, .. } = &named else {
            panic!("JSON constraint expected")
        };
        let v = validator(schema);
        assert!(!v.is_valid(&good), "{format:?}");
        assert!(v.is_valid(&wrap(
            json!({"name": "calculator", args_key: {"expression": "1"}})
        )));
    }
    // The generic form allows exactly one call.
    let c = ToolCallFormat::Generic
        .call_constraint(&tools, None)
        .unwrap();
    let CallConstraint::Json { schema, .. } = &c else {
        panic!()
    };
    let one = json!({"name": "calculator", "arguments": {"expression": "1"}});
    assert!(!validator(schema).is_valid(&json!({"tool_calls": []})));
    assert!(!validator(schema).is_valid(&json!({"tool_calls": [one, one]})));
}

#[test]
fn deepseek_named_constraint_forces_the_name_and_validates_the_arguments() {
    let tools = [calculator(), weather()];
    let c = R1.call_constraint(&tools, Some("calculator")).unwrap();
    let CallConstraint::Json {
        prefix,
        schema,
        suffix,
    } = &c
    else {
        panic!("JSON constraint expected")
    };
    assert_eq!(
        prefix,
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>calculator\n```json\n"
    );
    assert_eq!(suffix, "\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>");
    let v = validator(schema);
    assert!(v.is_valid(&json!({"expression": "2+2"})));
    assert!(!v.is_valid(&json!({"city": "Oslo"})));
    let out = R1.parse(
        &format!("{prefix}{{\"expression\": \"2+2\"}}{suffix}"),
        false,
    );
    assert_eq!(
        out.tool_calls,
        [call("call_0", "calculator", r#"{"expression":"2+2"}"#)]
    );

    // One tool and `required` is the same as naming it.
    assert_eq!(R1.call_constraint(&tools[..1], None).unwrap(), c);
}

#[test]
fn deepseek_required_constraint_lets_the_model_choose_the_name_first() {
    let tools = [calculator(), weather()];
    let c = R1.call_constraint(&tools, None).unwrap();
    let CallConstraint::ChooseName {
        prefix,
        names,
        name_end,
        pattern,
    } = &c
    else {
        panic!("a name choice expected")
    };
    assert_eq!(
        prefix,
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
    );
    assert_eq!(names, &["calculator", "get_weather"]);
    assert_eq!(name_end, "\n```json\n");
    assert_eq!(c.sampler_config(), json!({ "pattern": pattern }));
    // The pattern matches exactly a name and what follows it (checked as a
    // JSON Schema pattern, anchored).
    let anchored = validator(&json!({"type": "string", "pattern": format!("^{pattern}$")}));
    assert!(anchored.is_valid(&json!("calculator\n```json\n")));
    assert!(anchored.is_valid(&json!("get_weather\n```json\n")));
    assert!(!anchored.is_valid(&json!("calc\n```json\n")));
    assert!(!anchored.is_valid(&json!("calculator")));

    // After the choice, the named constraint continues exactly where the
    // text is.
    let written = "get_weather\n```json\n";
    assert_eq!(c.chosen_name(written), Some("get_weather"));
    assert_eq!(c.chosen_name("get_wea"), None);
    let next = R1.call_constraint(&tools, c.chosen_name(written)).unwrap();
    assert_eq!(next.prefix(), format!("{prefix}{written}"));

    // V3.1's style: the name comes first.
    let v31 = ToolCallFormat::DeepSeek(DeepSeekStyle::NameFirst);
    let c = v31.call_constraint(&tools, None).unwrap();
    assert_eq!(c.prefix(), "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>");
    let named = v31.call_constraint(&tools, Some("calculator")).unwrap();
    let CallConstraint::Json { prefix, suffix, .. } = &named else {
        panic!()
    };
    let out = v31.parse(&format!("{prefix}{{\"expression\": \"1\"}}{suffix}"), false);
    assert_eq!(out.tool_calls.len(), 1);
}

#[test]
fn choosing_between_names_that_share_a_start() {
    let tools = [
        ToolSpec {
            name: "get".into(),
            ..calculator()
        },
        ToolSpec {
            name: "get_all".into(),
            ..calculator()
        },
    ];
    let c = R1.call_constraint(&tools, None).unwrap();
    assert_eq!(c.chosen_name("get_all\n```json\n"), Some("get_all"));
    assert_eq!(c.chosen_name("get\n```json\n"), Some("get"));
}

#[test]
fn constraint_errors() {
    assert_eq!(
        ToolCallFormat::Hermes.call_constraint(&[], None),
        Err(ToolChoiceError::NoTools)
    );
    assert_eq!(
        R1.call_constraint(&[calculator()], Some("nope")),
        Err(ToolChoiceError::UnknownTool("nope".into()))
    );
}

#[test]
fn parameters_with_local_references_keep_working_inside_the_call_schema() {
    let tool = ToolSpec {
        name: "add_person".into(),
        description: String::new(),
        parameters: json!({
            "type": "object",
            "properties": {"person": {"$ref": "#/$defs/Person"}},
            "required": ["person"],
            "$defs": {"Person": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
            }},
        }),
    };
    let c = ToolCallFormat::Hermes
        .call_constraint(&[tool, calculator()], None)
        .unwrap();
    let CallConstraint::Json { schema, .. } = &c else {
        panic!()
    };
    let v = validator(schema);
    assert!(v.is_valid(&json!({"name": "add_person", "arguments": {"person": {"name": "Ada"}}})));
    assert!(!v.is_valid(&json!({"name": "add_person", "arguments": {"person": {"age": 3}}})));
}

#[test]
fn call_grammars_are_lark_with_json_parts() {
    let tools = [calculator(), weather()];
    let g = ToolCallFormat::Hermes.call_grammar(&tools, None).unwrap();
    assert!(g.starts_with("start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: %json {"));
    let g = ToolCallFormat::Generic
        .call_grammar(&tools, Some("calculator"))
        .unwrap();
    assert!(g.starts_with("start: call\ncall: %json {"));
    assert!(!g.contains("get_weather"));
    let g = R1.call_grammar(&tools, None).unwrap();
    let expected_start = "start: \"<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>\" call \"\\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>\"\ncall: call_0 | call_1\ncall_0: \"calculator\\n```json\\n\" args_0\nargs_0: %json {";
    assert!(g.starts_with(expected_start), "{g}");
    assert!(g.contains("call_1: \"get_weather\\n```json\\n\" args_1\nargs_1: %json {"));
    // Every %json part is one line of JSON.
    for line in g.lines().filter(|l| l.contains("%json")) {
        let json = &line[line.find("%json ").unwrap() + 6..];
        serde_json::from_str::<Value>(json).expect("JSON after %json");
    }
}

// ---------------------------------------------------------------------------
// Tools described by the server

#[test]
fn generic_tools_prompt() {
    let prompt = ToolCallFormat::Generic.tools_prompt(&[calculator()]);
    assert_eq!(
        prompt,
        "# Tools\n\nYou can call these tools:\n- calculator: Evaluate an arithmetic expression.\n  Parameters (JSON Schema): {\"type\":\"object\",\"properties\":{\"expression\":{\"type\":\"string\"}},\"required\":[\"expression\"]}\n\nTo call a tool, reply with only this and nothing else:\n{\"tool_calls\": [{\"name\": \"<tool name>\", \"arguments\": {<arguments>}}]}\nThe arguments are a JSON object that follows the tool's parameters schema. To make several calls, put several objects in the list. The results come back in the next message. To answer without a tool, reply in plain text."
    );
    let prompt = R1.tools_prompt(&[calculator()]);
    assert!(prompt.contains(
        "To call a tool, write:\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜><tool name>\n```json\n{<arguments>}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>\n"
    ));
}

#[test]
fn smollm2_conversations_are_adapted_to_carry_tools() {
    let (_, template_src) = smollm2();
    let generic = ToolCallFormat::Generic;
    let messages = [
        ChatMessage::user("What is 2+2?"),
        ChatMessage::tool_calls(vec![call(
            "call_0",
            "calculator",
            r#"{"expression":"2+2"}"#,
        )]),
        ChatMessage::tool("call_0", "4"),
    ];
    let adapted = generic.adapt_messages(template_src, &messages, &[calculator()]);
    assert_eq!(adapted.len(), 4);
    assert_eq!(adapted[0].role, "system");
    assert_eq!(
        adapted[0].content.as_deref(),
        Some(generic.tools_prompt(&[calculator()]).as_str())
    );
    assert_eq!(
        adapted[2].content.as_deref(),
        Some(r#"{"tool_calls": [{"name": "calculator", "arguments": {"expression":"2+2"}}]}"#)
    );
    assert!(adapted[2].tool_calls.is_empty());
    assert_eq!(adapted[3].role, "user");
    assert_eq!(
        adapted[3].content.as_deref(),
        Some("Result of calculator (call call_0):\n4")
    );
    let template = ChatTemplate::new(template_src, None, None).unwrap();
    let prompt = template.render(&adapted, &[], true).unwrap();
    assert!(prompt.starts_with("<|im_start|>system\n# Tools\n"));
    assert!(prompt.contains("<|im_start|>assistant\n{\"tool_calls\": [{\"name\": \"calculator\""));

    // An existing system message gets the tools appended.
    let with_system = [ChatMessage::system("Be brief."), ChatMessage::user("Hi")];
    let adapted = generic.adapt_messages(template_src, &with_system, &[calculator()]);
    assert_eq!(adapted.len(), 2);
    assert!(
        adapted[0]
            .content
            .as_deref()
            .unwrap()
            .starts_with("Be brief.\n\n# Tools\n")
    );

    // R1's template prints calls and results itself: only the tools are added.
    let adapted = R1.adapt_messages(r1_template(), &messages, &[calculator()]);
    assert_eq!(adapted.len(), 4);
    assert_eq!(adapted[2], messages[1]);
    assert_eq!(adapted[3], messages[2]);

    // Qwen3's renders tools: nothing changes.
    let adapted =
        ToolCallFormat::Hermes.adapt_messages(qwen3_template(), &messages, &[calculator()]);
    assert_eq!(adapted, messages);
}

/// A reply cut short by a length limit inside a tool call (or inside its
/// marker) shows the text before it and no half call; the calls before the
/// cut one stay. Not cut short, the same text is shown as it was written.
#[test]
fn a_call_cut_off_by_the_limit_is_not_content() {
    let split = |text: &str, cut: bool| {
        let mut s = OutputSplitter::new(ToolCallFormat::Hermes, false);
        let mut shown: String = text_of(&s.push(text));
        let (rest, calls) = if cut { s.finish_cut() } else { s.finish() };
        shown.push_str(&text_of(&rest));
        (shown, calls.len())
    };
    let whole = "Let me check.<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": \"2+2\"}}\n</tool_call>";
    let half = "<tool_call>\n{\"name\": \"calculator\", \"argu";
    assert_eq!(
        split(&format!("Let me check.{half}"), true),
        ("Let me check.".into(), 0)
    );
    assert_eq!(
        split(&format!("{whole}{half}"), true),
        ("Let me check.".into(), 1)
    );
    assert_eq!(
        split("Let me check.<tool_ca", true),
        ("Let me check.".into(), 0)
    );
    let (shown, calls) = split(&format!("Let me check.{half}"), false);
    assert!(shown.ends_with("argu") && calls == 0, "{shown}");
}

fn text_of(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Content(t) | Piece::Reasoning(t) => t.as_str(),
        })
        .collect()
}
