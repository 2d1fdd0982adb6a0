//! `word-ban`: a sampler plugin that never lets the generated text contain a
//! banned word (case-insensitive for ASCII letters, anywhere in the text, also
//! across token boundaries).
//!
//! Config:
//!
//! ```json
//! {"words": ["foo", "Bar"]}
//! ```
//!
//! `words` (list of non-empty strings, default empty) are matched as ASCII
//! case-insensitive byte substrings of the generated text (the prompt is not
//! looked at). Non-ASCII bytes must match exactly.
//!
//! Behaviour:
//! - `setup` reads the whole vocabulary once through the `tokenizer` import
//!   (`info().vocab-size`, then `token-bytes` in chunks of 4096 ids) and builds
//!   an index: the lowercased bytes of every token, and the ids sorted by those
//!   bytes, so "tokens whose bytes start with `s`" is a binary-searched range.
//!   Special tokens (`special-tokens()`, BOS and every EOS id) are left out of
//!   the index.
//! - `open` computes the tokens whose bytes contain a banned word (cached per
//!   word list across sequences of the instance).
//! - `prepare` appends the bytes of `new-tokens` to a tail of the generated
//!   text (as long as the longest word minus one byte; a special token clears
//!   it) and answers `decided(sample{deny: D})`, never `need-logits`, where
//!   `D` is the tokens containing a banned word plus, for every banned word `w`
//!   and every proper prefix `w[..i]` that the tail ends with, the tokens whose
//!   bytes start with `w[i..]`. That is exactly the set of tokens that would
//!   complete a banned word now. `D` is sent as an id list or a bitset,
//!   whichever is smaller, and is left out (`deny: none`) when empty.
//! - Special tokens are never denied. With no words, `prepare` always answers
//!   `decided(sample{})` with nothing set: a pure defer.

use std::cell::RefCell;
use std::rc::Rc;

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::sampler::{
    self, Decision, Guest, GuestSequence, Logits, Prepared, SampleSpec, Sequence, tokenizer,
};
use deepwasm_sdk::token_set::TokenBits;
use deepwasm_sdk::types::{Error, SamplingParams, TokenId};

/// How many ids `setup` asks `token-bytes` for at once.
const CHUNK: u32 = 4096;

/// How many distinct word lists keep their precomputed deny set.
const CACHE_SLOTS: usize = 8;

/// The vocabulary, lowercased, indexed for substring and prefix queries.
#[derive(Debug)]
pub struct Index {
    /// Lowercased bytes of every token, back to back.
    bytes: Vec<u8>,
    /// Token `t` is `bytes[offsets[t]..offsets[t + 1]]`.
    offsets: Vec<u32>,
    /// Non-special ids with non-empty bytes, sorted by their bytes.
    sorted: Vec<TokenId>,
    /// Special ids, which are never denied.
    special: TokenBits,
}

impl Index {
    /// Build the index from every token's bytes (`vocab[t]` for id `t`) and
    /// the special ids.
    pub fn new(vocab: &[Vec<u8>], special_ids: &[TokenId]) -> Self {
        let vocab_size = vocab.len() as u32;
        let mut special = TokenBits::new(vocab_size);
        special.extend(special_ids.iter().copied());
        let mut bytes = Vec::with_capacity(vocab.iter().map(Vec::len).sum());
        let mut offsets = Vec::with_capacity(vocab.len() + 1);
        offsets.push(0);
        for (t, b) in vocab.iter().enumerate() {
            // Special tokens keep no bytes: they match nothing.
            if !special.contains(t as TokenId) {
                bytes.extend(b.iter().map(u8::to_ascii_lowercase));
            }
            offsets.push(bytes.len() as u32);
        }
        let mut index = Index {
            bytes,
            offsets,
            sorted: Vec::new(),
            special,
        };
        let mut keyed: Vec<(&[u8], TokenId)> = (0..vocab_size)
            .map(|t| (index.token(t), t))
            .filter(|(bytes, _)| !bytes.is_empty())
            .collect();
        keyed.sort_unstable();
        let sorted = keyed.into_iter().map(|(_, t)| t).collect();
        index.sorted = sorted;
        index
    }

