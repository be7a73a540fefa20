//! The network half of a task's life: [`setup`] before the task is created (a pinned netns,
//! CNI ADD of lo and the network with its host ports, the container's hosts/resolv.conf/
//! hostname files, its peers' hosts files updated) and [`teardown`] after it is deleted (CNI
//! DEL from the results cache, so also after rcd was killed and restarted).

use super::create::{Mode, Port};
use super::{io_err, NetError, NetManager};
use crate::cni::{self, NetNs, RuntimeConf};
use crate::metadata::ContainerRecord;
use crate::server::containers::Runtime;
use rcd_proto::labels as L;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tonic::Status;

const IFNAME: &str = "eth0";

/// A task attached to a network, as kept in `<state>/networks/attach/<ns>/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    /// CNI's container id (`<ns>-<id>`).
    pub cni_id: String,
    pub netns: PathBuf,
    pub ip: String,
    pub hostname: String,
    /// Names peers resolve it by: its name, aliases and ids.
    pub names: Vec<String>,
    pub add_hosts: Vec<String>,
}

fn attach_path(mgr: &NetManager, ns: &str, id: &str) -> PathBuf {
    mgr.state_dir()
        .join("attach")
        .join(ns)
        .join(format!("{id}.json"))
}

fn files_dir(mgr: &NetManager, ns: &str, id: &str) -> PathBuf {
    mgr.state_dir().join("files").join(ns).join(id)
}

fn read_attachment(mgr: &NetManager, ns: &str, id: &str) -> Option<Attachment> {
    let b = std::fs::read(attach_path(mgr, ns, id)).ok()?;
    serde_json::from_slice(&b).ok()
}

/// The tasks of `ns` attached to `network`: container id -> attachment.
pub fn attached(mgr: &NetManager, ns: &str, network: &str) -> BTreeMap<String, Attachment> {
    let mut out = BTreeMap::new();
    let dir = mgr.state_dir().join("attach").join(ns);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        if let Some(a) = read_attachment(mgr, ns, id) {
            if a.network == network {
                out.insert(id.to_owned(), a);
            }
        }
    }
    out
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

pub(crate) fn net_status(e: NetError) -> Status {
    let msg = e.to_string();
    match e {
        NetError::Invalid(_) => Status::invalid_argument(msg),
        NetError::NotFound(_) => Status::not_found(msg),
        NetError::AlreadyExists(_) => Status::already_exists(msg),
        NetError::InUse(_) => Status::failed_precondition(msg),
        NetError::Io { .. } => Status::internal(msg),
        NetError::Cni(_) => Status::unavailable(msg),
    }
}

/// The hosts file of `me` among its peers.
fn hosts_file(me: &Attachment, peers: &[&Attachment]) -> String {
    let mut out = String::from(
        "# managed by rcd\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    let line = |a: &Attachment| {
        if a.ip.is_empty() {
            // not attached yet (its CNI ADD runs while its task is created)
            return String::new();
        }
        let mut names = vec![a.hostname.clone()];
        for n in &a.names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        format!("{}\t{}\n", a.ip, names.join(" "))
    };
    out += &line(me);
    for p in peers {
        out += &line(p);
    }
    for h in &me.add_hosts {
        if let Some((host, ip)) = h.split_once(':') {
            out += &format!("{ip}\t{host}\n");
        }
    }
    out
}

/// Rewrites a bind-mounted file in place: same inode, so the container sees the change.
fn rewrite(path: &Path, content: &str) -> Result<(), NetError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err("writing", path))?;
    f.write_all(content.as_bytes())
        .map_err(io_err("writing", path))
}

/// Rewrites the hosts file of every task on `network` of `ns`.
fn update_hosts(mgr: &NetManager, ns: &str, network: &str) {
    let all = attached(mgr, ns, network);
    for (id, me) in &all {
        let peers: Vec<&Attachment> = all
            .iter()
            .filter(|(other, _)| *other != id)
            .map(|(_, a)| a)
            .collect();
        let path = files_dir(mgr, ns, id).join("hosts");
        if let Err(e) = rewrite(&path, &hosts_file(me, &peers)) {
            tracing::warn!(namespace = %ns, id = %id, "updating the hosts file: {e}");
        }
    }
}

