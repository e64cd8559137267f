//! Binary encoding of messages and log records (postcard, a compact
//! serde format). Decoding never panics on bad bytes: it returns an error
//! the caller reports with the peer or file position.

use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("undecodable {what}: {source}")]
pub struct DecodeError {
    pub what: &'static str,
    #[source]
    pub source: postcard::Error,
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising our own in-memory types to a Vec cannot fail: postcard
    // only errors on unsupported serde features, which we do not use.
    postcard::to_stdvec(value).expect("postcard encoding of a concord type")
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    postcard::from_bytes(bytes).map_err(|source| DecodeError { what, source })
}
