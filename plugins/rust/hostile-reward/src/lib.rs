//! `hostile-reward`: a reward plugin that misbehaves on purpose, for the
//! host's containment tests.
//!
//! Config: none (ignored).
//!
//! For each sample in order, by its completion, or by its `extra` when that
//! holds the trigger word (e.g. `{"hostile": "TRAP"}`, so a dataset row can
//! make the reward fail on whatever the model wrote):
//! - contains `LOOP`: loops forever (a counter kept opaque to the optimiser);
//! - else contains `TRAP`: panics (prints to stderr, then aborts: a trap);
//! - else contains `OOM`: allocates and touches 1 MiB blocks forever, keeping
//!   them all, until the host's memory limit makes allocation fail (a trap);
//! - otherwise: scores 1.0.
//!
//! So a batch scores `[1.0, …]` only when no completion holds a trigger word.

use std::hint::black_box;

use deepwasm_sdk::reward::{Guest, Sample};
use deepwasm_sdk::types::Error;

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

struct HostileReward;

impl Guest for HostileReward {
    fn score(samples: Vec<Sample>, _config: String) -> Result<Vec<Option<f64>>, Error> {
        let mut scores = Vec::with_capacity(samples.len());
        for s in &samples {
            let has = |word: &str| s.completion.contains(word) || s.extra.contains(word);
            if has("LOOP") {
                spin();
            } else if has("TRAP") {
                panic!("hostile-reward: deliberate panic");
            } else if has("OOM") {
                hoard();
            }
            scores.push(Some(1.0));
        }
        Ok(scores)
    }
}

deepwasm_sdk::export_reward!(HostileReward);
