//! `hostile-sampler`: a sampler plugin that misbehaves on purpose, for the
//! host's containment tests.
//!
//! Config:
//!
//! ```json
//! {"mode": "ok", "token": 0, "delay_ms": 50}
//! ```
//!
//! (`token` and `delay_ms` are read by `slow-pick` only.)
//!
//! `setup` always succeeds at once. `open` fails with `invalid-input` on an
//! unknown mode; `mode` defaults to `ok`. Then, at every step:
//!
//! | mode           | `prepare`                                        | `decide` |
//! |----------------|--------------------------------------------------|----------|
//! | `ok`           | `decided(sample{})` with nothing set (a defer)   | — |
//! | `loop-prepare` | loops forever                                    | — |
//! | `loop-decide`  | `need-logits`                                    | loops forever |
//! | `trap-prepare` | executes the wasm `unreachable` instruction      | — |
//! | `oom-prepare`  | allocates and touches 1 MiB blocks forever (a trap once allocation fails) | — |
//! | `bad-token`    | `decided(pick(4000000000))`, an id past any vocabulary | — |
//! | `error`        | `error::failed("hostile-sampler: deliberate error")` | — |
//! | `sleep-prepare`| sleeps 60 s in WASI (a clock pollable), then defers | — |
//! | `sleep-decide` | `need-logits`                                    | sleeps 60 s, then samples |
//! | `sleep-open`   | — (`open` itself sleeps 60 s before it succeeds)  | — |
//! | `bad-params`   | `decided(sample{params})` with a NaN temperature | — |
//! | `slow-pick`    | sleeps `delay_ms` (default 50), then `decided(pick(token))` (`token` default 0) | — |
//! | `wide-deny`    | `decided(sample{deny})`: 200,000 ranges, each of every token but 0 | — |
//! | `wide-top-k`   | `need-logits`                                    | `top-k-in` over 20,000 ranges of the whole vocabulary, then picks the best |
//!
//! Were `decide` called in a mode whose `prepare` decides, it answers a defer.

use std::hint::black_box;

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::sampler::{
    self, Decision, Guest, GuestSequence, Logits, Prepared, SampleSpec, Sequence,
};
use deepwasm_sdk::types::{Error, SamplingParams, TokenId, TokenRange, TokenSet};

/// The token id `bad-token` picks.
const BAD_TOKEN: TokenId = 4_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ok,
    LoopPrepare,
    LoopDecide,
    TrapPrepare,
    OomPrepare,
    BadToken,
    Error,
    SleepPrepare,
    SleepDecide,
    SleepOpen,
    BadParams,
    SlowPick,
    WideDeny,
    WideTopK,
}

const MODES: &[(&str, Mode)] = &[
    ("ok", Mode::Ok),
    ("loop-prepare", Mode::LoopPrepare),
    ("loop-decide", Mode::LoopDecide),
    ("trap-prepare", Mode::TrapPrepare),
    ("oom-prepare", Mode::OomPrepare),
    ("bad-token", Mode::BadToken),
    ("error", Mode::Error),
    ("sleep-prepare", Mode::SleepPrepare),
    ("sleep-decide", Mode::SleepDecide),
    ("sleep-open", Mode::SleepOpen),
    ("bad-params", Mode::BadParams),
    ("slow-pick", Mode::SlowPick),
    ("wide-deny", Mode::WideDeny),
    ("wide-top-k", Mode::WideTopK),
];

/// How long the sleeping modes wait: far past any deadline.
const SLEEP: std::time::Duration = std::time::Duration::from_secs(60);

fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

fn hoard() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(black_box(vec![1u8; 1 << 20]));
        black_box(&blocks);
    }
}

fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::unreachable()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::process::abort()
    }
}

struct HostileSampler;

struct HostileSequence {
    mode: Mode,
    token: TokenId,
    delay: std::time::Duration,
}

impl Guest for HostileSampler {
    type Sequence = HostileSequence;

    fn setup() -> Result<(), Error> {
        Ok(())
    }
}

impl GuestSequence for HostileSequence {
    fn open(
        config: String,
        _prompt: Vec<TokenId>,
        _params: SamplingParams,
    ) -> Result<Sequence, Error> {
        let cfg = Fields::parse("config", &config)?;
        cfg.only(&["mode", "token", "delay_ms"])?;
        let token: TokenId = cfg.get_or("token", 0)?;
        let delay_ms: u64 = cfg.get_or("delay_ms", 50)?;
        let name: String = cfg.get_or("mode", "ok".to_string())?;
        let Some(&(_, mode)) = MODES.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = MODES.iter().map(|(n, _)| *n).collect();
            return Err(cfg.error(
                "mode",
                format!("unknown mode {name:?}; one of: {}", names.join(", ")),
            ));
        };
        if mode == Mode::SleepOpen {
            std::thread::sleep(SLEEP);
        }
        Ok(Sequence::new(HostileSequence {
            mode,
            token,
            delay: std::time::Duration::from_millis(delay_ms),
        }))
    }

    fn prepare(&self, _step: u32, _new_tokens: Vec<TokenId>) -> Result<Prepared, Error> {
        match self.mode {
            Mode::Ok => Ok(sampler::defer()),
            Mode::LoopPrepare => spin(),
            Mode::LoopDecide => Ok(Prepared::NeedLogits),
            Mode::TrapPrepare => trap(),
            Mode::OomPrepare => hoard(),
            Mode::BadToken => Ok(Prepared::Decided(Decision::Pick(BAD_TOKEN))),
            Mode::Error => Err(Error::failed("hostile-sampler: deliberate error")),
            Mode::SleepPrepare => {
                std::thread::sleep(SLEEP);
                Ok(sampler::defer())
            }
            Mode::SleepDecide => Ok(Prepared::NeedLogits),
            Mode::SleepOpen => Ok(sampler::defer()),
            Mode::SlowPick => {
                std::thread::sleep(self.delay);
                Ok(Prepared::Decided(Decision::Pick(self.token)))
            }
            Mode::WideDeny => Ok(Prepared::Decided(Decision::Sample(SampleSpec {
                deny: Some(TokenSet::Ranges(vec![
                    TokenRange {
                        start: 1,
                        end: u32::MAX
                    };
                    200_000
                ])),
                ..SampleSpec::default()
            }))),
            Mode::WideTopK => Ok(Prepared::NeedLogits),
            Mode::BadParams => Ok(Prepared::Decided(Decision::Sample(SampleSpec {
                params: Some(SamplingParams {
                    temperature: Some(f32::NAN),
                    top_k: None,
                    top_p: None,
                    min_p: None,
                    repetition_penalty: None,
                    presence_penalty: None,
                    frequency_penalty: None,
                    seed: None,
                }),
                ..SampleSpec::default()
            }))),
        }
    }

    fn decide(&self, _step: u32, logits: &Logits) -> Result<Decision, Error> {
        match self.mode {
            Mode::LoopDecide => spin(),
            Mode::SleepDecide => {
                std::thread::sleep(SLEEP);
                Ok(Decision::Sample(SampleSpec::default()))
            }
            Mode::WideTopK => {
                let all = TokenRange {
                    start: 0,
                    end: u32::MAX,
                };
                let best = logits.top_k_in(&TokenSet::Ranges(vec![all; 20_000]), 1);
                Ok(Decision::Pick(best.first().map_or(0, |t| t.token)))
            }
            _ => Ok(Decision::Sample(SampleSpec::default())),
        }
    }
}

deepwasm_sdk::export_sampler!(HostileSampler);
