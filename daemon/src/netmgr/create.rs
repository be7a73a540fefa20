//! Containers.Create's part for rnerd's options: `network`, `ports`, `network_aliases`,
//! `volumes`, `add_hosts` and `dns` checked and turned into `rcd.io/...` labels, the spec's
//! bind mounts and its network namespace mode. The network itself is attached per task
//! ([`super::task`]).

use super::volumes::VolumeMount;
use super::{NetError, NetManager};
use crate::metadata::Labels;
use crate::spec::{MountRequest, MountSource, NamespaceMode, Propagation};
use rcd_proto::labels as L;
use rcd_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A network mode as given in `ContainerOptions.network` (and label `rcd.io/network`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// "" or "none": a private namespace with only lo.
    None,
    Host,
    /// `container:NAME`
    Container(String),
    /// A CNI network by name.
    Network(String),
}

impl Mode {
    pub fn parse(s: &str) -> Mode {
        match s {
            "" | "none" => Mode::None,
            "host" => Mode::Host,
            s => match s.strip_prefix("container:") {
                Some(c) => Mode::Container(c.to_owned()),
                None => Mode::Network(s.to_owned()),
            },
        }
    }
}

/// One `rcd.io/ports` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    #[serde(default)]
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

/// What Create adds to the spec request.
#[derive(Debug, Default)]
pub struct Translated {
    pub mounts: Vec<MountRequest>,
    pub host_network: bool,
    /// Anonymous volumes made for this create: removed again if it fails.
    pub anonymous: Vec<String>,
}

fn invalid(s: String) -> NetError {
    NetError::Invalid(s)
}

fn check_port(p: &pb::PortMapping) -> Result<Port, NetError> {
    let shown = format!(
        "{}{}:{}/{}",
        if p.host_ip.is_empty() {
            String::new()
        } else {
            format!("{}:", p.host_ip)
        },
        p.host_port,
        p.container_port,
        if p.protocol.is_empty() {
            "tcp"
        } else {
            &p.protocol
        }
    );
    let bad = |why: &str| invalid(format!("invalid port mapping {shown:?}: {why}"));
    if p.container_port == 0 || p.container_port > 65535 {
        return Err(bad("the container port must be 1 to 65535"));
    }
    if p.host_port > 65535 {
        return Err(bad("the host port must be 0 (any) to 65535"));
    }
    let protocol = match p.protocol.to_ascii_lowercase().as_str() {
        "" | "tcp" => "tcp",
        "udp" => "udp",
        _ => return Err(bad("the protocol must be tcp or udp")),
    };
    if !p.host_ip.is_empty() && p.host_ip.parse::<IpAddr>().is_err() {
        return Err(bad("the host IP is not an IP address"));
    }
    Ok(Port {
        host_ip: p.host_ip.clone(),
        host_port: p.host_port as u16,
        container_port: p.container_port as u16,
        protocol: protocol.into(),
    })
}

/// docker's `-v`: `SRC:DST[:ro|rw]` (SRC a host path or a volume name) or `DST`.
pub fn parse_volume(s: &str) -> Result<VolumeMount, NetError> {
    let bad = |why: &str| invalid(format!("invalid volume {s:?}: {why}"));
    let parts: Vec<&str> = s.split(':').collect();
    let (source, dst, opts) = match parts.as_slice() {
        [dst] => ("", *dst, ""),
        [src, dst] => (*src, *dst, ""),
        [src, dst, opts] => (*src, *dst, *opts),
        _ => return Err(bad("expected SOURCE:DESTINATION[:ro|rw] or DESTINATION")),
    };
    if !dst.starts_with('/') {
        return Err(bad("the destination must be an absolute path"));
    }
    if dst == "/" {
        return Err(bad("the destination cannot be /"));
    }
    let mut readonly = false;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => readonly = true,
            "rw" => readonly = false,
            o => return Err(bad(&format!("unknown option {o:?} (ro or rw)"))),
        }
    }
    let kind = if parts.len() == 1 {
        "anonymous"
    } else if source.starts_with('/') {
        "bind"
    } else if source.is_empty() {
        return Err(bad("empty source"));
    } else {
        super::check_name("volume", source).map_err(|e| bad(&e.to_string()))?;
        "volume"
    };
    Ok(VolumeMount {
        source: source.to_owned(),
        destination: dst.to_owned(),
        readonly,
        kind: kind.into(),
    })
}

