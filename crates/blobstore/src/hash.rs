//! SHA-256 whose state can be saved between requests.
//!
//! An upload is hashed once, as its bytes arrive, across many `PATCH` requests and possibly
//! several processes. The state between two requests is the eight chaining words, the number
//! of bytes hashed, and the bytes of a not yet complete 64-byte block; `to_bytes` and
//! `from_bytes` turn that into a compact record the metadata store keeps with the session.

use oci::Digest;
use sha2::block_api::compress256;

const INITIAL: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];
const FORMAT_VERSION: u8 = 1;
const FIXED_LEN: usize = 1 + 32 + 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256State {
    words: [u32; 8],
    length: u64,
    pending: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("saved hash state is corrupt")]
pub struct CorruptHashState;

impl Default for Sha256State {
    fn default() -> Self {
        Sha256State {
            words: INITIAL,
            length: 0,
            pending: Vec::with_capacity(64),
        }
    }
}

impl Sha256State {
    pub fn new() -> Sha256State {
        Sha256State::default()
    }

    /// Bytes hashed so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.length += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (64 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < 64 {
                return;
            }
            let (block, _) = self.pending.as_chunks::<64>();
            compress256(&mut self.words, block);
            self.pending.clear();
        }
        let (blocks, rest) = data.as_chunks::<64>();
        if !blocks.is_empty() {
            compress256(&mut self.words, blocks);
        }
        self.pending.extend_from_slice(rest);
    }

    pub fn finish(&self) -> Digest {
        let mut words = self.words;
        let mut tail = self.pending.clone();
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&(self.length.wrapping_mul(8)).to_be_bytes());
        let (blocks, _) = tail.as_chunks::<64>();
        compress256(&mut words, blocks);
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        Digest::sha256_from_bytes(&out)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + self.pending.len());
        out.push(FORMAT_VERSION);
        for word in self.words {
            out.extend_from_slice(&word.to_be_bytes());
        }
        out.extend_from_slice(&self.length.to_be_bytes());
        out.extend_from_slice(&self.pending);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Sha256State, CorruptHashState> {
        if bytes.len() < FIXED_LEN || bytes[0] != FORMAT_VERSION {
            return Err(CorruptHashState);
        }
        let mut words = [0u32; 8];
        for (word, chunk) in words.iter_mut().zip(bytes[1..33].chunks_exact(4)) {
            *word = u32::from_be_bytes(chunk.try_into().map_err(|_| CorruptHashState)?);
        }
        let length = u64::from_be_bytes(bytes[33..41].try_into().map_err(|_| CorruptHashState)?);
        let pending = bytes[41..].to_vec();
        if pending.len() >= 64 || pending.len() as u64 != length % 64 {
            return Err(CorruptHashState);
        }
        Ok(Sha256State {
            words,
            length,
            pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    fn reference(data: &[u8]) -> String {
        format!(
            "sha256:{}",
            oci::digest::to_hex(&sha2::Sha256::digest(data))
        )
    }

    #[test]
    fn matches_sha2_for_any_split_and_any_save_point() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        for len in [0usize, 1, 55, 56, 63, 64, 65, 127, 128, 129, 1000] {
            for split in [0, 1, 31, 64, 100, len / 2, len] {
                let split = split.min(len);
                let mut first = Sha256State::new();
                first.update(&data[..split]);
                let mut resumed = Sha256State::from_bytes(&first.to_bytes()).expect("round trip");
                resumed.update(&data[split..len]);
                assert_eq!(
                    resumed.finish().to_string(),
                    reference(&data[..len]),
                    "len {len} split {split}"
                );
                assert_eq!(resumed.length(), len as u64);
            }
        }
    }

    #[test]
    fn refuses_corrupt_state() {
        let mut state = Sha256State::new();
        state.update(b"abc");
        let good = state.to_bytes();
        assert!(Sha256State::from_bytes(&good).is_ok());
        assert_eq!(
            Sha256State::from_bytes(&good[..good.len() - 1]),
            Err(CorruptHashState)
        );
        assert_eq!(Sha256State::from_bytes(&[]), Err(CorruptHashState));
        let mut wrong_version = good.clone();
        wrong_version[0] = 9;
        assert_eq!(
            Sha256State::from_bytes(&wrong_version),
            Err(CorruptHashState)
        );
    }
}
