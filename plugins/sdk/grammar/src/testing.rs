//! A small hand-made vocabulary and a generation loop, for native tests of
//! grammar plugins (no host needed).

use deepwasm_sdk::types::TokenId;

use crate::{Constrained, Engine, Step, Vocab};

/// EOS of [`toy_vocab`].
pub const EOS: TokenId = 0;
/// A second special token of [`toy_vocab`], spelled `<think>`.
pub const THINK: TokenId = 1;

/// A byte-complete toy vocabulary: id 0 is `<eos>` (special, EOS), id 1 is
/// `<think>` (special), then every printable ASCII byte and `\n`, then some
/// multi-byte pieces as a BPE vocabulary has (`{"`, `":`, `name`, `true`,
/// ...), then two unused ids without bytes.
pub fn toy_vocab() -> Vocab {
    let mut tokens: Vec<Vec<u8>> = vec![b"<eos>".to_vec(), b"<think>".to_vec()];
    tokens.extend((0x20u8..0x7f).map(|b| vec![b]));
    tokens.push(b"\n".to_vec());
    for piece in [
        "{\"",
        "\":",
        "\",",
        "\"}",
        ",\"",
        " \"",
        "name",
        "age",
        "true",
        "false",
        "null",
        "12",
        "00",
        "ab",
        "abc",
        "hello",
        "\"hello\"",
        "<think>",
        "ing",
        "  ",
    ] {
        tokens.push(piece.as_bytes().to_vec());
    }
    tokens.push(Vec::new());
    tokens.push(Vec::new());
    Vocab {
        tokens,
        special: vec![EOS, THINK],
        eos: vec![EOS],
        bos: None,
    }
}

/// An engine on [`toy_vocab`], tokenizing forced text greedily (which is
/// canonical for this vocabulary's purposes).
pub fn toy_engine() -> Engine {
    Engine::new(&toy_vocab(), None, true).expect("toy engine")
}

/// A deterministic 64-bit LCG for picking tokens.
#[derive(Clone, Debug)]
pub struct Lcg(pub u64);

impl Lcg {
    /// The next value below `n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

/// How a generation run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The generated text (EOS left out).
    pub text: Vec<u8>,
    /// The tokens, EOS included when it was sampled.
    pub tokens: Vec<TokenId>,
    /// How many steps answered `force`.
    pub forced_steps: usize,
    /// Whether the run ended with EOS within the step limit.
    pub finished: bool,
}

/// Generate with `seq` for at most `max_steps` steps, picking uniformly among
/// the allowed tokens except that EOS is taken with probability 1/2 whenever
/// it is allowed (so runs end). Every step's answer is checked the way a host
/// would apply it. Panics on a grammar error.
pub fn generate(engine: &Engine, seq: &mut Constrained, rng: &mut Lcg, max_steps: usize) -> Run {
    let mut run = Run {
        text: Vec::new(),
        tokens: Vec::new(),
        forced_steps: 0,
        finished: false,
    };
    let mut new_tokens: Vec<TokenId> = Vec::new();
    for _ in 0..max_steps {
        seq.advance(&new_tokens).expect("advance");
        new_tokens.clear();
        match seq.next_step().expect("next step") {
            Step::Force(tokens) => {
                run.forced_steps += 1;
                new_tokens = tokens;
            }
            Step::Allow(mask) => {
                let mut allowed = Vec::new();
                mask.iter_set_entries(|t| allowed.push(t as TokenId));
                assert!(!allowed.is_empty());
                let eos_ok = allowed.contains(&EOS);
                let t = if eos_ok && rng.below(2) == 0 {
                    EOS
                } else {
                    allowed[rng.below(allowed.len())]
                };
                new_tokens.push(t);
            }
            Step::End => new_tokens.push(EOS),
            Step::Stop => {
                run.finished = true;
                return run;
            }
        }
        for &t in &new_tokens {
            run.tokens.push(t);
            if t != EOS {
                run.text.extend_from_slice(engine.trie().token(t));
            }
        }
    }
    run
}