/// Checks rnerd's options and writes their labels; makes named volumes that are absent,
/// anonymous volumes and missing host directories. `container_exists` says whether a
/// `container:NAME` target exists.
pub fn translate(
    mgr: &NetManager,
    ns: &str,
    o: &pb::ContainerOptions,
    labels: &mut Labels,
    container_exists: impl Fn(&str) -> bool,
) -> Result<Translated, NetError> {
    let mut out = Translated::default();
    let mode = if o.net_host {
        Mode::Host
    } else {
        Mode::parse(&o.network)
    };
    match &mode {
        Mode::None => {}
        Mode::Host => out.host_network = true,
        Mode::Container(c) => {
            if c.is_empty() || !container_exists(c) {
                return Err(NetError::NotFound(format!(
                    "network \"container:{c}\": no container {c:?} in namespace {ns:?}"
                )));
            }
        }
        Mode::Network(n) => {
            mgr.get(ns, n)?;
        }
    }
    let cni = matches!(mode, Mode::Network(_));
    if !o.network.is_empty() && !o.net_host {
        labels.insert(L::NETWORK.into(), o.network.clone());
    }
    if !o.ports.is_empty() {
        if !cni {
            return Err(invalid(format!(
                "publishing ports needs a network (network {:?} has no host ports of its own)",
                o.network
            )));
        }
        let ports = o
            .ports
            .iter()
            .map(check_port)
            .collect::<Result<Vec<_>, _>>()?;
        let json = serde_json::to_string(&ports).expect("serialisable");
        labels.insert(L::PORTS.into(), json.clone());
        labels.insert(super::labels::PORTS_REQUESTED.into(), json);
    }
    if !o.network_aliases.is_empty() {
        if !cni {
            return Err(invalid(format!(
                "network aliases need a network, not {:?}",
                o.network
            )));
        }
        for a in &o.network_aliases {
            crate::cni::dns::check_hostname(a)
                .map_err(|_| invalid(format!("invalid network alias {a:?}: not a host name")))?;
        }
        labels.insert(L::ALIASES.into(), o.network_aliases.join(","));
    }
    if !o.add_hosts.is_empty() {
        let mut entries = Vec::new();
        for h in &o.add_hosts {
            let bad = || invalid(format!("invalid host entry {h:?}: expected HOST:IP"));
            let (host, ip) = h.split_once(':').ok_or_else(bad)?;
            if crate::cni::dns::check_hostname(host).is_err() || ip.parse::<IpAddr>().is_err() {
                return Err(bad());
            }
            entries.push(h.clone());
        }
        labels.insert(
            super::labels::ADD_HOSTS.into(),
            serde_json::to_string(&entries).expect("serialisable"),
        );
    }
    if !o.dns.is_empty() {
        for d in &o.dns {
            if d.parse::<IpAddr>().is_err() {
                return Err(invalid(format!(
                    "invalid dns server {d:?}: not an IP address"
                )));
            }
        }
        labels.insert(super::labels::DNS.into(), o.dns.join(","));
    }
    let mut vols = Vec::new();
    let made = (|| {
        for v in &o.volumes {
            let mut m = parse_volume(v)?;
            let source = match m.kind.as_str() {
                "bind" => {
                    let p = std::path::PathBuf::from(&m.source);
                    if !p.exists() {
                        std::fs::create_dir_all(&p).map_err(super::io_err("creating", &p))?;
                    }
                    p
                }
                "volume" => {
                    mgr.volumes
                        .create(ns, &m.source, Default::default())?
                        .mountpoint
                }
                _ => {
                    let vol = mgr.volumes.create(ns, "", Default::default())?;
                    out.anonymous.push(vol.name.clone());
                    m.source = vol.name;
                    vol.mountpoint
                }
            };
            out.mounts.push(MountRequest {
                destination: m.destination.clone(),
                source: MountSource::Bind {
                    source,
                    propagation: Propagation::default(),
                },
                readonly: m.readonly,
                options: Vec::new(),
            });
            vols.push(m);
        }
        Ok::<_, NetError>(())
    })();
    if let Err(e) = made {
        undo(mgr, ns, &out);
        return Err(e);
    }
    if !vols.is_empty() {
        labels.insert(
            L::VOLUMES.into(),
            serde_json::to_string(&vols).expect("serialisable"),
        );
    }
    Ok(out)
}

/// Removes what [`translate`] made for a create that failed afterwards.
pub fn undo(mgr: &NetManager, ns: &str, t: &Translated) {
    for v in &t.anonymous {
        if let Err(e) = mgr.volumes.remove(ns, v) {
            tracing::warn!(namespace = %ns, volume = %v, "removing the anonymous volume of a failed create: {e}");
        }
    }
}

/// The spec request's network namespace for a mode.
pub fn namespace_mode(t: &Translated) -> Option<NamespaceMode> {
    t.host_network.then_some(NamespaceMode::Host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse() {
        let v = parse_volume("/h:/c:ro").unwrap();
        assert_eq!((v.kind.as_str(), v.readonly), ("bind", true));
        let v = parse_volume("data:/c").unwrap();
        assert_eq!((v.kind.as_str(), v.source.as_str()), ("volume", "data"));
        let v = parse_volume("/c").unwrap();
        assert_eq!(v.kind, "anonymous");
        for (bad, why) in [
            ("c", "absolute"),
            ("/h:c", "absolute"),
            ("/h:/c:xx", "unknown option"),
            ("a:b:c:d", "expected"),
            ("../x:/c", "invalid volume name"),
            (":/c", "empty source"),
            ("/h:/", "cannot be /"),
        ] {
            let e = parse_volume(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid volume {bad:?}")), "{e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn ports_are_checked() {
        let p = |h, c, proto: &str, ip: &str| pb::PortMapping {
            host_port: h,
            container_port: c,
            protocol: proto.into(),
            host_ip: ip.into(),
        };
        assert_eq!(check_port(&p(0, 80, "", "")).unwrap().protocol, "tcp");
        assert_eq!(
            check_port(&p(53, 53, "UDP", "127.0.0.1")).unwrap().protocol,
            "udp"
        );
        for (bad, why) in [
            (p(80, 0, "", ""), "\"80:0/tcp\""),
            (p(70000, 80, "", ""), "host port"),
            (p(80, 80, "sctp", ""), "tcp or udp"),
            (p(80, 80, "", "nope"), "\"nope:80:80/tcp\""),
        ] {
            let e = check_port(&bad).unwrap_err().to_string();
            assert!(
                e.starts_with("invalid port mapping") && e.contains(why),
                "{e}"
            );
        }
    }

    #[test]
    fn modes() {
        assert_eq!(Mode::parse(""), Mode::None);
        assert_eq!(Mode::parse("none"), Mode::None);
        assert_eq!(Mode::parse("host"), Mode::Host);
        assert_eq!(Mode::parse("container:web"), Mode::Container("web".into()));
        assert_eq!(Mode::parse("front"), Mode::Network("front".into()));
    }
}
