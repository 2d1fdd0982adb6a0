//! Pipeline steps 1–4: penalties, logit bias, a plugin's mask and its bias.
//! All edit the logits in place.

use deepwasm_plugins::{SetTooLarge, for_each_bit_run};

use super::history::TokenHistory;
use super::kernels::{BLOCK, max_of};
use super::params::SamplingParams;
use super::spec::{TokenBias, TokenSet};

/// Applies the request's penalties, then its logit bias, in place.
///
/// For each distinct token the history holds (ids outside `logits` are
/// ignored):
/// - repetition penalty `r` (prompt or output): `logit / r` if the logit is
///   positive, else `logit * r` (HF and vLLM), applied once however often the
///   token occurred;
/// - presence penalty: `- presence_penalty` if the token is in the output;
/// - frequency penalty: `- frequency_penalty * count` for its count in the
///   output.
///
/// Then each `logit_bias` entry is added. Costs O(distinct tokens seen +
/// bias entries); the rest of the vocabulary is not touched.
pub fn process_logits(logits: &mut [f32], params: &SamplingParams, history: &TokenHistory) {
    process_slots(logits, params, history);
}

/// Where the edits of [`process_logits`] and [`apply_bias`] land: a whole
/// row, or only the entries they touch (see [`edited_ids`]), so that a row
/// kept on a device is edited without being copied.
pub(crate) trait LogitSlots {
    fn slot(&mut self, token: u32) -> Option<&mut f32>;
}

impl LogitSlots for [f32] {
    fn slot(&mut self, token: u32) -> Option<&mut f32> {
        self.get_mut(token as usize)
    }
}

/// Some entries of a row: `ids` ascending and distinct, `values` theirs.
#[derive(Clone, Debug, Default)]
pub(crate) struct SparseRow {
    pub ids: Vec<u32>,
    pub values: Vec<f32>,
}

impl LogitSlots for SparseRow {
    fn slot(&mut self, token: u32) -> Option<&mut f32> {
        let i = self.ids.binary_search(&token).ok()?;
        self.values.get_mut(i)
    }
}

/// The ids below `len` whose logits [`process_logits`] and [`apply_bias`]
/// (with `bias`) may change, ascending and distinct.
pub(crate) fn edited_ids(
    params: &SamplingParams,
    history: &TokenHistory,
    bias: &[TokenBias],
    len: usize,
) -> Vec<u32> {
    let mut ids: Vec<u32> = Vec::new();
    if params.has_penalties() {
        ids.extend(history.seen().iter().map(|s| s.token));
    }
    ids.extend(params.logit_bias.iter().map(|&(t, _)| t));
    ids.extend(bias.iter().map(|b| b.token));
    ids.retain(|&t| (t as usize) < len);
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// [`process_logits`] over any [`LogitSlots`].
pub(crate) fn process_slots<S: LogitSlots + ?Sized>(
    logits: &mut S,
    params: &SamplingParams,
    history: &TokenHistory,
) {
    let r = params.repetition_penalty;
    let (presence, frequency) = (params.presence_penalty, params.frequency_penalty);
    if r != 1.0 || presence != 0.0 || frequency != 0.0 {
        for s in history.seen() {
            let Some(l) = logits.slot(s.token) else {
                continue;
            };
            if r != 1.0 {
                *l = if *l > 0.0 { *l / r } else { *l * r };
            }
            if s.output_count > 0 {
                *l -= presence + frequency * s.output_count as f32;
            }
        }
    }
    for &(token, bias) in &params.logit_bias {
        if let Some(l) = logits.slot(token) {
            *l += bias;
        }
    }
}

/// Adds a plugin's sparse biases in place; ids outside `logits` are ignored
/// and entries for the same token add up.
pub fn apply_bias(logits: &mut [f32], bias: &[TokenBias]) {
    bias_slots(logits, bias);
}

/// [`apply_bias`] over any [`LogitSlots`].
pub(crate) fn bias_slots<S: LogitSlots + ?Sized>(logits: &mut S, bias: &[TokenBias]) {
    for b in bias {
        if let Some(l) = logits.slot(b.token) {
            *l += b.bias;
        }
    }
}

/// A plugin's mask or bias that cannot be applied.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MaskError {
    /// The mask left no token to pick.
    #[error(
        "the sampler plugin's token mask leaves no token that can be picked ({vocab} in vocabulary)"
    )]
    Empty {
        /// The vocabulary size the mask was applied to.
        vocab: usize,
    },
    /// A set or bias list longer than the host takes.
    #[error("the sampler plugin sent {0}")]
    TooLarge(#[from] SetTooLarge),
}

