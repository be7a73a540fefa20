//! A pod's `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname`, written once per pod into its
//! state directory and bind-mounted into each of its containers.
//!
//! resolv.conf comes from CRI's `DNSConfig` when it says anything (kubelet has already merged
//! cluster DNS and the host's config into it), else from the host's resolv.conf without the
//! loopback nameservers, which mean nothing inside a pod's own network namespace (Docker and
//! kubelet drop them too); if none is left, Docker's fallback public servers are used.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Used when the host's resolv.conf has only loopback nameservers (Docker's defaults).
pub const FALLBACK_NAMESERVERS: &[&str] = &["8.8.8.8", "8.8.4.4"];
/// glibc reads at most 6 search domains before 2.26, 32 on current kubelets' validation.
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;

/// CRI's `DNSConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl DnsConfig {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.searches.is_empty() && self.options.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid dns {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid hostname {0:?}: 1 to 64 letters, digits, '-' and '.', not starting or ending with '-' or '.'")]
    Hostname(String),
    #[error("reading the host's {path}: {source}")]
    ReadHost {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The content of a pod's resolv.conf.
pub fn resolv_conf(dns: Option<&DnsConfig>, host_resolv: &str) -> Result<String, DnsError> {
    match dns.filter(|d| !d.is_empty()) {
        Some(d) => from_config(d),
        None => Ok(from_host(host_resolv)),
    }
}

fn from_config(d: &DnsConfig) -> Result<String, DnsError> {
    let invalid = |what, value: &str, reason: &str| DnsError::Invalid {
        what,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    for s in &d.servers {
        if s.parse::<IpAddr>().is_err() {
            return Err(invalid("server", s, "not an IP address"));
        }
    }
    if d.searches.len() > MAX_SEARCHES {
        return Err(invalid(
            "searches",
            &d.searches.join(" "),
            &format!("more than {MAX_SEARCHES} domains"),
        ));
    }
    if d.searches.join(" ").len() > MAX_SEARCH_CHARS {
        return Err(invalid(
            "searches",
            &d.searches.join(" "),
            &format!("longer than {MAX_SEARCH_CHARS} characters"),
        ));
    }
    for s in &d.searches {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '#' || c == ';') {
            return Err(invalid(
                "search",
                s,
                "empty or has spaces or comment characters",
            ));
        }
    }
    for o in &d.options {
        if o.is_empty() || o.chars().any(|c| c.is_whitespace() || c == '#' || c == ';') {
            return Err(invalid(
                "option",
                o,
                "empty or has spaces or comment characters",
            ));
        }
    }
    let mut out = String::new();
    if !d.searches.is_empty() {
        out += &format!("search {}\n", d.searches.join(" "));
    }
    for s in &d.servers {
        out += &format!("nameserver {s}\n");
    }
    if !d.options.is_empty() {
        out += &format!("options {}\n", d.options.join(" "));
    }
    Ok(out)
}

fn from_host(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            // `nameserver 127.0.0.53` (systemd-resolved), `::1`, `127.0.0.1%lo`...
            let addr = words.next().unwrap_or("");
            let addr = addr.split('%').next().unwrap_or("");
            match addr.parse::<IpAddr>() {
                Ok(ip) if ip.is_loopback() => continue,
                Ok(_) => servers += 1,
                Err(_) => continue,
            }
        }
        out += line;
        out.push('\n');
    }
    if servers == 0 {
        for s in FALLBACK_NAMESERVERS {
            out += &format!("nameserver {s}\n");
        }
    }
    out
}

/// kubelet's managed hosts file: localhost entries and the pod's IPs under its hostname.
pub fn hosts_file(hostname: &str, ips: &[IpAddr]) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file (written by rcd).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    for ip in ips {
        out += &format!("{ip}\t{hostname}\n");
    }
    out
}

/// Checks a hostname as the kernel and resolvers take it.
pub fn check_hostname(h: &str) -> Result<(), DnsError> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !h.starts_with(['-', '.'])
        && !h.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(DnsError::Hostname(h.to_string()))
    }
}

/// What a pod's files are made from.
#[derive(Debug, Clone, Default)]
pub struct PodFilesRequest {
    pub hostname: String,
    pub ips: Vec<IpAddr>,
    pub dns: Option<DnsConfig>,
    /// The host's resolv.conf, read when `dns` says nothing (default `/etc/resolv.conf`).
    pub host_resolv_conf: Option<PathBuf>,
}

/// Where a pod's files were written, to bind-mount onto `/etc/...` of each container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFiles {
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
    pub hostname: PathBuf,
}

