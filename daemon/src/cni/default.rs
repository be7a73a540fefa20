//! rcd's default pod network (`daemon/cni/10-rcd.conflist`): a `rcd0` bridge that is the pods'
//! gateway and masquerades their traffic, host-local addresses from 10.99.0.0/16 (containerd
//! and podman use 10.88.0.0/16), portmap for host ports and firewall for hosts whose FORWARD
//! policy drops. The subnet can be replaced (CRI's pod CIDR) and, for tests and named
//! networks, the bridge and network name too.

use super::config::{config_files, NetworkConfigList};
use super::CniError;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The conflist installed when the config dir holds none.
pub const DEFAULT_CONFLIST: &str = include_str!("../../cni/10-rcd.conflist");
/// Its file name in the config dir.
pub const DEFAULT_FILE_NAME: &str = "10-rcd.conflist";
/// Its network name.
pub const DEFAULT_NETWORK_NAME: &str = "rcd";
pub const DEFAULT_BRIDGE: &str = "rcd0";
pub const DEFAULT_SUBNET: &str = "10.99.0.0/16";

/// The default network's template with its variable parts.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeNetwork {
    pub name: String,
    pub bridge: String,
    /// CIDRs, at most one per address family; each becomes a host-local range.
    pub subnets: Vec<String>,
    /// host-local's `dataDir` (its default is `/var/lib/cni/networks`).
    pub ipam_data_dir: Option<PathBuf>,
}

impl Default for BridgeNetwork {
    fn default() -> Self {
        BridgeNetwork {
            name: DEFAULT_NETWORK_NAME.into(),
            bridge: DEFAULT_BRIDGE.into(),
            subnets: vec![DEFAULT_SUBNET.into()],
            ipam_data_dir: None,
        }
    }
}

impl BridgeNetwork {
    /// The conflist of this network: `daemon/cni/10-rcd.conflist` with the parts replaced.
    pub fn render(&self) -> Result<NetworkConfigList, CniError> {
        let bad = |reason: String| CniError::InvalidRequest { reason };
        if self.bridge.is_empty()
            || self.bridge.len() > 15
            || self
                .bridge
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            return Err(bad(format!(
                "invalid bridge name {:?}: 1 to 15 characters, no '/', ':' or spaces",
                self.bridge
            )));
        }
        if self.subnets.is_empty() {
            return Err(bad("a bridge network needs at least one subnet".into()));
        }
        let mut ranges = Vec::new();
        let mut routes = Vec::new();
        let mut families = Vec::new();
        for s in &self.subnets {
            let ip = parse_cidr(s)?;
            if families.contains(&ip.is_ipv6()) {
                return Err(bad(format!(
                    "subnets {:?}: at most one IPv4 and one IPv6 subnet",
                    self.subnets
                )));
            }
            families.push(ip.is_ipv6());
            ranges.push(json!([{ "subnet": s }]));
            routes.push(json!({ "dst": if ip.is_ipv6() { "::/0" } else { "0.0.0.0/0" } }));
        }
        let mut raw: Value =
            serde_json::from_str(DEFAULT_CONFLIST).expect("the default conflist is JSON");
        raw["name"] = json!(self.name);
        let bridge = &mut raw["plugins"][0];
        bridge["bridge"] = json!(self.bridge);
        bridge["ipam"]["ranges"] = json!(ranges);
        bridge["ipam"]["routes"] = json!(routes);
        if let Some(dir) = &self.ipam_data_dir {
            bridge["ipam"]["dataDir"] = json!(dir);
        }
        NetworkConfigList::from_value(raw, None)
    }
}

