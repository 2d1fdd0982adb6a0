//! Streaming: deciding, as text arrives, which of it may be shown.

use super::{THINK_BEGIN, THINK_END, ToolCallFormat, formats};
use crate::chat::ToolCall;

/// A part of the reply that is safe to show while it streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Reasoning text (`reasoning_content` deltas).
    Reasoning(String),
    /// Visible text (`content` deltas).
    Content(String),
}

/// Splits a streamed reply into reasoning and content deltas, holding back
/// whatever may turn out to be a tool call, and parses the calls at the end.
///
/// Text is held back from the point where a call marker begins, or where
/// the text so far ends in a prefix of one (`<tool_c`), or of `</think>`
/// while reasoning; and whitespace at the end of the reasoning or content
/// so far is held until something follows it (the results are trimmed).
/// Once a full marker has arrived, everything after it waits for
/// [`finish`](Self::finish), which parses the calls and returns any text
/// around them that was not a call. The pieces of all `push` and `finish`
/// calls together are exactly [`ToolCallFormat::parse`]'s content and
/// reasoning, however the text was cut into deltas.
#[derive(Debug)]
pub struct OutputSplitter {
    format: Option<ToolCallFormat>,
    opened: bool,
    phase: Phase,
    /// Text not yet shown or decided on.
    buf: String,
    /// Bytes pushed so far.
    pushed: usize,
    reasoning: Trimmed,
    content: Trimmed,
    id_prefix: String,
    calls: Vec<ToolCall>,
    /// The reply was cut short: a call (or call marker) it ends in is
    /// dropped, not shown as text.
    cut: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the first visible character: is there a `<think>`?
    Start,
    Reasoning,
    Content,
    /// A call marker has been seen: wait for the end.
    Calls,
}

/// Drops leading whitespace and holds trailing whitespace back, so that the
/// concatenated output is the trimmed concatenated input.
#[derive(Debug, Default)]
struct Trimmed {
    started: bool,
    pending: String,
}

impl Trimmed {
    fn emit(&mut self, text: &str) -> Option<String> {
        let text = if self.started {
            text
        } else {
            text.trim_start()
        };
        if text.is_empty() {
            return None;
        }
        let body = text.trim_end();
        let tail = &text[body.len()..];
        if body.is_empty() {
            self.pending.push_str(tail);
            return None;
        }
        self.started = true;
        let mut out = std::mem::take(&mut self.pending);
        out.push_str(body);
        self.pending.push_str(tail);
        Some(out)
    }
}

impl OutputSplitter {
    /// A splitter for a reply in `format`; `reasoning_opened_by_prompt` as
    /// for [`ToolCallFormat::parse`].
    pub fn new(format: ToolCallFormat, reasoning_opened_by_prompt: bool) -> Self {
        OutputSplitter {
            format: Some(format),
            ..Self::reasoning_only(reasoning_opened_by_prompt)
        }
    }

    /// A splitter that separates reasoning only (a request without tools):
    /// nothing is held back as a possible call.
    pub fn reasoning_only(reasoning_opened_by_prompt: bool) -> Self {
        OutputSplitter {
            format: None,
            opened: reasoning_opened_by_prompt,
            phase: Phase::Start,
            buf: String::new(),
            pushed: 0,
            reasoning: Trimmed::default(),
            content: Trimmed::default(),
            id_prefix: "call_".into(),
            calls: Vec::new(),
            cut: false,
        }
    }

