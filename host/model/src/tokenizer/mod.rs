//! Tokenizers: `tokenizer.json` through the `tokenizers` crate, or built from
//! a GGUF file's metadata.
//!
//! A [`Tokenizer`] is the `tokenizers` pipeline plus what the pipeline does
//! not know and inference needs: which tokens are BOS and EOS, whether BOS is
//! added, which tokens end generation, the chat template, and the bytes each
//! token stands for (for streaming output that never splits a character, and
//! for samplers that look at token text).
//!
//! Two rules hold for every tokenizer built here:
//!
//! - Special tokens written in the text (`<|im_start|>`, `<think>`) are
//!   always recognised as those tokens. Chat templates write them as text,
//!   so there is no mode that spells them out character by character.
//! - `decode`, [`Detokenizer`] and [`Tokenizer::token_bytes`] all read one
//!   precomputed byte table, so streamed text is exactly the decoded text.

mod config;
mod gguf;
mod pieces;
mod stream;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;
use tokenizers::Model;

use config::TokenizerConfig;
use pieces::{PieceEncoding, TableEntry, TokenTable};
pub use stream::Detokenizer;

/// Why a tokenizer could not be loaded or used. Messages name the file or
/// the GGUF metadata key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The `tokenizers` crate rejected tokenizer.json.
    #[error("cannot load the tokenizer in {path}: {message}")]
    Load { path: PathBuf, message: String },
    /// A configuration file is readable but says something unusable.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("GGUF metadata has no `{key}`")]
    MissingMetadata { key: String },
    #[error("GGUF metadata `{key}` {message}")]
    BadMetadata { key: String, message: String },
    #[error(
        "GGUF metadata `tokenizer.ggml.model` is {value:?}; supported: \"gpt2\" (byte-level BPE), \"llama\" (SentencePiece BPE)"
    )]
    UnsupportedModel { value: String },
    #[error(
        "GGUF metadata `tokenizer.ggml.pre` is {value:?}, a pre-tokenizer we do not implement; supported: {supported}"
    )]
    UnsupportedPreTokenizer {
        value: String,
        supported: &'static str,
    },
    #[error("cannot build the tokenizer: {0}")]
    Build(String),
    #[error("cannot encode the text: {0}")]
    Encode(String),
    #[error("token id {id} is outside the vocabulary ({vocab_size} ids)")]
    UnknownId { id: u32, vocab_size: usize },
}

/// What a special token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialKind {
    Bos,
    /// Ends generation (any id in [`Tokenizer::eos`]).
    Eos,
    Pad,
    Other,
}

/// A token that stands for a role in the sequence rather than for text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub id: u32,
    pub text: String,
    pub kind: SpecialKind,
}

/// Who adds BOS/EOS when `encode` is asked to add special tokens.
#[derive(Debug, Clone, Copy)]
enum Additions {
    /// tokenizer.json's post-processor, when no config says otherwise
    /// (Llama 3's adds `<|begin_of_text|>` this way).
    PostProcessor,
    /// We do, as tokenizer_config.json's `add_bos_token`/`add_eos_token` or
    /// GGUF's `tokenizer.ggml.add_bos_token`/`add_eos_token` say.
    /// transformers' Llama-style tokenizers likewise replace the
    /// post-processor with these flags.
    Explicit { bos: bool, eos: bool },
}

/// What each constructor gathers before [`Tokenizer::assemble`].
struct Parts {
    inner: tokenizers::Tokenizer,
    table: TokenTable,
    encoding: PieceEncoding,
    additions: Additions,
    bos: Option<u32>,
    /// Configured end ids, the main EOS first.
    eos: Vec<u32>,
    pad: Option<u32>,
    chat_template: Option<String>,
    /// Where this came from, for error messages.
    source: String,
}

/// Vocabulary strings of tokens that end a turn or a document in the model
/// families we run. When one of these is a special (added or control) token
/// of the vocabulary, it ends generation even if the configuration names a
/// different EOS: SmolLM2's GGUF says EOS is `<|im_end|>` but the model may
/// also emit `<|endoftext|>`, and Llama 3 Instruct ends turns with
/// `<|eot_id|>` while its EOS is `<|end_of_text|>`. llama.cpp keeps a similar
/// list for the same reason.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<|end|>",
    "<end_of_turn>",
    "<｜end▁of▁sentence｜>",
    "<EOT>",
];

