//! The tokens a sequence has seen, for the penalties.

use std::collections::HashMap;

/// What a sequence has seen: the set of prompt tokens (for the repetition
/// penalty) and how often each token occurs in the output (for the presence
/// and frequency penalties).
///
/// Kept incrementally: [`push_output`](Self::push_output) is O(1), and the
/// penalties visit each distinct token once, so a step costs O(distinct
/// tokens seen) rather than O(sequence length) or O(vocabulary). Distinct
/// tokens live in a dense list, found through a hash index (keyed by the
/// standard library's randomised hasher, so a prompt cannot be crafted to
/// collide).
#[derive(Clone, Debug, Default)]
pub struct TokenHistory {
    index: HashMap<u32, u32>,
    seen: Vec<Seen>,
    output_len: usize,
}

/// One distinct token of the history.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Seen {
    pub token: u32,
    pub in_prompt: bool,
    /// Occurrences in the output so far.
    pub output_count: u32,
}

impl TokenHistory {
    /// A history holding `prompt` and no output yet.
    pub fn new(prompt: &[u32]) -> Self {
        let mut h = TokenHistory::default();
        for &token in prompt {
            h.entry(token).in_prompt = true;
        }
        h
    }

    fn entry(&mut self, token: u32) -> &mut Seen {
        let next = self.seen.len() as u32;
        let slot = *self.index.entry(token).or_insert(next);
        if slot == next {
            self.seen.push(Seen {
                token,
                in_prompt: false,
                output_count: 0,
            });
        }
        &mut self.seen[slot as usize]
    }

    /// Records one generated token.
    pub fn push_output(&mut self, token: u32) {
        let e = self.entry(token);
        e.output_count = e.output_count.saturating_add(1);
        self.output_len += 1;
    }

    /// Records several generated tokens (a forced run), in order.
    pub fn extend_output(&mut self, tokens: &[u32]) {
        for &t in tokens {
            self.push_output(t);
        }
    }

    /// Whether `token` occurs in the prompt.
    pub fn in_prompt(&self, token: u32) -> bool {
        self.get(token).is_some_and(|s| s.in_prompt)
    }

    /// How often `token` occurs in the output so far.
    pub fn output_count(&self, token: u32) -> u32 {
        self.get(token).map_or(0, |s| s.output_count)
    }

    /// Whether `token` occurs in the prompt or the output.
    pub fn contains(&self, token: u32) -> bool {
        self.get(token).is_some()
    }

    /// Tokens generated so far.
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// Distinct tokens in the prompt and the output together.
    pub fn distinct(&self) -> usize {
        self.seen.len()
    }

    fn get(&self, token: u32) -> Option<&Seen> {
        self.index.get(&token).map(|&i| &self.seen[i as usize])
    }

    /// Every distinct token seen, each once, in order of first appearance.
    pub(crate) fn seen(&self) -> &[Seen] {
        &self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_and_output_are_kept_apart() {
        let mut h = TokenHistory::new(&[5, 7, 5]);
        assert!(h.in_prompt(5) && h.in_prompt(7) && !h.in_prompt(9));
        assert_eq!(h.output_count(5), 0, "the prompt does not count as output");
        assert_eq!((h.distinct(), h.output_len()), (2, 0));
        h.push_output(9);
        h.extend_output(&[9, 5]);
        assert_eq!(h.output_count(9), 2);
        assert_eq!(h.output_count(5), 1);
        assert!(!h.in_prompt(9) && h.contains(9) && !h.contains(8));
        assert_eq!((h.distinct(), h.output_len()), (3, 3));
        let seen: Vec<_> = h.seen().iter().map(|s| s.token).collect();
        assert_eq!(seen, vec![5, 7, 9], "each distinct token once");
    }
}
