//! `deepwasm:plugin/inference` and `deepwasm:plugin/tools`: thin doors onto the
//! embedder's capabilities.

use crate::bindings::{inference, tools, types};
use crate::host::{HostState, not_granted};

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
        Ok(match &self.caps.inference {
            Some(i) => i.chat(messages, options),
            None => Err(not_granted("deepwasm:plugin/inference")),
        })
    }

    fn complete(
        &mut self,
        prompt: String,
        options: inference::GenerateOptions,
    ) -> wasmtime::Result<Result<inference::Completion, types::Error>> {
        Ok(match &self.caps.inference {
            Some(i) => i.complete(prompt, options),
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
            Some(t) => t.call(&name, &arguments),
            None => Err(not_granted("deepwasm:plugin/tools")),
        })
    }
}
