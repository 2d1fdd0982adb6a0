//! A choice's generated text as the API shows it: content, reasoning and
//! tool calls, split as the text streams.

use deepwasm_model::{OutputSplitter, Piece, ToolCall, ToolCallFormat};

/// A piece of a choice's output.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Content(String),
    Reasoning(String),
    ToolCall(ToolCall),
}

/// How a chat reply is split: which tool-call format to look for (none
/// when the request has no tools), and whether the prompt opened `<think>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Split {
    pub tools: Option<ToolCallFormat>,
    pub reasoning_opened: bool,
    /// At most one tool call is shown (`parallel_tool_calls: false`);
    /// calls after the first are dropped.
    pub one_call: bool,
    /// The request used legacy `functions`: its call is shown as
    /// `function_call` (and implies `one_call`).
    pub legacy_functions: bool,
}

/// Splits one choice's text, keeping what it has shown.
#[derive(Debug)]
pub struct ChoiceOutput {
    splitter: Option<OutputSplitter>,
    one_call: bool,
    pub content: String,
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
}

impl ChoiceOutput {
    /// The output of choice `index` of response `id` (call ids are unique
    /// across responses and choices).
    pub fn new(split: Split, id: &str, index: usize) -> Self {
        let splitter = match split.tools {
            Some(format) => OutputSplitter::new(format, split.reasoning_opened),
            None => OutputSplitter::reasoning_only(split.reasoning_opened),
        };
        let suffix = id.rsplit('-').next().unwrap_or(id);
        ChoiceOutput {
            splitter: Some(splitter.with_id_prefix(format!("call_{suffix}_{index}_"))),
            one_call: split.one_call || split.legacy_functions,
            content: String::new(),
            reasoning: String::new(),
            tool_calls: Vec::new(),
        }
    }

    /// Split a whole text at once; `cut`: a length limit ended it (see
    /// [`ChoiceOutput::finish`]).
    pub fn whole(split: Split, id: &str, index: usize, text: &str, cut: bool) -> Self {
        let mut out = Self::new(split, id, index);
        out.push(text);
        out.finish(cut);
        out
    }

    /// Feed new text; returns the parts that may be shown now.
    pub fn push(&mut self, text: &str) -> Vec<Part> {
        match self.splitter.as_mut() {
            Some(s) if !text.is_empty() => {
                let pieces = s.push(text);
                self.keep(pieces)
            }
            _ => Vec::new(),
        }
    }

    /// The end of the text: whatever was held back, and the tool calls.
    /// `cut`: a length limit ended the text, so a tool call it cut off is
    /// dropped rather than shown as content (the choice's `length` finish
    /// says what happened).
    pub fn finish(&mut self, cut: bool) -> Vec<Part> {
        let Some(splitter) = self.splitter.take() else {
            return Vec::new();
        };
        let (pieces, calls) = match cut {
            true => splitter.finish_cut(),
            false => splitter.finish(),
        };
        let mut parts = self.keep(pieces);
        let room = match self.one_call {
            true => 1usize.saturating_sub(self.tool_calls.len()),
            false => usize::MAX,
        };
        let calls: Vec<ToolCall> = calls.into_iter().take(room).collect();
        self.tool_calls.extend(calls.iter().cloned());
        parts.extend(calls.into_iter().map(Part::ToolCall));
        parts
    }

    fn keep(&mut self, pieces: Vec<Piece>) -> Vec<Part> {
        pieces
            .into_iter()
            .map(|p| match p {
                Piece::Content(t) => {
                    self.content.push_str(&t);
                    Part::Content(t)
                }
                Piece::Reasoning(t) => {
                    self.reasoning.push_str(&t);
                    Part::Reasoning(t)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_CALLS: &str = "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>";

    fn calls(split: Split) -> Vec<String> {
        ChoiceOutput::whole(split, "chatcmpl-1", 0, TWO_CALLS, false)
            .tool_calls
            .into_iter()
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn one_call_keeps_only_the_first_call() {
        let split = Split {
            tools: Some(ToolCallFormat::Hermes),
            ..Split::default()
        };
        assert_eq!(calls(split), ["a", "b"]);
        let one = Split {
            one_call: true,
            ..split
        };
        assert_eq!(calls(one), ["a"]);
        let legacy = Split {
            legacy_functions: true,
            ..split
        };
        assert_eq!(calls(legacy), ["a"]);
    }
}