    /// Read the served model's vocabulary through the tokenizer import.
    fn from_tokenizer() -> Self {
        let vocab_size = tokenizer::info().vocab_size;
        let mut vocab = Vec::with_capacity(vocab_size as usize);
        let mut start = 0;
        while start < vocab_size {
            let end = start.saturating_add(CHUNK).min(vocab_size);
            let ids: Vec<TokenId> = (start..end).collect();
            let mut chunk = tokenizer::token_bytes(&ids);
            // Be robust to a short answer: missing ids have no bytes.
            chunk.resize(ids.len(), Vec::new());
            vocab.extend(chunk);
            start = end;
        }
        Index::new(&vocab, &sampler::special_token_ids())
    }

    /// Number of ids.
    pub fn vocab_size(&self) -> u32 {
        self.offsets.len() as u32 - 1
    }

    /// The lowercased bytes of `t` (empty for special or unknown ids).
    pub fn token(&self, t: TokenId) -> &[u8] {
        let t = t as usize;
        if t + 1 >= self.offsets.len() {
            return &[];
        }
        &self.bytes[self.offsets[t] as usize..self.offsets[t + 1] as usize]
    }

    /// Whether `t` is a special token.
    pub fn is_special(&self, t: TokenId) -> bool {
        self.special.contains(t)
    }

    /// The ids whose bytes start with `prefix` (already lowercased).
    pub fn starting_with(&self, prefix: &[u8]) -> &[TokenId] {
        let lo = self.sorted.partition_point(|&t| self.token(t) < prefix);
        let hi = self
            .sorted
            .partition_point(|&t| self.token(t) < prefix || self.token(t).starts_with(prefix));
        &self.sorted[lo..hi]
    }

    /// The ids whose bytes contain one of `words` (already lowercased).
    pub fn containing(&self, words: &Words) -> TokenBits {
        let mut set = TokenBits::new(self.vocab_size());
        for &t in &self.sorted {
            let bytes = self.token(t);
            if words.0.iter().any(|w| contains(bytes, w)) {
                set.insert(t);
            }
        }
        set
    }
}

/// Whether `hay` contains `needle` (non-empty).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

/// A normalised ban list: lowercased, non-empty, sorted, without duplicates.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Words(pub Vec<Vec<u8>>);

impl Words {
    /// Read the `words` field of the config.
    pub fn from_config(config: &str) -> Result<Self, Error> {
        let cfg = Fields::parse("config", config)?;
        cfg.only(&["words"])?;
        let words: Vec<String> = cfg.get_or("words", Vec::new())?;
        if let Some(i) = words.iter().position(String::is_empty) {
            return Err(cfg.error(&format!("words[{i}]"), "must not be empty"));
        }
        Ok(Words::new(words.iter().map(String::as_bytes)))
    }

    /// Normalise a list of words.
    pub fn new<'a>(words: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut words: Vec<Vec<u8>> = words
            .into_iter()
            .filter(|w| !w.is_empty())
            .map(<[u8]>::to_ascii_lowercase)
            .collect();
        words.sort();
        words.dedup();
        Words(words)
    }

    /// The length of the longest word.
    pub fn max_len(&self) -> usize {
        self.0.iter().map(Vec::len).max().unwrap_or(0)
    }
}

/// The end of the generated text, as long as is needed to see a partial word.
#[derive(Clone, Debug, Default)]
pub struct Tail {
    bytes: Vec<u8>,
    keep: usize,
}

impl Tail {
    /// A tail for `words`: their longest length minus one byte.
    pub fn new(words: &Words) -> Self {
        Tail {
            bytes: Vec::new(),
            keep: words.max_len().saturating_sub(1),
        }
    }

    /// Append the bytes of `t`; a special token clears the tail.
    pub fn push(&mut self, index: &Index, t: TokenId) {
        if index.is_special(t) {
            self.bytes.clear();
            return;
        }
        self.bytes.extend_from_slice(index.token(t));
        if self.bytes.len() > self.keep {
            self.bytes.drain(..self.bytes.len() - self.keep);
        }
    }

