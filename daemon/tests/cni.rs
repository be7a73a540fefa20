//! Pod networking with the real CNI plugins of /usr/lib/cni, as root: pinned namespaces,
//! rcd's default bridge network (with its own bridge, subnet and host-local data dir per test,
//! so tests run in parallel and never touch a real `rcd0`), pod-to-pod traffic, host ports,
//! DEL after crashes and failures. Everything a test creates is removed by its `TestNet`.

use rcd::cni::{
    self, BridgeNetwork, Cni, CniError, CniOptions, NetNs, PodNetworkRequest, PortMapping,
};
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One test's private network: bridge `rcdt<n>`, subnet 10.231.<n>.0/24, network `rcdtest-<n>`.
struct TestNet {
    n: u8,
    /// Also IPv6 from fd00:231:<n>::/64.
    dual_stack: bool,
    dir: tempfile::TempDir,
    netns: Vec<PathBuf>,
}

impl TestNet {
    fn new(n: u8) -> TestNet {
        Self::with(n, false)
    }

    fn dual_stack(n: u8) -> TestNet {
        Self::with(n, true)
    }

    fn with(n: u8, dual_stack: bool) -> TestNet {
        let t = TestNet {
            n,
            dual_stack,
            dir: tempfile::tempdir().unwrap(),
            netns: Vec::new(),
        };
        // a previous run that was killed may have left its bridge and rules
        t.purge_host();
        std::fs::create_dir_all(t.conf_dir()).unwrap();
        t
    }

    fn bridge(&self) -> String {
        format!("rcdt{}", self.n)
    }
    fn name(&self) -> String {
        format!("rcdtest-{}", self.n)
    }
    fn subnet_prefix(&self) -> String {
        format!("10.231.{}.", self.n)
    }
    fn subnet6_prefix(&self) -> String {
        format!("fd00:231:{}:", self.n)
    }
    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }
    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// rcd's default conflist with this test's bridge, subnet and IPAM dir.
    fn network(&self) -> BridgeNetwork {
        BridgeNetwork {
            name: self.name(),
            bridge: self.bridge(),
            subnets: if self.dual_stack {
                vec![
                    format!("10.231.{}.0/24", self.n),
                    format!("fd00:231:{}::/64", self.n),
                ]
            } else {
                vec![format!("10.231.{}.0/24", self.n)]
            },
            ipam_data_dir: Some(self.ipam_dir()),
        }
    }

    fn install(&self, file: &str, content: &[u8]) {
        std::fs::write(self.conf_dir().join(file), content).unwrap();
    }

    fn install_default(&self) {
        self.install(
            "10-test.conflist",
            &self.network().render().unwrap().to_bytes(),
        );
    }

    fn cni(&self) -> Cni {
        Cni::load(CniOptions {
            conf_dir: self.conf_dir(),
            state_dir: self.state_dir(),
            plugin_timeout: Duration::from_secs(20),
            ..Default::default()
        })
        .unwrap()
    }

    fn netns(&mut self, name: &str) -> NetNs {
        let ns = NetNs::create(&self.dir.path().join("netns"), name).unwrap();
        self.netns.push(ns.path().to_path_buf());
        ns
    }

    fn request(&self, id: &str, ns: &NetNs) -> PodNetworkRequest {
        PodNetworkRequest {
            id: id.into(),
            netns: Some(ns.path().to_path_buf()),
            args: PodNetworkRequest::k8s_args(id, "default", id, "uid-1"),
            ..Default::default()
        }
    }

    /// host-local's allocations (one file per address, named by the address).
    fn allocations(&self) -> Vec<String> {
        let dir = self.ipam_dir().join(self.name());
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.starts_with(&self.subnet_prefix()) || n.starts_with(&self.subnet6_prefix())
            })
            .collect()
    }

    fn bridge_ports(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// iptables rules (nat and filter) that mention this test's subnet or network.
    fn iptables_rules(&self) -> Vec<(String, String)> {
        let mut rules = Vec::new();
        for (tool, table) in [
            ("iptables", "nat"),
            ("iptables", "filter"),
            ("ip6tables", "nat"),
            ("ip6tables", "filter"),
        ] {
            let out = Command::new(format!("{tool}-save"))
                .args(["-t", table])
                .output()
                .unwrap();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.starts_with("-A ")
                    && (line.contains(&self.subnet_prefix())
                        || line.contains(&self.subnet6_prefix())
                        || line.contains(&format!("name: \\\"{}\\\"", self.name())))
                {
                    rules.push((format!("{tool} -t {table}"), line.to_string()));
                }
            }
        }
        rules
    }

    fn cache_files(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.state_dir().join("results")) else {
            return Vec::new();
        };
        rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Nothing of this network is left on the host but the (empty) bridge.
    fn assert_clean(&self) {
        assert!(self.bridge_ports().is_empty(), "{:?}", self.bridge_ports());
        assert!(self.allocations().is_empty(), "{:?}", self.allocations());
        assert!(
            self.iptables_rules().is_empty(),
            "{:?}",
            self.iptables_rules()
        );
        assert!(self.cache_files().is_empty(), "{:?}", self.cache_files());
    }

    /// Removes the bridge and every iptables rule and per-container chain of this network.
    fn purge_host(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .stderr(Stdio::null())
            .status();
        for (tool_table, rule) in self.iptables_rules() {
            let chain_target = rule
                .split_whitespace()
                .skip_while(|w| *w != "-j")
                .nth(1)
                .map(str::to_string);
            // a chain's own rules may be gone with the chain already
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("{tool_table} -w -D {}", &rule[3..]))
                .stderr(Stdio::null())
                .status();
            if let Some(chain) = chain_target.filter(|c| {
                c.starts_with("CNI-")
                    && !c.starts_with("CNI-HOSTPORT-")
                    && c != "CNI-FORWARD"
                    && c != "CNI-ADMIN"
            }) {
                for op in ["-F", "-X"] {
                    let _ = Command::new("sh")
                        .arg("-c")
                        .arg(format!("{tool_table} -w {op} {chain}"))
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for ns in &self.netns {
            let _ = cni::netns::remove(ns);
        }
        self.purge_host();
    }
}

/// Runs a command inside a pod's network namespace.
fn in_pod(ns: &NetNs, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(args)
        .output()
        .unwrap()
}

/// The network interfaces of the calling thread's network namespace.
fn links_of_this_thread() -> Vec<String> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    let mut links: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .collect();
    links.sort();
    links
}