fn set_labels(rt: &Runtime, ns: &str, id: &str, set: Vec<(&'static str, Option<String>)>) {
    let r =
        rt.d.md
            .write(|tx| -> Result<(), crate::metadata::MetadataError> {
                if let Some(mut c) = tx.container(ns, id)? {
                    for (k, v) in set {
                        match v {
                            Some(v) => c.labels.insert(k.to_owned(), v),
                            None => c.labels.remove(k),
                        };
                    }
                    c.updated = chrono::Utc::now();
                    tx.update_container(ns, &c)?;
                }
                Ok(())
            });
    if let Err(e) = r {
        tracing::warn!(namespace = %ns, id, "recording the network labels: {e}");
    }
}

/// The container of `ns` a `container:NAME` names: its `rcd.io/name`, id or unique id prefix.
pub(crate) fn find_container(
    md: &crate::metadata::Metadata,
    ns: &str,
    name: &str,
) -> Option<ContainerRecord> {
    let all = md.containers(ns).ok()?;
    if let Some(c) = all.iter().find(|c| c.id == name) {
        return Some(c.clone());
    }
    if let Some(c) = all
        .iter()
        .find(|c| c.labels.get(L::NAME).is_some_and(|n| n == name))
    {
        return Some(c.clone());
    }
    let hits: Vec<_> = all.iter().filter(|c| c.id.starts_with(name)).collect();
    (hits.len() == 1).then(|| hits[0].clone())
}

fn set_netns(spec: &mut Value, path: &Path) {
    let nss = spec["linux"]["namespaces"].as_array_mut();
    if let Some(nss) = nss {
        for n in nss.iter_mut() {
            if n["type"] == "network" {
                n["path"] = json!(path);
                return;
            }
        }
        nss.push(json!({"type": "network", "path": path}));
    }
}

fn add_file_mounts(spec: &mut Value, dir: &Path) {
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        for f in ["hosts", "resolv.conf", "hostname"] {
            let dst = format!("/etc/{f}");
            mounts.retain(|m| m["destination"] != dst.as_str());
            mounts.push(json!({
                "destination": dst,
                "type": "bind",
                "source": dir.join(f),
                "options": ["rbind", "rprivate", "rw"],
            }));
        }
    }
}

/// Picks a free host port for each mapping asking for port 0.
fn resolve_ports(ports: &mut [Port]) -> Result<(), Status> {
    for p in ports.iter_mut().filter(|p| p.host_port == 0) {
        let ip = if p.host_ip.is_empty() {
            "0.0.0.0"
        } else {
            &p.host_ip
        };
        let port = if p.protocol == "udp" {
            std::net::UdpSocket::bind((ip, 0)).and_then(|s| s.local_addr())
        } else {
            std::net::TcpListener::bind((ip, 0)).and_then(|s| s.local_addr())
        }
        .map_err(|e| Status::unavailable(format!("finding a free host port on {ip}: {e}")))?
        .port();
        p.host_port = port;
    }
    Ok(())
}

/// The network half that [`setup`] leaves to run while the task is created: the CNI ADDs and
/// what needs their result (the address in the hosts files, the peers' hosts files, the ip
/// label). The task may be created meanwhile (it joins the pinned netns by path and its files
/// are bind-mounted by inode), but it must not start before [`Pending::finish`] succeeded.
pub(crate) struct Pending<'a> {
    _lock: tokio::sync::MutexGuard<'a, ()>,
    ns: String,
    id: String,
    network: String,
    list: cni::NetworkConfigList,
    lo: RuntimeConf,
    eth: RuntimeConf,
    ports: Vec<Port>,
    attachment: Attachment,
}

