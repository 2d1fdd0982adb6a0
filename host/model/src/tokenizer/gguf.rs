//! Tokenizers built from GGUF metadata (`tokenizer.ggml.*`).
//!
//! llama.cpp is the reference for GGUF files, so the pipelines built here
//! with the `tokenizers` crate follow what llama.cpp does with the same
//! metadata:
//!
//! - `gpt2` (byte-level BPE: SmolLM2, Llama 3, Qwen2, DeepSeek): the file
//!   names a pre-tokenizer (`tokenizer.ggml.pre`) that llama.cpp turns into a
//!   list of regular expressions. The regexes below are llama.cpp's, applied
//!   one after the other, each isolating its matches, then GPT-2's byte-level
//!   mapping without a prefix space. (A prefix space, as some converters add,
//!   turns "system" into "Ġsystem" and is wrong for every model here.)
//! - `llama` (SentencePiece BPE: Llama 2, Mistral): see [`sentencepiece`].

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{
    NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence,
};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::pieces::{PieceEncoding, TableEntry, TokenTable};
use super::{Additions, Parts, TokenizerError};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
mod token_type {
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
}

/// GPT-2's pre-tokenizer regex.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3's regex, with llama.cpp's rewrite of `(?i:'s|...)` as explicit
/// case classes (case-insensitive matching would also fold e.g. "ſ" to "s").
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// DeepSeek V3 and R1 (the same three splits as their tokenizer.json).
const DEEPSEEK_V3: &[&str] = &[
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];

/// DeepSeek LLM (V1): letters are an explicit list of ranges.
const DEEPSEEK_LLM: &[&str] = &[
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-퟿]+",
    "\\p{N}+",
];

/// DeepSeek Coder (V1).
const DEEPSEEK_CODER: &[&str] = &[
    "[\r\n]",
    r"\s?\p{L}+",
    r"\s?\p{P}+",
    "[一-龥ࠀ-一가-퟿]+",
    r"\p{N}",
];

/// What llama.cpp does for one `tokenizer.ggml.pre` value.
struct PreTokenizerSpec {
    regexes: &'static [&'static str],
    /// A word already in the vocabulary is one token, whatever the merges
    /// would make of it (Llama 3's tiktoken-derived vocabulary).
    ignore_merges: bool,
    /// BOS added when the file has no `tokenizer.ggml.add_bos_token`.
    add_bos: bool,
}

/// The `tokenizer.ggml.pre` values we implement, by llama.cpp's names.
const SUPPORTED_PRE: &str = "default, gpt-2, phi-2, mpt, olmo, smollm, starcoder, refact, command-r, codeshell, \
     llama3, llama-v3, llama-bpe, falcon3, qwen2, deepseek-r1-qwen, stablelm2, \
     deepseek-llm, deepseek-coder, deepseek-v3";

fn pre_tokenizer_spec(pre: &str) -> Option<PreTokenizerSpec> {
    let spec = |regexes, ignore_merges, add_bos| PreTokenizerSpec {
        regexes,
        ignore_merges,
        add_bos,
    };
    Some(match pre {
        "default" => spec(
            &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
            false,
            false,
        ),
        "gpt-2" | "phi-2" | "mpt" | "olmo" => spec(&[GPT2], false, false),
        // Individual digits first, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" => {
            spec(&[r"\p{N}", GPT2], false, false)
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => spec(&[LLAMA3], true, true),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" => spec(&[QWEN2], false, false),
        "deepseek-llm" => spec(DEEPSEEK_LLM, false, false),
        "deepseek-coder" => spec(DEEPSEEK_CODER, false, false),
        "deepseek-v3" => spec(DEEPSEEK_V3, false, false),
        _ => return None,
    })
}

/// Typed access to the metadata, with errors that name the key.
struct Metadata<'a>(&'a HashMap<String, Value>);

fn bad_key(key: &str, message: impl Into<String>) -> TokenizerError {
    TokenizerError::BadMetadata {
        key: key.to_owned(),
        message: message.into(),
    }
}

fn as_int(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(n) => n.into(),
        Value::I8(n) => n.into(),
        Value::U16(n) => n.into(),
        Value::I16(n) => n.into(),
        Value::U32(n) => n.into(),
        Value::I32(n) => n.into(),
        Value::U64(n) => i64::try_from(n).ok()?,
        Value::I64(n) => n,
        _ => return None,
    })
}