fn host_ip() -> IpAddr {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .expect("the host has a global IPv4 address");
    cidr.split('/').next().unwrap().parse().unwrap()
}

/// A port nothing listens on, never handed out twice in this process (two tests mapping
/// the same host port would steal each other's traffic).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// busybox httpd serving `dir` on port 80 inside the pod; killed on drop.
struct Httpd(Child);

impl Httpd {
    fn start(ns: &NetNs, dir: &Path) -> Httpd {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["busybox", "httpd", "-f", "-p", "80", "-h"])
            .arg(dir)
            .spawn()
            .unwrap();
        let h = Httpd(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ns
            .run(|| std::net::TcpStream::connect("127.0.0.1:80").is_ok())
            .unwrap()
        {
            assert!(Instant::now() < deadline, "httpd did not start in the pod");
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain HTTP/1.0 GET of `/index.html` from `addr`, the body on success.
fn http_get(addr: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    let run = || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        Ok(resp)
    };
    let resp = run().map_err(|e| format!("GET http://{addr}/index.html: {e}"))?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => Err(format!("GET http://{addr}/index.html: {resp:?}")),
    }
}

#[test]
fn netns_create_run_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNs::create(dir.path(), "ns1").unwrap();
    assert!(cni::netns::is_netns(ns.path()));
    let err = NetNs::create(dir.path(), "ns1").unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    // a fresh namespace holds only lo, and this thread stays in the host's
    let links = ns.run(links_of_this_thread).unwrap();
    assert_eq!(links, ["lo"]);
    assert!(links_of_this_thread().iter().any(|l| l != "lo"));
    let other = NetNs::open(ns.path()).unwrap();
    assert_eq!(other, ns);
    let path = ns.path().to_path_buf();
    ns.remove().unwrap();
    assert!(!path.exists());
    cni::netns::remove(&path).unwrap();
    let err = NetNs::open(&path).unwrap_err();
    assert!(
        err.to_string().contains("is not a network namespace"),
        "{err}"
    );
    let err = NetNs::create(dir.path(), "a/b").unwrap_err();
    assert!(err.to_string().contains("invalid network namespace name"));
}

