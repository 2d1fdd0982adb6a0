//! Forcing a well-formed call, and describing tools to models whose
//! template does not.

use serde_json::{Map, Value, json};

use super::{
    DEEPSEEK_CALL_BEGIN, DEEPSEEK_CALL_END, DEEPSEEK_CALLS_BEGIN, DEEPSEEK_CALLS_END, DEEPSEEK_SEP,
    DeepSeekStyle, HERMES_BEGIN, HERMES_END, ToolCallFormat, formats,
};
use crate::chat::{ToolCall, ToolSpec};

/// Why a tool choice cannot be constrained.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ToolChoiceError {
    #[error("a tool call is required but no tools were given")]
    NoTools,
    #[error("the tool `{0}` was chosen but is not among the tools given")]
    UnknownTool(String),
}

/// How to make the model write exactly one well-formed call, with the
/// sampler plugins deepwasm ships: `json-schema` (config `{"schema": …}`)
/// and `regex` (config `{"pattern": …}`), both of which offer only EOS once
/// their part is complete.
///
/// For `tool_choice: "required"` call [`ToolCallFormat::call_constraint`]
/// with `named: None`; for `{"type": "function", "function": {"name": N}}`
/// with `Some(N)`. Then, where the reply would otherwise begin (after the
/// reasoning, for a reasoning model: once `</think>` has been generated):
///
/// - [`Json`](Self::Json): append the tokens of `prefix` without sampling
///   (encode it as text; the special tokens it spells are recognised), then
///   sample with the `json-schema` plugin on [`sampler_config`]
///   (Self::sampler_config); when the plugin allows nothing but EOS, the
///   JSON is complete: append the tokens of `suffix` instead of EOS and end
///   the turn (finish reason `tool_calls`). Parse the whole reply with
///   [`ToolCallFormat::parse`] as usual.
/// - [`ChooseName`](Self::ChooseName) (DeepSeek with several tools and no
///   name given: the name is not inside the JSON): append `prefix`, sample
///   with the `regex` plugin on `pattern`, which lets the model write one of
///   `names` followed by `name_end`; when the plugin allows only EOS, take
///   the name ([`chosen_name`](Self::chosen_name) of the text written after
///   `prefix`) and continue with `call_constraint(tools, Some(name))`: a
///   `Json` whose prefix is exactly the text written so far, so nothing more
///   needs forcing before its JSON part.
///
/// A sampler that takes a Lark grammar can use
/// [`ToolCallFormat::call_grammar`] instead: the whole call in one grammar.
#[derive(Clone, Debug, PartialEq)]
pub enum CallConstraint {
    /// Forced text, one JSON value, forced text.
    Json {
        /// Text to append before the JSON (may be empty).
        prefix: String,
        /// The JSON Schema for the `json-schema` plugin, with llguidance
        /// options (`x-guidance`) for the spacing the model was trained on.
        schema: Value,
        /// Text to append once the JSON value is complete (may be empty).
        suffix: String,
    },
    /// Forced text, then the model picks a tool name.
    ChooseName {
        prefix: String,
        /// The tools it may pick, in the order given.
        names: Vec<String>,
        /// What the format writes right after the name.
        name_end: String,
        /// A `regex` plugin pattern (Rust syntax, matched whole): one of
        /// `names`, then `name_end`.
        pattern: String,
    },
}

impl CallConstraint {
    /// The text to append before sampling.
    pub fn prefix(&self) -> &str {
        match self {
            CallConstraint::Json { prefix, .. } | CallConstraint::ChooseName { prefix, .. } => {
                prefix
            }
        }
    }

    /// The sampler plugin's config: `{"schema": …}` for `json-schema`
    /// ([`Json`](Self::Json)), `{"pattern": …}` for `regex`
    /// ([`ChooseName`](Self::ChooseName)).
    pub fn sampler_config(&self) -> Value {
        match self {
            CallConstraint::Json { schema, .. } => json!({ "schema": schema }),
            CallConstraint::ChooseName { pattern, .. } => json!({ "pattern": pattern }),
        }
    }

