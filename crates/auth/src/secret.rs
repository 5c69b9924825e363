//! API secrets (robot secrets and personal access tokens): `bwk_` followed by 43 base64url
//! characters of 256 random bits.
//!
//! They carry enough entropy that a SHA-256 of the secret is a safe stored form, and lookups go
//! by that hash, so the plaintext never needs to be kept or compared.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "bwk_";
const RANDOM_BYTES: usize = 32;

/// A freshly generated secret. Shown to its owner once; never logged.
pub struct NewSecret {
    pub plaintext: String,
    pub hash: String,
}

impl std::fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSecret")
            .field("plaintext", &"<redacted>")
            .field("hash", &self.hash)
            .finish()
    }
}

/// Makes a secret from `random` (pass 32 bytes from a CSPRNG).
pub fn generate(random: [u8; RANDOM_BYTES]) -> NewSecret {
    let plaintext = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(random));
    let hash = hash(&plaintext);
    NewSecret { plaintext, hash }
}

pub fn random() -> NewSecret {
    generate(rand::random())
}

/// The stored form of a secret.
pub fn hash(plaintext: &str) -> String {
    let digest = Sha256::digest(plaintext.as_bytes());
    URL_SAFE_NO_PAD.encode(digest)
}

/// True for strings shaped like a secret; anything else is treated as a password.
pub fn looks_like_secret(candidate: &str) -> bool {
    candidate.len() == PREFIX.len() + 43
        && candidate.starts_with(PREFIX)
        && candidate[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_the_prefix_and_enough_entropy() {
        let secret = generate([7; 32]);
        assert!(secret.plaintext.starts_with("bwk_"));
        assert_eq!(secret.plaintext.len(), 4 + 43);
        assert!(looks_like_secret(&secret.plaintext));
        assert_eq!(secret.hash, hash(&secret.plaintext));
        assert_ne!(random().plaintext, random().plaintext);
        assert!(!format!("{secret:?}").contains(&secret.plaintext));
    }

    #[test]
    fn only_secret_shaped_strings_look_like_secrets() {
        for candidate in [
            "bwk_short",
            "password123456",
            "",
            "bwk_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        ] {
            assert!(!looks_like_secret(candidate), "{candidate}");
        }
    }
}