/// Before the task of `c` is created: its network, per its `rcd.io/network` label. Returns
/// the spec to create the task with and, on a CNI network, the ADDs to finish meanwhile.
pub(crate) async fn setup<'a>(
    rt: &'a Runtime,
    ns: &str,
    c: &ContainerRecord,
) -> Result<(Value, Option<Pending<'a>>), Status> {
    let mut spec = c.spec.clone();
    let mode = Mode::parse(c.labels.get(L::NETWORK).map(String::as_str).unwrap_or(""));
    let mgr = &rt.net;
    match mode {
        Mode::None | Mode::Host => Ok((spec, None)),
        Mode::Container(name) => {
            let target = find_container(&rt.d.md, ns, &name).ok_or_else(|| {
                Status::not_found(format!(
                    "network \"container:{name}\": no container {name:?} in namespace {ns:?}"
                ))
            })?;
            let task = rt
                .tasks
                .list(Some(ns))
                .into_iter()
                .find(|t| t.id == target.id && t.exit.is_none() && !t.shim_dead && t.pid > 0)
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "network \"container:{name}\": container {:?} is not running: start it first",
                        target.id
                    ))
                })?;
            match read_attachment(mgr, ns, &target.id) {
                Some(a) => {
                    set_netns(&mut spec, &a.netns);
                    add_file_mounts(&mut spec, &files_dir(mgr, ns, &target.id));
                }
                None => set_netns(
                    &mut spec,
                    &PathBuf::from(format!("/proc/{}/ns/net", task.pid)),
                ),
            }
            Ok((spec, None))
        }
        Mode::Network(network) => {
            let lock = mgr.lock.lock().await;
            let net = mgr.get(ns, &network).map_err(net_status)?;
            if read_attachment(mgr, ns, &c.id).is_some()
                || mgr.state_dir().join("netns").join(ns).join(&c.id).exists()
            {
                // a task deleted while rcd was down left its attachment
                detach(rt, ns, &c.id).await;
            }
            let list = net.config().map_err(net_status)?;
            let cni_id = format!("{ns}-{}", c.id);
            let requested = c
                .labels
                .get(super::labels::PORTS_REQUESTED)
                .or_else(|| c.labels.get(L::PORTS));
            let mut ports: Vec<Port> = requested
                .and_then(|p| serde_json::from_str(p).ok())
                .unwrap_or_default();
            resolve_ports(&mut ports)?;
            let netns_dir = mgr.state_dir().join("netns").join(ns);
            let id = c.id.clone();
            let netns = tokio::task::spawn_blocking(move || NetNs::create(&netns_dir, &id))
                .await
                .map_err(internal)?
                .map_err(internal)?;
            let netns_path = netns.path().to_path_buf();
            let lo = RuntimeConf {
                container_id: cni_id.clone(),
                netns: Some(netns_path.clone()),
                ifname: "lo".into(),
                args: vec![("IgnoreUnknown".into(), "1".into())],
                capability_args: Map::new(),
            };
            let mut caps = Map::new();
            if !ports.is_empty() {
                let pm: Vec<cni::PortMapping> = ports
                    .iter()
                    .map(|p| cni::PortMapping {
                        host_port: p.host_port,
                        container_port: p.container_port,
                        protocol: p.protocol.clone(),
                        host_ip: p.host_ip.clone(),
                    })
                    .collect();
                caps.insert("portMappings".into(), json!(pm));
            }
            let eth = RuntimeConf {
                ifname: IFNAME.into(),
                capability_args: caps,
                ..lo.clone()
            };
            let hostname = spec["hostname"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| c.id.chars().take(12).collect());
            let mut names = Vec::new();
            if let Some(n) = c.labels.get(L::NAME) {
                names.push(n.clone());
            }
            if let Some(a) = c.labels.get(L::ALIASES) {
                names.extend(a.split(',').filter(|s| !s.is_empty()).map(String::from));
            }
            names.push(c.id.chars().take(12).collect());
            names.push(c.id.clone());
            let attachment = Attachment {
                network: net.name.clone(),
                cni_id,
                netns: netns_path.clone(),
                ip: String::new(),
                hostname,
                names,
                add_hosts: c
                    .labels
                    .get(super::labels::ADD_HOSTS)
                    .and_then(|h| serde_json::from_str(h).ok())
                    .unwrap_or_default(),
            };
            // the files exist before the task is created (runr bind-mounts them); the hosts
            // file gets the address in place once the ADD gave it
            let files = files_dir(mgr, ns, &c.id);
            if let Err(e) = write_files(&attachment, c, &files) {
                let _ = cni::netns::remove(&netns_path);
                let _ = std::fs::remove_dir_all(&files);
                return Err(internal(e));
            }
            set_netns(&mut spec, &netns_path);
            add_file_mounts(&mut spec, &files);
            Ok((
                spec,
                Some(Pending {
                    _lock: lock,
                    ns: ns.to_owned(),
                    id: c.id.clone(),
                    network: network.clone(),
                    list,
                    lo,
                    eth,
                    ports,
                    attachment,
                }),
            ))
        }
    }
}

