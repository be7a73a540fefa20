//! The daemon's settings: the TOML config file (`--config`), overridden by flags.
//!
//! ```toml
//! root = "/var/lib/rcd"          # persistent data: content store, image records
//! state = "/run/rcd"             # runtime state
//! address = "/run/rcd/rcd.sock"  # the gRPC socket
//! log_level = "info"
//! shim = "/usr/bin/containerd-shim-runc-v2"  # default: rshim next to rcd
//!
//! [cri]                                 # rcd::cri::CriConfig, see its docs
//! cni_conf_dir = "/etc/cni/net.d"
//!
//! [networks]                          # rnerd's named networks, rcd::netmgr::NetworksConfig
//! pool = "10.4.0.0/16"                  # split into /24s
//! bridge_prefix = "rn-"                 # bridge devices: prefix + the network id's start
//!
//! [registries."registry.k8s.io"]        # rcd::pull::RegistryConfig, see its docs
//! [[registries."registry.k8s.io".mirrors]]
//! url = "http://127.0.0.1:5000"
//! ```

use crate::pull::{HostConfig, RegistryConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_ROOT: &str = "/var/lib/rcd";
pub const DEFAULT_STATE: &str = "/run/rcd";
pub const DEFAULT_ADDRESS: &str = "/run/rcd/rcd.sock";

/// The config file. Every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub address: Option<PathBuf>,
    pub log_level: Option<String>,
    /// The shim binary tasks run under (default: `containerd-shim-runr-v2` next to rcd's own
    /// binary, else on $PATH); any shim v2 of containerd 1.6 works, e.g.
    /// `containerd-shim-runc-v2`.
    pub shim: Option<PathBuf>,
    /// Registry settings by host, as [`RegistryConfig::registries`].
    pub registries: BTreeMap<String, HostConfig>,
    /// The CRI service (`[cri]`).
    pub cri: crate::cri::CriConfig,
    /// rnerd's named networks (`[networks]`).
    pub networks: crate::netmgr::NetworksConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    pub fn registry(&self) -> RegistryConfig {
        RegistryConfig {
            registries: self.registries.clone(),
        }
    }
}

/// The settings the daemon runs with: config file values with the flags on top.
#[derive(Debug, Clone)]
pub struct Settings {
    pub root: PathBuf,
    pub state: PathBuf,
    pub address: PathBuf,
    pub registry: RegistryConfig,
    pub shim: PathBuf,
    pub cri: crate::cri::CriConfig,
    pub networks: crate::netmgr::NetworksConfig,
}

/// The shim rcd runs tasks under when none is configured: rshim
/// (`containerd-shim-runr-v2`) next to rcd's binary, else found on $PATH.
pub fn default_shim() -> PathBuf {
    const NAME: &str = "containerd-shim-runr-v2";
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(NAME)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registries() {
        let c = Config::parse(
            r#"
root = "/tmp/r"
[registries."registry.k8s.io"]
[[registries."registry.k8s.io".mirrors]]
url = "http://127.0.0.1:5000"
"#,
        )
        .unwrap();
        assert_eq!(c.root.as_deref(), Some(Path::new("/tmp/r")));
        let reg = c.registry();
        assert_eq!(
            reg.host("registry.k8s.io").mirrors[0].url,
            "http://127.0.0.1:5000"
        );
        assert!(Config::parse("bogus = 1").unwrap_err().contains("bogus"));
    }
}
