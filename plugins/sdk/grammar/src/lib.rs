//! Grammar-constrained sampling for deepwasm sampler plugins, on
//! [llguidance](https://github.com/guidance-ai/llguidance).
//!
//! A grammar sampler (`json-schema`, `regex`) compiles its config into an
//! llguidance [`TopLevelGrammar`] when a sequence opens, and at every step
//! tells the host which tokens keep the output inside the grammar. The pieces:
//!
//! - [`Vocab`]: every token's bytes, which ids are special, the EOS ids. Read
//!   from the host's `tokenizer` import by [`Vocab::from_host`], or made by
//!   hand in tests.
//! - [`Engine`]: the token trie and llguidance's [`ParserFactory`], built once
//!   per plugin instance (about half a second natively on DeepSeek's 129k
//!   vocabulary, more in Wasm, which is why `setup` does it), plus a small
//!   cache of compiled grammars.
//! - [`Constrained`]: one sequence's parser. [`Constrained::advance`] feeds
//!   it the tokens appended since the last step, [`Constrained::next_step`]
//!   says what may come next as a [`Step`].
//! - [`GrammarSequence`] and [`setup`]: the glue a plugin's `Guest` and
//!   `GuestSequence` delegate to, turning a [`Step`] into a
//!   [`Decision`].
//!
//! # Behaviour at each step
//!
//! 1. The new tokens are fed to the parser. A token the grammar does not
//!    allow at that point is an `invalid-input` error naming the token; so is
//!    a token after the grammar has ended.
//! 2. If an EOS token has been fed (the host kept going past it), the answer
//!    is `stop`.
//! 3. If the grammar is complete (nothing can follow), the answer is
//!    `sample{allow: <every EOS id>}`: the host's sampler then ends the
//!    sequence with an ordinary EOS, so the finish reason is the model's own
//!    `stop`, not `sampler`.
//! 4. If the grammar forces some text (llguidance's fast-forward tokens: a
//!    JSON key, the `":"` after it, a regex literal), the answer is
//!    `force(tokens)`, fed to the model in one forward pass.
//! 5. Otherwise the answer is `sample{allow: mask}` with llguidance's mask of
//!    the tokens that keep the output in the grammar (EOS included when the
//!    grammar could end here), sent as ids or as a bitset, whichever is
//!    smaller.
//!
//! Logits are never needed: `prepare` always decides.
//!
//! # Tokenization
//!
//! llguidance tokenizes forced text itself. [`Engine`] does it with the
//! encoder it was given (the host's `encode` in a plugin) for valid UTF-8, and
//! with the trie's greedy longest-match for other bytes or when the encoder
//! turns the text into a special token (a grammar literal `<think>` must be
//! spelled with ordinary tokens, which the grammar accepts).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use deepwasm_sdk::sampler::{self, Decision, Prepared, SampleSpec};
use deepwasm_sdk::types::{Error, TokenId, TokenSet};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

pub use llguidance;

/// How many ids [`Vocab::from_host`] asks `token-bytes` for at once.
const CHUNK: u32 = 4096;

/// How many compiled grammars an [`Engine`] keeps for reuse.
const CACHE_SLOTS: usize = 16;

/// A tokenizer's vocabulary as the grammar engine needs it.
#[derive(Clone, Debug, Default)]
pub struct Vocab {
    /// The bytes of every token id, `tokens[t]` for id `t`. Its length is the
    /// vocabulary size (the number of logits); ids without bytes are never
    /// allowed.
    pub tokens: Vec<Vec<u8>>,
    /// Ids the tokenizer treats as special (BOS, EOS, control tokens): they
    /// never spell grammar text.
    pub special: Vec<TokenId>,
    /// Every id that ends generation; at least one.
    pub eos: Vec<TokenId>,
    /// The beginning-of-sequence id, if the tokenizer has one.
    pub bos: Option<TokenId>,
}

