//! The samplers of tool-call turns: one that watches free text for the
//! start of a call (or the end of the reasoning) and stops there, and one
//! that writes exactly one call under the tool-call grammar.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use deepwasm_model::toolcall::{THINK_END, ToolChoiceError};
use deepwasm_model::{CallConstraint, OutputSplitter, Tokenizer, ToolCallFormat, ToolSpec};
use deepwasm_plugins::LogitsHandle;
use deepwasm_plugins::SamplerPlugin;

use super::CALL_STEP_BUDGET;
use crate::plugin_sampler::{MissPolicy, PluginSampler};
use crate::sampler::{Decision, Prepared, Reply, SampleSpec, Sampler, SamplerError};
use crate::sampling::{SamplingParams, TokenSet};

/// What a [`Watch`] saw: the text generated, and where it stopped.
#[derive(Clone, Default)]
pub(super) struct Watched(Arc<Mutex<(String, Option<usize>)>>);

impl Watched {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// The byte offset in the text where the watch stopped generation.
    pub(super) fn cut(&self) -> Option<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    pub(super) fn text_before(&self, cut: usize) -> String {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        guard.0.get(..cut).unwrap_or(&guard.0).to_owned()
    }
}

enum Until {
    /// A complete call marker, after any reasoning: cut before it.
    CallStart(Box<OutputSplitter>),
    /// `</think>`: cut after it.
    ReasoningEnd,
}

/// Samples like the built-in sampler, and ends the sequence once its text
/// reaches the point it watches for.
pub(super) struct Watch {
    tokenizer: Arc<Tokenizer>,
    until: Until,
    /// The raw bytes of the tokens so far, and how many are in the text.
    bytes: Vec<u8>,
    decoded: usize,
    watched: Watched,
}

impl Watch {
    pub(super) fn call_start(
        tokenizer: Arc<Tokenizer>,
        format: ToolCallFormat,
        reasoning_opened: bool,
        watched: Watched,
    ) -> Self {
        Watch {
            tokenizer,
            until: Until::CallStart(Box::new(OutputSplitter::new(format, reasoning_opened))),
            bytes: Vec::new(),
            decoded: 0,
            watched,
        }
    }

    pub(super) fn reasoning_end(tokenizer: Arc<Tokenizer>, watched: Watched) -> Self {
        Watch {
            tokenizer,
            until: Until::ReasoningEnd,
            bytes: Vec::new(),
            decoded: 0,
            watched,
        }
    }

    /// The text of the bytes not yet decoded, up to an incomplete
    /// character at the end.
    fn decode_more(&mut self) -> String {
        let mut out = String::new();
        loop {
            let rest = &self.bytes[self.decoded..];
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    self.decoded = self.bytes.len();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    self.decoded += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.decoded += bad;
                        }
                        None => return out,
                    }
                }
            }
        }
    }
}

impl Sampler for Watch {
    fn name(&self) -> &str {
        "built-in"
    }

    fn prepare(
        &mut self,
        _step: u32,
        new_tokens: &[u32],
        _until: Instant,
    ) -> Result<Reply<Prepared>, SamplerError> {
        for &t in new_tokens {
            if let Some(bytes) = self.tokenizer.token_bytes(t) {
                self.bytes.extend_from_slice(bytes);
            }
        }
        let delta = self.decode_more();
        let mut guard = self.watched.0.lock().unwrap_or_else(|e| e.into_inner());
        let (text, cut) = &mut *guard;
        let searched_from = text.len().saturating_sub(THINK_END.len());
        text.push_str(&delta);
        let found = match &mut self.until {
            Until::CallStart(splitter) => {
                splitter.push(&delta);
                splitter.call_start()
            }
            Until::ReasoningEnd => text[searched_from..]
                .find(THINK_END)
                .map(|at| searched_from + at + THINK_END.len()),
        };
        Ok(Reply::Ready(Prepared::Decided(match found {
            Some(at) => {
                *cut = Some(at);
                Decision::Stop
            }
            None => Decision::Sample(SampleSpec::default()),
        })))
    }

    fn decide(
        &mut self,
        _step: u32,
        _logits: &LogitsHandle,
        _until: Instant,
    ) -> Result<Reply<Decision>, SamplerError> {
        Ok(Reply::Ready(Decision::Sample(SampleSpec::default())))
    }
}

enum Stage {
    /// Append these tokens, then go on.
    Force(Vec<u32>, Box<Stage>),
    /// The model picks one of these names, each with what the format
    /// writes after it, as token sequences.
    Choose {
        names: Vec<(String, Vec<u32>)>,
        written: Vec<u32>,
    },
    /// The JSON-schema sampler is to write a JSON value, then `suffix`.
    Json {
        config: String,
        suffix: Vec<u32>,
    },
    /// It is writing it: its next step, and the step of its last prepare.
    Writing {
        sampler: Box<PluginSampler>,
        next_step: u32,
        suffix: Vec<u32>,
    },
    Done,
}