    /// For [`ChooseName`](Self::ChooseName): the name that `written` (the
    /// text generated after `prefix`) picked, once it is complete (the
    /// longest name followed by `name_end`). `None` for `Json`.
    pub fn chosen_name(&self, written: &str) -> Option<&str> {
        let CallConstraint::ChooseName {
            names, name_end, ..
        } = self
        else {
            return None;
        };
        names
            .iter()
            .filter(|name| {
                written
                    .strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with(name_end.as_str()))
            })
            .max_by_key(|name| name.len())
            .map(String::as_str)
    }
}

/// The tools a constraint may call: all of them, or the one named.
fn select<'a>(
    tools: &'a [ToolSpec],
    named: Option<&str>,
) -> Result<Vec<&'a ToolSpec>, ToolChoiceError> {
    match named {
        Some(name) => tools
            .iter()
            .find(|t| t.name == name)
            .map(|t| vec![t])
            .ok_or_else(|| ToolChoiceError::UnknownTool(name.to_owned())),
        None if tools.is_empty() => Err(ToolChoiceError::NoTools),
        None => Ok(tools.iter().collect()),
    }
}

/// llguidance options: no free whitespace, and the separators of Python's
/// `json.dumps`, which is how templates print JSON (`tojson`).
fn options() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

fn with_options(schema: Value) -> Value {
    match schema {
        Value::Object(mut map) => {
            map.insert("x-guidance".into(), options());
            Value::Object(map)
        }
        other => other,
    }
}

/// A tool's parameters schema, `{"type": "object"}` when it gives none.
fn parameters(tool: &ToolSpec) -> Value {
    match &tool.parameters {
        Value::Object(map) if !map.is_empty() => tool.parameters.clone(),
        _ => json!({"type": "object"}),
    }
}

/// The schema a call's arguments are generated under: the parameters,
/// closed. An object schema that lists its `properties` and says nothing of
/// others allows no others (as OpenAI's strict function calling does):
/// JSON Schema would let the model add keys there, and a call with keys its
/// tool does not take is not a call the client can make. (The tools prompt
/// shows the parameters as given.)
fn call_parameters(tool: &ToolSpec) -> Value {
    let mut params = parameters(tool);
    close_objects(&mut params);
    params
}

/// Add `"additionalProperties": false` to every subschema of `schema` that
/// has `properties` and no `additionalProperties` (or
/// `patternProperties`) of its own, following only keywords that hold
/// subschemas (never `const`, `enum` or `default` values).
fn close_objects(schema: &mut Value) {
    let Value::Object(map) = schema else {
        return;
    };
    if map.contains_key("properties")
        && !map.contains_key("additionalProperties")
        && !map.contains_key("patternProperties")
        && !map.contains_key("unevaluatedProperties")
    {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (key, value) in map.iter_mut() {
        match (key.as_str(), value) {
            ("properties" | "$defs" | "definitions" | "patternProperties", Value::Object(subs)) => {
                subs.values_mut().for_each(close_objects)
            }
            ("anyOf" | "oneOf" | "allOf" | "prefixItems", Value::Array(subs)) => {
                subs.iter_mut().for_each(close_objects)
            }
            (
                "items" | "additionalProperties" | "not" | "if" | "then" | "else" | "contains",
                sub @ Value::Object(_),
            ) => close_objects(sub),
            _ => {}
        }
    }
}

fn has_ref(value: &Value) -> bool {
    match value {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| (k == "$ref" && v.is_string()) || has_ref(v)),
        Value::Array(items) => items.iter().any(has_ref),
        _ => false,
    }
}

/// Point the schema's local references (`#…`) at `base` instead of `#`.
fn rebase_refs(value: &mut Value, base: &str) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    Value::String(r) if k == "$ref" && r.starts_with('#') => {
                        *r = format!("{base}{}", &r[1..]);
                    }
                    _ => rebase_refs(v, base),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rebase_refs(v, base)),
        _ => {}
    }
}