impl Vocab {
    /// Read the served model's vocabulary through the `tokenizer` import:
    /// `info()`, then `token-bytes` in chunks of 4096 ids, then the special
    /// tokens.
    pub fn from_host() -> Vocab {
        let info = sampler::tokenizer::info();
        let vocab_size = info.vocab_size;
        let mut tokens = Vec::with_capacity(vocab_size as usize);
        let mut start = 0;
        while start < vocab_size {
            let end = start.saturating_add(CHUNK).min(vocab_size);
            let ids: Vec<TokenId> = (start..end).collect();
            let mut chunk = sampler::tokenizer::token_bytes(&ids);
            // Be robust to a short answer: missing ids have no bytes.
            chunk.resize(ids.len(), Vec::new());
            tokens.extend(chunk);
            start = end;
        }
        Vocab {
            tokens,
            special: sampler::special_token_ids(),
            eos: info.eos,
            bos: info.bos,
        }
    }

    /// Build toktrie's trie: special tokens get llguidance's special marker
    /// byte (`0xFF`) in front of their text (or of `[id]` when they have
    /// none), so that they never match grammar text; the EOS ids become the
    /// trie's EOS tokens.
    pub fn trie(&self) -> Result<TokTrie, String> {
        let vocab_size = u32::try_from(self.tokens.len())
            .map_err(|_| "the vocabulary is too large".to_string())?;
        let in_range = |t: &TokenId| *t < vocab_size;
        let eos: Vec<TokenId> = self.eos.iter().copied().filter(in_range).collect();
        let Some(&first_eos) = eos.first() else {
            return Err("the tokenizer reports no EOS token in the vocabulary".to_string());
        };
        let mut special = vec![false; self.tokens.len()];
        for &t in self.special.iter().chain(&eos).chain(&self.bos) {
            if in_range(&t) {
                special[t as usize] = true;
            }
        }
        let words: Vec<Vec<u8>> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(t, bytes)| {
                if !special[t] {
                    return bytes.clone();
                }
                let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                if bytes.is_empty() {
                    word.extend_from_slice(format!("[{t}]").as_bytes());
                } else {
                    word.extend_from_slice(bytes);
                }
                word
            })
            .collect();
        let info = TokRxInfo {
            vocab_size,
            tok_eos: first_eos,
            tok_bos: self.bos.filter(in_range),
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: None,
        };
        Ok(TokTrie::from(&info, &words).with_eos_tokens(&eos))
    }
}

/// A tokenizer function: text to token ids, without BOS.
pub type Encoder = fn(&str) -> Vec<TokenId>;

/// The tokenizer environment llguidance works in: the trie plus a way to
/// tokenize forced text.
struct Env {
    trie: TokTrie,
    encode: Option<Encoder>,
    canonical: bool,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        tokenize(&self.trie, self.encode, s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        self.canonical
    }
}

/// Tokenize `bytes` with `encode` for its valid UTF-8 parts and the trie's
/// greedy longest match for the rest (and for text that `encode` turns into a
/// special token).
pub fn tokenize(trie: &TokTrie, encode: Option<Encoder>, bytes: &[u8]) -> Vec<TokenId> {
    let Some(encode) = encode else {
        return trie.greedy_tokenize(bytes);
    };
    trie.tokenize_with_greedy_fallback(bytes, |text| {
        let ids = encode(text);
        let ordinary = ids
            .iter()
            .all(|&t| (t as usize) < trie.vocab_size() && !trie.is_special_token(t));
        if ordinary {
            ids
        } else {
            trie.greedy_tokenize(text.as_bytes())
        }
    })
}

/// The per-instance grammar machinery: trie, parser factory and a cache of
/// compiled grammars.
pub struct Engine {
    factory: ParserFactory,
    eos: Vec<TokenId>,
    cache: RefCell<Vec<(String, Matcher)>>,
}