impl<'a> Metadata<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key)
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, TokenizerError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(bad_key(
                key,
                format!("should be a string, not {:?}", v.value_type()),
            )),
        }
    }

    fn flag(&self, key: &str) -> Result<Option<bool>, TokenizerError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(bad_key(
                key,
                format!("should be a bool, not {:?}", v.value_type()),
            )),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>, TokenizerError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(v) => Err(bad_key(
                key,
                format!("should be an array, not {:?}", v.value_type()),
            )),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<&'a str>, TokenizerError> {
        let items = match self.array(key)? {
            Some(items) => items,
            None => {
                return Err(TokenizerError::MissingMetadata {
                    key: key.to_owned(),
                });
            }
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(bad_key(
                    key,
                    format!("item {i} should be a string, not {:?}", v.value_type()),
                )),
            })
            .collect()
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>, TokenizerError> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                as_int(v).ok_or_else(|| {
                    bad_key(
                        key,
                        format!("item {i} should be an integer, not {:?}", v.value_type()),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A token id. Out-of-range ids are ignored with a warning, as llama.cpp
    /// does (some converters write ids for tokens that were dropped).
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>, TokenizerError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let id = as_int(v).ok_or_else(|| {
            bad_key(
                key,
                format!("should be a token id, not {:?}", v.value_type()),
            )
        })?;
        match u32::try_from(id) {
            Ok(id) if (id as usize) < n_tokens => Ok(Some(id)),
            _ => {
                tracing::warn!(
                    key,
                    id,
                    n_tokens,
                    "GGUF token id outside the vocabulary, ignored"
                );
                Ok(None)
            }
        }
    }
}

/// Builds the tokenizer parts from GGUF metadata.
pub(super) fn parts_from_metadata(
    metadata: &HashMap<String, Value>,
) -> Result<Parts, TokenizerError> {
    let md = Metadata(metadata);
    const MODEL: &str = "tokenizer.ggml.model";
    let model = md
        .string(MODEL)?
        .ok_or_else(|| TokenizerError::MissingMetadata {
            key: MODEL.to_owned(),
        })?;
    match model {
        "gpt2" => byte_level_bpe(&md),
        "llama" => sentencepiece(&md),
        other => Err(TokenizerError::UnsupportedModel {
            value: other.to_owned(),
        }),
    }
}

const TOKENS: &str = "tokenizer.ggml.tokens";
const TYPES: &str = "tokenizer.ggml.token_type";

/// The token list and each token's llama.cpp type (NORMAL when the file
/// has no types).
fn vocabulary<'a>(md: &Metadata<'a>) -> Result<(Vec<&'a str>, Vec<i64>), TokenizerError> {
    let tokens = md.strings(TOKENS)?;
    let types = match md.ints(TYPES)? {
        Some(types) if types.len() != tokens.len() => {
            return Err(bad_key(
                TYPES,
                format!("has {} entries for {} tokens", types.len(), tokens.len()),
            ));
        }
        Some(types) => types,
        None => vec![token_type::NORMAL; tokens.len()],
    };
    Ok((tokens, types))
}

/// Control (and unknown) tokens are special: matched in text, dropped by
/// decode(skip_special_tokens). User-defined tokens are matched in text but
/// are ordinary text when decoding, as in llama.cpp.
fn is_special(ty: i64) -> bool {
    matches!(ty, token_type::CONTROL | token_type::UNKNOWN)
}

fn is_added(ty: i64) -> bool {
    is_special(ty) || ty == token_type::USER_DEFINED
}

