//! `hostile-sampler`: a sampler plugin that misbehaves on purpose, for the
//! host's containment tests.
//!
//! Config:
//!
//! ```json
//! {"mode": "ok"}
//! ```
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
//!
//! Were `decide` called in a mode whose `prepare` decides, it answers a defer.

use std::hint::black_box;

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::sampler::{
    self, Decision, Guest, GuestSequence, Logits, Prepared, SampleSpec, Sequence,
};
use deepwasm_sdk::types::{Error, SamplingParams, TokenId};

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
}

const MODES: &[(&str, Mode)] = &[
    ("ok", Mode::Ok),
    ("loop-prepare", Mode::LoopPrepare),
    ("loop-decide", Mode::LoopDecide),
    ("trap-prepare", Mode::TrapPrepare),
    ("oom-prepare", Mode::OomPrepare),
    ("bad-token", Mode::BadToken),
    ("error", Mode::Error),
];

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
        cfg.only(&["mode"])?;
        let name: String = cfg.get_or("mode", "ok".to_string())?;
        let Some(&(_, mode)) = MODES.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = MODES.iter().map(|(n, _)| *n).collect();
            return Err(cfg.error(
                "mode",
                format!("unknown mode {name:?}; one of: {}", names.join(", ")),
            ));
        };
        Ok(Sequence::new(HostileSequence { mode }))
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
        }
    }

    fn decide(&self, _step: u32, _logits: &Logits) -> Result<Decision, Error> {
        match self.mode {
            Mode::LoopDecide => spin(),
            _ => Ok(Decision::Sample(SampleSpec::default())),
        }
    }
}

deepwasm_sdk::export_sampler!(HostileSampler);