impl Engine {
    /// Build the trie and the parser factory (llguidance's token slices for
    /// fast masks). With an `encode` function forced text is tokenized with
    /// it and treated as canonical, so the engine may answer `force`; without
    /// one the trie's greedy tokenization is used and `canonical` says
    /// whether to trust it (true only for test vocabularies where greedy is
    /// the tokenizer).
    pub fn new(vocab: &Vocab, encode: Option<Encoder>, canonical: bool) -> Result<Engine, String> {
        let trie = vocab.trie()?;
        let eos = trie.eos_tokens().to_vec();
        let env: TokEnv = Arc::new(Env {
            trie,
            encode,
            canonical: canonical || encode.is_some(),
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Engine {
            factory,
            eos,
            cache: RefCell::new(Vec::new()),
        })
    }

    /// The vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.factory.tok_env().tok_trie().vocab_size()
    }

    /// The trie.
    pub fn trie(&self) -> &TokTrie {
        self.factory.tok_env().tok_trie()
    }

    /// The EOS ids.
    pub fn eos(&self) -> &[TokenId] {
        &self.eos
    }

    /// A fresh parser for the grammar that `build` makes. `key` identifies
    /// the grammar: the compiled parser is kept under it (the last 16 keys)
    /// and cloned for later sequences with the same key. Compile errors are
    /// llguidance's messages.
    pub fn open(
        &self,
        key: &str,
        build: impl FnOnce() -> Result<TopLevelGrammar, String>,
    ) -> Result<Constrained, String> {
        let cached = {
            let mut cache = self.cache.borrow_mut();
            cache.iter().position(|(k, _)| k == key).map(|pos| {
                // Most recently used last.
                let entry = cache.remove(pos);
                let matcher = entry.1.clone();
                cache.push(entry);
                matcher
            })
        };
        let matcher = match cached {
            Some(m) => m,
            None => {
                let grammar = build()?;
                let parser = self
                    .factory
                    .create_parser(grammar)
                    .map_err(|e| e.to_string())?;
                let matcher = Matcher::new(Ok(parser));
                if let Some(e) = matcher.get_error() {
                    return Err(e);
                }
                let mut cache = self.cache.borrow_mut();
                if cache.len() == CACHE_SLOTS {
                    cache.remove(0);
                }
                cache.push((key.to_string(), matcher.clone()));
                matcher
            }
        };
        Ok(Constrained {
            matcher,
            eos: self.eos.clone(),
            trie_env: self.factory.tok_env().clone(),
            ended: false,
        })
    }
}

/// What may come next in a constrained sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Exactly this text is forced: append these tokens.
    Force(Vec<TokenId>),
    /// Sample among these tokens (EOS among them when the grammar may end).
    Allow(SimpleVob),
    /// The grammar is complete: only EOS may follow.
    End,
    /// EOS was already appended: the sequence is over.
    Stop,
}

/// One sequence's parser state.
pub struct Constrained {
    matcher: Matcher,
    eos: Vec<TokenId>,
    trie_env: TokEnv,
    ended: bool,
}

impl Constrained {
    fn trie(&self) -> &TokTrie {
        self.trie_env.tok_trie()
    }

    /// A token for messages: its id and text.
    pub fn describe(&self, t: TokenId) -> String {
        if (t as usize) < self.trie().vocab_size() {
            format!("token {t} {}", self.trie().token_dbg(t))
        } else {
            format!("token {t} (out of the vocabulary)")
        }
    }