#[tokio::test]
async fn two_pods_reach_each_other_and_del_removes_everything() {
    let mut t = TestNet::dual_stack(1);
    t.install_default();
    let cni = t.cni();
    cni.ready().unwrap();
    assert_eq!(cni.network().unwrap().name, t.name());
    let (ns_a, ns_b) = (t.netns("pod-a"), t.netns("pod-b"));
    let (req_a, req_b) = (t.request("pod-a", &ns_a), t.request("pod-b", &ns_b));
    // both at once, as the CRI service may run them
    let (a, b) = tokio::join!(cni.setup_pod(&req_a), cni.setup_pod(&req_b));
    let (a, b) = (a.unwrap(), b.unwrap());
    for pod in [&a, &b] {
        assert_eq!(pod.network, t.name());
        assert_eq!(pod.ifname, "eth0");
        assert_eq!(pod.ips.len(), 2, "{pod:?}");
        assert!(pod.ips[0].to_string().starts_with(&t.subnet_prefix()));
        assert!(pod.ips[1].to_string().starts_with(&t.subnet6_prefix()));
    }
    assert_ne!(a.ips, b.ips);
    assert_eq!(t.allocations().len(), 4);
    assert_eq!(t.bridge_ports().len(), 2);

    let ping = in_pod(
        &ns_a,
        &[
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "3",
            &b.ips[0].to_string(),
        ],
    );
    assert!(ping.status.success(), "{ping:?}");
    let ping = in_pod(
        &ns_b,
        &[
            "busybox",
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "3",
            &a.ips[1].to_string(),
        ],
    );
    assert!(ping.status.success(), "{ping:?}");
    let ping = in_pod(
        &ns_b,
        &["busybox", "ping", "-c", "1", "-W", "3", "127.0.0.1"],
    );
    assert!(ping.status.success(), "loopback is up: {ping:?}");

    cni.check_pod(&req_a).await.unwrap();
    // PodSandboxStatus after an rcd restart: from the cache
    let restarted = t.cni();
    assert_eq!(restarted.pod_network("pod-b").unwrap().unwrap().ips, b.ips);

    cni.teardown_pod(&req_a).await.unwrap();
    cni.teardown_pod(&req_b).await.unwrap();
    t.assert_clean();
    assert!(cni.pod_network("pod-a").unwrap().is_none());
    // idempotent, namespace still there or gone
    cni.teardown_pod(&req_a).await.unwrap();
    ns_a.remove().unwrap();
    cni.teardown_pod(&req_a).await.unwrap();
    t.assert_clean();
}

#[tokio::test]
async fn host_port_reaches_a_server_in_the_pod() {
    let mut t = TestNet::new(2);
    t.install_default();
    let cni = t.cni();
    let ns = t.netns("web");
    let port = free_port();
    let mut req = t.request("web", &ns);
    let lo_port = free_port();
    req.port_mappings = vec![
        PortMapping {
            host_port: port,
            container_port: 80,
            protocol: "TCP".into(),
            host_ip: String::new(),
        },
        PortMapping {
            host_port: lo_port,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: "127.0.0.1".into(),
        },
    ];
    let pod = cni.setup_pod(&req).await.unwrap();
    let www = t.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from the pod\n").unwrap();
    let _httpd = Httpd::start(&ns, &www);

    let direct = http_get(&format!("{}:80", pod.ips[0])).unwrap();
    assert_eq!(direct, "hello from the pod\n");
    let via_host = http_get(&format!("{}:{port}", host_ip())).unwrap();
    assert_eq!(via_host, "hello from the pod\n");
    // portmap sets route_localnet on the bridge and masquerades, so 127.0.0.1 works too
    let via_lo = http_get(&format!("127.0.0.1:{port}")).unwrap();
    assert_eq!(via_lo, "hello from the pod\n");
    // hairpin: the pod reaches itself through its own host port
    let addr = format!("{}:{port}", host_ip());
    let hairpin = ns.run(move || http_get(&addr)).unwrap().unwrap();
    assert_eq!(hairpin, "hello from the pod\n");
    // a mapping bound to one host address answers there only
    assert_eq!(
        http_get(&format!("127.0.0.1:{lo_port}")).unwrap(),
        "hello from the pod\n"
    );
    assert!(http_get(&format!("{}:{lo_port}", host_ip())).is_err());

    cni.teardown_pod(&req).await.unwrap();
    t.assert_clean();
    assert!(
        http_get(&format!("{}:{port}", host_ip())).is_err(),
        "the host port is gone"
    );
}