/// A tool's parameters schema for use inside a bigger schema: inline, or,
/// when it has local references (which point at its own root), moved to
/// the root's `$defs` with the references rebased.
fn embedded(tool: &ToolSpec, slot: usize, defs: &mut Map<String, Value>) -> Value {
    let mut params = call_parameters(tool);
    if !has_ref(&params) {
        return params;
    }
    let key = format!("tool_{slot}");
    let base = format!("#/$defs/{key}");
    rebase_refs(&mut params, &base);
    defs.insert(key, params);
    json!({ "$ref": base })
}

/// The schema of one call object `{"name": N, ARGS_KEY: {…}}`, for one of
/// `tools` (`anyOf` when several).
fn call_schema(tools: &[&ToolSpec], args_key: &str, defs: &mut Map<String, Value>) -> Value {
    let mut options: Vec<Value> = tools
        .iter()
        .enumerate()
        .map(|(slot, tool)| {
            let mut properties = Map::new();
            properties.insert("name".into(), json!({ "const": tool.name }));
            properties.insert(args_key.into(), embedded(tool, slot, defs));
            json!({
                "type": "object",
                "properties": properties,
                "required": ["name", args_key],
                "additionalProperties": false,
            })
        })
        .collect();
    if options.len() == 1 {
        options.remove(0)
    } else {
        json!({ "anyOf": options })
    }
}

/// A root schema: `schema` plus the `$defs` it needs and the options.
fn root(schema: Value, defs: Map<String, Value>) -> Value {
    let mut schema = match schema {
        Value::Object(map) => map,
        other => return other,
    };
    if !defs.is_empty() {
        schema.insert("$defs".into(), Value::Object(defs));
    }
    with_options(Value::Object(schema))
}

/// The JSON part of the formats whose call is one JSON value.
fn json_schema(format: ToolCallFormat, tools: &[&ToolSpec]) -> Value {
    let mut defs = Map::new();
    let schema = match format {
        ToolCallFormat::Hermes => call_schema(tools, "arguments", &mut defs),
        ToolCallFormat::Llama => call_schema(tools, "parameters", &mut defs),
        ToolCallFormat::Generic => {
            let call = call_schema(tools, "arguments", &mut defs);
            json!({
                "type": "object",
                "properties": {
                    "tool_calls": {"type": "array", "items": call, "minItems": 1, "maxItems": 1},
                },
                "required": ["tool_calls"],
                "additionalProperties": false,
            })
        }
        ToolCallFormat::DeepSeek(_) => unreachable!("DeepSeek names the tool outside the JSON"),
    };
    root(schema, defs)
}

/// DeepSeek: the text before the name, what follows the name up to the
/// arguments, and what follows the arguments.
fn deepseek_parts(style: DeepSeekStyle) -> (String, &'static str, String) {
    let open = format!("{DEEPSEEK_CALLS_BEGIN}{DEEPSEEK_CALL_BEGIN}");
    let close = format!("{DEEPSEEK_CALL_END}{DEEPSEEK_CALLS_END}");
    match style {
        DeepSeekStyle::Typed => (
            format!("{open}function{DEEPSEEK_SEP}"),
            "\n```json\n",
            format!("\n```{close}"),
        ),
        DeepSeekStyle::Untyped => (
            format!("{open}{DEEPSEEK_SEP}"),
            "\n```json\n",
            format!("\n```{close}"),
        ),
        DeepSeekStyle::NameFirst => (open, DEEPSEEK_SEP, close),
    }
}

pub(super) fn call_constraint(
    format: ToolCallFormat,
    tools: &[ToolSpec],
    named: Option<&str>,
) -> Result<CallConstraint, ToolChoiceError> {
    let selected = select(tools, named)?;
    Ok(match format {
        ToolCallFormat::DeepSeek(style) => {
            let (before_name, name_end, suffix) = deepseek_parts(style);
            if let [tool] = selected[..] {
                CallConstraint::Json {
                    prefix: format!("{before_name}{}{name_end}", tool.name),
                    schema: with_options(call_parameters(tool)),
                    suffix,
                }
            } else {
                let names: Vec<String> = selected.iter().map(|t| t.name.clone()).collect();
                let alternatives: Vec<String> = names.iter().map(|n| regex_escape(n)).collect();
                CallConstraint::ChooseName {
                    prefix: before_name,
                    pattern: format!("(?:{}){}", alternatives.join("|"), regex_escape(name_end)),
                    names,
                    name_end: name_end.to_owned(),
                }
            }
        }
        ToolCallFormat::Hermes => CallConstraint::Json {
            prefix: format!("{HERMES_BEGIN}\n"),
            schema: json_schema(format, &selected),
            suffix: format!("\n{HERMES_END}"),
        },
        ToolCallFormat::Llama | ToolCallFormat::Generic => CallConstraint::Json {
            prefix: String::new(),
            schema: json_schema(format, &selected),
            suffix: String::new(),
        },
    })
}