    /// Feed the tokens appended since the last step. A token the grammar
    /// rejects leaves the parser where it was and is an error naming it.
    pub fn advance(&mut self, tokens: &[TokenId]) -> Result<(), String> {
        for &t in tokens {
            if self.ended {
                return Err(format!(
                    "{} comes after the end of the sequence (EOS)",
                    self.describe(t)
                ));
            }
            if let Some(e) = self.matcher.get_error() {
                return Err(e);
            }
            if self.eos.contains(&t) {
                let complete = if self.matcher.is_stopped() {
                    true
                } else {
                    self.matcher.is_accepting().map_err(|e| e.to_string())?
                };
                if !complete {
                    return Err(format!(
                        "{} (EOS) ends the output before the grammar is complete",
                        self.describe(t)
                    ));
                }
                self.ended = true;
                continue;
            }
            if self.matcher.is_stopped() {
                return Err(format!(
                    "{} comes after the grammar is complete (only EOS may follow)",
                    self.describe(t)
                ));
            }
            let n = self
                .matcher
                .try_consume_tokens(&[t])
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!(
                    "{} is not allowed by the grammar here",
                    self.describe(t)
                ));
            }
        }
        Ok(())
    }

    /// What may come next.
    pub fn next_step(&mut self) -> Result<Step, String> {
        if self.ended {
            return Ok(Step::Stop);
        }
        if let Some(e) = self.matcher.get_error() {
            return Err(e);
        }
        if self.matcher.is_stopped() {
            return Ok(Step::End);
        }
        let forced = self.matcher.compute_ff_tokens();
        if let Some(e) = self.matcher.get_error() {
            return Err(e);
        }
        if !forced.is_empty() {
            return Ok(Step::Force(forced));
        }
        let mask = self.matcher.compute_mask().map_err(|e| e.to_string())?;
        // Only EOS allowed: the grammar is complete even if the parser has
        // not noticed yet.
        let count = mask.num_set();
        let eos_allowed = self.eos.iter().filter(|&&t| mask.is_allowed(t)).count();
        if count > 0 && count == eos_allowed {
            return Ok(Step::End);
        }
        Ok(Step::Allow(mask))
    }

    /// Drop llguidance's cache of masks by lexer state (benchmarks use it to
    /// time masks computed from scratch).
    pub fn invalidate_mask_cache(&mut self) {
        self.matcher.invalidate_bias_cache();
    }

    /// Whether the output so far is a complete match (EOS would be allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}

/// A mask as a [`TokenSet`]: the ids when there are fewer of them than bitset
/// words, else the bitset (clipped to the vocabulary).
pub fn token_set(mask: &SimpleVob, vocab_size: usize) -> TokenSet {
    let words = vocab_size.div_ceil(32);
    let count = mask.num_set();
    if count < words {
        let mut ids = Vec::with_capacity(count);
        mask.iter_set_entries(|t| ids.push(t as TokenId));
        TokenSet::Ids(ids)
    } else {
        let mut bits = mask.as_slice()[..words.min(mask.as_slice().len())].to_vec();
        bits.resize(words, 0);
        TokenSet::Bitset(bits)
    }
}

/// The decision for a step.
pub fn decision(step: Step, eos: &[TokenId], vocab_size: usize) -> Decision {
    match step {
        Step::Force(tokens) => Decision::Force(tokens),
        Step::Allow(mask) => Decision::Sample(SampleSpec::allow(token_set(&mask, vocab_size))),
        Step::End => Decision::Sample(SampleSpec::allow(TokenSet::Ids(eos.to_vec()))),
        Step::Stop => Decision::Stop,
    }
}

thread_local! {
    /// The instance's engine, built by [`setup`] (or by the first open if the
    /// host did not call it).
    static ENGINE: RefCell<Option<Rc<Engine>>> = const { RefCell::new(None) };
}

/// The host's tokenizer as an [`Encoder`].
fn host_encode(text: &str) -> Vec<TokenId> {
    sampler::tokenizer::encode(text, false)
}

fn engine_from_host() -> Result<Rc<Engine>, Error> {
    let vocab = Vocab::from_host();
    Engine::new(&vocab, Some(host_encode), true)
        .map(Rc::new)
        .map_err(|e| Error::failed(format!("building the token index: {e}")))
}

/// `setup` of a grammar plugin: read the vocabulary and build the engine.
pub fn setup() -> Result<(), Error> {
    let engine = engine_from_host()?;
    ENGINE.with(|cell| *cell.borrow_mut() = Some(engine));
    Ok(())
}

/// The instance's engine, built now if `setup` was not called.
pub fn engine() -> Result<Rc<Engine>, Error> {
    if let Some(engine) = ENGINE.with(|cell| cell.borrow().clone()) {
        return Ok(engine);
    }
    setup()?;
    ENGINE
        .with(|cell| cell.borrow().clone())
        .ok_or_else(|| Error::failed("no token index"))
}

/// A plugin's sequence: a [`Constrained`] parser and the last decision.
pub struct GrammarSequence {
    engine: Rc<Engine>,
    state: RefCell<Constrained>,
    last: RefCell<Option<Decision>>,
}

