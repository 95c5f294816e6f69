//! The encoding of every message nodes send each other: postcard. Decoding
//! treats the bytes as untrusted: a value that does not decode is an error
//! answered to the peer, never a panic.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes a message.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain data structs encode infallibly into a Vec.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Decodes a message from a peer.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("undecodable peer message: {e}"))
}