/// `text` as a Lark string literal (JSON string syntax).
fn lark_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

pub(super) fn call_grammar(
    format: ToolCallFormat,
    tools: &[ToolSpec],
    named: Option<&str>,
) -> Result<String, ToolChoiceError> {
    let selected = select(tools, named)?;
    let mut grammar = String::new();
    match format {
        ToolCallFormat::DeepSeek(style) => {
            let (before_name, name_end, suffix) = deepseek_parts(style);
            grammar.push_str(&format!(
                "start: {} call {}\n",
                lark_string(&before_name),
                lark_string(&suffix)
            ));
            let alternatives: Vec<String> =
                (0..selected.len()).map(|i| format!("call_{i}")).collect();
            grammar.push_str(&format!("call: {}\n", alternatives.join(" | ")));
            for (i, tool) in selected.iter().enumerate() {
                grammar.push_str(&format!(
                    "call_{i}: {} args_{i}\nargs_{i}: %json {}\n",
                    lark_string(&format!("{}{name_end}", tool.name)),
                    with_options(call_parameters(tool))
                ));
            }
        }
        _ => {
            let CallConstraint::Json {
                prefix,
                schema,
                suffix,
            } = call_constraint(format, tools, named)?
            else {
                unreachable!("only DeepSeek chooses names outside JSON");
            };
            let mut start = vec![];
            if !prefix.is_empty() {
                start.push(lark_string(&prefix));
            }
            start.push("call".to_owned());
            if !suffix.is_empty() {
                start.push(lark_string(&suffix));
            }
            grammar.push_str(&format!(
                "start: {}\ncall: %json {schema}\n",
                start.join(" ")
            ));
        }
    }
    Ok(grammar)
}

/// Escape `text` for a Rust regex.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' | '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$'
            | '#' | '&' | '-' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn tools_prompt(format: ToolCallFormat, tools: &[ToolSpec]) -> String {
    let mut out = String::from("# Tools\n\nYou can call these tools:\n");
    for tool in tools {
        out.push_str("- ");
        out.push_str(&tool.name);
        let description = tool.description.trim();
        if !description.is_empty() {
            out.push_str(": ");
            out.push_str(description);
        }
        out.push_str("\n  Parameters (JSON Schema): ");
        out.push_str(&serde_json::to_string(&parameters(tool)).unwrap_or_default());
        out.push('\n');
    }
    let example =
        formats::write_calls(format, &[ToolCall::new("", "<tool name>", "{<arguments>}")]);
    let several = match format {
        ToolCallFormat::DeepSeek(_) => format!(
            "To make several calls, repeat the part from {DEEPSEEK_CALL_BEGIN} to {DEEPSEEK_CALL_END}, one per line."
        ),
        ToolCallFormat::Hermes => {
            format!("To make several calls, write one {HERMES_BEGIN} block per call.")
        }
        ToolCallFormat::Llama => "To make several calls, write one object per line.".to_owned(),
        ToolCallFormat::Generic => {
            "To make several calls, put several objects in the list.".to_owned()
        }
    };
    let how = match format {
        ToolCallFormat::Generic => "To call a tool, reply with only this and nothing else:",
        _ => "To call a tool, write:",
    };
    out.push_str(&format!(
        "\n{how}\n{example}\nThe arguments are a JSON object that follows the tool's parameters schema. {several} The results come back in the next message. To answer without a tool, reply in plain text."
    ));
    out
}