impl GrammarSequence {
    /// Open a sequence on the instance's engine for the grammar `build`
    /// makes (cached under `key`). Errors are `invalid-input` with
    /// llguidance's message.
    pub fn open(
        key: &str,
        build: impl FnOnce() -> Result<TopLevelGrammar, String>,
    ) -> Result<Self, Error> {
        let engine = engine()?;
        let state = engine.open(key, build).map_err(Error::invalid_input)?;
        Ok(GrammarSequence {
            engine,
            state: RefCell::new(state),
            last: RefCell::new(None),
        })
    }

    /// `prepare`: feed `new_tokens` and decide the step (see the crate docs).
    pub fn prepare(&self, new_tokens: &[TokenId]) -> Result<Prepared, Error> {
        let mut state = self.state.borrow_mut();
        state.advance(new_tokens).map_err(Error::invalid_input)?;
        let step = state.next_step().map_err(Error::failed)?;
        let decision = decision(step, self.engine.eos(), self.engine.vocab_size());
        *self.last.borrow_mut() = Some(decision.clone());
        Ok(Prepared::Decided(decision))
    }

    /// `decide`: never needed, as `prepare` always decides; a host that calls
    /// it anyway gets `prepare`'s decision again.
    pub fn decide(&self) -> Result<Decision, Error> {
        self.last
            .borrow()
            .clone()
            .ok_or_else(|| Error::failed("decide called before prepare"))
    }
}

pub mod testing;

#[cfg(test)]
mod tests {
    use super::testing::{EOS, Lcg, THINK, generate, toy_engine, toy_vocab};
    use super::*;

    fn regex(engine: &Engine, rx: &str) -> Result<Constrained, String> {
        engine.open(&format!("regex:{rx}"), || {
            Ok(TopLevelGrammar::from_regex(rx))
        })
    }

    fn json(engine: &Engine, schema: serde_json::Value) -> Result<Constrained, String> {
        let key = schema.to_string();
        engine.open(&key, || Ok(TopLevelGrammar::from_json_schema(schema)))
    }

    fn id(engine: &Engine, text: &str) -> TokenId {
        engine.trie().token_id(text.as_bytes()).expect(text)
    }

    #[test]
    fn trie_marks_specials_and_eos() {
        let engine = toy_engine();
        let trie = engine.trie();
        assert_eq!(trie.vocab_size(), toy_vocab().tokens.len());
        assert!(trie.is_special_token(EOS) && trie.is_special_token(THINK));
        assert_eq!(trie.token(THINK), b"\xff<think>");
        assert_eq!(engine.eos(), &[EOS]);
        // The ordinary `<think>` piece is not special.
        assert!(!trie.is_special_token(id(&engine, "<think>")));
        let mut v = toy_vocab();
        v.eos.clear();
        assert!(Engine::new(&v, None, true).is_err());
    }

    #[test]
    fn host_style_encoder_falls_back_for_specials() {
        let engine = toy_engine();
        let trie = engine.trie();
        // An encoder that, like a real tokenizer, turns `<think>` into the
        // special token: the greedy fallback spells it with ordinary pieces.
        fn enc(text: &str) -> Vec<TokenId> {
            if text == "<think>" {
                vec![THINK]
            } else {
                vec![]
            }
        }
        let ids = tokenize(trie, Some(enc), b"<think>");
        assert_eq!(ids, vec![id(&engine, "<think>")]);
        // Invalid UTF-8 goes to the greedy tokenizer, the rest to the encoder.
        let ids = tokenize(trie, Some(|_: &str| vec![5]), b"x\xffy");
        assert_eq!(ids, vec![5, 5]);
    }

