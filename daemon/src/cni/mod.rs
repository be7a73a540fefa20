//! Pod networking through the standard CNI plugins (Debian's `containernetworking-plugins` in
//! /usr/lib/cni): pinned network namespaces ([`netns`]), network configs ([`config`]), the
//! CNI protocol with a results cache ([`exec`], [`cache`]), rcd's default bridge network
//! ([`default`]) and a pod's resolv.conf/hosts/hostname ([`dns`]).
//!
//! [`Cni`] is what the CRI service calls: [`Cni::setup_pod`] on RunPodSandbox (loopback on
//! `lo`, then the configured network on `eth0`), [`Cni::teardown_pod`] on StopPodSandbox
//! (idempotent, also after a crash or with the namespace gone), [`Cni::pod_network`] for
//! PodSandboxStatus. [`CniExec`] runs any network on any interface (rnerd's named networks).
//!
//! The CRI service's flow (text, not compiled):
//!
//! ```text
//! RunPodSandbox:   ns = NetNs::create(&state.join("netns"), &id)?;            // blocking, ~1 ms
//!                  net = cni.setup_pod(&PodNetworkRequest { id, netns: Some(ns.path()),
//!                        args: PodNetworkRequest::k8s_args(&id, ns_name, name, uid),
//!                        port_mappings, ..}).await  (on error: ns.remove())
//!                  dns::write_pod_files(&pod_dir, &PodFilesRequest { hostname, ips: net.ips,
//!                        dns: Some(dns_config), host_resolv_conf: None })
//! StopPodSandbox:  cni.teardown_pod(&req).await?; netns::remove(&path)?      // both idempotent
//! PodSandboxStatus: cni.pod_network(&id)?.map(|n| n.ips)
//! Status:          cni.ready() → NetworkReady (false with the error as message)
//! UpdateRuntimeConfig: cni.set_pod_cidr(&pod_cidr)?
//! ```

pub mod cache;
mod compat;
pub mod config;
pub mod default;
pub mod dns;
pub mod exec;
pub mod netns;
pub mod result;

pub use config::{NetworkConfigList, PluginConfig};
pub use default::BridgeNetwork;
pub use exec::{CniExec, RuntimeConf};
pub use netns::NetNs;
pub use result::CniResult;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("invalid cni config {path}: {reason}")]
    InvalidConfig { path: String, reason: String },
    #[error("reading cni config {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing cni config {path}: {source}")]
    WriteConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no cni network config in {dir}")]
    NoNetwork { dir: PathBuf },
    #[error("cni config load failed: {0}")]
    LoadFailed(String),
    #[error("network {network:?}: cni plugin {plugin:?} not found in {dirs}")]
    PluginNotFound {
        network: String,
        plugin: String,
        dirs: String,
    },
    #[error("network {network:?}: cni plugin {plugin:?} failed ({command}, code {code}): {msg}{}",
        if details.is_empty() { String::new() } else { format!(": {details}") })]
    Plugin {
        network: String,
        plugin: String,
        command: &'static str,
        code: u64,
        msg: String,
        details: String,
    },
    #[error("network {network:?}: cni plugin {plugin:?} failed ({command}): {reason}")]
    PluginFailed {
        network: String,
        plugin: String,
        command: &'static str,
        reason: String,
    },
    #[error("network {network:?}: cni plugin {plugin:?} timed out ({command}) after {timeout:?}")]
    PluginTimeout {
        network: String,
        plugin: String,
        command: &'static str,
        timeout: Duration,
    },
    #[error("network {network:?}: cni plugin {plugin:?} returned a bad result: {reason}")]
    BadResult {
        network: String,
        plugin: String,
        reason: String,
    },
    #[error("network {network:?}: {container_id} is not attached on {ifname} (no cached result)")]
    NotAttached {
        network: String,
        container_id: String,
        ifname: String,
    },
    #[error("cni cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt cni cache {path}: {reason}")]
    CorruptCache { path: PathBuf, reason: String },
    #[error("{reason}")]
    InvalidRequest { reason: String },
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
}

