//! Running a network's plugins with the CNI protocol: ADD in order (each plugin gets the
//! previous one's result as `prevResult`), DEL in reverse order with the cached result, CHECK
//! with the cached result. Each plugin is a process: environment `CNI_*`, its config on stdin,
//! a result or a CNI error (`{"code", "msg", "details"}`) on stdout.

use super::cache::{CacheEntry, ResultCache};
use super::config::{NetworkConfigList, PluginConfig};
use super::result::CniResult;
use super::CniError;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// What one attachment of a container to a network is: the CNI "runtime config".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    pub container_id: String,
    /// `None` when the namespace is gone (DEL still runs, with an empty `CNI_NETNS`).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` pairs (`K8S_POD_NAME=...`).
    pub args: Vec<(String, String)>,
    /// `runtimeConfig` values by capability name (`portMappings`, `bandwidth`, `ips`, `mac`,
    /// `dns`...); a plugin gets only those it declares in `capabilities`.
    pub capability_args: Map<String, Value>,
}

/// Runs plugins found in `plugin_dirs` and caches results in `cache`.
#[derive(Debug, Clone)]
pub struct CniExec {
    pub plugin_dirs: Vec<PathBuf>,
    pub cache: ResultCache,
    /// Per plugin invocation; the plugin is killed when it runs out.
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Add,
    Del,
    Check,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

impl CniExec {
    pub fn new(plugin_dirs: Vec<PathBuf>, cache_dir: &Path, timeout: Duration) -> Self {
        CniExec {
            plugin_dirs,
            cache: ResultCache::new(cache_dir),
            timeout,
        }
    }

    /// The binary of plugin `plugin_type`: the first plugin dir holding it.
    pub fn find_plugin(&self, plugin_type: &str) -> Option<PathBuf> {
        self.plugin_dirs
            .iter()
            .map(|d| d.join(plugin_type))
            .find(|p| is_executable(p))
    }

    /// ADDs the container to the network. The cache entry is written before the first plugin
    /// runs (so a DEL after a crash knows the config and port mappings) and completed with the
    /// result. When a plugin fails, the whole list is DELeted again (every plugin, errors
    /// ignored: a plugin may fail after allocating) and the cache entry removed.
    pub async fn add(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<CniResult, CniError> {
        validate(list, rt)?;
        let netns = rt
            .netns
            .as_deref()
            .ok_or_else(|| CniError::InvalidRequest {
                reason: format!(
                    "ADD of {} to network {:?} needs a network namespace",
                    rt.container_id, list.name
                ),
            })?;
        let mut entry = CacheEntry::new(
            &rt.container_id,
            &rt.ifname,
            &list.name,
            &netns.to_string_lossy(),
            &rt.args,
            &rt.capability_args,
            &list.raw,
        );
        self.cache.put(&entry)?;
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            match self
                .invoke(Command::Add, list, plugin, rt, prev.as_ref())
                .await
            {
                Ok(Some(result)) => prev = Some(result),
                Ok(None) => {
                    let err = CniError::BadResult {
                        network: list.name.clone(),
                        plugin: plugin.plugin_type.clone(),
                        reason: "ADD returned no result".into(),
                    };
                    self.undo_add(list, rt, prev.as_ref()).await;
                    return Err(err);
                }
                Err(err) => {
                    self.undo_add(list, rt, prev.as_ref()).await;
                    return Err(err);
                }
            }
        }
        let raw = prev.expect("a list has at least one plugin");
        let result: CniResult =
            serde_json::from_value(raw.clone()).map_err(|e| CniError::BadResult {
                network: list.name.clone(),
                plugin: list.plugins.last().unwrap().plugin_type.clone(),
                reason: e.to_string(),
            })?;
        entry.result = Some(raw);
        if let Err(err) = self.cache.put(&entry) {
            self.undo_add(list, rt, entry.result.as_ref()).await;
            return Err(err);
        }
        tracing::debug!(network = %list.name, id = %rt.container_id, ifname = %rt.ifname,
            ips = ?result.ips, "cni add");
        Ok(result)
    }

    async fn undo_add(&self, list: &NetworkConfigList, rt: &RuntimeConf, prev: Option<&Value>) {
        if let Err(e) = self.run_del(list, rt, prev).await {
            tracing::warn!(network = %list.name, id = %rt.container_id,
                "cleaning up after a failed cni add: {e}");
        }
        if let Err(e) = self.cache.remove(&list.name, &rt.container_id, &rt.ifname) {
            tracing::warn!("{e}");
        }
    }

