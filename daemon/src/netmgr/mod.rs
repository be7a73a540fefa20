//! rnerd's networks and volumes, kept by rcd: named bridge CNI networks per namespace
//! ([`NetManager`]), the attachment of a container's task to one of them ([`task`]), named and
//! anonymous volumes ([`volumes`]) and the translation of a container's network and volume
//! options into labels and spec mounts ([`create`]).
//!
//! ```text
//! <root>/networks/<ns>/<name>.json        a network: subnet, gateway, bridge, its conflist
//! <root>/volumes/<ns>/<name>/_data        a volume's directory (meta.json beside it)
//! <state>/networks/ipam/                  host-local's allocations (gone with a reboot, as netns)
//! <state>/networks/cni/                   the CNI results cache: DEL after a restart
//! <state>/networks/netns/<ns>/<id>        a task's pinned network namespace
//! <state>/networks/attach/<ns>/<id>.json  a task's attachment (network, IP, names)
//! <state>/networks/files/<ns>/<id>/       its hosts, resolv.conf and hostname (bind-mounted)
//! ```

pub mod create;
pub mod task;
pub mod volumes;

use crate::cni::{self, BridgeNetwork, CniError, CniExec, NetworkConfigList};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The network every container of rnerd is on unless told otherwise; made on first use.
pub const DEFAULT_NETWORK: &str = "bridge";

/// Labels rcd keeps beside the contract's `rcd.io/...` ones.
pub mod labels {
    /// The port mappings as asked (host port 0 = pick one), while `rcd.io/ports` holds the
    /// ones a running task got.
    pub const PORTS_REQUESTED: &str = "rcd.io/ports-requested";
    /// JSON array of `"HOST:IP"` (`--add-host`).
    pub const ADD_HOSTS: &str = "rcd.io/add-hosts";
    /// Comma-separated DNS servers (`--dns`).
    pub const DNS: &str = "rcd.io/dns";
}

/// `[networks]` of rcd's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworksConfig {
    /// Where networks made without a subnet get theirs, one /24 each. Must not overlap the
    /// CRI's pod network (10.99.0.0/16).
    pub pool: String,
    /// Bridge devices are named this prefix plus the start of the network's id (15 bytes).
    pub bridge_prefix: String,
}

impl Default for NetworksConfig {
    fn default() -> Self {
        NetworksConfig {
            pool: "10.4.0.0/16".into(),
            bridge_prefix: "rn-".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InUse(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cni(#[from] CniError),
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> NetError + 'a {
    move |source| NetError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A network as rcd keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub name: String,
    pub id: String,
    pub subnet: String,
    pub gateway: String,
    pub bridge: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created_at: String,
    /// The conflist handed to CNI.
    pub conflist: serde_json::Value,
}

impl NetworkRecord {
    pub fn config(&self) -> Result<NetworkConfigList, NetError> {
        Ok(NetworkConfigList::from_value(self.conflist.clone(), None)?)
    }
}

/// What Networks.Create asks for.
#[derive(Debug, Clone, Default)]
pub struct NetworkRequest {
    pub name: String,
    pub subnet: String,
    pub gateway: String,
    pub labels: BTreeMap<String, String>,
}

/// An IPv4 CIDR as (first address, prefix length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: u32,
    pub len: u32,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, NetError> {
        let ip = cni::default::parse_cidr(s).map_err(|e| NetError::Invalid(e.to_string()))?;
        let std::net::IpAddr::V4(v4) = ip else {
            return Err(NetError::Invalid(format!(
                "invalid subnet {s:?}: only IPv4 subnets"
            )));
        };
        let len = s
            .rsplit_once('/')
            .and_then(|(_, l)| l.parse().ok())
            .unwrap_or(32);
        Ok(Cidr {
            addr: u32::from(v4),
            len,
        })
    }

    fn size(&self) -> u64 {
        1u64 << (32 - self.len)
    }

    fn end(&self) -> u64 {
        u64::from(self.addr) + self.size()
    }

    pub fn overlaps(&self, o: &Cidr) -> bool {
        u64::from(self.addr) < o.end() && u64::from(o.addr) < self.end()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u64::from(u32::from(ip));
        ip >= u64::from(self.addr) && ip < self.end()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.addr), self.len)
    }
}

/// docker's rule for network and volume names.
pub fn check_name(what: &str, name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NetError::Invalid(format!(
            "invalid {what} name {name:?}: 1 to 64 letters, digits, '_', '.' and '-', starting with a letter or digit"
        )))
    }
}