/// A host port forwarded to the pod (portmap's `runtimeConfig.portMappings` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Empty: every host address.
    #[serde(default, rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The bandwidth plugin's `runtimeConfig.bandwidth` (bits per second, burst in bits).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    pub egress_rate: u64,
    pub egress_burst: u64,
}

/// Where the configs, plugins and state are.
#[derive(Debug, Clone)]
pub struct CniOptions {
    /// The admin's network configs (the first by file name is the pod network).
    pub conf_dir: PathBuf,
    pub plugin_dirs: Vec<PathBuf>,
    /// The results cache (`results/`) and the pod-CIDR config rcd generates (`net.d/`). Kept
    /// across reboots: host-local's allocations are too, and a DEL frees them.
    pub state_dir: PathBuf,
    pub plugin_timeout: Duration,
    /// The pod's interface (`eth0`).
    pub ifname: String,
}

impl Default for CniOptions {
    fn default() -> Self {
        CniOptions {
            conf_dir: "/etc/cni/net.d".into(),
            plugin_dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
            state_dir: "/var/lib/rcd/cni".into(),
            plugin_timeout: Duration::from_secs(30),
            ifname: "eth0".into(),
        }
    }
}

/// What a pod's network is set up with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodNetworkRequest {
    /// The sandbox id (CNI's container id).
    pub id: String,
    /// The pinned namespace; `None` (or a path that is no longer a namespace) on teardown
    /// means it is gone.
    pub netns: Option<PathBuf>,
    /// `CNI_ARGS`; see [`PodNetworkRequest::k8s_args`].
    pub args: Vec<(String, String)>,
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: Option<Bandwidth>,
}