#[tokio::test]
async fn del_after_a_restart_with_the_namespace_gone_uses_the_cache() {
    let mut t = TestNet::new(3);
    t.install_default();
    let ns = t.netns("crashed");
    let mut req = t.request("crashed", &ns);
    req.port_mappings = vec![PortMapping {
        host_port: free_port(),
        container_port: 8080,
        protocol: "tcp".into(),
        host_ip: String::new(),
    }];
    t.cni().setup_pod(&req).await.unwrap();
    assert!(t.iptables_rules().iter().any(|(_, r)| r
        .contains(&format!("--dport {}", req.port_mappings[0].host_port))
        || r.contains(&t.subnet_prefix())));
    assert_eq!(t.cache_files().len(), 2, "{:?}", t.cache_files());

    // rcd died; the pod's namespace went away (reboot, manual cleanup) and the restarted
    // rcd knows only the pod id and the path
    let path = ns.path().to_path_buf();
    ns.remove().unwrap();
    let restarted = t.cni();
    let bare = PodNetworkRequest {
        id: "crashed".into(),
        netns: Some(path),
        ..Default::default()
    };
    restarted.teardown_pod(&bare).await.unwrap();
    assert!(t.allocations().is_empty(), "{:?}", t.allocations());
    assert!(t.cache_files().is_empty(), "{:?}", t.cache_files());
    let left: Vec<_> = t
        .iptables_rules()
        .into_iter()
        .filter(|(_, r)| r.contains(&format!("--dport {}", req.port_mappings[0].host_port)))
        .collect();
    assert!(left.is_empty(), "portmap's DNAT rules stay: {left:?}");
    // bridge 1.1.1 leaves its masquerade rules when the namespace is gone; rcd removes them
    t.assert_clean();
    restarted.teardown_pod(&bare).await.unwrap();
}

#[tokio::test]
async fn a_failing_plugin_is_named_and_leaves_nothing() {
    let mut t = TestNet::new(4);
    // the bridge allocates an address and a veth, then the next plugin does not exist
    let mut raw = t.network().render().unwrap().raw;
    raw["plugins"]
        .as_array_mut()
        .unwrap()
        .insert(1, serde_json::json!({"type": "no-such-plugin"}));
    t.install("10-broken.conflist", &serde_json::to_vec(&raw).unwrap());
    let cni = t.cni();
    let err = cni.ready().unwrap_err().to_string();
    assert!(err.contains("\"no-such-plugin\" not found"), "{err}");
    let ns = t.netns("broken");
    let req = t.request("broken", &ns);
    let err = cni.setup_pod(&req).await.unwrap_err();
    assert!(matches!(err, CniError::PluginNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!(
            "network \"{}\": cni plugin \"no-such-plugin\" not found in /usr/lib/cni",
            t.name()
        )),
        "{err}"
    );
    t.assert_clean();
    assert_eq!(ns.run(links_of_this_thread).unwrap(), ["lo"]);
    cni.teardown_pod(&req).await.unwrap();
}

#[tokio::test]
async fn an_invalid_subnet_is_reported_by_the_plugin() {
    let mut t = TestNet::new(5);
    // a single-plugin .conf: wrapped into a list of one
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": t.name(),
        "type": "bridge",
        "bridge": t.bridge(),
        "ipam": {"type": "host-local", "dataDir": t.ipam_dir(),
                 "ranges": [[{"subnet": "10.231.5.0/33"}]]},
    });
    t.install("10-bad.conf", &serde_json::to_vec(&conf).unwrap());
    let cni = t.cni();
    assert_eq!(cni.network().unwrap().plugins.len(), 1);
    let ns = t.netns("badnet");
    let err = cni.setup_pod(&t.request("badnet", &ns)).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "network \"{}\": cni plugin \"bridge\" failed (ADD",
            t.name()
        )),
        "{msg}"
    );
    assert!(msg.contains("10.231.5.0/33"), "{msg}");
    t.assert_clean();
}