/// Writes `resolv.conf`, `hosts` and `hostname` into `dir` (created if needed), each
/// replaced atomically, mode 0644. Everything is checked before anything is written.
pub fn write_pod_files(dir: &Path, req: &PodFilesRequest) -> Result<PodFiles, DnsError> {
    check_hostname(&req.hostname)?;
    let host_path = req
        .host_resolv_conf
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"));
    let resolv = match req.dns.as_ref().filter(|d| !d.is_empty()) {
        Some(d) => from_config(d)?,
        None => {
            let host = match std::fs::read_to_string(&host_path) {
                Ok(s) => s,
                // a host without resolv.conf resolves through the fallback servers
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(source) => {
                    return Err(DnsError::ReadHost {
                        path: host_path,
                        source,
                    })
                }
            };
            from_host(&host)
        }
    };
    let files = PodFiles {
        resolv_conf: dir.join("resolv.conf"),
        hosts: dir.join("hosts"),
        hostname: dir.join("hostname"),
    };
    std::fs::create_dir_all(dir).map_err(|source| DnsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write(&files.resolv_conf, &resolv)?;
    write(&files.hosts, &hosts_file(&req.hostname, &req.ips))?;
    write(&files.hostname, &format!("{}\n", req.hostname))?;
    Ok(files)
}

fn write(path: &Path, content: &str) -> Result<(), DnsError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    let run = || -> std::io::Result<()> {
        std::fs::write(&tmp, content)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, path)
    };
    run().map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        DnsError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(servers: &[&str], searches: &[&str], options: &[&str]) -> DnsConfig {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        DnsConfig {
            servers: v(servers),
            searches: v(searches),
            options: v(options),
        }
    }

    #[test]
    fn resolv_conf_from_cri_config() {
        let c = cfg(
            &["10.96.0.10", "fd00::a"],
            &["default.svc.cluster.local", "svc.cluster.local"],
            &["ndots:5", "edns0"],
        );
        assert_eq!(
            resolv_conf(Some(&c), "nameserver 1.1.1.1\n").unwrap(),
            "search default.svc.cluster.local svc.cluster.local\n\
             nameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5 edns0\n"
        );
        // servers given as-is, even loopback: kubelet decided
        assert_eq!(
            resolv_conf(Some(&cfg(&["127.0.0.1"], &[], &[])), "").unwrap(),
            "nameserver 127.0.0.1\n"
        );
    }

    #[test]
    fn empty_cri_config_means_the_hosts_without_loopback() {
        let host = "# generated\nsearch example.com\nnameserver 127.0.0.53\nnameserver ::1\n\
                    nameserver 10.255.255.53\nnameserver 127.0.0.1%lo\noptions edns0 trust-ad\n";
        let want =
            "# generated\nsearch example.com\nnameserver 10.255.255.53\noptions edns0 trust-ad\n";
        assert_eq!(resolv_conf(None, host).unwrap(), want);
        assert_eq!(
            resolv_conf(Some(&DnsConfig::default()), host).unwrap(),
            want
        );
    }

    #[test]
    fn only_loopback_nameservers_fall_back_to_public_ones() {
        assert_eq!(
            resolv_conf(None, "nameserver 127.0.0.53\noptions edns0\n").unwrap(),
            "options edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
        assert_eq!(
            resolv_conf(None, "").unwrap(),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
    }

    #[test]
    fn bad_cri_config_is_refused() {
        for (c, want) in [
            (
                cfg(&["dns.example"], &[], &[]),
                "invalid dns server \"dns.example\"",
            ),
            (cfg(&[], &["a b"], &[]), "invalid dns search \"a b\""),
            (cfg(&[], &[], &["nd ots"]), "invalid dns option"),
            (cfg(&[], &["x"; 33], &[]), "more than 32 domains"),
        ] {
            let err = resolv_conf(Some(&c), "").unwrap_err().to_string();
            assert!(err.contains(want), "{c:?}: {err}");
        }
    }

    #[test]
    fn hosts_and_hostname() {
        let ips = ["10.99.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let h = hosts_file("web-0", &ips);
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.99.0.5\tweb-0\nfd00::5\tweb-0\n"), "{h}");
        check_hostname("web-0.example").unwrap();
        for bad in ["", "-a", "a.", "a b", &"x".repeat(65)] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pod_files_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host-resolv.conf");
        std::fs::write(&host, "nameserver 127.0.0.1\nnameserver 192.0.2.1\n").unwrap();
        let files = write_pod_files(
            &dir.path().join("pod"),
            &PodFilesRequest {
                hostname: "p1".into(),
                ips: vec!["10.99.0.9".parse().unwrap()],
                dns: None,
                host_resolv_conf: Some(host),
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&files.resolv_conf).unwrap(),
            "nameserver 192.0.2.1\n"
        );
        assert_eq!(std::fs::read_to_string(&files.hostname).unwrap(), "p1\n");
        assert!(std::fs::read_to_string(&files.hosts)
            .unwrap()
            .contains("10.99.0.9\tp1"));
        let err = write_pod_files(
            &dir.path().join("pod2"),
            &PodFilesRequest {
                hostname: "bad name".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("invalid hostname"));
        assert!(!dir.path().join("pod2").exists());
    }
}