impl PodNetworkRequest {
    /// The `CNI_ARGS` kubelet's runtimes pass: `IgnoreUnknown=1;K8S_POD_NAMESPACE=..;
    /// K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..`.
    pub fn k8s_args(id: &str, namespace: &str, name: &str, uid: &str) -> Vec<(String, String)> {
        [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", namespace),
            ("K8S_POD_NAME", name),
            ("K8S_POD_INFRA_CONTAINER_ID", id),
            ("K8S_POD_UID", uid),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn capability_args(&self) -> Map<String, Value> {
        let mut caps = Map::new();
        // containerd drops mappings without a host port: nothing to forward
        let ports: Vec<_> = self
            .port_mappings
            .iter()
            .filter(|p| p.host_port != 0)
            .map(|p| PortMapping {
                protocol: p.protocol.to_ascii_lowercase(),
                ..p.clone()
            })
            .collect();
        if !ports.is_empty() {
            caps.insert("portMappings".into(), serde_json::to_value(ports).unwrap());
        }
        if let Some(b) = &self.bandwidth {
            caps.insert("bandwidth".into(), serde_json::to_value(b).unwrap());
        }
        caps
    }
}

/// A pod's network as set up (or as cached).
#[derive(Debug, Clone, PartialEq)]
pub struct PodNetwork {
    pub network: String,
    pub ifname: String,
    /// The pod's IPs, IPv4 first: PodSandboxStatus's `network.ip` and `additional_ips`.
    pub ips: Vec<IpAddr>,
    pub result: CniResult,
}

/// The name of the built-in loopback network's attachment.
const LOOPBACK_IFNAME: &str = "lo";

/// The pod network manager the CRI service holds.
#[derive(Debug)]
pub struct Cni {
    opts: CniOptions,
    exec: CniExec,
    loopback: NetworkConfigList,
    network: Option<NetworkConfigList>,
    /// Why the last read of the config dir failed: NetworkReady stays false with it (as
    /// containerd's "cni config load failed") instead of rcd refusing to start.
    load_error: Option<String>,
}

impl Cni {
    /// Reads the config dir (and a pod-CIDR config generated earlier). No config is not an
    /// error: [`Cni::ready`] says so, as NetworkReady=false does.
    pub fn load(opts: CniOptions) -> Result<Self, CniError> {
        let exec = CniExec::new(
            opts.plugin_dirs.clone(),
            &opts.state_dir,
            opts.plugin_timeout,
        );
        let mut cni = Cni {
            opts,
            exec,
            loopback: config::loopback_network(),
            network: None,
            load_error: None,
        };
        if let Err(e) = cni.reload() {
            tracing::warn!("{e}: pods cannot start until the cni config is fixed");
        }
        Ok(cni)
    }

    /// Re-reads the configs (a new file in the config dir takes effect for new pods).
    /// A failed read keeps the network read before (pods keep working) but makes [`Cni::ready`]
    /// and new pods fail with the reason until a read succeeds.
    pub fn reload(&mut self) -> Result<(), CniError> {
        match self.read_configs() {
            Ok(network) => {
                self.network = network;
                self.load_error = None;
                Ok(())
            }
            Err(e) => {
                self.load_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn read_configs(&self) -> Result<Option<NetworkConfigList>, CniError> {
        let admin = config::default_network(&self.opts.conf_dir)?;
        let generated = self.generated_path();
        Ok(match admin {
            // a pod CIDR only replaces rcd's own default network, never the admin's
            Some(n) if n.name != default::DEFAULT_NETWORK_NAME => Some(n),
            _ if generated.is_file() => Some(NetworkConfigList::from_file(&generated)?),
            other => other,
        })
    }

    /// The network pods are attached to.
    pub fn network(&self) -> Option<&NetworkConfigList> {
        self.network.as_ref()
    }

    pub fn exec(&self) -> &CniExec {
        &self.exec
    }

    /// NetworkReady: a network is configured and all its plugins (and loopback) are found.
    pub fn ready(&self) -> Result<(), CniError> {
        if let Some(e) = &self.load_error {
            return Err(CniError::LoadFailed(e.clone()));
        }
        let network = self.network.as_ref().ok_or_else(|| CniError::NoNetwork {
            dir: self.opts.conf_dir.clone(),
        })?;
        for (list, plugin) in network
            .plugins
            .iter()
            .map(|p| (network, p))
            .chain(self.loopback.plugins.iter().map(|p| (&self.loopback, p)))
        {
            if self.exec.find_plugin(&plugin.plugin_type).is_none() {
                return Err(CniError::PluginNotFound {
                    network: list.name.clone(),
                    plugin: plugin.plugin_type.clone(),
                    dirs: self
                        .opts
                        .plugin_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(())
    }

    fn generated_path(&self) -> PathBuf {
        self.opts
            .state_dir
            .join("net.d")
            .join(default::DEFAULT_FILE_NAME)
    }

    /// CRI's UpdateRuntimeConfig: pods get addresses from `cidrs` (comma-separated, one per
    /// family, as kubelet sends them). Applies only while the pod network is rcd's default
    /// (or there is none); an admin's own config is left as it is (returns false). The
    /// generated config is kept in the state dir and survives restarts.
    pub fn set_pod_cidr(&mut self, cidrs: &str) -> Result<bool, CniError> {
        if self
            .network
            .as_ref()
            .is_some_and(|n| n.name != default::DEFAULT_NETWORK_NAME)
        {
            return Ok(false);
        }
        let subnets: Vec<String> = cidrs
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if subnets.is_empty() {
            return Ok(false);
        }
        let mut net = BridgeNetwork {
            subnets,
            ..Default::default()
        };
        // keep the bridge of the network in use, if it is rcd's
        if let Some(b) = self
            .network
            .as_ref()
            .and_then(|n| n.plugins.first())
            .and_then(|p| p.config.get("bridge"))
            .and_then(Value::as_str)
        {
            net.bridge = b.to_string();
        }
        let list = net.render()?;
        default::write_file(&self.generated_path(), &list.to_bytes())?;
        self.network = Some(list);
        Ok(true)
    }

    /// RunPodSandbox: `lo` up through the loopback plugin, then the pod network on `eth0`.
    /// On failure everything added is removed again.
    pub async fn setup_pod(&self, req: &PodNetworkRequest) -> Result<PodNetwork, CniError> {
        if let Some(e) = &self.load_error {
            return Err(CniError::LoadFailed(e.clone()));
        }
        let network = self.network.as_ref().ok_or_else(|| CniError::NoNetwork {
            dir: self.opts.conf_dir.clone(),
        })?;
        let netns = req.netns.clone().ok_or_else(|| CniError::InvalidRequest {
            reason: format!("pod {}: no network namespace to set up", req.id),
        })?;
        let lo = RuntimeConf {
            container_id: req.id.clone(),
            netns: Some(netns.clone()),
            ifname: LOOPBACK_IFNAME.into(),
            args: req.args.clone(),
            capability_args: Map::new(),
        };
        self.exec.add(&self.loopback, &lo).await?;
        let rt = RuntimeConf {
            ifname: self.opts.ifname.clone(),
            capability_args: req.capability_args(),
            ..lo.clone()
        };
        let result = match self.exec.add(network, &rt).await {
            Ok(r) => r,
            Err(e) => {
                if let Err(e2) = self.exec.del(&self.loopback, &lo).await {
                    tracing::warn!(id = %req.id, "removing loopback after a failed setup: {e2}");
                }
                return Err(e);
            }
        };
        Ok(PodNetwork {
            network: network.name.clone(),
            ifname: rt.ifname.clone(),
            ips: result.sandbox_ips(&rt.ifname),
            result,
        })
    }

    /// StopPodSandbox: DEL of every network the pod was attached to (from the cache, with
    /// the config, port mappings and result of its ADD), the pod network, then loopback.
    /// Idempotent: without a cache entry the current config is DELeted with what `req`
    /// says; a missing namespace is passed as an empty `CNI_NETNS` so plugins still free
    /// addresses and host rules. Every attachment is tried; the first error is returned.
    pub async fn teardown_pod(&self, req: &PodNetworkRequest) -> Result<(), CniError> {
        let netns = req.netns.as_deref().filter(|p| netns::is_netns(p));
        let (lo_entries, net_entries): (Vec<_>, Vec<_>) = self
            .exec
            .cache
            .entries_of(&req.id)?
            .into_iter()
            .partition(|e| e.network_name == self.loopback.name);
        let mut first_err = None;
        let current_cached = net_entries.iter().any(|e| {
            self.network
                .as_ref()
                .is_some_and(|n| n.name == e.network_name)
                && e.if_name == self.opts.ifname
        });
        for entry in &net_entries {
            if let Err(e) = self.exec.del_cached(entry, netns).await {
                first_err.get_or_insert(e);
            }
        }
        if !current_cached {
            if let Err(e) = self.del_current(req, netns).await {
                first_err.get_or_insert(e);
            }
        }
        for entry in &lo_entries {
            if let Err(e) = self.exec.del_cached(entry, netns).await {
                first_err.get_or_insert(e);
            }
        }
        if lo_entries.is_empty() {
            let lo = RuntimeConf {
                container_id: req.id.clone(),
                netns: netns.map(Path::to_path_buf),
                ifname: LOOPBACK_IFNAME.into(),
                args: req.args.clone(),
                capability_args: Map::new(),
            };
            if let Err(e) = self.exec.del(&self.loopback, &lo).await {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// DEL of the configured network when the cache has nothing for it.
    async fn del_current(
        &self,
        req: &PodNetworkRequest,
        netns: Option<&Path>,
    ) -> Result<(), CniError> {
        let Some(network) = &self.network else {
            return Ok(());
        };
        let rt = RuntimeConf {
            container_id: req.id.clone(),
            netns: netns.map(Path::to_path_buf),
            ifname: self.opts.ifname.clone(),
            args: req.args.clone(),
            capability_args: req.capability_args(),
        };
        self.exec.del(network, &rt).await
    }

    /// PodSandboxStatus: the pod's network from the cache (survives rcd restarts); `None`
    /// when it has none (never set up, or torn down).
    pub fn pod_network(&self, id: &str) -> Result<Option<PodNetwork>, CniError> {
        for entry in self.exec.cache.entries_of(id)? {
            if entry.if_name != self.opts.ifname {
                continue;
            }
            if let Some(raw) = entry.result {
                let result: CniResult =
                    serde_json::from_value(raw).map_err(|e| CniError::CorruptCache {
                        path: self
                            .exec
                            .cache
                            .path(&entry.network_name, id, &entry.if_name),
                        reason: e.to_string(),
                    })?;
                return Ok(Some(PodNetwork {
                    network: entry.network_name,
                    ips: result.sandbox_ips(&entry.if_name),
                    ifname: entry.if_name,
                    result,
                }));
            }
        }
        Ok(None)
    }

    /// CHECK of the pod network against its cached result.
    pub async fn check_pod(&self, req: &PodNetworkRequest) -> Result<(), CniError> {
        let network = self.network.as_ref().ok_or_else(|| CniError::NoNetwork {
            dir: self.opts.conf_dir.clone(),
        })?;
        let rt = RuntimeConf {
            container_id: req.id.clone(),
            netns: req.netns.clone(),
            ifname: self.opts.ifname.clone(),
            args: req.args.clone(),
            capability_args: req.capability_args(),
        };
        self.exec.check(network, &rt).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: T) {}

    /// The CRI service holds a `Cni` in an `Arc` and awaits it inside tonic handlers.
    #[test]
    fn usable_from_tonic_handlers() {
        let dir = tempfile::tempdir().unwrap();
        let cni = Cni::load(CniOptions {
            conf_dir: dir.path().join("none"),
            state_dir: dir.path().join("state"),
            ..Default::default()
        })
        .unwrap();
        assert_send_sync(&cni);
        let req = PodNetworkRequest::default();
        assert_send(cni.setup_pod(&req));
        assert_send(cni.teardown_pod(&req));
        assert_send(cni.check_pod(&req));
    }

    #[test]
    fn a_broken_config_is_not_ready_with_its_reason_until_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(conf.join("10-a.conflist"), "{ not json").unwrap();
        let mut cni = Cni::load(CniOptions {
            conf_dir: conf.clone(),
            state_dir: dir.path().join("state"),
            plugin_dirs: vec![dir.path().join("bin")],
            ..Default::default()
        })
        .expect("a broken config must not stop the daemon");
        let e = cni.ready().unwrap_err().to_string();
        assert!(
            e.starts_with("cni config load failed") && e.contains("10-a.conflist"),
            "{e}"
        );
        std::fs::write(
            conf.join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        cni.reload().unwrap();
        // readable now; what is missing is the plugin, and it says so
        let e = cni.ready().unwrap_err().to_string();
        assert!(e.contains("plugin \"bridge\" not found"), "{e}");
    }

    #[test]
    fn port_mappings_without_host_port_are_dropped_and_protocols_lowercased() {
        let req = PodNetworkRequest {
            port_mappings: vec![
                PortMapping {
                    host_port: 0,
                    container_port: 80,
                    protocol: "TCP".into(),
                    host_ip: String::new(),
                },
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: "UDP".into(),
                    host_ip: "127.0.0.1".into(),
                },
            ],
            ..Default::default()
        };
        let caps = req.capability_args();
        assert_eq!(
            Value::Object(caps),
            serde_json::json!({"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "udp", "hostIP": "127.0.0.1"}
            ]})
        );
    }
}
