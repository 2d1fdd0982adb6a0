//! Building [`TokenSet`]s over a vocabulary.
//!
//! [`TokenBits`] is a plain bitset with the exact layout of
//! [`TokenSet::Bitset`]: token `t` is bit `t % 32` of word `t / 32`. Build it
//! once per step (or keep one and [`clear`](TokenBits::clear) it), then hand it
//! to the host with [`TokenBits::to_token_set`], which picks the smaller of the
//! id-list and bitset encodings.

use crate::types::{TokenId, TokenSet};

/// A set of token ids below a fixed vocabulary size, one bit per token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBits {
    words: Vec<u32>,
    vocab_size: u32,
}

impl TokenBits {
    /// The empty set over ids `[0, vocab_size)`.
    pub fn new(vocab_size: u32) -> Self {
        TokenBits {
            words: vec![0; vocab_size.div_ceil(32) as usize],
            vocab_size,
        }
    }

    /// The set of every id in `[0, vocab_size)`.
    pub fn full(vocab_size: u32) -> Self {
        let mut bits = TokenBits::new(vocab_size);
        bits.insert_range(0, vocab_size);
        bits
    }

    /// The vocabulary size the set was made for.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// Add `token`; ids at or past the vocabulary size are ignored.
    /// Returns whether the token was newly added.
    pub fn insert(&mut self, token: TokenId) -> bool {
        if token >= self.vocab_size {
            return false;
        }
        let (word, bit) = ((token / 32) as usize, 1u32 << (token % 32));
        let added = self.words[word] & bit == 0;
        self.words[word] |= bit;
        added
    }

    /// Remove `token`; returns whether it was in the set.
    pub fn remove(&mut self, token: TokenId) -> bool {
        if token >= self.vocab_size {
            return false;
        }
        let (word, bit) = ((token / 32) as usize, 1u32 << (token % 32));
        let present = self.words[word] & bit != 0;
        self.words[word] &= !bit;
        present
    }

    /// Whether `token` is in the set.
    pub fn contains(&self, token: TokenId) -> bool {
        token < self.vocab_size && self.words[(token / 32) as usize] & (1 << (token % 32)) != 0
    }

    /// Add every id of `[start, end)` (clipped to the vocabulary).
    pub fn insert_range(&mut self, start: TokenId, end: TokenId) {
        let end = end.min(self.vocab_size);
        let mut t = start;
        while t < end {
            if t.is_multiple_of(32) && end - t >= 32 {
                self.words[(t / 32) as usize] = u32::MAX;
                t += 32;
            } else {
                self.words[(t / 32) as usize] |= 1 << (t % 32);
                t += 1;
            }
        }
    }

    /// Add every token of `tokens`.
    pub fn extend(&mut self, tokens: impl IntoIterator<Item = TokenId>) {
        for t in tokens {
            self.insert(t);
        }
    }

    /// Remove every token.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// Number of tokens in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The ids in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = TokenId> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let base = i as u32 * 32;
            let mut rest = w;
            core::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                Some(base + bit)
            })
        })
    }

    /// The raw words, in the layout of [`TokenSet::Bitset`].
    pub fn words(&self) -> &[u32] {
        &self.words
    }

    /// The set in whichever encoding is smaller on the wire: a list of ids when
    /// there are fewer ids than bitset words, else the bitset.
    pub fn to_token_set(&self) -> TokenSet {
        let len = self.len();
        if len < self.words.len() {
            TokenSet::Ids(self.iter().collect())
        } else {
            TokenSet::Bitset(self.words.clone())
        }
    }

    /// The set as [`TokenSet::Bitset`], without copying.
    pub fn into_bitset(self) -> TokenSet {
        TokenSet::Bitset(self.words)
    }
}

impl From<TokenBits> for TokenSet {
    fn from(bits: TokenBits) -> Self {
        bits.to_token_set()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_contains() {
        let mut b = TokenBits::new(100);
        assert!(b.is_empty());
        assert!(b.insert(0));
        assert!(!b.insert(0));
        assert!(b.insert(99));
        assert!(!b.insert(100));
        assert!(b.contains(99) && b.contains(0) && !b.contains(50));
        assert_eq!(b.len(), 2);
        assert!(b.remove(0));
        assert!(!b.remove(0));
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![99]);
    }

    #[test]
    fn ranges_and_encoding() {
        let mut b = TokenBits::new(200);
        b.insert_range(5, 150);
        assert_eq!(b.len(), 145);
        assert!(!b.contains(4) && b.contains(5) && b.contains(149) && !b.contains(150));
        assert!(matches!(b.to_token_set(), TokenSet::Bitset(ref w) if w.len() == 7));
        let full = TokenBits::full(70);
        assert_eq!(full.len(), 70);
        let mut sparse = TokenBits::new(1000);
        sparse.extend([3, 64, 999]);
        let set = sparse.to_token_set();
        assert!(matches!(set, TokenSet::Ids(ref ids) if ids == &[3, 64, 999]));
        assert!(set.contains(64) && !set.contains(65));
    }

    #[test]
    fn bitset_layout_matches_wit() {
        let mut b = TokenBits::new(64);
        b.insert(33);
        assert_eq!(b.words(), &[0, 2]);
        assert!(b.into_bitset().contains(33));
    }
}
