//! `deepwasm:plugin/tokenizer`.

use crate::bindings::tokenizer::{Host, SpecialToken, TokenizerInfo};
use crate::host::{HostState, TokenizerAccess, missing};

/// Most token ids one `token-bytes` or `decode` call takes; a guest asks
/// in chunks.
const MAX_TOKEN_BYTES_BATCH: usize = 1 << 18;

/// Most bytes of text one `encode` call takes (a few hundred milliseconds
/// of host tokenizing, in the caller's own time). A guest tokenizing more
/// does it in pieces, each under its deadline.
pub const MAX_ENCODE_BYTES: usize = 1 << 20;

impl HostState {
    fn tokenizer(&self) -> wasmtime::Result<&dyn TokenizerAccess> {
        self.caps
            .tokenizer
            .as_deref()
            .ok_or_else(|| missing(&self.plugin, "deepwasm:plugin/tokenizer"))
    }
}

impl Host for HostState {
    fn info(&mut self) -> wasmtime::Result<TokenizerInfo> {
        Ok(self.tokenizer()?.info())
    }

    fn encode(&mut self, text: String, add_special_tokens: bool) -> wasmtime::Result<Vec<u32>> {
        if text.len() > MAX_ENCODE_BYTES {
            wasmtime::bail!(
                "plugin `{}` asked to encode {} bytes at once; the most is {MAX_ENCODE_BYTES}",
                self.plugin,
                text.len()
            );
        }
        Ok(self.tokenizer()?.encode(&text, add_special_tokens))
    }

    fn decode(&mut self, tokens: Vec<u32>, skip_special_tokens: bool) -> wasmtime::Result<String> {
        if tokens.len() > MAX_TOKEN_BYTES_BATCH {
            wasmtime::bail!(
                "plugin `{}` asked to decode {} tokens at once; the most is {MAX_TOKEN_BYTES_BATCH}",
                self.plugin,
                tokens.len()
            );
        }
        Ok(self.tokenizer()?.decode(&tokens, skip_special_tokens))
    }

    fn token_bytes(&mut self, tokens: Vec<u32>) -> wasmtime::Result<Vec<Vec<u8>>> {
        if tokens.len() > MAX_TOKEN_BYTES_BATCH {
            wasmtime::bail!(
                "plugin `{}` asked for the bytes of {} tokens at once; the most is {MAX_TOKEN_BYTES_BATCH}",
                self.plugin,
                tokens.len()
            );
        }
        let tok = self.tokenizer()?;
        Ok(tokens
            .iter()
            .map(|&t| tok.token_bytes(t).unwrap_or_default())
            .collect())
    }

    fn lookup(&mut self, text: String) -> wasmtime::Result<Option<u32>> {
        Ok(self.tokenizer()?.token_id(&text))
    }

    fn special_tokens(&mut self) -> wasmtime::Result<Vec<SpecialToken>> {
        Ok(self.tokenizer()?.special_tokens())
    }
}
