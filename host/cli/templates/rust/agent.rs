//! `{{name}}`: a deepwasm agent plugin (world `agent`).
//!
//! Asks the served model the task once, through its chat template, and
//! answers with the reply. Config: `{"max_tokens": 256}` (the default).
//! From here, offer the granted tools (`tools::available()`) in the
//! options and loop over the model's tool calls.

use deepwasm_sdk::agent::{Guest, inference};
use deepwasm_sdk::config::Fields;
use deepwasm_sdk::types::{Error, Message, Role, SamplingParams};

struct Plugin;

impl Guest for Plugin {
    fn run(task: String, config: String) -> Result<String, Error> {
        let cfg = Fields::parse("config", &config)?;
        cfg.only(&["max_tokens"])?;
        let max_tokens: u32 = cfg.get_or("max_tokens", 256)?;
        let question = Message {
            role: Role::User,
            content: task,
            reasoning: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        };
        let options = inference::GenerateOptions {
            // `None` keeps what the request asked for.
            params: SamplingParams {
                temperature: None,
                top_k: None,
                top_p: None,
                min_p: None,
                repetition_penalty: None,
                presence_penalty: None,
                frequency_penalty: None,
                seed: None,
            },
            max_tokens: Some(max_tokens),
            stop: Vec::new(),
            tools: Vec::new(),
            tool_choice: inference::ToolChoice::Auto,
            sampler: None,
        };
        // The host's error (a budget ran out, say) is this run's error.
        let reply = inference::chat(&[question], &options)?;
        Ok(reply.message.content)
    }
}

deepwasm_sdk::export_agent!(Plugin);
