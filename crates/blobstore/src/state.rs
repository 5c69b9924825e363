//! What an upload session carries between requests: the hash of the bytes received so far and
//! where those bytes are staged. Both are stored in the session's metadata record, so any
//! replica can continue any session.

use serde::{Deserialize, Serialize};

use crate::hash::Sha256State;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the saved upload state is corrupt")]
pub struct CorruptUploadState;

/// The state of one upload session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadState {
    pub hash: Sha256State,
    pub(crate) staged: Staged,
}

/// Where an object-store upload keeps the bytes received so far: complete parts of one
/// multipart upload, then a tail smaller than the store's minimum part size in an object of
/// its own. Local disk needs none of this (its staging file is named after the session).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Staged {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipart: Option<String>,
    /// The key naming the multipart upload's object (`uploads/<session>/data-<key>`), fresh
    /// for every multipart upload, so two requests finishing one session at once (on two
    /// replicas) complete different objects and each copies its own bytes under its digest.
    /// `None`: a session staged before the key existed, at `uploads/<session>/data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<Tail>,
}

/// One uploaded part: the store's id for its content (an S3 ETag) and its length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Part {
    pub id: String,
    pub size: u64,
}

/// The staged tail: its object is named by `key`, fresh for every write, so a request that
/// loses the race to advance the session never overwrites the winner's tail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tail {
    pub key: String,
    pub size: u64,
}

impl Staged {
    /// Bytes held in parts.
    pub fn parted(&self) -> u64 {
        self.parts.iter().map(|part| part.size).sum()
    }
}

impl UploadState {
    pub fn new() -> UploadState {
        UploadState::default()
    }

    /// Restores a state saved with `hash_bytes` and `storage_bytes`.
    pub fn decode(hash: &[u8], storage: &[u8]) -> Result<UploadState, CorruptUploadState> {
        let hash = Sha256State::from_bytes(hash).map_err(|_| CorruptUploadState)?;
        let staged = if storage.is_empty() {
            Staged::default()
        } else {
            serde_json::from_slice(storage).map_err(|_| CorruptUploadState)?
        };
        let state = UploadState { hash, staged };
        let staged_bytes = state.staged.parted() + state.staged.tail.as_ref().map_or(0, |t| t.size);
        if state.staged != Staged::default() && staged_bytes != state.hash.length() {
            return Err(CorruptUploadState);
        }
        Ok(state)
    }

    /// Bytes received so far.
    pub fn length(&self) -> u64 {
        self.hash.length()
    }

    pub fn hash_bytes(&self) -> Vec<u8> {
        self.hash.to_bytes()
    }

    /// The staging record; empty when nothing is staged outside a local file.
    pub fn storage_bytes(&self) -> Vec<u8> {
        if self.staged == Staged::default() {
            return Vec::new();
        }
        serde_json::to_vec(&self.staged).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_that_staged_bytes_match_the_hash() {
        let mut state = UploadState::new();
        assert!(
            state.storage_bytes().is_empty(),
            "nothing staged, nothing stored"
        );
        state.hash.update(&[7; 12]);
        state.staged = Staged {
            multipart: Some("mp-1".into()),
            data: Some("k1".into()),
            parts: vec![Part {
                id: "\"etag\"".into(),
                size: 10,
            }],
            tail: Some(Tail {
                key: "t1".into(),
                size: 2,
            }),
        };
        let restored =
            UploadState::decode(&state.hash_bytes(), &state.storage_bytes()).expect("decode");
        assert_eq!(restored, state);

        let mut short = state.clone();
        short.staged.tail = None;
        assert_eq!(
            UploadState::decode(&short.hash_bytes(), &short.storage_bytes()),
            Err(CorruptUploadState),
            "parts and tail must account for every hashed byte"
        );
        assert_eq!(
            UploadState::decode(&state.hash_bytes(), b"{\"parts\":7}"),
            Err(CorruptUploadState)
        );
        assert_eq!(
            UploadState::decode(b"", b""),
            Err(CorruptUploadState),
            "a hash state is required"
        );
    }

    #[test]
    fn a_session_staged_before_data_keys_keeps_its_object() {
        let mut hash = Sha256State::default();
        hash.update(&[1; 10]);
        let legacy = br#"{"multipart":"mp-0","parts":[{"id":"e","size":10}]}"#;
        let state = UploadState::decode(&hash.to_bytes(), legacy).expect("decode");
        assert_eq!(state.staged.multipart.as_deref(), Some("mp-0"));
        assert_eq!(
            state.staged.data, None,
            "completes to uploads/<session>/data"
        );
    }
}