impl Pending<'_> {
    /// The CNI ADDs (lo, then the network) and what needs their result. On failure every
    /// ADD made is deleted and the netns and files go: nothing of the attachment is left.
    pub(crate) async fn finish(self, rt: &Runtime) -> Result<(), Status> {
        let mgr = &rt.net;
        let Pending {
            ns,
            id,
            network,
            list,
            lo,
            eth,
            ports,
            mut attachment,
            ..
        } = self;
        let added = async {
            mgr.exec.add(&cni::config::loopback_network(), &lo).await?;
            mgr.exec.add(&list, &eth).await
        }
        .await;
        let result = match added {
            Ok(r) => r,
            Err(e) => {
                undo_attach(mgr, &ns, &id, &attachment).await;
                return Err(Status::unavailable(format!(
                    "attaching container {id:?} to network {network:?}: {e}"
                )));
            }
        };
        attachment.ip = result
            .sandbox_ips(IFNAME)
            .into_iter()
            .find(IpAddr::is_ipv4)
            .map(|i| i.to_string())
            .unwrap_or_default();
        let files = files_dir(mgr, &ns, &id);
        let written = rewrite(&files.join("hosts"), &hosts_file(&attachment, &[]))
            .and_then(|()| write_attachment(mgr, &ns, &id, &attachment));
        if let Err(e) = written {
            undo_attach(mgr, &ns, &id, &attachment).await;
            return Err(internal(e));
        }
        update_hosts(mgr, &ns, &attachment.network);
        let mut set = vec![(L::IP, Some(attachment.ip.clone()))];
        if !ports.is_empty() {
            set.push((L::PORTS, Some(serde_json::to_string(&ports).expect("json"))));
        }
        set_labels(rt, &ns, &id, set);
        tracing::info!(namespace = %ns, id = %id, network = %attachment.network, ip = %attachment.ip, "attached");
        Ok(())
    }
}

/// Undoes a [`Pending`] whose ADD or records failed: every cached ADD deleted, the netns, the
/// attachment record and the files removed.
async fn undo_attach(mgr: &NetManager, ns: &str, id: &str, a: &Attachment) {
    del_all(mgr, &a.cni_id, Some(&a.netns)).await;
    let _ = cni::netns::remove(&a.netns);
    let _ = std::fs::remove_file(attach_path(mgr, ns, id));
    let _ = std::fs::remove_dir_all(files_dir(mgr, ns, id));
}

/// The container's resolv.conf, hostname and (address-less until its ADD) hosts files.
fn write_files(a: &Attachment, c: &ContainerRecord, files: &Path) -> Result<(), NetError> {
    std::fs::create_dir_all(files).map_err(io_err("creating", files))?;
    let dns = c
        .labels
        .get(super::labels::DNS)
        .map(|d| cni::dns::DnsConfig {
            servers: d.split(',').map(String::from).collect(),
            ..Default::default()
        });
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolv =
        cni::dns::resolv_conf(dns.as_ref(), &host).map_err(|e| NetError::Invalid(e.to_string()))?;
    rewrite(&files.join("resolv.conf"), &resolv)?;
    rewrite(&files.join("hostname"), &format!("{}\n", a.hostname))?;
    rewrite(&files.join("hosts"), &hosts_file(a, &[]))
}