/// Writes exactly one tool call in the model's format: the format's fixed
/// text forced, the tool's name chosen among the tools (when the format
/// names it outside the JSON), the JSON written by the JSON-schema sampler
/// under the call's schema, the closing text forced, and the sequence ended
/// (see [`CallConstraint`]).
pub struct CallSampler {
    tokenizer: Arc<Tokenizer>,
    format: ToolCallFormat,
    tools: Vec<ToolSpec>,
    plugin: SamplerPlugin,
    prompt: Vec<u32>,
    params: SamplingParams,
    stage: Stage,
    /// The tokens the next `prepare` gets were forced by this sampler, not
    /// written by the model or the JSON sampler.
    forced: bool,
    /// The step whose `prepare` the JSON sampler has not answered yet: the
    /// next call for it only collects the answer.
    asked: Option<u32>,
}

impl CallSampler {
    /// A sampler that writes one call to one of `tools` (or to the tool
    /// `named`) in `format`, its JSON written by `plugin` (the JSON-schema
    /// sampler, see [`call_sampler`](super::call_sampler)).
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        format: ToolCallFormat,
        tools: Vec<ToolSpec>,
        named: Option<&str>,
        plugin: SamplerPlugin,
    ) -> Result<Self, ToolChoiceError> {
        let constraint = format.call_constraint(&tools, named)?;
        let encode = |text: &str| tokenizer.encode(text, false).unwrap_or_default();
        let stage = match &constraint {
            CallConstraint::Json { prefix, suffix, .. } => Stage::Force(
                encode(prefix),
                Box::new(Stage::Json {
                    config: constraint.sampler_config().to_string(),
                    suffix: encode(suffix),
                }),
            ),
            CallConstraint::ChooseName {
                prefix,
                names,
                name_end,
                ..
            } => Stage::Force(
                encode(prefix),
                Box::new(Stage::Choose {
                    names: names
                        .iter()
                        .map(|n| (n.clone(), encode(&format!("{n}{name_end}"))))
                        .collect(),
                    written: Vec::new(),
                }),
            ),
        };
        Ok(CallSampler {
            tokenizer,
            format,
            tools,
            plugin,
            prompt: Vec::new(),
            params: SamplingParams::default(),
            stage,
            forced: false,
            asked: None,
        })
    }

    fn error(&self, message: impl Into<String>) -> SamplerError {
        SamplerError {
            sampler: "tool-call grammar".into(),
            message: message.into(),
            source: None,
        }
    }

    /// What the JSON sampler's decision becomes: once its value is complete
    /// (it allows only EOS, or stops), the closing text and the end.
    fn through(&mut self, decision: Decision) -> Option<Decision> {
        let complete = match &decision {
            Decision::Stop => true,
            Decision::Pick(t) => self.tokenizer.eos().contains(t),
            Decision::Sample(SampleSpec {
                allow: Some(set), ..
            }) => only_eos(set, self.tokenizer.eos()),
            _ => false,
        };
        if !complete {
            return Some(decision);
        }
        let Stage::Writing { suffix, .. } = std::mem::replace(&mut self.stage, Stage::Done) else {
            return Some(decision);
        };
        if suffix.is_empty() {
            None
        } else {
            self.forced = true;
            Some(Decision::Force(suffix))
        }
    }
}

impl Sampler for CallSampler {
    fn name(&self) -> &str {
        "tool-call grammar"
    }

    fn begin(&mut self, prompt: &[u32], params: &SamplingParams) -> Result<(), SamplerError> {
        self.prompt = prompt.to_vec();
        self.params = params.clone();
        Ok(())
    }