/// Applies a plugin's mask in place: tokens in `deny`, then tokens outside
/// `allow`, get logit -inf. Ids at or past the vocabulary size are ignored.
///
/// Fails when a set was given and no token is left with a logit above -inf
/// (NaN does not count): sampling would otherwise pick a token the plugin
/// forbade. Sets are normalised to bitsets first (see
/// [`TokenSet::to_words`]), so the cost is O(n log n) in the set's entries at worst
/// plus passes over the vocabulary, however the plugin repeated itself; a
/// set of more than [`max_set_entries`](deepwasm_plugins::max_set_entries)
/// entries is refused.
pub fn apply_mask(
    logits: &mut [f32],
    allow: Option<&TokenSet>,
    deny: Option<&TokenSet>,
) -> Result<(), MaskError> {
    let len = logits.len().min(u32::MAX as usize) as u32;
    if let Some(deny) = deny {
        for_each_bit_run(&deny.words(len)?, len, |start, end| {
            logits[start as usize..end as usize].fill(f32::NEG_INFINITY);
        });
    }
    if let Some(allow) = allow {
        let keep = keep_bits(&allow.words(len)?, len);
        for (block, &bits) in logits.chunks_mut(BLOCK).zip(&keep) {
            if bits == u64::MAX {
                continue;
            }
            for (i, l) in block.iter_mut().enumerate() {
                if bits >> i & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        // Blocks past `keep` (a vocabulary longer than u32 ids) are out.
        for l in logits.iter_mut().skip(keep.len() * BLOCK) {
            *l = f32::NEG_INFINITY;
        }
    }
    if (allow.is_some() || deny.is_some()) && !has_pickable(logits) {
        return Err(MaskError::Empty {
            vocab: logits.len(),
        });
    }
    Ok(())
}

/// The bitset `w32` (32-bit words) as words of [`BLOCK`] = 64 tokens over
/// a vocabulary of `len`; bits past `len` only name tokens that do not
/// exist.
fn keep_bits(w32: &[u32], len: u32) -> Vec<u64> {
    (0..(len as usize).div_ceil(BLOCK))
        .map(|i| {
            let lo = w32.get(2 * i).copied().unwrap_or(0) as u64;
            let hi = w32.get(2 * i + 1).copied().unwrap_or(0) as u64;
            lo | hi << 32
        })
        .collect()
}

/// Which of `len` tokens a plugin's mask leaves: 1 kept, 0 masked (in
/// `deny`, or outside `allow`), as [`apply_mask`] decides.
pub(crate) fn kept_tokens(
    len: usize,
    allow: Option<&TokenSet>,
    deny: Option<&TokenSet>,
) -> Result<Vec<u8>, MaskError> {
    let n = len.min(u32::MAX as usize) as u32;
    let mut keep = vec![u8::from(allow.is_none()); len];
    if let Some(allow) = allow {
        for_each_bit_run(&allow.words(n)?, n, |start, end| {
            keep[start as usize..end as usize].fill(1);
        });
    }
    if let Some(deny) = deny {
        for_each_bit_run(&deny.words(n)?, n, |start, end| {
            keep[start as usize..end as usize].fill(0);
        });
    }
    Ok(keep)
}

/// Whether some token has a logit above -inf (NaN does not count), so that
/// [`sample`](super::sample()) can pick it. Stops at the first block with one.
pub fn has_pickable(logits: &[f32]) -> bool {
    logits
        .chunks(BLOCK)
        .any(|block| max_of(block) > f32::NEG_INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::spec::TokenRange;

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut l = vec![2.0, -2.0, 2.0, -2.0, 0.0];
        // Token 0 in the prompt only, token 1 in the output only, token 4
        // (logit 0) in the prompt; tokens 2 and 3 unseen.
        let mut h = TokenHistory::new(&[0, 4, 0, 0]);
        h.push_output(1);
        h.push_output(1);
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::default()
        };
        process_logits(&mut l, &p, &h);
        assert_eq!(l, vec![1.0, -4.0, 2.0, -2.0, 0.0], "applied once per token");
    }

    #[test]
    fn presence_and_frequency_count_only_the_output() {
        let mut l = vec![1.0; 4];
        let mut h = TokenHistory::new(&[0, 0, 3]);
        h.extend_output(&[1, 1, 1, 2, 3]);
        let p = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplingParams::default()
        };
        process_logits(&mut l, &p, &h);
        // 0: prompt only. 1: three times. 2 and 3: once in the output.
        assert_eq!(l, vec![1.0, 1.0 - 0.5 - 0.75, 0.25, 0.25]);
    }

    #[test]
    fn penalties_compose_in_order_then_bias() {
        let mut l = vec![3.0, -1.0, 0.5];
        let mut h = TokenHistory::new(&[2]);
        h.extend_output(&[0, 0, 1]);
        let p = SamplingParams {
            repetition_penalty: 1.5,
            presence_penalty: 0.2,
            frequency_penalty: 0.1,
            logit_bias: vec![(0, 1.0), (2, -3.0), (2, 0.5), (99, 7.0)],
            ..SamplingParams::default()
        };
        process_logits(&mut l, &p, &h);
        let want = [
            3.0 / 1.5 - 0.2 - 0.1 * 2.0 + 1.0,
            -1.5 - 0.2 - 0.1, // -1 * 1.5, then the penalties
            0.5 / 1.5 - 3.0 + 0.5,
        ];
        for (g, w) in l.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{l:?} vs {want:?}");
        }
    }

    #[test]
    fn no_penalty_no_change() {
        let mut l = vec![1.0, -1.0];
        let mut h = TokenHistory::new(&[0, 1]);
        h.push_output(0);
        process_logits(&mut l, &SamplingParams::default(), &h);
        assert_eq!(l, vec![1.0, -1.0]);
    }

    #[test]
    fn plugin_bias_adds_and_ignores_out_of_range_ids() {
        let mut l = vec![0.0; 3];
        let b = |token, bias| TokenBias { token, bias };
        apply_bias(&mut l, &[b(1, 2.0), b(1, 0.5), b(3, 9.0), b(u32::MAX, 1.0)]);
        assert_eq!(l, vec![0.0, 2.5, 0.0]);
    }

    fn finite_ids(l: &[f32]) -> Vec<u32> {
        (0..l.len() as u32)
            .filter(|&i| l[i as usize] > NEG)
            .collect()
    }

    /// The same set in all three encodings.
    fn encodings(ids: &[u32]) -> Vec<TokenSet> {
        let max = ids.iter().copied().max().unwrap_or(0) as usize;
        let mut words = vec![0u32; max / 32 + 1];
        for &t in ids {
            words[t as usize / 32] |= 1 << (t % 32);
        }
        vec![
            TokenSet::Ids(ids.to_vec()),
            TokenSet::Ranges(
                ids.iter()
                    .map(|&t| TokenRange {
                        start: t,
                        end: t + 1,
                    })
                    .collect(),
            ),
            TokenSet::Bitset(words),
        ]
    }

    #[test]
    fn allow_keeps_exactly_the_set_in_every_encoding() {
        // Word boundaries of 32 and 64 bits, and an id past the vocabulary.
        let ids = [0, 31, 32, 63, 64, 65, 127, 128, 199, 250];
        for set in encodings(&ids) {
            let mut l = vec![1.0f32; 200];
            apply_mask(&mut l, Some(&set), None).unwrap();
            assert_eq!(
                finite_ids(&l),
                vec![0, 31, 32, 63, 64, 65, 127, 128, 199],
                "{set:?}"
            );
        }
    }

    #[test]
    fn deny_removes_exactly_the_set_in_every_encoding() {
        let ids = [1, 31, 32, 64, 99, 1000];
        for set in encodings(&ids) {
            let mut l = vec![1.0f32; 100];
            apply_mask(&mut l, None, Some(&set)).unwrap();
            let want: Vec<u32> = (0..100)
                .filter(|t| ![1, 31, 32, 64, 99].contains(t))
                .collect();
            assert_eq!(finite_ids(&l), want, "{set:?}");
        }
    }

    #[test]
    fn ranges_overlap_and_span_words() {
        let r = |start, end| TokenRange { start, end };
        let set = TokenSet::Ranges(vec![r(10, 140), r(100, 150), r(5, 5), r(190, 500)]);
        let mut l = vec![0.0f32; 200];
        apply_mask(&mut l, Some(&set), None).unwrap();
        let want: Vec<u32> = (10..150).chain(190..200).collect();
        assert_eq!(finite_ids(&l), want);
    }

    #[test]
    fn deny_then_allow_intersect() {
        let allow = TokenSet::Ids(vec![2, 3, 4]);
        let deny = TokenSet::Ids(vec![3]);
        let mut l = vec![0.0f32; 6];
        apply_mask(&mut l, Some(&allow), Some(&deny)).unwrap();
        assert_eq!(finite_ids(&l), vec![2, 4]);
    }

    #[test]
    fn a_mask_that_leaves_nothing_is_an_error() {
        let mut l = vec![0.0f32; 70];
        let e = apply_mask(&mut l, Some(&TokenSet::Ids(vec![])), None).unwrap_err();
        assert_eq!(e, MaskError::Empty { vocab: 70 });
        assert!(e.to_string().contains("no token"));

        // Allowed only out of range.
        let mut l = vec![0.0f32; 70];
        assert!(apply_mask(&mut l, Some(&TokenSet::Ids(vec![70, 71])), None).is_err());

        // Allowed only where the logit is already -inf or NaN.
        let mut l = vec![0.0f32; 70];
        l[5] = NEG;
        l[6] = f32::NAN;
        assert!(apply_mask(&mut l, Some(&TokenSet::Ids(vec![5, 6])), None).is_err());

        // Allow and deny cancel out.
        let mut l = vec![0.0f32; 70];
        let s = TokenSet::Bitset(vec![1 << 3]);
        assert!(apply_mask(&mut l, Some(&s), Some(&s)).is_err());

        // Everything denied.
        let mut l = vec![0.0f32; 70];
        let all = TokenSet::Ranges(vec![TokenRange { start: 0, end: 70 }]);
        assert!(apply_mask(&mut l, None, Some(&all)).is_err());

        // No mask at all is not the mask's fault.
        let mut l = vec![NEG; 3];
        assert!(apply_mask(&mut l, None, None).is_ok());
    }

    #[test]
    fn a_wide_deny_costs_one_pass_not_one_per_range() {
        // 200,000 ranges, each of every token but 0: the mask leaves token
        // 0, quickly (filling the vocabulary once per range took seconds).
        let mut l = vec![1.0f32; 49_152];
        let deny = TokenSet::Ranges(vec![
            TokenRange {
                start: 1,
                end: u32::MAX
            };
            98_304
        ]);
        let start = std::time::Instant::now();
        apply_mask(&mut l, None, Some(&deny)).unwrap();
        assert!(start.elapsed() < std::time::Duration::from_millis(500));
        assert_eq!(finite_ids(&l), [0]);
        // One range more than twice the vocabulary is refused.
        let TokenSet::Ranges(mut r) = deny else {
            unreachable!()
        };
        r.push(TokenRange { start: 0, end: 1 });
        let e = apply_mask(&mut l, None, Some(&TokenSet::Ranges(r))).unwrap_err();
        assert!(matches!(e, MaskError::TooLarge(_)), "{e}");
    }

    #[test]
    fn pickable_means_above_neg_inf() {
        assert!(!has_pickable(&[NEG, f32::NAN]));
        assert!(has_pickable(&[NEG, f32::NAN, -1e30]));
        assert!(has_pickable(&[f32::INFINITY]));
        assert!(!has_pickable(&[]));
    }
}
