//! A loaded model and what it takes to prompt it: the tokenizer, the chat
//! template and how the model writes tool calls.

use std::sync::{Arc, Mutex};

use deepwasm_model::{CausalLm, ChatTemplate, LoadedModel, Tokenizer, ToolCallFormat};

use crate::batcher::{KvStats, PrefixCache};
use crate::logits::{DeviceIds, LogitsPlacement, LogitsTraffic};
use crate::request::{GenerateError, Prompt};

/// A loaded model and what it takes to prompt it.
#[derive(Clone)]
pub struct Engine {
    pub name: String,
    pub model: Arc<dyn CausalLm>,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<Arc<ChatTemplate>>,
    /// How the model writes tool calls.
    pub tool_format: ToolCallFormat,
    /// Whether the chat template describes `tools` itself; when it does not,
    /// [`render_prompt`](Self::render_prompt) adds a system message that
    /// does, and writes past calls and their results as text (see
    /// [`ToolCallFormat::adapt_messages`]).
    pub template_renders_tools: bool,
    /// What the last request run here directly (not through a scheduler)
    /// left cached, for the next: an agent's next turn, or a repeated
    /// prompt, starts from those blocks.
    pub(crate) prefixes: Arc<Mutex<Option<PrefixCache>>>,
    /// The cache of requests run here directly.
    pub kv: Arc<KvStats>,
    /// Where each step's logits are kept.
    pub logits_placement: LogitsPlacement,
    /// Logits moved between the device and the host.
    pub logits_traffic: Arc<LogitsTraffic>,
    pub(crate) device_ids: Arc<DeviceIds>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl From<LoadedModel> for Engine {
    fn from(m: LoadedModel) -> Self {
        let source = m.chat_template.as_ref().map(|t| t.source());
        let tool_format = ToolCallFormat::detect(source, &m.tokenizer);
        let template_renders_tools = m.chat_template.as_ref().is_some_and(|t| {
            t.has_tool_use() || ToolCallFormat::template_renders_tools(t.source())
        });
        Engine {
            name: m.name,
            model: m.model,
            tokenizer: m.tokenizer,
            chat_template: m.chat_template,
            tool_format,
            template_renders_tools,
            prefixes: Arc::default(),
            kv: Arc::default(),
            logits_placement: LogitsPlacement::default(),
            logits_traffic: Arc::default(),
            device_ids: Arc::default(),
        }
    }
}

impl Engine {
    /// This engine's tokenizer and templates over another model of the
    /// same vocabulary (the base with an adapter applied), with caches and
    /// counters of its own.
    pub fn with_model(&self, model: Arc<dyn CausalLm>) -> Engine {
        Engine {
            model,
            prefixes: Arc::default(),
            kv: Arc::default(),
            logits_traffic: Arc::default(),
            device_ids: Arc::default(),
            ..self.clone()
        }
    }

    /// This engine, keeping each step's logits as `placement` says.
    /// Its traffic is counted afresh.
    pub fn with_logits_placement(mut self, placement: LogitsPlacement) -> Self {
        self.logits_placement = placement;
        self.logits_traffic = Arc::default();
        self
    }

    /// The prompt's text (for a chat, the rendered template) and tokens.
    pub fn render_prompt(
        &self,
        prompt: &Prompt,
    ) -> Result<(Option<String>, Vec<u32>), GenerateError> {
        let tokenize = |text: &str, special: bool| {
            self.tokenizer
                .encode(text, special)
                .map_err(|e| GenerateError::Tokenize(e.to_string()))
        };
        match prompt {
            Prompt::Tokens(ids) => Ok((None, ids.clone())),
            Prompt::Text {
                text,
                add_special_tokens,
            } => Ok((Some(text.clone()), tokenize(text, *add_special_tokens)?)),
            Prompt::Chat { messages, tools } => {
                let template = self.chat_template.as_ref().ok_or_else(|| {
                    GenerateError::Template(format!(
                        "the model `{}` has no chat template",
                        self.name
                    ))
                })?;
                // Past calls and their results need adapting even when no
                // tools are offered this turn.
                let tool_history = messages
                    .iter()
                    .any(|m| !m.tool_calls.is_empty() || m.role == "tool");
                let adapted;
                let messages = if self.template_renders_tools || (tools.is_empty() && !tool_history)
                {
                    messages
                } else {
                    adapted = self
                        .tool_format
                        .adapt_messages(template.source(), messages, tools);
                    &adapted
                };
                let text = template
                    .render(messages, tools, true)
                    .map_err(|e| GenerateError::Template(e.to_string()))?;
                // The template writes BOS itself where the model wants one.
                let ids = tokenize(&text, false)?;
                Ok((Some(text), ids))
            }
        }
    }
}