    /// The kept bytes (lowercased).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Every non-special token that would complete a banned word if appended to
/// a text ending with `tail`, given `containing` (the tokens that contain a
/// word on their own).
pub fn deny_set(index: &Index, words: &Words, containing: &TokenBits, tail: &[u8]) -> TokenBits {
    let mut deny = containing.clone();
    for w in &words.0 {
        // Proper prefixes w[..i] that the text ends with: the token must then
        // start with w[i..].
        for i in (1..w.len()).rev() {
            if tail.ends_with(&w[..i]) {
                deny.extend(index.starting_with(&w[i..]).iter().copied());
            }
        }
    }
    deny
}

thread_local! {
    /// The index, built by `setup` (or by the first `open` if the host did
    /// not call `setup`).
    static INDEX: RefCell<Option<Rc<Index>>> = const { RefCell::new(None) };
    /// Deny sets of the tokens containing a word, per recent word list.
    static CACHE: RefCell<Vec<(Words, Rc<TokenBits>)>> = const { RefCell::new(Vec::new()) };
}

fn index() -> Rc<Index> {
    INDEX.with(|cell| {
        cell.borrow_mut()
            .get_or_insert_with(|| Rc::new(Index::from_tokenizer()))
            .clone()
    })
}

fn containing(index: &Index, words: &Words) -> Rc<TokenBits> {
    CACHE.with(|cell| {
        let mut cache = cell.borrow_mut();
        if let Some(pos) = cache.iter().position(|(w, _)| w == words) {
            let entry = cache.remove(pos);
            let set = entry.1.clone();
            cache.push(entry);
            return set;
        }
        let set = Rc::new(index.containing(words));
        if cache.len() == CACHE_SLOTS {
            cache.remove(0);
        }
        cache.push((words.clone(), set.clone()));
        set
    })
}

struct WordBan;

struct WordBanSequence {
    index: Rc<Index>,
    words: Words,
    containing: Rc<TokenBits>,
    tail: RefCell<Tail>,
}

impl Guest for WordBan {
    type Sequence = WordBanSequence;

    fn setup() -> Result<(), Error> {
        let index = Rc::new(Index::from_tokenizer());
        INDEX.with(|cell| *cell.borrow_mut() = Some(index));
        CACHE.with(|cell| cell.borrow_mut().clear());
        Ok(())
    }
}

impl GuestSequence for WordBanSequence {
    fn open(
        config: String,
        _prompt: Vec<TokenId>,
        _params: SamplingParams,
    ) -> Result<Sequence, Error> {
        let words = Words::from_config(&config)?;
        let index = index();
        let containing = if words.0.is_empty() {
            Rc::new(TokenBits::new(0))
        } else {
            containing(&index, &words)
        };
        let tail = RefCell::new(Tail::new(&words));
        Ok(Sequence::new(WordBanSequence {
            index,
            words,
            containing,
            tail,
        }))
    }

    fn prepare(&self, _step: u32, new_tokens: Vec<TokenId>) -> Result<Prepared, Error> {
        if self.words.0.is_empty() {
            return Ok(sampler::defer());
        }
        let mut tail = self.tail.borrow_mut();
        for &t in &new_tokens {
            tail.push(&self.index, t);
        }
        let deny = deny_set(&self.index, &self.words, &self.containing, tail.bytes());
        let spec = if deny.is_empty() {
            SampleSpec::default()
        } else {
            SampleSpec::deny(deny.to_token_set())
        };
        Ok(Prepared::Decided(Decision::Sample(spec)))
    }

    fn decide(&self, _step: u32, _logits: &Logits) -> Result<Decision, Error> {
        // `prepare` always decides; a host that calls this anyway gets a defer.
        Ok(Decision::Sample(SampleSpec::default()))
    }
}

deepwasm_sdk::export_sampler!(WordBan);

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary; id 0 is EOS (special).
    fn vocab() -> Index {
        let toks: &[&str] = &[
            "</s>", "f", "o", "fo", "foo", "Foo", "oo", "o!", "xfoobar", "b", "ar", "bar", "BA",
            "r", "rx", "", "hello", " ", "barn", "FOOD",
        ];
        let v: Vec<Vec<u8>> = toks.iter().map(|s| s.as_bytes().to_vec()).collect();
        Index::new(&v, &[0])
    }

    fn ids(set: &TokenBits) -> Vec<TokenId> {
        set.iter().collect()
    }

