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
//! - else contains `SLEEP`: sleeps 20 s in WASI (a clock pollable), then
//!   scores 1.0;
//! - else contains `NAN`: scores NaN; `MAX`: scores `f64::MAX`;
//! - else contains `RANDOM`: scores a number in [0, 1) drawn from WASI's
//!   random source (through std's `RandomState`);
//! - else contains `CLOCK`: scores from the clocks: the wall clock's seconds
//!   plus the monotonic nanoseconds a 1 ms sleep took;
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

/// A number in [0, 1) from the host's random source.
fn random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(42);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// What the clocks say: wall seconds since the epoch plus the nanoseconds
/// a 1 ms sleep took on the monotonic clock.
fn clocks() -> f64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let start = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(1));
    wall + start.elapsed().as_nanos() as f64
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
            scores.push(Some(if has("SLEEP") {
                std::thread::sleep(std::time::Duration::from_secs(20));
                1.0
            } else if has("NAN") {
                f64::NAN
            } else if has("MAX") {
                f64::MAX
            } else if has("RANDOM") {
                random()
            } else if has("CLOCK") {
                clocks()
            } else {
                1.0
            }));
        }
        Ok(scores)
    }
}

deepwasm_sdk::export_reward!(HostileReward);
