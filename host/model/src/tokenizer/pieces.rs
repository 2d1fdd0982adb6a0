//! What each token id stands for, as bytes, precomputed once per tokenizer.
//!
//! Streaming detokenization and `token_bytes` need the raw bytes of single
//! tokens, and those cannot come from a tokenizer's decoder: a byte-level
//! token may hold half of a UTF-8 character, which a decoder producing
//! `String`s would already have replaced with U+FFFD. So the mapping from
//! vocabulary strings to bytes is written out here, for the piece encodings
//! our models use, and `decode` is defined on the same table so that the two
//! can never disagree.

use serde_json::Value as Json;

/// How a vocabulary string maps to the bytes it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PieceEncoding {
    /// GPT-2 byte-level BPE: each byte is written as one printable character
    /// (`Ġ` is a space, `Ċ` a newline). A string that is not made only of
    /// those characters stands for its own UTF-8, as in the `tokenizers`
    /// ByteLevel decoder.
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xNN>` is the byte NN when the
    /// vocabulary has byte fallback, and the decoder drops the space that
    /// the encoder put in front of the text.
    SentencePiece {
        byte_fallback: bool,
        strip_leading_space: bool,
    },
    /// The vocabulary string is the text (other decoders: approximate).
    Plain,
}

impl PieceEncoding {
    /// The piece encoding a tokenizer.json decoder implies (given as
    /// JSON, as tokenizer.json writes it); a missing decoder falls back to a
    /// byte-level pre-tokenizer, if there is one.
    pub(crate) fn from_json(decoder: &Json, pre_tokenizer: &Json) -> PieceEncoding {
        fn has_type(v: &Json, ty: &str) -> bool {
            v.get("type").and_then(Json::as_str) == Some(ty)
                || ["decoders", "pretokenizers"]
                    .iter()
                    .filter_map(|k| v.get(k).and_then(Json::as_array))
                    .flatten()
                    .any(|d| has_type(d, ty))
        }
        fn parts(v: &Json) -> Vec<&Json> {
            match v.get("decoders").and_then(Json::as_array) {
                Some(list) => list.iter().collect(),
                None => vec![v],
            }
        }
        if decoder.is_null() {
            return if has_type(pre_tokenizer, "ByteLevel") {
                PieceEncoding::ByteLevel
            } else {
                PieceEncoding::Plain
            };
        }
        if has_type(decoder, "ByteLevel") {
            return PieceEncoding::ByteLevel;
        }
        let parts = parts(decoder);
        let metaspace_strips = parts.iter().any(|d| {
            d.get("type").and_then(Json::as_str) == Some("Metaspace")
                && d.get("prepend_scheme").and_then(Json::as_str) != Some("never")
                && d.get("add_prefix_space").and_then(Json::as_bool) != Some(false)
        });
        let is_metaspace = parts
            .iter()
            .any(|d| d.get("type").and_then(Json::as_str) == Some("Metaspace"));
        let replaces_space = parts.iter().any(|d| {
            d.get("type").and_then(Json::as_str) == Some("Replace")
                && d.pointer("/pattern/String").and_then(Json::as_str) == Some("▁")
                && d.get("content").and_then(Json::as_str) == Some(" ")
        });
        if !is_metaspace && !replaces_space {
            return PieceEncoding::Plain;
        }
        let strips = parts.iter().any(|d| {
            d.get("type").and_then(Json::as_str) == Some("Strip")
                && d.get("content").and_then(Json::as_str) == Some(" ")
                && d.get("start").and_then(Json::as_u64).unwrap_or(0) >= 1
        });
        PieceEncoding::SentencePiece {
            byte_fallback: parts
                .iter()
                .any(|d| d.get("type").and_then(Json::as_str) == Some("ByteFallback")),
            strip_leading_space: strips || metaspace_strips,
        }
    }
}

/// Byte-level characters: for a code point below `BYTE_LEVEL_LIMIT`, the
/// byte it stands for, or `NONE`.
const BYTE_LEVEL_LIMIT: usize = 0x144;
const NONE: u16 = u16::MAX;

/// GPT-2's table, inverted: printable Latin-1 bytes stand for themselves and
/// the other 68 bytes are written as U+0100 onwards, in byte order.
fn byte_level_table() -> [u16; BYTE_LEVEL_LIMIT] {
    let mut table = [NONE; BYTE_LEVEL_LIMIT];
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut next = 0x100usize;
    for b in 0..=255u32 {
        if printable(b) {
            table[b as usize] = b as u16;
        } else {
            table[next] = b as u16;
            next += 1;
        }
    }
    table
}

/// Appends the bytes that a GPT-2 byte-level string stands for.
fn push_byte_level(table: &[u16; BYTE_LEVEL_LIMIT], text: &str, out: &mut Vec<u8>) {
    let start = out.len();
    for c in text.chars() {
        match table.get(c as usize) {
            Some(&b) if b != NONE => out.push(b as u8),
            _ => {
                // Not a byte-level string (an added token such as "<｜User｜>"):
                // it stands for itself.
                out.truncate(start);
                out.extend_from_slice(text.as_bytes());
                return;
            }
        }
    }
}

/// `<0xNN>` with two hex digits, as SentencePiece writes byte pieces.
fn byte_piece(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[derive(Clone, Copy)]
struct Entry {
    text: (u32, u32),
    bytes: (u32, u32),
    flags: u8,
}

const PRESENT: u8 = 1;
const SPECIAL: u8 = 2;
const ADDED: u8 = 4;

/// Every id's vocabulary string and bytes, in two flat buffers (a vocabulary
/// of 130k strings would otherwise be 260k small allocations).
pub(crate) struct TokenTable {
    entries: Vec<Entry>,
    text: String,
    bytes: Vec<u8>,
}

/// One vocabulary entry, as handed to [`TokenTable::build`].
pub(crate) struct TableEntry<'a> {
    pub text: &'a str,
    /// Added or control tokens: their bytes are their text, whatever the
    /// piece encoding.
    pub added: bool,
    /// Dropped by `decode(.., skip_special_tokens = true)`.
    pub special: bool,
}

impl TokenTable {
    /// `entries[id]` describes `id`; `None` marks an id with no token.
    pub(crate) fn build<'a>(
        entries: impl ExactSizeIterator<Item = Option<TableEntry<'a>>>,
        encoding: PieceEncoding,
    ) -> Self {
        let table = byte_level_table();
        let mut out = TokenTable {
            entries: Vec::with_capacity(entries.len()),
            text: String::new(),
            bytes: Vec::new(),
        };
        for entry in entries {
            let Some(entry) = entry else {
                out.entries.push(Entry {
                    text: (0, 0),
                    bytes: (0, 0),
                    flags: 0,
                });
                continue;
            };
            let text_start = out.text.len() as u32;
            out.text.push_str(entry.text);
            let bytes_start = out.bytes.len() as u32;
            if entry.added {
                out.bytes.extend_from_slice(entry.text.as_bytes());
            } else {
                match encoding {
                    PieceEncoding::ByteLevel => push_byte_level(&table, entry.text, &mut out.bytes),
                    PieceEncoding::SentencePiece { byte_fallback, .. } => {
                        match byte_piece(entry.text) {
                            Some(b) if byte_fallback => out.bytes.push(b),
                            _ => {
                                for c in entry.text.chars() {
                                    if c == '▁' {
                                        out.bytes.push(b' ');
                                    } else {
                                        let mut buf = [0; 4];
                                        out.bytes
                                            .extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                                    }
                                }
                            }
                        }
                    }
                    PieceEncoding::Plain => out.bytes.extend_from_slice(entry.text.as_bytes()),
                }
            }
            out.entries.push(Entry {
                text: (text_start, out.text.len() as u32),
                bytes: (bytes_start, out.bytes.len() as u32),
                flags: PRESENT
                    | if entry.special { SPECIAL } else { 0 }
                    | if entry.added { ADDED } else { 0 },
            });
        }
        out
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn entry(&self, id: u32) -> Option<&Entry> {
        self.entries
            .get(id as usize)
            .filter(|e| e.flags & PRESENT != 0)
    }

    pub(crate) fn text(&self, id: u32) -> Option<&str> {
        self.entry(id)
            .map(|e| &self.text[e.text.0 as usize..e.text.1 as usize])
    }

    pub(crate) fn bytes(&self, id: u32) -> Option<&[u8]> {
        self.entry(id)
            .map(|e| &self.bytes[e.bytes.0 as usize..e.bytes.1 as usize])
    }

    pub(crate) fn is_special(&self, id: u32) -> bool {
        self.entry(id).is_some_and(|e| e.flags & SPECIAL != 0)
    }

    /// Added (tokenizer.json) or control/user-defined (GGUF) tokens.
    pub(crate) fn is_added(&self, id: u32) -> bool {
        self.entry(id).is_some_and(|e| e.flags & ADDED != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_is_gpt2s() {
        let table = byte_level_table();
        assert_eq!(table['Ġ' as usize], b' ' as u16);
        assert_eq!(table['Ċ' as usize], b'\n' as u16);
        assert_eq!(table['ĉ' as usize], b'\t' as u16);
        assert_eq!(table['a' as usize], b'a' as u16);
        assert_eq!(table[0x100], 0);
        assert_eq!(table[0x143], 0xAD);
        assert_eq!(table.iter().filter(|&&b| b != NONE).count(), 256);
    }

    #[test]
    fn decoders_imply_piece_encodings() {
        let json = |s: &str| -> Json { serde_json::from_str(s).unwrap() };
        let none = Json::Null;
        assert_eq!(
            PieceEncoding::from_json(&json(r#"{"type": "ByteLevel"}"#), &none),
            PieceEncoding::ByteLevel
        );
        // Llama 2's tokenizer.json.
        let llama2 = r#"{"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}"#;
        assert_eq!(
            PieceEncoding::from_json(&json(llama2), &none),
            PieceEncoding::SentencePiece {
                byte_fallback: true,
                strip_leading_space: true
            }
        );
        let metaspace = r#"{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never"}"#;
        assert_eq!(
            PieceEncoding::from_json(&json(metaspace), &none),
            PieceEncoding::SentencePiece {
                byte_fallback: false,
                strip_leading_space: false
            }
        );
        let byte_level_pre =
            json(r#"{"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"}]}"#);
        assert_eq!(
            PieceEncoding::from_json(&none, &byte_level_pre),
            PieceEncoding::ByteLevel
        );
        assert_eq!(
            PieceEncoding::from_json(&json(r#"{"type": "WordPiece"}"#), &none),
            PieceEncoding::Plain
        );
    }

    #[test]
    fn pieces_become_bytes() {
        let entries = [
            Some(TableEntry {
                text: "Ġthe",
                added: false,
                special: false,
            }),
            Some(TableEntry {
                text: "ðŁĺ",
                added: false,
                special: false,
            }),
            None,
            Some(TableEntry {
                text: "<｜User｜>",
                added: true,
                special: false,
            }),
            Some(TableEntry {
                text: "<｜x｜>",
                added: false,
                special: true,
            }),
        ];
        let table = TokenTable::build(entries.into_iter(), PieceEncoding::ByteLevel);
        assert_eq!(table.bytes(0), Some(&b" the"[..]));
        assert_eq!(table.bytes(1), Some(&[0xF0, 0x9F, 0x98][..]));
        assert_eq!(table.bytes(2), None);
        assert_eq!(table.text(2), None);
        assert_eq!(table.bytes(3), Some("<｜User｜>".as_bytes()));
        assert_eq!(table.bytes(4), Some("<｜x｜>".as_bytes()));
        assert!(table.is_special(4) && !table.is_special(3));

        let entries = [
            Some(TableEntry {
                text: "▁the",
                added: false,
                special: false,
            }),
            Some(TableEntry {
                text: "<0x0A>",
                added: false,
                special: false,
            }),
        ];
        let spm = PieceEncoding::SentencePiece {
            byte_fallback: true,
            strip_leading_space: true,
        };
        let table = TokenTable::build(entries.into_iter(), spm);
        assert_eq!(table.bytes(0), Some(&b" the"[..]));
        assert_eq!(table.bytes(1), Some(&b"\n"[..]));
    }
}
