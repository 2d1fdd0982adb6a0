//! `deepwasm:plugin/inference` and `deepwasm:plugin/tools`: thin doors onto the
//! embedder's capabilities.

use crate::bindings::{inference, tools, types};
use crate::host::{HostState, not_granted};

/// Most bytes of text (messages, tool specs, stop strings) one `chat` or
/// `complete` call may carry: far more than any model's context holds, and
/// a bound on what a plugin can make the host keep (the run's transcript)
/// and tokenize.
pub const MAX_PROMPT_BYTES: usize = 4 << 20;

/// Most bytes of arguments one `tools.call` may carry.
pub const MAX_TOOL_ARGUMENT_BYTES: usize = 256 << 10;

fn options_bytes(options: &inference::GenerateOptions) -> usize {
    let tools: usize = options
        .tools
        .iter()
        .map(|t| t.name.len() + t.description.len() + t.parameters.len())
        .sum();
    let stops: usize = options.stop.iter().map(String::len).sum();
    let sampler = options
        .sampler
        .as_ref()
        .map_or(0, |s| s.plugin.len() + s.config.len());
    tools + stops + sampler
}

fn message_bytes(m: &types::Message) -> usize {
    m.content.len()
        + m.reasoning.as_ref().map_or(0, String::len)
        + m.tool_calls
            .iter()
            .map(|c| c.id.len() + c.name.len() + c.arguments.len())
            .sum::<usize>()
        + m.tool_call_id.as_ref().map_or(0, String::len)
        + m.name.as_ref().map_or(0, String::len)
}

/// Refuse a prompt of `bytes` past [`MAX_PROMPT_BYTES`].
fn check_prompt(bytes: usize) -> Result<(), types::Error> {
    if bytes > MAX_PROMPT_BYTES {
        return Err(types::Error::InvalidInput(format!(
            "the request carries {bytes} bytes of text; the most is {MAX_PROMPT_BYTES}"
        )));
    }
    Ok(())
}

impl inference::Host for HostState {
    fn model(&mut self) -> wasmtime::Result<String> {
        Ok(self
            .caps
            .inference
            .as_ref()
            .map(|i| i.model())
            .unwrap_or_default())
    }

    fn chat(
        &mut self,
        messages: Vec<types::Message>,
        options: inference::GenerateOptions,
    ) -> wasmtime::Result<Result<inference::ChatResponse, types::Error>> {
        let bytes = messages.iter().map(message_bytes).sum::<usize>() + options_bytes(&options);
        Ok(match &self.caps.inference {
            Some(i) => check_prompt(bytes).and_then(|()| i.chat(messages, options)),
            None => Err(not_granted("deepwasm:plugin/inference")),
        })
    }

    fn complete(
        &mut self,
        prompt: String,
        options: inference::GenerateOptions,
    ) -> wasmtime::Result<Result<inference::Completion, types::Error>> {
        let bytes = prompt.len() + options_bytes(&options);
        Ok(match &self.caps.inference {
            Some(i) => check_prompt(bytes).and_then(|()| i.complete(prompt, options)),
            None => Err(not_granted("deepwasm:plugin/inference")),
        })
    }
}

impl tools::Host for HostState {
    fn available(&mut self) -> wasmtime::Result<Vec<types::ToolSpec>> {
        Ok(self
            .caps
            .tools
            .as_ref()
            .map(|t| t.list())
            .unwrap_or_default())
    }

    fn call(
        &mut self,
        name: String,
        arguments: String,
    ) -> wasmtime::Result<Result<types::ToolOutput, types::Error>> {
        Ok(match &self.caps.tools {
            Some(_) if arguments.len() > MAX_TOOL_ARGUMENT_BYTES => {
                Err(types::Error::InvalidInput(format!(
                    "the arguments of `{name}` are {} bytes; the most is {MAX_TOOL_ARGUMENT_BYTES}",
                    arguments.len()
                )))
            }
            Some(t) => t.call(&name, &arguments),
            None => Err(not_granted("deepwasm:plugin/tools")),
        })
    }
}
