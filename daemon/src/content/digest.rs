//! Content digests: `sha256:` and 64 lower-case hex digits, nothing else.
//!
//! A [`Digest`] is only ever built by [`Digest::parse`] (or from a hash the store computed), so
//! its hex part is safe to use as a file name: `sha256:../../x` never becomes a path.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// The only algorithm the store accepts.
pub const SHA256: &str = "sha256";

const HEX_LEN: usize = 64;

/// A validated `sha256:<64 lower hex>` digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {digest:?}: {reason}")]
pub struct InvalidDigest {
    pub digest: String,
    pub reason: &'static str,
}

impl Digest {
    /// Parses `sha256:<64 lower hex>`; anything else (other algorithms, upper case, wrong
    /// length, path characters) is refused.
    pub fn parse(s: &str) -> Result<Digest, InvalidDigest> {
        let bad = |reason| InvalidDigest {
            digest: s.chars().take(100).collect(),
            reason,
        };
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| bad("no algorithm prefix"))?;
        if algo != SHA256 {
            return Err(bad("algorithm is not sha256"));
        }
        if hex.len() != HEX_LEN {
            return Err(bad("not 64 hex digits"));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("not lower-case hex"));
        }
        Ok(Digest(s.to_owned()))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(data))
    }

    /// The digest a finished hasher holds.
    pub(crate) fn from_hasher(hasher: Sha256) -> Digest {
        Digest(format!("{SHA256}:{}", hex::encode(hasher.finalize())))
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0[SHA256.len() + 1..]
    }

    pub fn algorithm(&self) -> &str {
        SHA256
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = InvalidDigest;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&good).unwrap().hex(), "a".repeat(64));
        for bad in [
            "",
            "sha256:",
            "sha256:../../x",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha512:{}", "a".repeat(64)),
            &format!("sha256:{}", "a".repeat(63)),
            &format!("sha256:{}/", "a".repeat(63)),
            &format!("sha256:{}", "a".repeat(65)),
            &"a".repeat(64),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