    fn prepare(
        &mut self,
        step: u32,
        new_tokens: &[u32],
        until: Instant,
    ) -> Result<Reply<Prepared>, SamplerError> {
        let mut new = if self.asked.take() == Some(step) || std::mem::take(&mut self.forced) {
            &[][..]
        } else {
            new_tokens
        };
        loop {
            match std::mem::replace(&mut self.stage, Stage::Done) {
                Stage::Force(tokens, next) => {
                    self.stage = *next;
                    if !tokens.is_empty() {
                        self.forced = true;
                        return Ok(Reply::Ready(Prepared::Decided(Decision::Force(tokens))));
                    }
                }
                Stage::Choose {
                    mut names,
                    mut written,
                } => {
                    written.extend_from_slice(new);
                    new = &[];
                    names.retain(|(_, seq)| seq.starts_with(&written));
                    if let Some((name, _)) = names.iter().find(|(_, seq)| *seq == written) {
                        let constraint = self
                            .format
                            .call_constraint(&self.tools, Some(name))
                            .map_err(|e| self.error(e.to_string()))?;
                        let CallConstraint::Json { suffix, .. } = &constraint else {
                            return Err(self.error("a named call has no JSON part"));
                        };
                        // Its prefix is exactly what has been written.
                        self.stage = Stage::Json {
                            config: constraint.sampler_config().to_string(),
                            suffix: self.tokenizer.encode(suffix, false).unwrap_or_default(),
                        };
                        continue;
                    }
                    let mut next: Vec<u32> =
                        names.iter().map(|(_, seq)| seq[written.len()]).collect();
                    next.sort_unstable();
                    next.dedup();
                    if next.is_empty() {
                        return Err(self.error("the tool name written matches no tool"));
                    }
                    self.stage = Stage::Choose { names, written };
                    return Ok(Reply::Ready(Prepared::Decided(Decision::Sample(
                        SampleSpec {
                            allow: Some(TokenSet::Ids(next)),
                            ..SampleSpec::default()
                        },
                    ))));
                }
                Stage::Json { config, suffix } => {
                    let mut sampler = Box::new(PluginSampler::new(
                        self.plugin.clone(),
                        &config,
                        CALL_STEP_BUDGET,
                        MissPolicy::Fail,
                    ));
                    sampler.begin(&self.prompt, &self.params)?;
                    new = &[];
                    self.stage = Stage::Writing {
                        sampler,
                        next_step: 0,
                        suffix,
                    };
                }
                Stage::Writing {
                    mut sampler,
                    next_step,
                    suffix,
                } => {
                    let prepared = sampler.prepare(next_step, new, until);
                    let answered = matches!(prepared, Ok(Reply::Ready(_)));
                    self.stage = Stage::Writing {
                        sampler,
                        next_step: next_step + u32::from(answered),
                        suffix,
                    };
                    let decision = match prepared? {
                        Reply::Pending => {
                            self.asked = Some(step);
                            return Ok(Reply::Pending);
                        }
                        Reply::Ready(Prepared::NeedLogits) => {
                            return Ok(Reply::Ready(Prepared::NeedLogits));
                        }
                        Reply::Ready(Prepared::Decided(d)) => d,
                    };
                    return Ok(Reply::Ready(Prepared::Decided(
                        self.through(decision).unwrap_or(Decision::Stop),
                    )));
                }
                Stage::Done => return Ok(Reply::Ready(Prepared::Decided(Decision::Stop))),
            }
        }
    }

    fn decide(
        &mut self,
        _step: u32,
        logits: &LogitsHandle,
        until: Instant,
    ) -> Result<Reply<Decision>, SamplerError> {
        let Stage::Writing {
            sampler, next_step, ..
        } = &mut self.stage
        else {
            return Err(self.error("asked to decide outside the JSON part"));
        };
        match sampler.decide(*next_step - 1, logits, until)? {
            Reply::Pending => Ok(Reply::Pending),
            Reply::Ready(d) => Ok(Reply::Ready(self.through(d).unwrap_or(Decision::Stop))),
        }
    }
}

/// Whether `set` holds at least one token and nothing but `eos` tokens.
fn only_eos(set: &TokenSet, eos: &[u32]) -> bool {
    let mut any = false;
    let mut check = |t: u32| {
        any = true;
        eos.contains(&t)
    };
    let all = match set {
        TokenSet::Ids(ids) => ids.iter().all(|&t| check(t)),
        TokenSet::Ranges(ranges) => ranges.iter().all(|r| {
            // A range wider than the EOS list cannot lie within it.
            (r.end.saturating_sub(r.start) as usize) <= eos.len()
                && (r.start..r.end).all(&mut check)
        }),
        TokenSet::Bitset(words) => words.iter().enumerate().all(|(i, &word)| {
            (0..32)
                .filter(|bit| word & (1 << bit) != 0)
                .all(|bit| check(i as u32 * 32 + bit))
        }),
    };
    all && any
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::TokenRange;

    #[test]
    fn only_eos_reads_every_encoding() {
        let eos = [2, 40];
        assert!(only_eos(&TokenSet::Ids(vec![2]), &eos));
        assert!(only_eos(&TokenSet::Ids(vec![40, 2]), &eos));
        assert!(!only_eos(&TokenSet::Ids(vec![2, 3]), &eos));
        assert!(!only_eos(&TokenSet::Ids(vec![]), &eos));
        assert!(only_eos(
            &TokenSet::Ranges(vec![TokenRange { start: 2, end: 3 }]),
            &eos
        ));
        assert!(!only_eos(
            &TokenSet::Ranges(vec![TokenRange { start: 2, end: 4 }]),
            &eos
        ));
        assert!(!only_eos(
            &TokenSet::Ranges(vec![TokenRange {
                start: 0,
                end: 100_000
            }]),
            &eos
        ));
        assert!(only_eos(&TokenSet::Bitset(vec![1 << 2, 1 << 8]), &eos));
        assert!(!only_eos(&TokenSet::Bitset(vec![1 << 2 | 1, 0]), &eos));
        assert!(!only_eos(&TokenSet::Bitset(vec![0, 0]), &eos));
    }
}