    /// DELs the container from the network, idempotently. The cached entry of this
    /// (network, container, ifname), if any, provides what the ADD ran (config, `CNI_ARGS`,
    /// runtime config) and its result as `prevResult`; only the namespace comes from `rt`.
    /// Without one, `list` and `rt` are used as they are. Every plugin is run even if one fails (the first error is returned
    /// and the cache entry kept for a retry); plugins whose binary is gone are skipped.
    pub async fn del(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), CniError> {
        validate(list, rt)?;
        let cached = self.cache.get(&list.name, &rt.container_id, &rt.ifname)?;
        match cached {
            Some(entry) => self.del_cached(&entry, rt.netns.as_deref()).await,
            None => self.run_del(list, rt, None).await,
        }
    }

    /// DEL from a cache entry alone (`netns` overrides the cached path; `None` when it is gone).
    pub async fn del_cached(
        &self,
        entry: &CacheEntry,
        netns: Option<&Path>,
    ) -> Result<(), CniError> {
        let list = NetworkConfigList::from_value(entry.config.clone(), None)?;
        let rt = RuntimeConf {
            container_id: entry.container_id.clone(),
            netns: netns.map(Path::to_path_buf),
            ifname: entry.if_name.clone(),
            args: entry.cni_args.clone(),
            capability_args: entry.capability_args.clone(),
        };
        validate(&list, &rt)?;
        self.run_del(&list, &rt, entry.result.as_ref()).await?;
        self.cache
            .remove(&entry.network_name, &entry.container_id, &entry.if_name)
    }

