//! The per-sequence random number generator.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A sequence's random number generator: ChaCha20, keyed by the request's
/// seed.
///
/// ChaCha's output is fixed by its specification, and the key is the seed's
/// eight little-endian bytes followed by zeros, so a seed names the same
/// stream on every platform and in every future version. A request without a
/// seed gets one from the OS through the engine; this type only takes a
/// `u64`.
///
/// [`sample`](super::sample()) takes exactly one 64-bit word per non-greedy
/// call (greedy calls take none), so the same seed, parameters and logits
/// give the same tokens step after step.
#[derive(Clone, Debug)]
pub struct SequenceRng {
    seed: u64,
    rng: ChaCha20Rng,
}

impl SequenceRng {
    /// The generator for `seed`, on stream 0.
    pub fn new(seed: u64) -> Self {
        Self::with_stream(seed, 0)
    }

    /// The generator for `seed` on ChaCha stream `stream`: independent
    /// streams from one seed, for the several choices (`n > 1`) of one
    /// request.
    pub fn with_stream(seed: u64, stream: u64) -> Self {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        let mut rng = ChaCha20Rng::from_seed(key);
        rng.set_stream(stream);
        SequenceRng { seed, rng }
    }

    /// The seed this generator was made from (for reporting it back).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A uniform number in [0, 1) with 53 random bits, from one 64-bit word.
    pub fn next_unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_different_seeds_differ() {
        let draws = |mut r: SequenceRng| (0..8).map(|_| r.next_unit()).collect::<Vec<_>>();
        assert_eq!(draws(SequenceRng::new(7)), draws(SequenceRng::new(7)));
        assert_ne!(draws(SequenceRng::new(7)), draws(SequenceRng::new(8)));
        assert_ne!(
            draws(SequenceRng::new(7)),
            draws(SequenceRng::with_stream(7, 1))
        );
        assert!(
            draws(SequenceRng::new(1))
                .iter()
                .all(|u| (0.0..1.0).contains(u))
        );
    }

    #[test]
    fn the_stream_is_pinned() {
        // ChaCha20 with an all-zero key and nonce: the first block of the
        // keystream (RFC 7539 test vector 1) begins 76 b8 e0 ad a0 f1 3d 90.
        let mut r = SequenceRng::new(0);
        let word = 0x903d_f1a0_ade0_b876u64;
        assert_eq!(r.next_unit(), (word >> 11) as f64 / (1u64 << 53) as f64);
        assert_eq!(r.seed(), 0);
    }
}