/// Records the attachment (what teardown and the peers' hosts files read).
fn write_attachment(mgr: &NetManager, ns: &str, id: &str, a: &Attachment) -> Result<(), NetError> {
    let path = attach_path(mgr, ns, id);
    let dir = path.parent().expect("has a parent");
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(a).expect("json")).map_err(io_err("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp))
}

/// CNI DEL of everything cached for `cni_id` (the network, then lo).
async fn del_all(mgr: &NetManager, cni_id: &str, netns: Option<&Path>) {
    let netns = netns.filter(|p| cni::netns::is_netns(p));
    let mut entries = match mgr.exec.cache.entries_of(cni_id) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(cni_id, "reading the cni cache: {e}");
            return;
        }
    };
    // lo last
    entries.sort_by_key(|e| e.if_name == "lo");
    for e in &entries {
        if let Err(err) = mgr.exec.del_cached(e, netns).await {
            tracing::warn!(cni_id, network = %e.network_name, "cni del: {err}");
        }
    }
}

async fn detach(rt: &Runtime, ns: &str, id: &str) {
    let mgr = &rt.net;
    let a = read_attachment(mgr, ns, id);
    let cni_id = format!("{ns}-{id}");
    let netns = mgr.state_dir().join("netns").join(ns).join(id);
    del_all(mgr, &cni_id, Some(&netns)).await;
    if let Err(e) = cni::netns::remove(&netns) {
        tracing::warn!(namespace = %ns, id, "removing the netns: {e}");
    }
    let _ = std::fs::remove_file(attach_path(mgr, ns, id));
    let _ = std::fs::remove_dir_all(files_dir(mgr, ns, id));
    if let Some(a) = a {
        update_hosts(mgr, ns, &a.network);
        tracing::info!(namespace = %ns, id, network = %a.network, "detached");
    }
}

/// After the task of `id` is deleted: undoes [`setup`] (idempotent).
pub(crate) async fn teardown(rt: &Runtime, ns: &str, id: &str) {
    let mgr = &rt.net;
    let netns = mgr.state_dir().join("netns").join(ns).join(id);
    if read_attachment(mgr, ns, id).is_none()
        && !netns.exists()
        && mgr
            .exec
            .cache
            .entries_of(&format!("{ns}-{id}"))
            .map(|e| e.is_empty())
            .unwrap_or(true)
    {
        return;
    }
    let _g = mgr.lock.lock().await;
    detach(rt, ns, id).await;
    let requested =
        rt.d.md
            .container(ns, id)
            .ok()
            .flatten()
            .and_then(|c| c.labels.get(super::labels::PORTS_REQUESTED).cloned());
    let mut set = vec![(L::IP, None)];
    if let Some(r) = requested {
        set.push((L::PORTS, Some(r)));
    }
    set_labels(rt, ns, id, set);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_files_name_peers() {
        let a = Attachment {
            network: "n".into(),
            cni_id: "x".into(),
            netns: "/x".into(),
            ip: "10.4.0.2".into(),
            hostname: "web".into(),
            names: vec!["web".into(), "www".into(), "abc".into()],
            add_hosts: vec!["db.local:10.9.9.9".into()],
        };
        let b = Attachment {
            ip: "10.4.0.3".into(),
            hostname: "b1".into(),
            names: vec!["client".into()],
            add_hosts: vec![],
            ..a.clone()
        };
        let h = hosts_file(&a, &[&b]);
        assert!(h.contains("127.0.0.1\tlocalhost\n"), "{h}");
        assert!(h.contains("10.4.0.2\tweb www abc\n"), "{h}");
        assert!(h.contains("10.4.0.3\tb1 client\n"), "{h}");
        assert!(h.ends_with("10.9.9.9\tdb.local\n"), "{h}");
    }

    #[test]
    fn rewrite_keeps_the_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        rewrite(&p, "a long first content\n").unwrap();
        let ino = std::fs::metadata(&p).unwrap().ino();
        rewrite(&p, "b\n").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b\n");
    }
}