/// A tokenizer with what inference needs beyond ids. Cheap to share across
/// threads (`Send + Sync`, immutable after loading).
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    table: TokenTable,
    encoding: PieceEncoding,
    additions: Additions,
    bos: Option<u32>,
    eos: Vec<u32>,
    pad: Option<u32>,
    special_tokens: Vec<SpecialToken>,
    chat_template: Option<String>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("encoding", &self.encoding)
            .field("additions", &self.additions)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` from a Hugging Face model directory, with
    /// `tokenizer_config.json` (BOS/EOS/pad, `add_bos_token`,
    /// `add_eos_token`, chat template), `generation_config.json` (more ids
    /// that end generation) and `chat_template.jinja` (newer repositories
    /// keep the template there) when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let config = dir.join("tokenizer_config.json");
        let generation = dir.join("generation_config.json");
        let template = dir.join("chat_template.jinja");
        let mut parts = Self::parts_from_files(
            &dir.join("tokenizer.json"),
            config.is_file().then_some(config.as_path()),
        )?;
        if generation.is_file() {
            for id in config::generation_eos_ids(&generation)? {
                if parts.table.text(id).is_none() {
                    return Err(TokenizerError::Config {
                        path: generation,
                        message: format!("`eos_token_id` {id} is not in the vocabulary"),
                    });
                }
                if !parts.eos.contains(&id) {
                    parts.eos.push(id);
                }
            }
        }
        if parts.chat_template.is_none() && template.is_file() {
            let source =
                std::fs::read_to_string(&template).map_err(|source| TokenizerError::Io {
                    path: template.clone(),
                    source,
                })?;
            parts.chat_template = Some(source);
        }
        Self::assemble(parts)
    }

    /// Loads `tokenizer.json`, with `tokenizer_config.json` if given (see
    /// [`Tokenizer::from_hf_dir`]).
    pub fn from_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
    ) -> Result<Self, TokenizerError> {
        Self::assemble(Self::parts_from_files(tokenizer_json, tokenizer_config)?)
    }

    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.*`), the
    /// way llama.cpp does for the file's pre-tokenizer.
    ///
    /// BOS is added by `encode(.., true)` when `tokenizer.ggml.add_bos_token`
    /// says so; without that key, as llama.cpp does: always for SentencePiece
    /// (`llama`) vocabularies, and for byte-level BPE (`gpt2`) only with Llama
    /// 3's pre-tokenizer. (SmolLM2's GGUF says false.)
    pub fn from_gguf(metadata: &HashMap<String, Value>) -> Result<Self, TokenizerError> {
        Self::assemble(gguf::parts_from_metadata(metadata)?)
    }

    fn parts_from_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
    ) -> Result<Parts, TokenizerError> {
        let bytes = std::fs::read(tokenizer_json).map_err(|source| TokenizerError::Io {
            path: tokenizer_json.to_owned(),
            source,
        })?;
        let mut inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::Load {
                path: tokenizer_json.to_owned(),
                message: e.to_string(),
            })?;
        drop(bytes);
        // Truncation and padding in tokenizer.json are training settings; an
        // inference encode must return every id.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::Load {
                path: tokenizer_json.to_owned(),
                message: e.to_string(),
            })?;

        let to_json = |v: Option<Json>| v.unwrap_or(Json::Null);
        let decoder = to_json(
            inner
                .get_decoder()
                .and_then(|d| serde_json::to_value(d).ok()),
        );
        let pre_tokenizer = to_json(
            inner
                .get_pre_tokenizer()
                .and_then(|p| serde_json::to_value(p).ok()),
        );
        let encoding = PieceEncoding::from_json(&decoder, &pre_tokenizer);

        // Every id's string: the model's vocabulary, then added tokens (which
        // win, as in the `tokenizers` decoder).
        let model_vocab = inner.get_model().get_vocab();
        let added = inner.get_added_tokens_decoder();
        let size = model_vocab
            .values()
            .chain(added.keys())
            .max()
            .map_or(0, |&max| max as usize + 1);
        let mut entries: Vec<Option<TableEntry>> = (0..size).map(|_| None).collect();
        for (text, &id) in &model_vocab {
            entries[id as usize] = Some(TableEntry {
                text,
                added: false,
                special: false,
            });
        }
        for (&id, token) in &added {
            entries[id as usize] = Some(TableEntry {
                text: &token.content,
                added: true,
                special: token.special,
            });
        }
        let table = TokenTable::build(entries.into_iter(), encoding);

        let config = match tokenizer_config {
            Some(path) => TokenizerConfig::read(path)?,
            None => TokenizerConfig::default(),
        };
        let config_path = tokenizer_config.unwrap_or(tokenizer_json);
        let resolve = |key: &str, text: &Option<String>| -> Result<Option<u32>, TokenizerError> {
            match text {
                None => Ok(None),
                Some(text) => {
                    inner
                        .token_to_id(text)
                        .map(Some)
                        .ok_or_else(|| TokenizerError::Config {
                            path: config_path.to_owned(),
                            message: format!(
                                "`{key}` is {text:?}, which {} does not have",
                                tokenizer_json.display()
                            ),
                        })
                }
            }
        };
        let bos = resolve("bos_token", &config.bos_token)?;
        let eos = resolve("eos_token", &config.eos_token)?;
        let pad = resolve("pad_token", &config.pad_token)?;

        let additions = if config.add_bos_token.is_some() || config.add_eos_token.is_some() {
            let additions = Additions::Explicit {
                bos: config.add_bos_token.unwrap_or(false),
                eos: config.add_eos_token.unwrap_or(false),
            };
            for (wanted, have, key) in [
                (config.add_bos_token == Some(true), bos, "bos_token"),
                (config.add_eos_token == Some(true), eos, "eos_token"),
            ] {
                if wanted && have.is_none() {
                    return Err(TokenizerError::Config {
                        path: config_path.to_owned(),
                        message: format!("asks for `add_{key}` but has no `{key}`"),
                    });
                }
            }
            additions
        } else {
            Additions::PostProcessor
        };

        Ok(Parts {
            inner,
            table,
            encoding,
            additions,
            bos,
            eos: eos.into_iter().collect(),
            pad,
            chat_template: config.chat_template,
            source: tokenizer_json.display().to_string(),
        })
    }

    /// Adds the end-of-turn tokens and the list of special tokens.
    fn assemble(parts: Parts) -> Result<Self, TokenizerError> {
        let Parts {
            inner,
            table,
            encoding,
            additions,
            bos,
            mut eos,
            pad,
            chat_template,
            source,
        } = parts;
        if let Additions::Explicit { bos: true, .. } = additions
            && bos.is_none()
        {
            return Err(TokenizerError::Build(format!(
                "{source} asks for BOS to be added but names no BOS token"
            )));
        }
        if let Additions::Explicit { eos: true, .. } = additions
            && eos.is_empty()
        {
            return Err(TokenizerError::Build(format!(
                "{source} asks for EOS to be added but names no EOS token"
            )));
        }

        for text in END_OF_TURN {
            if let Some(id) = inner.token_to_id(text)
                && table.is_added(id)
                && !eos.contains(&id)
            {
                eos.push(id);
            }
        }

        let mut ids: Vec<u32> = (0..table.len() as u32)
            .filter(|&id| table.is_special(id))
            .collect();
        ids.extend(bos);
        ids.extend(&eos);
        ids.extend(pad);
        ids.sort_unstable();
        ids.dedup();
        let special_tokens = ids
            .into_iter()
            .filter_map(|id| {
                let kind = if Some(id) == bos {
                    SpecialKind::Bos
                } else if eos.contains(&id) {
                    SpecialKind::Eos
                } else if Some(id) == pad {
                    SpecialKind::Pad
                } else {
                    SpecialKind::Other
                };
                Some(SpecialToken {
                    id,
                    text: table.text(id)?.to_owned(),
                    kind,
                })
            })
            .collect();

        Ok(Tokenizer {
            inner,
            table,
            encoding,
            additions,
            bos,
            eos,
            pad,
            special_tokens,
            chat_template,
        })
    }

    /// Token ids for `text`. Special tokens written in the text are always
    /// matched. With `add_special_tokens`, BOS/EOS are added as the
    /// configuration says: tokenizer_config.json's `add_bos_token` and
    /// `add_eos_token` when it has either (as transformers' Llama-style
    /// tokenizers do), else tokenizer.json's post-processor; GGUF's
    /// `tokenizer.ggml.add_bos_token`/`add_eos_token`. For DeepSeek-R1's
    /// tokenizer_config.json (`add_bos_token: false`) nothing is added,
    /// because its chat template writes `<｜begin▁of▁sentence｜>` itself.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let post_process = add_special_tokens && matches!(self.additions, Additions::PostProcessor);
        let encoding = self
            .inner
            .encode_fast(text, post_process)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let ids = encoding.get_ids();
        match self.additions {
            Additions::Explicit { bos, eos } if add_special_tokens => {
                let mut out = Vec::with_capacity(ids.len() + 2);
                out.extend(self.bos.filter(|_| bos));
                out.extend_from_slice(ids);
                out.extend(self.eos.first().filter(|_| eos));
                Ok(out)
            }
            _ => Ok(ids.to_vec()),
        }
    }

    /// The text for `ids`. With `skip_special_tokens`, special tokens
    /// (control tokens; in tokenizer.json, added tokens marked special) are
    /// left out; other added tokens such as DeepSeek's `<think>` stay. Bytes
    /// that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        let mut strip_pending = self.strips_leading_space();
        for &id in ids {
            let piece = self
                .output_piece(id, skip_special_tokens, &mut strip_pending)
                .ok_or(TokenizerError::UnknownId {
                    id,
                    vocab_size: self.vocab_size(),
                })?;
            bytes.extend_from_slice(piece);
        }
        Ok(match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// A streaming decoder over this tokenizer (see [`Detokenizer`]).
    pub fn detokenizer(&self, skip_special_tokens: bool) -> Detokenizer<'_> {
        Detokenizer::new(self, skip_special_tokens)
    }

    /// The bytes `id` contributes to decoded text, or `None` for an id
    /// outside the vocabulary. Shared by `decode` and the detokenizer.
    fn output_piece(
        &self,
        id: u32,
        skip_special_tokens: bool,
        strip_pending: &mut bool,
    ) -> Option<&[u8]> {
        let bytes = self.table.bytes(id)?;
        if skip_special_tokens && self.table.is_special(id) {
            return Some(&[]);
        }
        if *strip_pending && !bytes.is_empty() {
            *strip_pending = false;
            if bytes[0] == b' ' {
                return Some(&bytes[1..]);
            }
        }
        Some(bytes)
    }

    fn strips_leading_space(&self) -> bool {
        matches!(
            self.encoding,
            PieceEncoding::SentencePiece {
                strip_leading_space: true,
                ..
            }
        )
    }

    /// Number of ids, added tokens included (the largest id + 1): the size
    /// of a logits row.
    pub fn vocab_size(&self) -> usize {
        self.table.len()
    }

    /// The raw bytes `id` stands for: byte-level pieces decoded (`Ġthe` is
    /// b" the"), SentencePiece byte tokens (`<0x0A>`) as their byte, special
    /// and added tokens as their text. Concatenated over a sequence, these
    /// are the UTF-8 of the decoded text (before any U+FFFD replacement).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.table.bytes(id)
    }

    /// The vocabulary string as written (`Ġthe`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.table.text(id)
    }

    /// The id of a vocabulary string, written as in the vocabulary.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Every id that ends generation: the configured EOS first
    /// (tokenizer_config.json `eos_token`, or GGUF `eos_token_id`, then GGUF
    /// `eot_token_id`/`eom_token_id`), then generation_config.json's
    /// `eos_token_id` entries, then the well-known end-of-turn tokens the
    /// vocabulary has as added or control tokens (`<|im_end|>`,
    /// `<|eot_id|>`, `<|eom_id|>`, `<|end_of_text|>`, `<|endoftext|>`,
    /// `<|end|>`, `<end_of_turn>`, `<｜end▁of▁sentence｜>`, `<EOT>`): chat
    /// models end turns with these even where the configured EOS differs.
    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    /// BOS as text, for chat templates' `bos_token`.
    pub fn bos_text(&self) -> Option<&str> {
        self.bos.and_then(|id| self.table.text(id))
    }

    /// The main EOS as text, for chat templates' `eos_token`.
    pub fn eos_text(&self) -> Option<&str> {
        self.eos.first().and_then(|&id| self.table.text(id))
    }

    /// Special tokens by id: the vocabulary's special tokens (control
    /// tokens; tokenizer.json added tokens marked special) plus BOS, every
    /// EOS and pad. A token with two roles gets the first of BOS, EOS, pad:
    /// DeepSeek-R1's pad is its EOS, listed as `Eos`.
    pub fn special_tokens(&self) -> &[SpecialToken] {
        &self.special_tokens
    }

    /// The chat template's Jinja source, if the configuration has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The `tokenizers` pipeline underneath. Its own `encode(.., true)`
    /// applies tokenizer.json's post-processor, which may differ from
    /// [`Tokenizer::encode`]'s BOS handling.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Tokenizer>();
};
