//! Blob contents made on the fly: a seed and a size name a blob whose bytes are generated when
//! they are sent, so a 1 GiB push never holds 1 GiB in memory.
//!
//! Invariants:
//! - The bytes at an offset depend only on the seed and the offset (a counter-based generator),
//!   so any range can be produced on its own, in any order, and always equals the same range of
//!   the whole blob. The digest is computed once, up front, from the same generator.
//! - Every 8-byte word is distinct from its neighbours and from other seeds' words, so no
//!   registry or filesystem can shortcut the bytes (no compression, no dedup by block).

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use sha2::Digest as _;

/// The size of each piece a body is generated and sent in.
pub const PIECE: usize = 1024 * 1024;

/// A blob named by its seed and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    pub seed: u64,
    pub size: u64,
}

/// One step of SplitMix64: a well-mixed 64-bit word for each counter value.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Payload {
    pub fn new(seed: u64, size: u64) -> Payload {
        Payload { seed, size }
    }

    fn word(&self, index: u64) -> [u8; 8] {
        let key = self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
        mix(key.wrapping_add(index.wrapping_mul(0x9e37_79b9_7f4a_7c15))).to_le_bytes()
    }

    /// The bytes of `range` (clamped to the blob), generated now.
    pub fn bytes(&self, range: Range<u64>) -> Bytes {
        let end = range.end.min(self.size);
        let start = range.start.min(end);
        // Whole words from the one holding `start` to the one holding `end - 1`, then the
        // requested slice of them (no copy when the range is word-aligned).
        let first_word = start / 8;
        let words = end.div_ceil(8) - first_word;
        let mut out = BytesMut::zeroed((words * 8) as usize);
        for (index, chunk) in (first_word..).zip(out.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&self.word(index));
        }
        let skip = (start % 8) as usize;
        out.freeze().slice(skip..skip + (end - start) as usize)
    }

    /// `sha256:<hex>` of the whole blob, generating it piece by piece.
    pub fn digest(&self) -> String {
        let mut hasher = sha2::Sha256::new();
        let mut offset = 0;
        while offset < self.size {
            let end = (offset + PIECE as u64).min(self.size);
            hasher.update(self.bytes(offset..end));
            offset = end;
        }
        oci::Digest::sha256_from_bytes(&hasher.finalize().into()).to_string()
    }

    /// A request body for `range`, generated one piece at a time as the connection takes it.
    pub fn stream(
        &self,
        range: Range<u64>,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
        let payload = *self;
        let end = range.end.min(self.size);
        futures_util::stream::unfold(range.start, move |offset| async move {
            if offset >= end {
                return None;
            }
            let next = (offset + PIECE as u64).min(end);
            Some((Ok(payload.bytes(offset..next)), next))
        })
    }

    /// A body of the whole blob.
    pub fn body(&self) -> reqwest::Body {
        reqwest::Body::wrap_stream(self.stream(0..self.size))
    }

    /// A body of `range` of the blob.
    pub fn body_of(&self, range: Range<u64>) -> reqwest::Body {
        reqwest::Body::wrap_stream(self.stream(range))
    }
}

/// `sha256:<hex>` of bytes in memory.
pub fn digest_of(bytes: &[u8]) -> String {
    oci::Digest::sha256_from_bytes(&sha2::Sha256::digest(bytes).into()).to_string()
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    /// The streamed body of `range`, concatenated.
    fn collect(payload: &Payload, range: Range<u64>) -> Vec<u8> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let pieces: Vec<Bytes> = runtime.block_on(
            payload
                .stream(range)
                .map(|piece| piece.unwrap())
                .collect::<Vec<_>>(),
        );
        pieces.concat()
    }

    #[test]
    fn a_range_equals_the_same_slice_of_the_whole_blob() {
        let payload = Payload::new(7, 3 * 1000 + 5);
        let whole = payload.bytes(0..payload.size);
        assert_eq!(whole.len(), 3005);
        for range in [0..1, 3..11, 8..16, 1000..2999, 2990..3005, 5..5] {
            assert_eq!(
                payload.bytes(range.clone()),
                whole[range.start as usize..range.end as usize],
                "{range:?}"
            );
        }
    }

    #[test]
    fn ranges_past_the_end_are_clamped() {
        let payload = Payload::new(1, 10);
        assert_eq!(payload.bytes(4..100).len(), 6);
        assert!(payload.bytes(20..30).is_empty());
    }

    #[test]
    fn seeds_give_different_bytes() {
        assert_ne!(
            Payload::new(1, 64).bytes(0..64),
            Payload::new(2, 64).bytes(0..64)
        );
    }

    #[test]
    fn the_stream_is_the_blob_in_pieces_and_hashes_to_its_digest() {
        let payload = Payload::new(42, 2 * PIECE as u64 + 12_345);
        let streamed = collect(&payload, 0..payload.size);
        assert_eq!(streamed.len() as u64, payload.size);
        assert_eq!(streamed, payload.bytes(0..payload.size));
        assert_eq!(digest_of(&streamed), payload.digest());
    }

    #[test]
    fn a_streamed_range_is_that_range() {
        let payload = Payload::new(3, 3 * PIECE as u64);
        let range = PIECE as u64 / 2..2 * PIECE as u64 + 100;
        assert_eq!(collect(&payload, range.clone()), payload.bytes(range));
    }

    #[test]
    fn digest_of_nothing_is_the_well_known_empty_digest() {
        assert_eq!(
            Payload::new(9, 0).digest(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