#[tokio::test]
async fn config_dir_order_and_pod_cidr() {
    let t = TestNet::new(6);
    let cni = t.cni();
    let err = cni.ready().unwrap_err().to_string();
    assert_eq!(
        err,
        format!("no cni network config in {}", t.conf_dir().display())
    );
    // the setup installs rcd's default into an empty dir, the first file by name wins
    let installed = cni::default::install_default(&t.conf_dir())
        .unwrap()
        .unwrap();
    assert!(installed.ends_with("10-rcd.conflist"));
    let mut cni = t.cni();
    assert_eq!(cni.network().unwrap().name, "rcd");
    assert!(cni.set_pod_cidr("10.231.6.0/24").unwrap());
    let b = &cni.network().unwrap().plugins[0].config;
    assert_eq!(b["ipam"]["ranges"][0][0]["subnet"], "10.231.6.0/24");
    assert_eq!(b["bridge"], "rcd0");
    // kept across restarts
    let cni = t.cni();
    let b = &cni.network().unwrap().plugins[0].config;
    assert_eq!(b["ipam"]["ranges"][0][0]["subnet"], "10.231.6.0/24");
    let err = t
        .cni()
        .set_pod_cidr("10.231.6.1/24")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("invalid subnet \"10.231.6.1/24\": host bits are set"),
        "{err}"
    );
    // an admin's own network sorts first and is never overridden by a pod CIDR
    t.install(
        "05-admin.conf",
        br#"{"cniVersion":"0.4.0","name":"admin","type":"bridge","bridge":"adm0"}"#,
    );
    let mut cni = t.cni();
    assert_eq!(cni.network().unwrap().name, "admin");
    assert!(!cni.set_pod_cidr("10.231.7.0/24").unwrap());
    assert_eq!(cni.network().unwrap().name, "admin");
    // a broken file is named: rcd starts, NetworkReady is false with the reason
    t.install("01-broken.conflist", b"{\"name\":");
    let cni = Cni::load(CniOptions {
        conf_dir: t.conf_dir(),
        state_dir: t.state_dir(),
        ..Default::default()
    })
    .expect("a broken config must not stop rcd");
    let err = cni.ready().unwrap_err().to_string();
    assert!(
        err.contains("cni config load failed") && err.contains("01-broken.conflist"),
        "{err}"
    );
}

/// A plugin directory holding the real plugins' links plus `slow` (never answers) and `rude`
/// (fails without a CNI error document), to check rcd's side of the protocol.
fn odd_plugins(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, script) in [
        ("slow", "#!/bin/sh\nexec sleep 30\n"),
        (
            "slow-add",
            "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then touch \"$0.started\"; exec sleep 30; fi\n",
        ),
        ("rude", "#!/bin/sh\necho 'something broke' >&2\nexit 3\n"),
        (
            "typed",
            "#!/bin/sh\necho '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"bad value\",\"details\":\"field x\"}'\nexit 1\n",
        ),
    ] {
        let p = bin.join(name);
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

#[tokio::test]
async fn plugin_timeouts_and_errors_name_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let bin = odd_plugins(dir.path());
    let exec = cni::CniExec::new(
        vec![bin, "/usr/lib/cni".into()],
        &dir.path().join("state"),
        Duration::from_millis(300),
    );
    let ns = NetNs::create(&dir.path().join("netns"), "odd").unwrap();
    let rt = cni::RuntimeConf {
        container_id: "odd".into(),
        netns: Some(ns.path().to_path_buf()),
        ifname: "eth0".into(),
        ..Default::default()
    };
    let list = |ty: &str| {
        cni::NetworkConfigList::from_conflist(
            format!(
                r#"{{"cniVersion":"1.0.0","name":"odd","plugins":[{{"type":"loopback"}},{{"type":"{ty}"}}]}}"#
            )
            .as_bytes(),
            None,
        )
        .unwrap()
    };
    let started = Instant::now();
    let err = exec.add(&list("slow"), &rt).await.unwrap_err();
    assert!(matches!(err, CniError::PluginTimeout { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "network \"odd\": cni plugin \"slow\" timed out (ADD) after 300ms"
    );
    // one ADD and the cleanup's DEL, each cut at the timeout
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let err = exec.add(&list("rude"), &rt).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "network \"odd\": cni plugin \"rude\" failed (ADD): exit status: 3: something broke"
    );
    let err = exec.add(&list("typed"), &rt).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "network \"odd\": cni plugin \"typed\" failed (ADD, code 7): bad value: field x"
    );
    // nothing cached after failed ADDs
    assert!(exec.cache.entries_of("odd").unwrap().is_empty());
    ns.remove().unwrap();
}