/// The stable id of a network: sha256 of `ns/name`, as docker's 64-hex ids.
pub fn network_id(ns: &str, name: &str) -> String {
    hex::encode(Sha256::digest(format!("{ns}/{name}")))
}

/// rnerd's networks of one daemon, and what attaches tasks to them.
#[derive(Debug)]
pub struct NetManager {
    /// `<root>/networks`
    dir: PathBuf,
    /// `<state>/networks`
    state: PathBuf,
    pool: Cidr,
    bridge_prefix: String,
    pub exec: CniExec,
    /// Serialises network changes and every attach/detach (hosts files of peers).
    pub lock: tokio::sync::Mutex<()>,
    pub volumes: volumes::VolumeStore,
}

impl NetManager {
    pub fn new(
        root: &Path,
        state: &Path,
        cfg: &NetworksConfig,
        plugin_dirs: Vec<PathBuf>,
    ) -> Result<NetManager, NetError> {
        let pool = Cidr::parse(&cfg.pool)
            .map_err(|e| NetError::Invalid(format!("[networks] pool: {e}")))?;
        if pool.len > 24 {
            return Err(NetError::Invalid(format!(
                "[networks] pool {:?}: must hold at least one /24",
                cfg.pool
            )));
        }
        if cfg.bridge_prefix.is_empty() || cfg.bridge_prefix.len() > 7 {
            return Err(NetError::Invalid(format!(
                "[networks] bridge_prefix {:?}: 1 to 7 characters",
                cfg.bridge_prefix
            )));
        }
        let state = state.join("networks");
        Ok(NetManager {
            dir: root.join("networks"),
            exec: CniExec::new(plugin_dirs, &state.join("cni"), Duration::from_secs(30)),
            state,
            pool,
            bridge_prefix: cfg.bridge_prefix.clone(),
            lock: Default::default(),
            volumes: volumes::VolumeStore::new(&root.join("volumes")),
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    fn path(&self, ns: &str, name: &str) -> PathBuf {
        self.dir.join(ns).join(format!("{name}.json"))
    }

    fn read(&self, path: &Path) -> Result<Option<NetworkRecord>, NetError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| NetError::Io {
                    op: "parsing",
                    path: path.to_owned(),
                    source: std::io::Error::other(e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", path)(e)),
        }
    }

    fn all(&self, ns: Option<&str>) -> Result<Vec<(String, NetworkRecord)>, NetError> {
        let mut out = Vec::new();
        let namespaces: Vec<String> = match ns {
            Some(ns) => vec![ns.to_owned()],
            None => match std::fs::read_dir(&self.dir) {
                Ok(rd) => rd
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(_) => Vec::new(),
            },
        };
        for ns in namespaces {
            let Ok(rd) = std::fs::read_dir(self.dir.join(&ns)) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "json") {
                    if let Some(r) = self.read(&p)? {
                        out.push((ns.clone(), r));
                    }
                }
            }
        }
        out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        Ok(out)
    }

    /// The networks of `ns`, "bridge" made if absent.
    pub fn list(&self, ns: &str) -> Result<Vec<NetworkRecord>, NetError> {
        self.ensure_default(ns)?;
        Ok(self.all(Some(ns))?.into_iter().map(|(_, r)| r).collect())
    }

    /// A network by name, full id or unique id prefix of 12+ characters.
    pub fn get(&self, ns: &str, name: &str) -> Result<NetworkRecord, NetError> {
        if name == DEFAULT_NETWORK {
            self.ensure_default(ns)?;
        }
        if check_name("network", name).is_ok() {
            if let Some(r) = self.read(&self.path(ns, name))? {
                return Ok(r);
            }
        }
        if name.len() >= 12 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            self.ensure_default(ns)?;
            let hits: Vec<_> = self
                .all(Some(ns))?
                .into_iter()
                .filter(|(_, r)| r.id.starts_with(name))
                .collect();
            if hits.len() == 1 {
                return Ok(hits.into_iter().next().unwrap().1);
            }
            if hits.len() > 1 {
                return Err(NetError::Invalid(format!(
                    "network id prefix {name:?} is ambiguous in namespace {ns:?}"
                )));
            }
        }
        Err(NetError::NotFound(format!(
            "network {name:?} not found in namespace {ns:?}: create it first (rnerd network create {name})"
        )))
    }