    #[test]
    fn prefix_ranges() {
        let ix = vocab();
        let mut got: Vec<_> = ix.starting_with(b"fo").to_vec();
        got.sort();
        assert_eq!(got, vec![3, 4, 5, 19]);
        let mut got: Vec<_> = ix.starting_with(b"o").to_vec();
        got.sort();
        assert_eq!(got, vec![2, 6, 7]);
        assert!(ix.starting_with(b"zzz").is_empty());
        assert_eq!(ix.starting_with(b"").len(), 18);
    }

    #[test]
    fn static_and_dynamic_deny() {
        let ix = vocab();
        let words = Words::new([b"Foo".as_slice(), b"bar".as_slice()]);
        let contain = ix.containing(&words);
        // foo, Foo, xfoobar, bar, barn, FOOD
        assert_eq!(ids(&contain), vec![4, 5, 8, 11, 18, 19]);
        // Nothing generated yet: only the containing tokens.
        assert_eq!(ids(&deny_set(&ix, &words, &contain, b"")), ids(&contain));
        // Text ends with "f": tokens starting with "oo" complete "foo".
        let d = deny_set(&ix, &words, &contain, b"xf");
        assert_eq!(ids(&d), vec![4, 5, 6, 8, 11, 18, 19]);
        // Text ends with "fo": "o", "o!", "oo" complete it.
        let d = deny_set(&ix, &words, &contain, b"fo");
        assert_eq!(ids(&d), vec![2, 4, 5, 6, 7, 8, 11, 18, 19]);
        // Text ends with "ba" (any case): "r", "rx" complete "bar".
        let d = deny_set(&ix, &words, &contain, b"ba");
        assert_eq!(ids(&d), vec![4, 5, 8, 11, 13, 14, 18, 19]);
        // EOS is never denied.
        assert!(!d.contains(0));
    }

    #[test]
    fn tail_tracks_text_and_specials_reset() {
        let ix = vocab();
        let words = Words::new([b"foo".as_slice(), b"bar".as_slice()]);
        let mut tail = Tail::new(&words);
        for t in [16, 17, 1] {
            tail.push(&ix, t); // "hello", " ", "f"
        }
        assert_eq!(tail.bytes(), b" f");
        tail.push(&ix, 2); // "o"
        assert_eq!(tail.bytes(), b"fo");
        tail.push(&ix, 12); // "BA" lowercased
        assert_eq!(tail.bytes(), b"ba");
        tail.push(&ix, 0);
        assert_eq!(tail.bytes(), b"");
    }

    #[test]
    fn words_config() {
        let w = Words::from_config(r#"{"words": ["foo", "Bar", "FOO"]}"#).unwrap();
        assert_eq!(w.0, vec![b"bar".to_vec(), b"foo".to_vec()]);
        assert!(Words::from_config("{}").unwrap().0.is_empty());
        let e = Words::from_config(r#"{"words": ["a", ""]}"#).unwrap_err();
        assert!(e.message().contains("words[1]"), "{e}");
        let e = Words::from_config(r#"{"words": "foo"}"#).unwrap_err();
        assert!(e.message().contains("config.words"), "{e}");
    }

    #[test]
    fn exhaustive_never_completes_a_word() {
        // Random walks through the toy vocabulary, always avoiding the deny
        // set: the generated text never contains a banned word.
        let ix = vocab();
        let words = Words::new([b"foo".as_slice(), b"bar".as_slice(), b"o!".as_slice()]);
        let contain = ix.containing(&words);
        let mut seed = 7u64;
        for _ in 0..2000 {
            let mut tail = Tail::new(&words);
            let mut text = Vec::new();
            for _ in 0..12 {
                let deny = deny_set(&ix, &words, &contain, tail.bytes());
                let allowed: Vec<TokenId> = (1..ix.vocab_size())
                    .filter(|&t| !deny.contains(t))
                    .collect();
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let t = allowed[(seed >> 33) as usize % allowed.len()];
                text.extend_from_slice(ix.token(t));
                tail.push(&ix, t);
                for w in &words.0 {
                    assert!(!contains(&text, w), "{:?}", String::from_utf8_lossy(&text));
                }
            }
        }
    }
}