    /// Call ids become `PREFIX0`, `PREFIX1`, … (default `call_`), for ids
    /// unique beyond one response.
    pub fn with_id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.id_prefix = prefix.into();
        self
    }

    /// Take the next delta; returns what may be shown now.
    pub fn push(&mut self, delta: &str) -> Vec<Piece> {
        self.buf.push_str(delta);
        self.pushed += delta.len();
        let mut out = Vec::new();
        self.advance(&mut out, false);
        out
    }

    /// Once a complete call marker has arrived: the byte offset, in all the
    /// text pushed so far, where it begins. A caller that constrains calls
    /// can stop there and have the call written again under its grammar.
    pub fn call_start(&self) -> Option<usize> {
        (self.phase == Phase::Calls).then(|| self.pushed - self.buf.len())
    }

    /// The end of the reply: the rest of the text, and the tool calls.
    pub fn finish(mut self) -> (Vec<Piece>, Vec<ToolCall>) {
        let mut out = Vec::new();
        self.advance(&mut out, true);
        (out, self.calls)
    }

    /// The end of a reply cut short by a length limit: as [`finish`], but a
    /// tool call the limit cut off (or the start of a call marker) is
    /// dropped instead of shown as content, where a client would take half a
    /// call for the answer.
    ///
    /// [`finish`]: OutputSplitter::finish
    pub fn finish_cut(mut self) -> (Vec<Piece>, Vec<ToolCall>) {
        self.cut = true;
        self.finish()
    }

    fn advance(&mut self, out: &mut Vec<Piece>, at_end: bool) {
        loop {
            match self.phase {
                Phase::Start => {
                    let rest = self.buf.trim_start();
                    if rest.starts_with(THINK_BEGIN) {
                        let cut = self.buf.len() - rest.len() + THINK_BEGIN.len();
                        self.buf.drain(..cut);
                        self.phase = Phase::Reasoning;
                        continue;
                    }
                    if !at_end && THINK_BEGIN.starts_with(rest) {
                        return;
                    }
                    self.phase = if self.opened {
                        Phase::Reasoning
                    } else {
                        Phase::Content
                    };
                }
                Phase::Reasoning => {
                    if let Some(end) = self.buf.find(THINK_END) {
                        self.show_reasoning(out, end);
                        self.buf.drain(..THINK_END.len());
                        self.phase = Phase::Content;
                        continue;
                    }
                    let keep = if at_end {
                        0
                    } else {
                        partial_suffix(&self.buf, THINK_END)
                    };
                    self.show_reasoning(out, self.buf.len() - keep);
                    return;
                }
                Phase::Content => {
                    let Some(format) = self.format else {
                        self.show_content(out, self.buf.len());
                        return;
                    };
                    match formats::find_marker(format, &self.buf, !self.content.started) {
                        Some((at, true)) => {
                            self.show_content(out, at);
                            self.phase = Phase::Calls;
                        }
                        Some((at, false)) if !at_end => {
                            self.show_content(out, at);
                            return;
                        }
                        Some((at, false)) if self.cut => {
                            // The limit cut the reply inside a call marker.
                            self.show_content(out, at);
                            self.buf.clear();
                            return;
                        }
                        _ => {
                            self.show_content(out, self.buf.len());
                            return;
                        }
                    }
                }
                Phase::Calls => {
                    if !at_end {
                        return;
                    }
                    let format = self
                        .format
                        .expect("calls are only looked for with a format");
                    let tail = std::mem::take(&mut self.buf);
                    let (content, calls) = formats::parse_tail(format, &tail, self.cut);
                    if let Some(text) = self.content.emit(&content) {
                        add(out, Piece::Content(text));
                    }
                    for (name, arguments) in calls {
                        let id = format!("{}{}", self.id_prefix, self.calls.len());
                        self.calls.push(ToolCall {
                            id,
                            name,
                            arguments,
                        });
                    }
                    return;
                }
            }
        }
    }

    /// Show `buf[..end]` as reasoning.
    fn show_reasoning(&mut self, out: &mut Vec<Piece>, end: usize) {
        if let Some(text) = self.reasoning.emit(&self.buf[..end]) {
            add(out, Piece::Reasoning(text));
        }
        self.buf.drain(..end);
    }

    /// Show `buf[..end]` as content.
    fn show_content(&mut self, out: &mut Vec<Piece>, end: usize) {
        if let Some(text) = self.content.emit(&self.buf[..end]) {
            add(out, Piece::Content(text));
        }
        self.buf.drain(..end);
    }
}

/// Append, merging with the last piece when it is of the same kind.
fn add(out: &mut Vec<Piece>, piece: Piece) {
    match (out.last_mut(), piece) {
        (Some(Piece::Reasoning(last)), Piece::Reasoning(text))
        | (Some(Piece::Content(last)), Piece::Content(text)) => last.push_str(&text),
        (_, piece) => out.push(piece),
    }
}

/// The length of the longest proper prefix of `marker` that `text` ends
/// with (`marker` is ASCII, so the cut is a character boundary).
pub(super) fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .find(|&k| text.ends_with(&marker[..k]))
        .unwrap_or(0)
}