    fn ensure_default(&self, ns: &str) -> Result<(), NetError> {
        if self.path(ns, DEFAULT_NETWORK).exists() {
            return Ok(());
        }
        match self.make(
            ns,
            &NetworkRequest {
                name: DEFAULT_NETWORK.into(),
                ..Default::default()
            },
        ) {
            Ok(_) | Err(NetError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Networks.Create.
    pub fn create(&self, ns: &str, req: &NetworkRequest) -> Result<NetworkRecord, NetError> {
        check_name("network", &req.name)?;
        if matches!(req.name.as_str(), "host" | "none") {
            return Err(NetError::Invalid(format!(
                "network name {:?} is a mode, not a network",
                req.name
            )));
        }
        self.ensure_default(ns)?;
        self.make(ns, req)
    }

    fn make(&self, ns: &str, req: &NetworkRequest) -> Result<NetworkRecord, NetError> {
        let path = self.path(ns, &req.name);
        if path.exists() {
            return Err(NetError::AlreadyExists(format!(
                "network {:?} already exists in namespace {ns:?}",
                req.name
            )));
        }
        let taken: Vec<(String, String, Cidr)> = self
            .all(None)?
            .into_iter()
            .filter_map(|(n, r)| Cidr::parse(&r.subnet).ok().map(|c| (n, r.name, c)))
            .collect();
        let cri = Cidr::parse(cni::default::DEFAULT_SUBNET).expect("valid");
        let subnet = if req.subnet.is_empty() {
            let mut found = None;
            let mut addr = u64::from(self.pool.addr);
            while addr + 256 <= self.pool.end() {
                let c = Cidr {
                    addr: addr as u32,
                    len: 24,
                };
                if !c.overlaps(&cri) && !taken.iter().any(|(_, _, t)| t.overlaps(&c)) {
                    found = Some(c);
                    break;
                }
                addr += 256;
            }
            found.ok_or_else(|| {
                NetError::InUse(format!(
                    "no free /24 left in the pool {} (remove a network, or give a subnet)",
                    self.pool
                ))
            })?
        } else {
            let c = Cidr::parse(&req.subnet)?;
            if c.overlaps(&cri) {
                return Err(NetError::Invalid(format!(
                    "subnet {c} overlaps the CRI pod network {}",
                    cni::default::DEFAULT_SUBNET
                )));
            }
            if let Some((n, name, t)) = taken.iter().find(|(_, _, t)| t.overlaps(&c)) {
                return Err(NetError::Invalid(format!(
                    "subnet {c} overlaps {t} of network {name:?} (namespace {n:?})"
                )));
            }
            c
        };
        let gateway = if req.gateway.is_empty() {
            Ipv4Addr::from(subnet.addr + 1)
        } else {
            let g: Ipv4Addr = req.gateway.parse().map_err(|_| {
                NetError::Invalid(format!(
                    "invalid gateway {:?}: not an IPv4 address",
                    req.gateway
                ))
            })?;
            let last = (u64::from(subnet.addr) + subnet.size() - 1) as u32;
            if !subnet.contains(g) || u32::from(g) == subnet.addr || u32::from(g) == last {
                return Err(NetError::Invalid(format!(
                    "invalid gateway {g}: not a host address of subnet {subnet}"
                )));
            }
            g
        };
        let id = network_id(ns, &req.name);
        let mut bridge = format!("{}{}", self.bridge_prefix, id);
        bridge.truncate(15);
        let list = BridgeNetwork {
            name: format!("rnerd-{ns}-{}", req.name),
            bridge: bridge.clone(),
            subnets: vec![subnet.to_string()],
            ipam_data_dir: Some(self.state.join("ipam")),
        }
        .render()?;
        let mut conflist = list.raw.clone();
        conflist["plugins"][0]["ipam"]["ranges"][0][0]["gateway"] =
            serde_json::json!(gateway.to_string());
        let rec = NetworkRecord {
            name: req.name.clone(),
            id,
            subnet: subnet.to_string(),
            gateway: gateway.to_string(),
            bridge,
            labels: req.labels.clone(),
            created_at: chrono::Utc::now().to_rfc3339(),
            conflist,
        };
        rec.config()?;
        let dir = path.parent().expect("has a parent");
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&rec).expect("serialisable"))
            .map_err(io_err("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp))?;
        tracing::info!(namespace = %ns, network = %rec.name, subnet = %rec.subnet, bridge = %rec.bridge, "network created");
        Ok(rec)
    }

    /// Networks.Delete (the caller holds [`NetManager::lock`] and checked it is unused).
    pub fn delete(&self, ns: &str, name: &str) -> Result<NetworkRecord, NetError> {
        let rec = self.get(ns, name)?;
        if rec.name == DEFAULT_NETWORK {
            return Err(NetError::Invalid(format!(
                "network {DEFAULT_NETWORK:?} is rcd's default network and cannot be removed"
            )));
        }
        let users = task::attached(self, ns, &rec.name);
        if !users.is_empty() {
            return Err(NetError::InUse(format!(
                "network {:?} is in use by container {:?}: stop it first",
                rec.name,
                users.keys().next().expect("one")
            )));
        }
        remove_bridge(&rec.bridge);
        let path = self.path(ns, &rec.name);
        std::fs::remove_file(&path).map_err(io_err("removing", &path))?;
        let cni_name = rec.conflist["name"].as_str().unwrap_or_default();
        let _ = std::fs::remove_dir_all(self.state.join("ipam").join(cni_name));
        Ok(rec)
    }
}

/// Removes a bridge device (the bridge plugin leaves it after the last DEL).
pub fn remove_bridge(bridge: &str) {
    match std::process::Command::new("ip")
        .args(["link", "del", bridge])
        .stderr(std::process::Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if !err.contains("Cannot find device") {
                tracing::warn!(bridge, "removing the bridge: {}", err.trim());
            }
        }
        Err(e) => tracing::warn!(bridge, "running ip link del: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mgr(dir: &Path) -> NetManager {
        NetManager::new(
            &dir.join("root"),
            &dir.join("state"),
            &NetworksConfig {
                pool: "10.4.0.0/23".into(),
                bridge_prefix: "rx-".into(),
            },
            vec![],
        )
        .unwrap()
    }

    #[test]
    fn pool_subnets_overlaps_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let m = mgr(dir.path());
        let l = m.list("default").unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, "bridge");
        assert_eq!(l[0].subnet, "10.4.0.0/24");
        assert_eq!(l[0].gateway, "10.4.0.1");
        assert_eq!(l[0].bridge.len(), 15);
        assert!(l[0].bridge.starts_with("rx-"));
        let a = m
            .create(
                "default",
                &NetworkRequest {
                    name: "a".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(a.subnet, "10.4.1.0/24");
        let full = m
            .create(
                "default",
                &NetworkRequest {
                    name: "b".into(),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(full.to_string().contains("no free /24"), "{full}");
        let e = m
            .create(
                "default",
                &NetworkRequest {
                    name: "a".into(),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(matches!(e, NetError::AlreadyExists(_)), "{e}");
        for (subnet, gw, want) in [
            ("10.4.1.128/25", "", "overlaps 10.4.1.0/24 of network \"a\""),
            ("10.99.3.0/24", "", "overlaps the CRI"),
            ("10.5.0.1/24", "", "host bits"),
            ("10.5.0.0/33", "", "prefix"),
            ("fd00::/64", "", "only IPv4"),
            ("10.5.0.0/24", "10.6.0.1", "not a host address"),
            ("10.5.0.0/24", "10.5.0.255", "not a host address"),
            ("10.5.0.0/24", "x", "invalid gateway"),
        ] {
            let e = m
                .create(
                    "default",
                    &NetworkRequest {
                        name: "c".into(),
                        subnet: subnet.into(),
                        gateway: gw.into(),
                        ..Default::default()
                    },
                )
                .unwrap_err();
            assert!(e.to_string().contains(want), "{subnet} {gw}: {e}");
        }
        let c = m
            .create(
                "default",
                &NetworkRequest {
                    name: "c".into(),
                    subnet: "10.5.0.0/24".into(),
                    gateway: "10.5.0.254".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            c.conflist["plugins"][0]["ipam"]["ranges"][0][0]["gateway"],
            "10.5.0.254"
        );
        for bad in ["", "-x", "a/b", "host", "none"] {
            assert!(m
                .create(
                    "default",
                    &NetworkRequest {
                        name: bad.into(),
                        ..Default::default()
                    }
                )
                .is_err());
        }
        assert_eq!(m.get("default", &c.id[..12]).unwrap().name, "c");
        assert!(matches!(m.get("default", "zz"), Err(NetError::NotFound(_))));
        assert!(m.delete("default", "bridge").is_err());
        m.delete("default", "c").unwrap();
        assert!(matches!(m.get("default", "c"), Err(NetError::NotFound(_))));
        // another namespace has its own "bridge", on a subnet of its own
        m.delete("default", "a").unwrap();
        let other = m.list("other").unwrap();
        assert_eq!(other[0].subnet, "10.4.1.0/24");
        assert_ne!(other[0].bridge, l[0].bridge);
    }
}
