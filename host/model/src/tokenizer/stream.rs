//! Streaming detokenization.
//!
//! A token is not a unit of text: byte-level and byte-fallback vocabularies
//! split a multi-byte character (an emoji, most CJK) across tokens, so a
//! token's text on its own may be half a character. The detokenizer keeps
//! the bytes of an incomplete character until the token that completes it
//! arrives, and only ever looks at the new token's bytes: no re-decoding of
//! the sequence so far, so a long generation costs O(tokens).
//!
//! Its output, concatenated, is exactly `Tokenizer::decode` of the same ids:
//! both walk the same byte table, and the UTF-8 decision for a byte depends
//! only on the bytes before it.

use super::Tokenizer;

/// Incremental detokenizer: push token ids, get text deltas.
///
/// Deltas never split a UTF-8 character. Bytes that can no longer become a
/// valid character are replaced by U+FFFD as soon as that is known, the way
/// `String::from_utf8_lossy` replaces them; [`Detokenizer::finish`] flushes
/// an incomplete character left at the end the same way.
///
/// ```no_run
/// # fn demo(tokenizer: &deepwasm_model::Tokenizer, ids: &[u32]) {
/// let mut detok = tokenizer.detokenizer(true);
/// let mut text = String::new();
/// for &id in ids {
///     text.push_str(&detok.push(id));
/// }
/// text.push_str(&detok.finish());
/// # }
/// ```
pub struct Detokenizer<'a> {
    tokenizer: &'a Tokenizer,
    skip_special_tokens: bool,
    /// SentencePiece decoders drop the space the encoder put in front of
    /// the text: still to do until the first non-empty piece.
    strip_pending: bool,
    /// The start of a character whose remaining bytes have not arrived
    /// (at most 3 bytes).
    pending: Vec<u8>,
}

impl<'a> Detokenizer<'a> {
    pub(super) fn new(tokenizer: &'a Tokenizer, skip_special_tokens: bool) -> Self {
        Detokenizer {
            tokenizer,
            skip_special_tokens,
            strip_pending: tokenizer.strips_leading_space(),
            pending: Vec::new(),
        }
    }

    /// Adds one token and returns the text it completes (possibly empty).
    ///
    /// An id outside the vocabulary cannot be rendered: it comes out as
    /// U+FFFD (where `Tokenizer::decode` returns an error), so that a stream
    /// shows the fault instead of silently losing it.
    pub fn push(&mut self, id: u32) -> String {
        let mut out = String::new();
        match self
            .tokenizer
            .output_piece(id, self.skip_special_tokens, &mut self.strip_pending)
        {
            Some(bytes) => {
                // Only the held bytes (at most 3) and this token's are looked at.
                self.pending.extend_from_slice(bytes);
                let done = decode_complete(&self.pending, &mut out);
                self.pending.drain(..done);
            }
            None => {
                // Unknown id: whatever was held can no longer be completed.
                out.push_str(&String::from_utf8_lossy(&self.pending));
                self.pending.clear();
                out.push(char::REPLACEMENT_CHARACTER);
            }
        }
        out
    }

    /// Flushes what is held: an incomplete character at the end becomes
    /// U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

/// Appends the text of `bytes` to `out`, replacing invalid sequences with
/// U+FFFD, up to a trailing incomplete character; returns how many bytes
/// were consumed (the rest is that incomplete character).
fn decode_complete(bytes: &[u8], out: &mut String) -> usize {
    let mut pos = 0;
    while pos < bytes.len() {
        match std::str::from_utf8(&bytes[pos..]) {
            Ok(s) => {
                out.push_str(s);
                return bytes.len();
            }
            Err(e) => {
                let valid = &bytes[pos..pos + e.valid_up_to()];
                // `valid_up_to` bytes are valid UTF-8 by definition.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                pos += e.valid_up_to();
                match e.error_len() {
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        pos += n;
                    }
                    None => return pos,
                }
            }
        }
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::decode_complete;

    fn run(chunks: &[&[u8]]) -> (String, Vec<u8>) {
        let mut pending = Vec::new();
        let mut out = String::new();
        for chunk in chunks {
            pending.extend_from_slice(chunk);
            let done = decode_complete(&pending, &mut out);
            pending.drain(..done);
        }
        (out, pending)
    }

    #[test]
    fn holds_incomplete_characters() {
        let emoji = "😀".as_bytes();
        let (out, pending) = run(&[b"a", &emoji[..1], &emoji[1..3]]);
        assert_eq!(out, "a");
        assert_eq!(pending, &emoji[..3]);
        let (out, pending) = run(&[b"a", &emoji[..1], &emoji[1..3], &emoji[3..], b"b"]);
        assert_eq!(out, "a😀b");
        assert!(pending.is_empty());
    }

    #[test]
    fn replaces_invalid_bytes_like_from_utf8_lossy() {
        let chunks: [&[u8]; 4] = [b"x\xF0\x9F", b"y", b"\xFF\xE4\xB8", b"\xAD"];
        let (out, pending) = run(&chunks);
        let whole: Vec<u8> = chunks.concat();
        assert_eq!(out, String::from_utf8_lossy(&whole));
        assert!(pending.is_empty());
    }
}
