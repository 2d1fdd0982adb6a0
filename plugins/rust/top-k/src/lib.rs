//! `top-k`: a sampler plugin that samples among the `k` best tokens itself,
//! with its own deterministic random number generator.
//!
//! Config (every field optional):
//!
//! ```json
//! {"k": 40, "temperature": 0.7, "seed": 1}
//! ```
//!
//! - `k` (integer ≥ 1, default 40): how many of the best tokens to sample from.
//! - `temperature` (number ≥ 0, default 1.0): softmax temperature; 0 picks the
//!   best token.
//! - `seed` (unsigned integer): seed of the sequence's generator; when absent
//!   the request's `params.seed` is used, else 0.
//!
//! Behaviour, at every step:
//! - `prepare` answers `need-logits`;
//! - `decide` asks the host for `logits.top-k(k)` only (never `copy-all`),
//!   computes `softmax(logit / temperature)` over those `k` logits, draws
//!   `u ∈ [0, 1)` from a splitmix64 generator and picks the first token whose
//!   cumulative probability exceeds `u`. With temperature 0, or when the
//!   weights are not usable (all zero or not finite), it picks the best token.
//!
//! The generator is seeded when the sequence opens and advances once per step,
//! so the same seed, prompt and model give the same tokens. No WASI randomness
//! is used.

use std::cell::Cell;

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::sampler::{Decision, Guest, GuestSequence, Logits, Prepared, Sequence};
use deepwasm_sdk::types::{Error, SamplingParams, TokenId};

/// The splitmix64 generator (Steele, Lea and Flood, 2014): a 64-bit counter
/// passed through a mixing function.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Pick an index of `logits` (best first) by sampling `softmax(logits / temperature)`
/// with the uniform draw `u ∈ [0, 1)`. Temperature 0, an empty tail or unusable
/// weights give index 0.
pub fn sample_index(logits: &[f32], temperature: f64, u: f64) -> usize {
    if logits.len() <= 1 || temperature <= 0.0 {
        return 0;
    }
    let max = logits
        .iter()
        .map(|&l| l as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return 0;
    }
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature).exp())
        .map(|w| if w.is_finite() { w } else { 0.0 })
        .collect();
    let total: f64 = weights.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return 0;
    }
    let target = u * total;
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if target < acc {
            return i;
        }
    }
    // Rounding left `target` at or past the last partial sum: take the last
    // token with a non-zero weight.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

/// The settings of one sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Number of best tokens to sample among.
    pub k: u32,
    /// Softmax temperature.
    pub temperature: f64,
    /// Seed of the generator.
    pub seed: u64,
}

impl Settings {
    /// Read the config JSON, falling back to `request_seed` for the seed.
    pub fn from_config(config: &str, request_seed: Option<u64>) -> Result<Self, Error> {
        let cfg = Fields::parse("config", config)?;
        cfg.only(&["k", "temperature", "seed"])?;
        let k: u32 = cfg.get_or("k", 40)?;
        if k == 0 {
            return Err(cfg.error("k", "must be at least 1"));
        }
        let temperature: f64 = cfg.get_or("temperature", 1.0)?;
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(cfg.error("temperature", "must be a finite number >= 0"));
        }
        let seed = cfg.get("seed")?.or(request_seed).unwrap_or(0);
        Ok(Settings {
            k,
            temperature,
            seed,
        })
    }
}

struct TopK;

struct TopKSequence {
    settings: Settings,
    rng: Cell<u64>,
}

impl Guest for TopK {
    type Sequence = TopKSequence;

    fn setup() -> Result<(), Error> {
        Ok(())
    }
}

impl GuestSequence for TopKSequence {
    fn open(
        config: String,
        _prompt: Vec<TokenId>,
        params: SamplingParams,
    ) -> Result<Sequence, Error> {
        let settings = Settings::from_config(&config, params.seed)?;
        let rng = Cell::new(settings.seed);
        Ok(Sequence::new(TopKSequence { settings, rng }))
    }