#[tokio::test]
async fn del_after_a_crash_in_the_middle_of_add() {
    let mut t = TestNet::new(7);
    let bin = odd_plugins(t.dir.path());
    let mut raw = t.network().render().unwrap().raw;
    raw["plugins"]
        .as_array_mut()
        .unwrap()
        .insert(1, serde_json::json!({"type": "slow-add"}));
    t.install("10-slow.conflist", &serde_json::to_vec(&raw).unwrap());
    let opts = CniOptions {
        conf_dir: t.conf_dir(),
        plugin_dirs: vec![bin, "/usr/lib/cni".into()],
        state_dir: t.state_dir(),
        plugin_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let started = opts.plugin_dirs[0].join("slow-add.started");
    let ns = t.netns("midway");
    let req = t.request("midway", &ns);
    let cni = Cni::load(opts.clone()).unwrap();
    // rcd "dies" while the second plugin runs: the bridge is set up, nothing undoes it
    let setup = tokio::spawn(async move { cni.setup_pod(&req).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the second plugin never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    setup.abort();
    assert!(setup.await.unwrap_err().is_cancelled());
    assert_eq!(t.bridge_ports().len(), 1);
    assert_eq!(t.allocations().len(), 1);
    assert!(!t.cache_files().is_empty());

    // the restarted rcd knows the pod id and the namespace path only
    let restarted = Cni::load(opts).unwrap();
    assert!(
        restarted.pod_network("midway").unwrap().is_none(),
        "no result yet"
    );
    let bare = PodNetworkRequest {
        id: "midway".into(),
        netns: Some(ns.path().to_path_buf()),
        ..Default::default()
    };
    restarted.teardown_pod(&bare).await.unwrap();
    t.assert_clean();
}

#[tokio::test]
async fn del_after_the_masquerade_rules_were_flushed() {
    let mut t = TestNet::dual_stack(8);
    t.install_default();
    let cni = t.cni();
    let ns = t.netns("flushed");
    let req = t.request("flushed", &ns);
    cni.setup_pod(&req).await.unwrap();
    // a firewall reload or `iptables -t nat -F` took the pod's IPv4 NAT rules away
    for (tool_table, rule) in t.iptables_rules() {
        if tool_table == "iptables -t nat" && rule.starts_with("-A POSTROUTING") {
            let chain = rule.split_whitespace().last().unwrap().to_string();
            let del = format!("{tool_table} -w -D {0} && {tool_table} -w -F {chain} && {tool_table} -w -X {chain}", &rule[3..]);
            assert!(
                Command::new("sh")
                    .arg("-c")
                    .arg(&del)
                    .status()
                    .unwrap()
                    .success(),
                "{del}"
            );
        }
    }
    cni.teardown_pod(&req).await.unwrap();
    t.assert_clean();
}

#[tokio::test]
async fn check_finds_a_broken_pod_and_del_still_cleans_up() {
    let mut t = TestNet::new(9);
    t.install_default();
    let cni = t.cni();
    let ns = t.netns("broken-ip");
    let req = t.request("broken-ip", &ns);
    cni.setup_pod(&req).await.unwrap();
    cni.check_pod(&req).await.unwrap();
    // something in the pod removed its address
    let flush = in_pod(&ns, &["ip", "addr", "flush", "dev", "eth0"]);
    assert!(flush.status.success(), "{flush:?}");
    let err = cni.check_pod(&req).await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "network \"{}\": cni plugin \"bridge\" failed (CHECK",
            t.name()
        )),
        "{err}"
    );
    // bridge finds no address to unmasquerade; rcd removes the rules from its cache
    cni.teardown_pod(&req).await.unwrap();
    t.assert_clean();
}

#[tokio::test]
async fn bandwidth_limits_reach_the_bandwidth_plugin() {
    let mut t = TestNet::new(10);
    let mut raw = t.network().render().unwrap().raw;
    raw["plugins"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    t.install("10-bw.conflist", &serde_json::to_vec(&raw).unwrap());
    let cni = t.cni();
    let ns = t.netns("limited");
    let mut req = t.request("limited", &ns);
    req.bandwidth = Some(cni::Bandwidth {
        ingress_rate: 1_000_000,
        ingress_burst: 1_000_000,
        egress_rate: 2_000_000,
        egress_burst: 1_000_000,
    });
    let pod = cni.setup_pod(&req).await.unwrap();
    let host_veth = pod
        .result
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_empty() && i.name != t.bridge())
        .expect("the host side of the veth")
        .name
        .clone();
    let tc = Command::new("tc")
        .args(["qdisc", "show", "dev", &host_veth])
        .output()
        .unwrap();
    let tc = String::from_utf8_lossy(&tc.stdout);
    assert!(tc.contains("tbf"), "no token bucket on {host_veth}: {tc}");
    cni.teardown_pod(&req).await.unwrap();
    t.assert_clean();
    let ifb = Command::new("ip")
        .args(["-o", "link", "show", "type", "ifb"])
        .output()
        .unwrap();
    let ifb = String::from_utf8_lossy(&ifb.stdout);
    assert!(!ifb.contains("bwp"), "the egress ifb stays: {ifb}");
}
