//! Registry settings: per-registry endpoints, mirrors, credentials, TLS — in the spirit of
//! containerd's `certs.d/<host>/hosts.toml`, shaped for the daemon's TOML config:
//!
//! ```toml
//! [registries."registry.k8s.io"]
//! server = "https://registry.k8s.io"          # the upstream; default https://<host>
//!
//! [[registries."registry.k8s.io".mirrors]]   # tried in order, before the upstream
//! url = "http://127.0.0.1:5000"
//! capabilities = ["pull", "resolve"]
//!
//! [[registries."registry.k8s.io".mirrors]]
//! url = "https://mirror.example"
//! ca = "/etc/rcd/certs.d/mirror.example/ca.pem"
//! auth = { username = "bob", password = "s3cret" }
//!
//! [registries."127.0.0.1:5000"]
//! server = "http://127.0.0.1:5000"            # plain HTTP
//! ```
//!
//! Mirrors are a list of tables (not containerd's `[host."url"]` map) because their order
//! matters and TOML maps have none. A registry without settings is reached at
//! `https://<host>` (`https://registry-1.docker.io` for `docker.io`), except loopback hosts
//! (`localhost`, `127.0.0.0/8`, `[::1]`), which are reached over plain HTTP as Docker does.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// What an endpoint may be used for (containerd's host capabilities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Fetch manifests and blobs by digest.
    Pull,
    /// Resolve a tag to a manifest digest.
    Resolve,
    /// Push (unused by rcd so far; accepted so hosts.toml-like configs load).
    Push,
}

fn default_capabilities() -> Vec<Capability> {
    vec![Capability::Pull, Capability::Resolve]
}

/// Basic-auth credentials for an endpoint (also used as the secret for a token server's
/// challenge).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One mirror endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// `http://host[:port]` or `https://host[:port]`; a path is not supported.
    pub url: String,
    #[serde(default = "default_capabilities")]
    pub capabilities: Vec<Capability>,
    /// Accept any TLS certificate.
    #[serde(default)]
    pub skip_verify: bool,
    /// Extra CA certificates (PEM) to trust.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    #[serde(default)]
    pub auth: Option<Credentials>,
}

impl Mirror {
    pub fn new(url: impl Into<String>) -> Mirror {
        Mirror {
            url: url.into(),
            capabilities: default_capabilities(),
            skip_verify: false,
            ca: Vec::new(),
            auth: None,
        }
    }
}

/// Settings of one registry, named by the host of image names (`docker.io`,
/// `registry.k8s.io`, `127.0.0.1:5000`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// The upstream endpoint, `http(s)://host[:port]`.
    pub server: Option<String>,
    /// Capabilities of the upstream (default pull and resolve).
    pub capabilities: Option<Vec<Capability>>,
    pub skip_verify: bool,
    pub ca: Vec<PathBuf>,
    /// Credentials for the upstream.
    pub auth: Option<Credentials>,
    /// Tried in order before the upstream.
    pub mirrors: Vec<Mirror>,
}

/// Settings of all registries, keyed by registry host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    pub registries: BTreeMap<String, HostConfig>,
}

impl RegistryConfig {
    /// The settings for `host`, or the default ones.
    pub fn host(&self, host: &str) -> HostConfig {
        self.registries.get(host).cloned().unwrap_or_default()
    }

    /// Settings for `host`, created empty if missing, to fill in.
    pub fn host_mut(&mut self, host: &str) -> &mut HostConfig {
        self.registries.entry(host.to_owned()).or_default()
    }

    /// Builder-style: plain HTTP for `host` (its upstream is `http://host`).
    pub fn plain_http(mut self, host: &str) -> Self {
        self.host_mut(host).server = Some(format!("http://{host}"));
        self
    }

    /// Builder-style: basic-auth credentials for the upstream of `host`.
    pub fn credentials(mut self, host: &str, username: &str, password: &str) -> Self {
        self.host_mut(host).auth = Some(Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        });
        self
    }

    /// Builder-style: appends a mirror of `host`.
    pub fn mirror(mut self, host: &str, mirror: Mirror) -> Self {
        self.host_mut(host).mirrors.push(mirror);
        self
    }
}

/// Whether `host` (`name[:port]`, `[v6]:port`) is a loopback address or `localhost`.
pub fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The default upstream URL of registry `host`.
pub fn default_server(host: &str) -> String {
    if host == "docker.io" {
        "https://registry-1.docker.io".to_owned()
    } else if is_loopback(host) {
        format!("http://{host}")
    } else {
        format!("https://{host}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:80",
            "127.3.4.5",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "docker.io",
            "10.0.0.1:5000",
            "registry.k8s.io",
            "[2001:db8::1]:5000",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
        assert_eq!(default_server("docker.io"), "https://registry-1.docker.io");
        assert_eq!(default_server("127.0.0.1:5000"), "http://127.0.0.1:5000");
    }

    #[test]
    fn deserializes() {
        let json = r#"{"registries": {"registry.k8s.io": {
            "server": "https://registry.k8s.io",
            "mirrors": [{"url": "http://127.0.0.1:5000", "capabilities": ["pull", "resolve"]},
                        {"url": "https://m.example", "skip_verify": true,
                         "auth": {"username": "u", "password": "p"}}]}}}"#;
        let c: RegistryConfig = serde_json::from_str(json).unwrap();
        let h = c.host("registry.k8s.io");
        assert_eq!(h.mirrors.len(), 2);
        assert_eq!(h.mirrors[0].url, "http://127.0.0.1:5000");
        assert_eq!(
            h.mirrors[1].capabilities,
            vec![Capability::Pull, Capability::Resolve]
        );
        assert!(h.mirrors[1].skip_verify);
        assert!(!format!("{h:?}").contains("\"p\""));
        assert_eq!(c.host("other"), HostConfig::default());
    }
}
