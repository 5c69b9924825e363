//! Content digests (`algorithm:hex`), as defined by the OCI image spec.
//!
//! Only registered algorithms are accepted: `sha256` (64 lowercase hex characters) and
//! `sha512` (128). Anything else is refused at parse time, so a `Digest` in hand is always
//! safe to use in a storage path.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} is not of the form algorithm:hex")]
    Malformed(String),
    #[error("digest algorithm {0:?} is not supported (use sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} has an encoded part of the wrong length or alphabet")]
    BadEncoding(String),
}

impl Digest {
    /// A SHA-256 digest from raw hash bytes.
    pub fn sha256_from_bytes(hash: &[u8; 32]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: to_hex(hash),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0x0f)] as char);
    }
    out
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (algorithm, encoded) = input
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(input.to_owned()))?;
        if algorithm.is_empty() || encoded.is_empty() {
            return Err(DigestError::Malformed(input.to_owned()));
        }
        let algorithm = match algorithm {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => {
                let grammar_ok = other.split(['+', '.', '_', '-']).all(|part| {
                    !part.is_empty()
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                });
                return Err(if grammar_ok {
                    DigestError::UnsupportedAlgorithm(other.to_owned())
                } else {
                    DigestError::Malformed(input.to_owned())
                });
            }
        };
        let well_formed = encoded.len() == algorithm.hex_len()
            && encoded
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(DigestError::BadEncoding(input.to_owned()));
        }
        Ok(Digest {
            algorithm,
            hex: encoded.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX64: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hex_is_lower_case_and_padded() {
        assert_eq!(to_hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }

    #[test]
    fn parses_registered_algorithms_and_refuses_the_rest() {
        let long = "a".repeat(128);
        let cases: &[(String, Result<(), &str>)] = &[
            (format!("sha256:{HEX64}"), Ok(())),
            (format!("sha512:{long}"), Ok(())),
            (format!("sha256:{}", HEX64.to_uppercase()), Err("encoding")),
            (format!("sha256:{}", &HEX64[1..]), Err("encoding")),
            (format!("sha512:{HEX64}"), Err("encoding")),
            (format!("md5:{HEX64}"), Err("unsupported")),
            (format!("sha256+b64:{HEX64}"), Err("unsupported")),
            (format!("SHA256:{HEX64}"), Err("malformed")),
            (HEX64.to_owned(), Err("malformed")),
            ("sha256:".to_owned(), Err("malformed")),
            (":abc".to_owned(), Err("malformed")),
            ("sha256:../../etc/passwd".to_owned(), Err("encoding")),
            (String::new(), Err("malformed")),
        ];
        for (input, expected) in cases {
            let got = input
                .parse::<Digest>()
                .map(|_| ())
                .map_err(|err| match err {
                    DigestError::Malformed(_) => "malformed",
                    DigestError::UnsupportedAlgorithm(_) => "unsupported",
                    DigestError::BadEncoding(_) => "encoding",
                });
            assert_eq!(&got, expected, "input {input:?}");
        }
    }

    #[test]
    fn round_trips_through_display() {
        let digest: Digest = format!("sha256:{HEX64}").parse().expect("valid digest");
        assert_eq!(digest.to_string(), format!("sha256:{HEX64}"));
        assert_eq!(digest.algorithm(), Algorithm::Sha256);
        assert_eq!(digest.hex(), HEX64);
    }

    #[test]
    fn builds_from_hash_bytes() {
        let digest = Digest::sha256_from_bytes(&[0xab; 32]);
        assert_eq!(digest.hex(), "ab".repeat(32));
    }
}
