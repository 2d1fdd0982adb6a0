//! Constructors and accessors on the generated shared types.

use crate::types::{Error, TokenRange, TokenSet};

impl Error {
    /// [`Error::InvalidInput`] with this message.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    /// [`Error::NotFound`] with this message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::NotFound(message.into())
    }

    /// [`Error::Failed`] with this message.
    pub fn failed(message: impl Into<String>) -> Self {
        Error::Failed(message.into())
    }

    /// The human-readable message of any case.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidInput(m)
            | Error::NotGranted(m)
            | Error::NotFound(m)
            | Error::LimitExceeded(m)
            | Error::Unavailable(m)
            | Error::Failed(m) => m,
        }
    }
}

impl TokenSet {
    /// The empty set.
    pub fn empty() -> Self {
        TokenSet::Ids(Vec::new())
    }

    /// Whether `token` is in the set (ignoring the vocabulary size, which only
    /// the host knows).
    pub fn contains(&self, token: u32) -> bool {
        match self {
            TokenSet::Ids(ids) => ids.contains(&token),
            TokenSet::Ranges(ranges) => ranges
                .iter()
                .any(|TokenRange { start, end }| (*start..*end).contains(&token)),
            TokenSet::Bitset(words) => words
                .get((token / 32) as usize)
                .is_some_and(|w| w & (1 << (token % 32)) != 0),
        }
    }
}