    async fn run_del(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        let cached_result = prev;
        // prevResult on DEL exists from CNI 0.4.0 on
        let prev = prev.filter(|_| list.version() >= (0, 4, 0));
        let mut first_err = None;
        for plugin in list.plugins.iter().rev() {
            if self.find_plugin(&plugin.plugin_type).is_none() {
                tracing::warn!(network = %list.name, plugin = %plugin.plugin_type,
                    "cni del: plugin not found, skipped");
                continue;
            }
            match self.invoke(Command::Del, list, plugin, rt, prev).await {
                Ok(_) => {}
                Err(e) if super::compat::masq_already_gone(&plugin.plugin_type, &e) => {
                    tracing::debug!(network = %list.name, id = %rt.container_id,
                        "bridge's masquerade chain was already gone: {e}");
                }
                Err(e) => {
                    tracing::warn!(network = %list.name, id = %rt.container_id, "{e}");
                    first_err.get_or_insert(e);
                }
            }
        }
        // the plugin finds the addresses to unmasquerade in the namespace; whenever it could
        // not (namespace or addresses gone, chain flushed), rcd has them in the cache
        if let (None, Some(raw)) = (&first_err, cached_result) {
            if let Ok(result) = serde_json::from_value::<CniResult>(raw.clone()) {
                super::compat::bridge_masq_check(list, &rt.container_id, &result).await;
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// CHECKs the attachment against the cached result (CNI 0.4.0 and later, unless the
    /// list sets `disableCheck`).
    pub async fn check(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), CniError> {
        validate(list, rt)?;
        if list.version() < (0, 4, 0) || list.disable_check {
            return Ok(());
        }
        let entry = self
            .cache
            .get(&list.name, &rt.container_id, &rt.ifname)?
            .and_then(|e| e.result)
            .ok_or_else(|| CniError::NotAttached {
                network: list.name.clone(),
                container_id: rt.container_id.clone(),
                ifname: rt.ifname.clone(),
            })?;
        for plugin in &list.plugins {
            self.invoke(Command::Check, list, plugin, rt, Some(&entry))
                .await?;
        }
        Ok(())
    }

    /// The cached result of an attachment, if it completed.
    pub fn cached_result(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CniResult>, CniError> {
        let Some(raw) = self
            .cache
            .get(network, container_id, ifname)?
            .and_then(|e| e.result)
        else {
            return Ok(None);
        };
        serde_json::from_value(raw)
            .map(Some)
            .map_err(|e| CniError::CorruptCache {
                path: self.cache.path(network, container_id, ifname),
                reason: e.to_string(),
            })
    }

    async fn invoke(
        &self,
        cmd: Command,
        list: &NetworkConfigList,
        plugin: &PluginConfig,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, CniError> {
        let binary =
            self.find_plugin(&plugin.plugin_type)
                .ok_or_else(|| CniError::PluginNotFound {
                    network: list.name.clone(),
                    plugin: plugin.plugin_type.clone(),
                    dirs: self
                        .plugin_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
        if let Some(done) = self.in_process(cmd, list, plugin, rt, prev).await {
            return done;
        }
        let stdin = plugin_stdin(list, plugin, prev, &rt.capability_args);
        let cni_path = std::env::join_paths(&self.plugin_dirs)
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let args = rt
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let netns = rt
            .netns
            .as_deref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fail = |reason: String| CniError::PluginFailed {
            network: list.name.clone(),
            plugin: plugin.plugin_type.clone(),
            command: cmd.as_str(),
            reason,
        };
        let started = std::time::Instant::now();
        let mut child = tokio::process::Command::new(&binary)
            .env("CNI_COMMAND", cmd.as_str())
            .env("CNI_CONTAINERID", &rt.container_id)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", &rt.ifname)
            .env("CNI_ARGS", &args)
            .env("CNI_PATH", &cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("running {}: {e}", binary.display())))?;
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let run = async {
            // A plugin may exit without reading all of its input; its exit status tells.
            let _ = pipe.write_all(&stdin).await;
            drop(pipe);
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(fail(format!("waiting for {}: {e}", binary.display()))),
            Err(_) => {
                return Err(CniError::PluginTimeout {
                    network: list.name.clone(),
                    plugin: plugin.plugin_type.clone(),
                    command: cmd.as_str(),
                    timeout: self.timeout,
                })
            }
        };
        tracing::debug!(network = %list.name, plugin = %plugin.plugin_type, command = cmd.as_str(),
            id = %rt.container_id, elapsed = ?started.elapsed(), status = %output.status, "cni plugin");
        if !output.status.success() {
            if let Ok(err) = serde_json::from_slice::<Value>(&output.stdout) {
                if let Some(msg) = err.get("msg").and_then(Value::as_str) {
                    let code = err.get("code").and_then(Value::as_u64).unwrap_or(0);
                    let details = err
                        .get("details")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    return Err(CniError::Plugin {
                        network: list.name.clone(),
                        plugin: plugin.plugin_type.clone(),
                        command: cmd.as_str(),
                        code,
                        msg: msg.to_string(),
                        details: details.to_string(),
                    });
                }
            }
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            let text = [stderr.trim(), stdout.trim()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(fail(format!("{}: {text}", output.status)));
        }
        if cmd != Command::Add {
            return Ok(None);
        }
        if output.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&output.stdout)
            .map(Some)
            .map_err(|e| CniError::BadResult {
                network: list.name.clone(),
                plugin: plugin.plugin_type.clone(),
                reason: format!("result is not JSON: {e}"),
            })
    }
}

impl CniExec {
    /// What two plugins of every chain do, done without a process (each exec costs a few ms
    /// of a container start): `portmap` with no port mappings passes `prevResult` through
    /// and creates nothing (so its DEL and CHECK have nothing to do either), and `loopback`
    /// only sets `lo` up (down on DEL) and reports its addresses. `None`: run the plugin.
    async fn in_process(
        &self,
        cmd: Command,
        list: &NetworkConfigList,
        plugin: &PluginConfig,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Option<Result<Option<Value>, CniError>> {
        let started = std::time::Instant::now();
        let done = match plugin.plugin_type.as_str() {
            "portmap" if !has_port_mappings(plugin, &rt.capability_args) => match cmd {
                // as a first plugin (no prevResult) portmap fails: let it say so
                Command::Add => Ok(Some(prev?.clone())),
                Command::Del | Command::Check => Ok(None),
            },
            "loopback"
                if rt.ifname == "lo"
                    && cmd != Command::Check
                    && list.version() >= (0, 3, 0)
                    && plugin.config.keys().all(|k| k == "type") =>
            {
                let Some(netns) = rt.netns.clone() else {
                    // the namespace is gone, and lo with it
                    return Some(Ok(None));
                };
                let up = cmd == Command::Add;
                let set = tokio::task::spawn_blocking(move || loopback(&netns, up)).await;
                let fail = |reason: String| CniError::PluginFailed {
                    network: list.name.clone(),
                    plugin: plugin.plugin_type.clone(),
                    command: cmd.as_str(),
                    reason,
                };
                match set {
                    Ok(Ok(v6)) if up => Ok(Some(loopback_result(
                        &list.cni_version,
                        rt.netns.as_deref().expect("checked"),
                        v6,
                    ))),
                    Ok(Ok(_)) => Ok(None),
                    Ok(Err(e)) => Err(fail(e)),
                    Err(e) => Err(fail(e.to_string())),
                }
            }
            _ => return None,
        };
        tracing::debug!(network = %list.name, plugin = %plugin.plugin_type, command = cmd.as_str(),
            id = %rt.container_id, elapsed = ?started.elapsed(), "cni plugin (in rcd)");
        Some(done)
    }
}

/// Whether `plugin` gets port mappings: declared and passed, or in its own `runtimeConfig`.
fn has_port_mappings(plugin: &PluginConfig, capability_args: &Map<String, Value>) -> bool {
    let non_empty = |v: Option<&Value>| v.is_some_and(|v| !v.as_array().is_some_and(Vec::is_empty));
    (plugin.has_capability("portMappings") && non_empty(capability_args.get("portMappings")))
        || non_empty(
            plugin
                .config
                .get("runtimeConfig")
                .and_then(|r| r.get("portMappings")),
        )
}

/// Sets `lo` of the namespace at `netns` up or down, as the loopback plugin does; returns
/// whether `lo` has `::1` (IPv6 on in that namespace).
fn loopback(netns: &Path, up: bool) -> Result<bool, String> {
    let ns = super::netns::NetNs::open(netns).map_err(|e| e.to_string())?;
    ns.run(move || -> Result<bool, String> {
        // SAFETY: a socket we close below; SIOC[GS]IFFLAGS on an ifreq we own, named "lo".
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (d, c) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
                *d = *c as libc::c_char;
            }
            let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
            if r == 0 {
                let flags = ifr.ifr_ifru.ifru_flags;
                let iff_up = libc::IFF_UP as libc::c_short;
                ifr.ifr_ifru.ifru_flags = if up { flags | iff_up } else { flags & !iff_up };
                r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
            }
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if r != 0 {
                return Err(format!(
                    "setting lo {}: {err}",
                    if up { "up" } else { "down" }
                ));
            }
        }
        // this thread's namespace, not rcd's
        let v6 = std::fs::read_to_string("/proc/thread-self/net/if_inet6")
            .map(|t| {
                t.lines().any(|l| {
                    l.starts_with("00000000000000000000000000000001 ")
                        && l.split_whitespace().last() == Some("lo")
                })
            })
            .unwrap_or(false);
        Ok(v6)
    })
    .map_err(|e| e.to_string())?
}

/// The loopback plugin's ADD result.
fn loopback_result(cni_version: &str, netns: &Path, v6: bool) -> Value {
    let mut ips = vec![serde_json::json!({"interface": 0, "address": "127.0.0.1/8"})];
    if v6 {
        ips.push(serde_json::json!({"interface": 0, "address": "::1/128"}));
    }
    serde_json::json!({
        "cniVersion": cni_version,
        "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": netns}],
        "ips": ips,
        "dns": {},
    })
}

/// The stdin of one plugin: its own config plus the list's `name` and `cniVersion`, the
/// previous result, and the runtime config of the capabilities it declares.
pub(crate) fn plugin_stdin(
    list: &NetworkConfigList,
    plugin: &PluginConfig,
    prev: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Vec<u8> {
    let mut conf = plugin.config.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    match prev {
        Some(p) => {
            conf.insert("prevResult".into(), p.clone());
        }
        None => {
            conf.remove("prevResult");
        }
    }
    let runtime: Map<String, Value> = capability_args
        .iter()
        .filter(|(k, _)| plugin.has_capability(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !runtime.is_empty() {
        match conf.get_mut("runtimeConfig") {
            Some(Value::Object(existing)) => existing.extend(runtime),
            _ => {
                conf.insert("runtimeConfig".into(), Value::Object(runtime));
            }
        }
    }
    serde_json::to_vec(&conf).expect("a JSON object serializes")
}

/// libcni's rules: ids and network names `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, interface names as
/// the kernel takes them.
fn validate(list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), CniError> {
    let ok_id = |s: &str| {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    };
    let bad = |reason: String| Err(CniError::InvalidRequest { reason });
    if !ok_id(&rt.container_id) {
        return bad(format!(
            "invalid container id {:?}: letters, digits, '_', '.', '-' only, starting with a letter or digit",
            rt.container_id
        ));
    }
    if !ok_id(&list.name) {
        return bad(format!(
            "invalid network name {:?}: letters, digits, '_', '.', '-' only, starting with a letter or digit",
            list.name
        ));
    }
    let n = &rt.ifname;
    if n.is_empty()
        || n.len() > 15
        || n == "."
        || n == ".."
        || n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return bad(format!(
            "invalid interface name {n:?}: 1 to 15 characters, no '/', ':' or spaces"
        ));
    }
    for (k, v) in &rt.args {
        if k.is_empty() || k.contains(['=', ';']) || v.contains(';') {
            return bad(format!("invalid CNI_ARGS pair {k:?}={v:?}"));
        }
    }
    Ok(())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> NetworkConfigList {
        NetworkConfigList::from_conflist(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[
                {"type":"bridge","prevResult":{"stale":true}},
                {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false},
                 "runtimeConfig":{"other":1}}]}"#,
            None,
        )
        .unwrap()
    }

    #[test]
    fn stdin_gets_name_version_prev_result_and_declared_capabilities_only() {
        let l = list();
        let mut caps = Map::new();
        caps.insert(
            "portMappings".into(),
            serde_json::json!([{"hostPort": 8080}]),
        );
        caps.insert("bandwidth".into(), serde_json::json!({"ingressRate": 1}));
        let first: Value =
            serde_json::from_slice(&plugin_stdin(&l, &l.plugins[0], None, &caps)).unwrap();
        assert_eq!(first["name"], "n");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("prevResult").is_none());
        assert!(first.get("runtimeConfig").is_none());
        let prev = serde_json::json!({"ips": []});
        let second: Value =
            serde_json::from_slice(&plugin_stdin(&l, &l.plugins[1], Some(&prev), &caps)).unwrap();
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert_eq!(second["runtimeConfig"]["other"], 1);
        assert!(second["runtimeConfig"].get("bandwidth").is_none());
    }

    #[test]
    fn portmap_runs_only_with_port_mappings() {
        let l = list();
        let pm = &l.plugins[1];
        assert_eq!(pm.plugin_type, "portmap");
        let mut caps = Map::new();
        assert!(!has_port_mappings(pm, &caps));
        caps.insert("portMappings".into(), serde_json::json!([]));
        assert!(!has_port_mappings(pm, &caps));
        caps.insert(
            "portMappings".into(),
            serde_json::json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
        );
        assert!(has_port_mappings(pm, &caps));
        // not declared: the plugin would not get them
        assert!(!has_port_mappings(&l.plugins[0], &caps));
    }

    #[test]
    fn loopback_result_is_the_plugins() {
        let r = loopback_result("1.0.0", Path::new("/run/netns/x"), true);
        let parsed: CniResult = serde_json::from_value(r.clone()).unwrap();
        assert_eq!(parsed.sandbox_ips("lo").len(), 2, "{r}");
        assert_eq!(r["interfaces"][0]["sandbox"], "/run/netns/x");
        let r = loopback_result("0.4.0", Path::new("/x"), false);
        assert_eq!(r["ips"].as_array().unwrap().len(), 1);
        assert_eq!(r["ips"][0]["address"], "127.0.0.1/8");
        assert_eq!(r["cniVersion"], "0.4.0");
    }

    #[test]
    fn requests_are_validated() {
        let l = list();
        let rt = |id: &str, ifname: &str| RuntimeConf {
            container_id: id.into(),
            ifname: ifname.into(),
            ..Default::default()
        };
        validate(&l, &rt("abc-1.2_3", "eth0")).unwrap();
        for (id, ifname, want) in [
            ("", "eth0", "invalid container id"),
            ("../x", "eth0", "invalid container id"),
            ("a", "", "invalid interface name"),
            ("a", "a/b", "invalid interface name"),
            ("a", "sixteen-chars-xx", "invalid interface name"),
        ] {
            let err = validate(&l, &rt(id, ifname)).unwrap_err().to_string();
            assert!(err.contains(want), "{id} {ifname}: {err}");
        }
        let mut bad = rt("a", "eth0");
        bad.args.push(("K".into(), "a;b".into()));
        assert!(validate(&l, &bad)
            .unwrap_err()
            .to_string()
            .contains("invalid CNI_ARGS pair"));
    }
}