/// Writes the default conflist into `dir` if it holds no network config at all (what the
/// project's setup runs); returns the file written.
pub fn install_default(dir: &Path) -> Result<Option<PathBuf>, CniError> {
    if !config_files(dir)?.is_empty() {
        return Ok(None);
    }
    let path = dir.join(DEFAULT_FILE_NAME);
    write_file(&path, DEFAULT_CONFLIST.as_bytes())?;
    Ok(Some(path))
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CniError> {
    let err = |source| CniError::WriteConfig {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Parses `a.b.c.d/n` or `x::/n`; the address must be the network's first (no host bits).
pub fn parse_cidr(s: &str) -> Result<IpAddr, CniError> {
    let bad = |reason: &str| CniError::InvalidRequest {
        reason: format!("invalid subnet {s:?}: {reason}"),
    };
    let (addr, len) = s.split_once('/').ok_or_else(|| bad("no /prefix length"))?;
    let ip: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
    let max = if ip.is_ipv6() { 128 } else { 32 };
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| bad("bad prefix length"))?;
    // host-local needs room for the gateway and at least one pod
    if len + 2 > max {
        return Err(bad("too small for a gateway and a pod"));
    }
    let host_bits = match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) & ((1u128 << (32 - len)) - 1),
        IpAddr::V6(v6) => u128::from(v6) & (u128::MAX >> len),
    };
    if host_bits != 0 {
        return Err(bad("host bits are set"));
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_conflist_is_valid_and_rendered() {
        let l = BridgeNetwork::default().render().unwrap();
        let shipped = NetworkConfigList::from_conflist(DEFAULT_CONFLIST.as_bytes(), None).unwrap();
        assert_eq!(l.raw, shipped.raw);
        assert_eq!(
            l.plugins
                .iter()
                .map(|p| p.plugin_type.as_str())
                .collect::<Vec<_>>(),
            ["bridge", "portmap", "firewall"]
        );
        assert!(l.plugins[1].has_capability("portMappings"));
        let custom = BridgeNetwork {
            name: "t1".into(),
            bridge: "rcdt1".into(),
            subnets: vec!["10.98.1.0/24".into(), "fd00:98::/64".into()],
            ipam_data_dir: Some("/tmp/ipam".into()),
        }
        .render()
        .unwrap();
        let b = &custom.plugins[0].config;
        assert_eq!(custom.name, "t1");
        assert_eq!(b["bridge"], "rcdt1");
        assert_eq!(b["ipam"]["ranges"][1][0]["subnet"], "fd00:98::/64");
        assert_eq!(b["ipam"]["routes"][1]["dst"], "::/0");
        assert_eq!(b["ipam"]["dataDir"], "/tmp/ipam");
    }

    #[test]
    fn bad_subnets_and_bridges_are_refused() {
        for (subnets, want) in [
            (vec!["10.0.0.0"], "no /prefix length"),
            (vec!["10.0.0.300/24"], "not an IP address"),
            (vec!["10.0.0.0/33"], "bad prefix length"),
            (vec!["10.0.0.1/24"], "host bits are set"),
            (vec!["10.0.0.0/31"], "too small"),
            (vec!["10.0.0.0/24", "10.1.0.0/24"], "at most one IPv4"),
            (vec![], "at least one subnet"),
        ] {
            let err = BridgeNetwork {
                subnets: subnets.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }
            .render()
            .unwrap_err()
            .to_string();
            assert!(err.contains(want), "{subnets:?}: {err}");
        }
        let err = BridgeNetwork {
            bridge: "a-very-long-bridge".into(),
            ..Default::default()
        }
        .render()
        .unwrap_err();
        assert!(err.to_string().contains("invalid bridge name"));
    }

    #[test]
    fn install_default_only_into_an_empty_dir() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        let written = install_default(&conf).unwrap().unwrap();
        assert_eq!(written, conf.join(DEFAULT_FILE_NAME));
        assert_eq!(std::fs::read_to_string(&written).unwrap(), DEFAULT_CONFLIST);
        std::fs::remove_file(&written).unwrap();
        std::fs::write(conf.join("99-mine.conf"), "{}").unwrap();
        assert!(install_default(&conf).unwrap().is_none());
        assert!(!written.exists());
    }
}