    #[test]
    fn regex_runs_match() {
        let engine = toy_engine();
        let re = |s: &[u8]| {
            let s = std::str::from_utf8(s).unwrap();
            s.starts_with("ab") && s.ends_with('d') && s[2..s.len() - 1].bytes().all(|b| b == b'c')
        };
        let mut rng = Lcg(1);
        let mut finished = 0;
        for _ in 0..50 {
            let mut seq = regex(&engine, "abc*d").unwrap();
            let run = generate(&engine, &mut seq, &mut rng, 40);
            assert!(run.text.starts_with(b"ab"), "{:?}", run);
            if run.finished {
                finished += 1;
                assert!(re(&run.text), "{:?}", String::from_utf8_lossy(&run.text));
                assert_eq!(run.tokens.last(), Some(&EOS));
            }
        }
        assert!(finished > 10);
    }

    #[test]
    fn forced_literal_and_end() {
        let engine = toy_engine();
        let mut seq = regex(&engine, "hello").unwrap();
        // The whole literal is forced at once (greedy tokenization).
        let Step::Force(tokens) = seq.next_step().unwrap() else {
            panic!("expected a forced run");
        };
        assert_eq!(engine.trie().decode(&tokens), b"hello");
        seq.advance(&tokens).unwrap();
        // Nothing can follow: only EOS.
        assert_eq!(seq.next_step().unwrap(), Step::End);
        seq.advance(&[EOS]).unwrap();
        assert_eq!(seq.next_step().unwrap(), Step::Stop);
        let e = seq.advance(&[id(&engine, "a")]).unwrap_err();
        assert!(e.contains("after the end"), "{e}");
    }

    #[test]
    fn rejected_tokens_are_named() {
        let engine = toy_engine();
        let mut seq = regex(&engine, "[0-9]+").unwrap();
        let Step::Allow(mask) = seq.next_step().unwrap() else {
            panic!("expected a mask");
        };
        assert!(mask.is_allowed(id(&engine, "12")));
        assert!(!mask.is_allowed(id(&engine, "a")));
        assert!(!mask.is_allowed(EOS), "nothing generated yet");
        let e = seq.advance(&[EOS]).unwrap_err();
        assert!(e.contains("token 0") && e.contains("EOS"), "{e}");
        let a = id(&engine, "a");
        let e = seq.advance(&[a]).unwrap_err();
        assert!(
            e.contains(&format!("token {a} ⟨a⟩")) && e.contains("not allowed"),
            "{e}"
        );
        // The parser is unchanged: digits still go.
        seq.advance(&[id(&engine, "12"), id(&engine, "00")])
            .unwrap();
        let Step::Allow(mask) = seq.next_step().unwrap() else {
            panic!("expected a mask");
        };
        assert!(mask.is_allowed(EOS) && mask.is_allowed(id(&engine, "1")));
        seq.advance(&[EOS]).unwrap();
        assert_eq!(seq.next_step().unwrap(), Step::Stop);
    }

    #[test]
    fn regex_dot_skips_newline() {
        let engine = toy_engine();
        let mut seq = regex(&engine, "a.b").unwrap();
        seq.advance(&[id(&engine, "a")]).unwrap();
        let Step::Allow(mask) = seq.next_step().unwrap() else {
            panic!("expected a mask");
        };
        assert!(mask.is_allowed(id(&engine, "x")));
        assert!(!mask.is_allowed(id(&engine, "\n")));
    }

    #[test]
    fn bad_grammars_are_errors() {
        let engine = toy_engine();
        assert!(regex(&engine, "a(b").is_err());
        let e = json(&engine, serde_json::json!({"type": "nonsense"}))
            .err()
            .unwrap();
        assert!(!e.is_empty());
        let e = json(
            &engine,
            serde_json::json!({"type": "string", "minLength": 5, "maxLength": 2}),
        )
        .err()
        .unwrap();
        assert!(e.to_lowercase().contains("unsatisfiable"), "{e}");
    }

    fn compact(schema: serde_json::Value) -> serde_json::Value {
        let mut schema = schema;
        schema["x-guidance"] = serde_json::json!({"whitespace_flexible": false});
        schema
    }

