//! Platforms (`os/architecture[/variant]`, Go's names) and matching index entries.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    pub fn linux_amd64() -> Platform {
        Platform::new("linux", "amd64", None)
    }

    pub fn linux_arm64() -> Platform {
        Platform::new("linux", "arm64", Some("v8"))
    }

    /// The machine rcd runs on (Linux; Go's name of the architecture).
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform::new("linux", arch, variant)
    }

    /// The variant, with the architecture's default filled in (arm64 → v8, arm → v7) and
    /// amd64's baseline `v1` dropped, so equal platforms compare equal.
    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None) => Some("v8"),
            ("arm", None) => Some("v7"),
            ("amd64", Some("v1")) => None,
            (_, v) => v,
        }
    }

    /// Whether an image for `other` runs here: same OS and architecture, and the same
    /// variant (after normalisation) unless `self` names none.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() && self.architecture != "arm"
                || self.normalized_variant() == other.normalized_variant())
    }
}

impl Default for Platform {
    fn default() -> Self {
        Platform::host()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A platform string that is not `os/arch[/variant]`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid platform {0:?}: expected os/architecture[/variant]")]
pub struct InvalidPlatform(pub String);

impl FromStr for Platform {
    type Err = InvalidPlatform;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(InvalidPlatform(s.to_owned()));
        }
        match parts[..] {
            [os, arch] => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => Ok(Platform::new(os, arch, Some(variant))),
            _ => Err(InvalidPlatform(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p, Platform::linux_arm64());
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v8".parse::<Platform>().is_err());
        let arm64 = Platform::new("linux", "arm64", None);
        assert!(arm64.matches(&Platform::linux_arm64()));
        assert!(Platform::linux_arm64().matches(&arm64));
        assert!(!Platform::linux_amd64().matches(&arm64));
        assert!(Platform::linux_amd64().matches(&Platform::new("linux", "amd64", Some("v1"))));
        assert!(
            !Platform::new("linux", "arm", Some("v6")).matches(&Platform::new(
                "linux",
                "arm",
                Some("v7")
            ))
        );
        assert!(!Platform::linux_amd64().matches(&Platform::new("windows", "amd64", None)));
    }
}