    fn prepare(&self, _step: u32, _new_tokens: Vec<TokenId>) -> Result<Prepared, Error> {
        Ok(Prepared::NeedLogits)
    }

    fn decide(&self, _step: u32, logits: &Logits) -> Result<Decision, Error> {
        let best = logits.top_k(self.settings.k);
        if best.is_empty() {
            return Err(Error::failed("the host returned no logits"));
        }
        let mut rng = SplitMix64 {
            state: self.rng.get(),
        };
        let u = rng.next_f64();
        self.rng.set(rng.state);
        let scores: Vec<f32> = best.iter().map(|s| s.logit).collect();
        let i = sample_index(&scores, self.settings.temperature, u);
        Ok(Decision::Pick(best[i].token))
    }
}

deepwasm_sdk::export_sampler!(TopK);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs of splitmix64 seeded with 0 (widely published).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SplitMix64::new(1);
        let u = r.next_f64();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn temperature_zero_and_edges_pick_best() {
        assert_eq!(sample_index(&[3.0, 2.0, 1.0], 0.0, 0.99), 0);
        assert_eq!(sample_index(&[3.0], 1.0, 0.99), 0);
        assert_eq!(sample_index(&[], 1.0, 0.5), 0);
        assert_eq!(
            sample_index(&[f32::NEG_INFINITY, f32::NEG_INFINITY], 1.0, 0.5),
            0
        );
    }

    #[test]
    fn sampling_follows_the_softmax() {
        // Equal logits: uniform over the three.
        let l = [1.0, 1.0, 1.0];
        assert_eq!(sample_index(&l, 1.0, 0.0), 0);
        assert_eq!(sample_index(&l, 1.0, 0.34), 1);
        assert_eq!(sample_index(&l, 1.0, 0.99), 2);
        // ln 3 apart: probabilities 3/4 and 1/4.
        let l = [(3.0f32).ln(), 0.0];
        assert_eq!(sample_index(&l, 1.0, 0.74), 0);
        assert_eq!(sample_index(&l, 1.0, 0.76), 1);
        // A low temperature sharpens towards the best.
        assert_eq!(sample_index(&l, 0.01, 0.999), 0);
        // -inf tail never picked.
        assert_eq!(sample_index(&[0.0, f32::NEG_INFINITY], 1.0, 0.999_999), 0);
    }

    #[test]
    fn empirical_frequencies() {
        let l = [(3.0f32).ln(), 0.0];
        let mut r = SplitMix64::new(42);
        let n = 100_000;
        let zeros = (0..n)
            .filter(|_| sample_index(&l, 1.0, r.next_f64()) == 0)
            .count();
        let p = zeros as f64 / n as f64;
        assert!((p - 0.75).abs() < 0.01, "{p}");
    }

    #[test]
    fn config() {
        let s = Settings::from_config("{}", None).unwrap();
        assert_eq!(
            s,
            Settings {
                k: 40,
                temperature: 1.0,
                seed: 0
            }
        );
        let s = Settings::from_config("{}", Some(9)).unwrap();
        assert_eq!(s.seed, 9);
        let s =
            Settings::from_config(r#"{"k": 5, "temperature": 0.7, "seed": 1}"#, Some(9)).unwrap();
        assert_eq!(
            s,
            Settings {
                k: 5,
                temperature: 0.7,
                seed: 1
            }
        );
        for bad in [
            r#"{"k": 0}"#,
            r#"{"k": -1}"#,
            r#"{"temperature": -1}"#,
            r#"{"seed": "x"}"#,
            r#"{"kk": 1}"#,
        ] {
            let e = Settings::from_config(bad, None).unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{bad}");
        }
        let e = Settings::from_config(r#"{"temperature": "hot"}"#, None).unwrap_err();
        assert!(e.message().contains("config.temperature"), "{e}");
    }
}