    #[test]
    fn json_runs_are_valid() {
        let engine = toy_engine();
        let schema = compact(serde_json::json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 4},
                "age": {"type": "integer", "minimum": 0, "maximum": 99},
                "ok": {"type": "boolean"}
            },
            "required": ["name", "age", "ok"],
            "additionalProperties": false
        }));
        let mut rng = Lcg(7);
        let mut finished = 0;
        for _ in 0..30 {
            let mut seq = json(&engine, schema.clone()).unwrap();
            let run = generate(&engine, &mut seq, &mut rng, 60);
            assert!(run.forced_steps > 0, "keys are forced");
            if !run.finished {
                continue;
            }
            finished += 1;
            let text = String::from_utf8(run.text.clone()).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).expect(&text);
            let obj = v.as_object().expect(&text);
            assert_eq!(obj.len(), 3, "{text}");
            assert!(obj["name"].as_str().unwrap().chars().count() <= 4, "{text}");
            assert!(obj["age"].as_u64().unwrap() <= 99, "{text}");
            assert!(obj["ok"].is_boolean(), "{text}");
            // Compact: no whitespace outside strings.
            assert!(
                !text.contains(": ") && !text.contains(", ") && !text.contains('\n'),
                "{text}"
            );
        }
        assert!(finished > 10, "{finished}");
    }

    #[test]
    fn json_object_and_const() {
        let engine = toy_engine();
        let mut seq = json(&engine, compact(serde_json::json!({"const": "hello"}))).unwrap();
        let Step::Force(tokens) = seq.next_step().unwrap() else {
            panic!("a const is forced");
        };
        let mut text = engine.trie().decode(&tokens);
        seq.advance(&tokens).unwrap();
        // llguidance may hold back the last token of a forced run.
        loop {
            match seq.next_step().unwrap() {
                Step::Force(t) => {
                    text.extend(engine.trie().decode(&t));
                    seq.advance(&t).unwrap();
                }
                Step::Allow(mask) => {
                    let mut ids = Vec::new();
                    mask.iter_set_entries(|t| ids.push(t as TokenId));
                    let t = ids[0];
                    text.extend(engine.trie().decode(&[t]));
                    seq.advance(&[t]).unwrap();
                }
                Step::End => break,
                Step::Stop => unreachable!(),
            }
        }
        assert_eq!(text, b"\"hello\"");

        let mut rng = Lcg(3);
        let schema = compact(serde_json::json!({"type": "object"}));
        let mut finished = 0;
        for _ in 0..40 {
            let mut seq = json(&engine, schema.clone()).unwrap();
            let run = generate(&engine, &mut seq, &mut rng, 40);
            if run.finished {
                finished += 1;
                let text = String::from_utf8(run.text).unwrap();
                let v: serde_json::Value = serde_json::from_str(&text).expect(&text);
                assert!(v.is_object(), "{text}");
            }
        }
        assert!(finished > 0);
    }

    #[test]
    fn cached_grammars_are_independent() {
        let engine = toy_engine();
        let mut a = regex(&engine, "[a-c]+").unwrap();
        let mut b = regex(&engine, "[a-c]+").unwrap();
        a.advance(&[id(&engine, "abc")]).unwrap();
        assert!(a.is_accepting());
        assert!(!b.is_accepting());
        let Step::Allow(mask) = b.next_step().unwrap() else {
            panic!("expected a mask");
        };
        assert!(!mask.is_allowed(EOS));
    }

    #[test]
    fn token_set_encoding() {
        let mut mask = SimpleVob::alloc(100);
        mask.allow_token(3);
        mask.allow_token(70);
        assert!(matches!(token_set(&mask, 100), TokenSet::Ids(ref ids) if ids == &[3, 70]));
        let mut mask = SimpleVob::alloc(100);
        for t in 0..50 {
            mask.allow_token(t);
        }
        let TokenSet::Bitset(words) = token_set(&mask, 100) else {
            panic!("expected a bitset");
        };
        assert_eq!(words, vec![u32::MAX, (1 << 18) - 1, 0, 0]);
        let d = decision(Step::End, &[0, 9], 100);
        assert!(
            matches!(d, Decision::Sample(SampleSpec { allow: Some(TokenSet::Ids(ref ids)), .. }) if ids == &[0, 9])
        );
        assert!(matches!(decision(Step::Stop, &[0], 100), Decision::Stop));
    }
}