/// What both models share once the pipeline is built: added tokens, the
/// byte table, BOS/EOS and the chat template.
fn finish(
    md: &Metadata,
    mut inner: tokenizers::Tokenizer,
    tokens: &[&str],
    types: &[i64],
    encoding: PieceEncoding,
    default_add_bos: bool,
) -> Result<Parts, TokenizerError> {
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|&(_, &ty)| is_added(ty))
        .map(|(text, &ty)| AddedToken::from(*text, is_special(ty)).normalized(false))
        .collect();
    inner.add_tokens(&added);

    let table = TokenTable::build(
        tokens.iter().zip(types).map(|(text, &ty)| {
            Some(TableEntry {
                text,
                added: is_added(ty),
                special: is_special(ty),
            })
        }),
        encoding,
    );

    let n = tokens.len();
    let mut eos = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = md.token_id(key, n)?
            && !eos.contains(&id)
        {
            eos.push(id);
        }
    }
    Ok(Parts {
        inner,
        table,
        encoding,
        additions: Additions::Explicit {
            bos: md
                .flag("tokenizer.ggml.add_bos_token")?
                .unwrap_or(default_add_bos),
            eos: md.flag("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        },
        bos: md.token_id("tokenizer.ggml.bos_token_id", n)?,
        eos,
        pad: md.token_id("tokenizer.ggml.padding_token_id", n)?,
        chat_template: md.string("tokenizer.chat_template")?.map(str::to_owned),
        source: "GGUF metadata".to_owned(),
    })
}

/// `tokenizer.ggml.model == "gpt2"`: byte-level BPE.
fn byte_level_bpe(md: &Metadata) -> Result<Parts, TokenizerError> {
    const MERGES: &str = "tokenizer.ggml.merges";
    const PRE: &str = "tokenizer.ggml.pre";

    // llama.cpp falls back to "default" (with a warning) when the key is
    // missing: so do we.
    let pre = md.string(PRE)?.unwrap_or("default");
    let spec = pre_tokenizer_spec(pre).ok_or_else(|| TokenizerError::UnsupportedPreTokenizer {
        value: pre.to_owned(),
        supported: SUPPORTED_PRE,
    })?;

    let (tokens, types) = vocabulary(md)?;
    let merges = md
        .strings(MERGES)?
        .into_iter()
        .enumerate()
        .map(|(i, merge)| {
            // The two halves are separated by the first space after the first
            // character, as llama.cpp reads them.
            let first_len = merge.chars().next().map_or(0, char::len_utf8);
            match merge[first_len..].find(' ') {
                Some(pos) => Ok((
                    merge[..first_len + pos].to_owned(),
                    merge[first_len + pos + 1..].to_owned(),
                )),
                None => Err(bad_key(
                    MERGES,
                    format!("merge {i} ({merge:?}) is not two tokens separated by a space"),
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;

    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).to_owned(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| bad_key(MERGES, format!("do not fit the vocabulary: {e}")))?;

    let mut splits: Vec<PreTokenizerWrapper> = Vec::with_capacity(spec.regexes.len() + 1);
    for regex in spec.regexes {
        let split = Split::new(
            SplitPattern::Regex((*regex).to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| {
            TokenizerError::Build(format!(
                "pre-tokenizer regex {regex:?} for {PRE}={pre:?}: {e}"
            ))
        })?;
        splits.push(split.into());
    }
    splits.push(ByteLevel::new(false, false, false).into());

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner
        .with_pre_tokenizer(Some(Sequence::new(splits)))
        .with_decoder(Some(ByteLevelDecoder::default()));
    finish(
        md,
        inner,
        &tokens,
        &types,
        PieceEncoding::ByteLevel,
        spec.add_bos,
    )
}

/// `tokenizer.ggml.model == "llama"`: SentencePiece BPE (Llama 2, Mistral).
///
/// The file has scores, not merges: llama.cpp repeatedly joins the adjacent
/// pair whose concatenation is the highest-scoring vocabulary token
/// (leftmost first on ties), and spells characters that no token covers as
/// `<0xNN>` byte tokens. That is BPE with one merge per way of splitting a
/// token into two tokens, ranked by the token's score, plus byte fallback;
/// the merges are derived here once.
///
/// The text gets a leading space (`tokenizer.ggml.add_space_prefix`,
/// default true) before each run of text between special tokens, spaces
/// become `▁`, and BOS is added unless `tokenizer.ggml.add_bos_token` says
/// otherwise, all as llama.cpp does.
fn sentencepiece(md: &Metadata) -> Result<Parts, TokenizerError> {
    const SCORES: &str = "tokenizer.ggml.scores";
    let (tokens, types) = vocabulary(md)?;
    let scores = match md.array(SCORES)? {
        Some(items) if items.len() == tokens.len() => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::F32(x) => Ok(*x),
                v => Err(bad_key(
                    SCORES,
                    format!("item {i} should be an f32, not {:?}", v.value_type()),
                )),
            })
            .collect::<Result<Vec<f32>, _>>()?,
        Some(items) => {
            return Err(bad_key(
                SCORES,
                format!("has {} entries for {} tokens", items.len(), tokens.len()),
            ));
        }
        None => {
            return Err(TokenizerError::MissingMetadata {
                key: SCORES.to_owned(),
            });
        }
    };
    if md.flag("tokenizer.ggml.remove_extra_whitespaces")? == Some(true) {
        return Err(bad_key(
            "tokenizer.ggml.remove_extra_whitespaces",
            "is true, which we do not implement for SentencePiece vocabularies",
        ));
    }
    let add_space_prefix = md.flag("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);

    // Only text tokens take part in merges: control and byte tokens are
    // never formed by joining text.
    let mergeable = |ty: i64| matches!(ty, token_type::NORMAL | token_type::USER_DEFINED);
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|&(i, _)| mergeable(types[i]))
        .map(|(i, t)| (*t, i))
        .collect();
    let mut ranked: Vec<(f32, usize, usize)> = Vec::new();
    for (&text, &id) in &ids {
        for (split, _) in text.char_indices().skip(1) {
            if ids.contains_key(&text[..split]) && ids.contains_key(&text[split..]) {
                ranked.push((scores[id], id, split));
            }
        }
    }
    // Highest score first; ties broken by id, then split, for a fixed order.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges = ranked
        .into_iter()
        .map(|(_, id, split)| {
            let text = tokens[id];
            (text[..split].to_owned(), text[split..].to_owned())
        })
        .collect();

    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).to_owned(), i as u32))
        .collect();
    let mut bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true);
    if let Some(unk) = md.token_id("tokenizer.ggml.unknown_token_id", tokens.len())? {
        bpe = bpe.unk_token(tokens[unk as usize].to_owned());
    }
    let bpe = bpe
        .build()
        .map_err(|e| TokenizerError::Build(format!("SentencePiece merges from {SCORES}: {e}")))?;

    let build = |e: tokenizers::Error| TokenizerError::Build(e.to_string());
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        normalizers.push(Prepend::new("▁".to_owned()).into());
    }
    normalizers.push(Replace::new(" ", "▁").map_err(build)?.into());
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(build)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .with_decoder(Some(DecoderSequence::new(decoders)));
    let encoding = PieceEncoding::SentencePiece {
        byte_fallback: true,
        strip_leading_space: add_space_prefix,
    };
    finish(md, inner, &tokens, &types, encoding, true)
}
