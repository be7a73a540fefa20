//! rnerd's networks through rcd's gRPC API (Networks, Containers, Tasks) with real busybox
//! containers on real CNI bridges: host ports, name resolution between containers, network
//! modes, the Networks service and its errors. Build first: `cargo build -p rcd -p rcd-cli`.

mod common;
mod netcommon;

use netcommon::{env, env_with, host_leftovers, port, sh, Env};
use rcd_proto::labels as L;
use rcd_proto::v1 as pb;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tonic::Code;

const HTTPD: &str =
    "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";

/// GET / on `addr`, retried until `timeout`.
fn http_get(addr: &str, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match r {
            Ok(body) if body.contains("200") => {
                return Ok(body.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
            }
            Ok(other) if Instant::now() > deadline => return Err(other),
            Err(e) if Instant::now() > deadline => return Err(e.to_string()),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Whether a hosts file maps `name`.
fn names(hosts: &str, name: &str) -> bool {
    hosts
        .lines()
        .any(|l| l.split_whitespace().skip(1).any(|w| w == name))
}

fn host_ip() -> String {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "route", "get", "1.1.1.1"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = s.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src" {
            return words.next().unwrap().to_owned();
        }
    }
    panic!("no source address in {s:?}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nat_rules_naming(port: u16) -> Vec<String> {
    let out = std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A ") && l.contains(&format!("--dport {port} ")))
        .map(String::from)
        .collect()
}

async fn finish(e: Env, networks: &[&str]) {
    for n in networks {
        e.networks()
            .delete(pb::DeleteNetworkRequest { name: (*n).into() })
            .await
            .unwrap();
    }
    let bridge = e.network("bridge").await.unwrap().bridge;
    let n = e.n;
    let netns = e.rcd.state.join("networks/netns/default");
    let left: Vec<_> = std::fs::read_dir(&netns)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "netns left: {left:?}");
    // every container's rules went with its CNI DEL (only the "bridge" device stays)
    let rules: Vec<_> = host_leftovers(n)
        .into_iter()
        .filter(|l| l.starts_with("-A "))
        .collect();
    assert!(rules.is_empty(), "iptables rules left: {rules:?}");
    drop(e);
    let left = host_leftovers(n);
    assert!(
        left.is_empty(),
        "left on the host: {left:?} (bridge {bridge})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ports_reach_httpd_from_the_host() {
    let e = env(1).await;
    let fixed = free_port();
    let mut o = sh(HTTPD);
    o.network = "bridge".into();
    o.hostname = "web1".into();
    o.ports = vec![port(fixed as u32, 80), port(0, 80)];
    let t0 = Instant::now();
    e.run("web", "web", o).await;
    eprintln!(
        "create + start on a network with 2 host ports: {:?}",
        t0.elapsed()
    );
    let labels = e.labels("web").await;
    let ip = labels.get(L::IP).expect("an IP label").clone();
    assert!(ip.starts_with(&netcommon::pool_prefix(1)), "{ip}");
    let ports: Vec<serde_json::Value> = serde_json::from_str(&labels[L::PORTS]).unwrap();
    assert_eq!(ports[0]["host_port"], fixed);
    let picked = ports[1]["host_port"].as_u64().unwrap() as u16;
    assert_ne!(picked, 0, "{ports:?}");
    let t = Duration::from_secs(10);
    for addr in [
        format!("127.0.0.1:{fixed}"),
        format!("127.0.0.1:{picked}"),
        format!("{}:{fixed}", host_ip()),
        format!("{ip}:80"),
    ] {
        let body = http_get(&addr, t)
            .unwrap_or_else(|err| panic!("{addr}: {err}\n{}", netcommon::tail(&e.rcd.log_text())));
        assert_eq!(body, "hello from web1\n", "{addr}");
    }
    // the network lists the attached container
    let net = e.network("bridge").await.unwrap();
    assert_eq!(net.containers.get(&e.cid("web")), Some(&ip));

    e.stop("web").await;
    let labels = e.labels("web").await;
    assert!(!labels.contains_key(L::IP), "{labels:?}");
    assert!(http_get(&format!("127.0.0.1:{fixed}"), Duration::ZERO).is_err());
    assert!(
        nat_rules_naming(fixed).is_empty(),
        "{:?}",
        nat_rules_naming(fixed)
    );
    assert!(nat_rules_naming(picked).is_empty());
    // a second start gets the ports again (port 0: a new pick)
    e.start("web").await.unwrap();
    let body = http_get(&format!("127.0.0.1:{fixed}"), t).unwrap();
    assert_eq!(body, "hello from web1\n");
    e.remove("web", false).await;
    finish(e, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_resolve_each_other_and_share_namespaces() {
    let e = env(2).await;
    let net = e
        .networks()
        .create(pb::CreateNetworkRequest {
            name: "front".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .network
        .unwrap();
    assert!(
        net.subnet.starts_with(&netcommon::pool_prefix(2)),
        "{net:?}"
    );
    let mut o = sh(HTTPD);
    o.network = "front".into();
    o.network_aliases = vec!["api".into()];
    e.run("srv", "srv", o).await;
    // serving (from the host, through the bridge) before clients ask
    let srv_ip = e.labels("srv").await[L::IP].clone();
    http_get(&format!("{srv_ip}:80"), Duration::from_secs(10)).unwrap();
    // by name, by alias, by ping; and an --add-host entry
    let out = e.dir.path().join("out");
    let mut o = sh("exec >/out/log 2>&1; set -x; cat /etc/hosts; wget -q -O - http://srv/ && wget -q -O - http://api/ && ping -c 1 -W 3 srv && grep -q '10.9.9.9.*db.local' /etc/hosts");
    o.volumes = vec![format!("{}:/out", out.display())];
    o.network = "front".into();
    o.add_hosts = vec!["db.local:10.9.9.9".into()];
    e.run("cl", "cl", o).await;
    let st = e.wait("cl", Duration::from_secs(20)).await;
    assert_eq!(
        st,
        0,
        "client failed: {}",
        std::fs::read_to_string(out.join("log")).unwrap_or_default()
    );
    e.remove("cl", false).await;

    // a later container shows up in srv's hosts file (rewritten in place): a container
    // sharing srv's namespace (and hosts file) resolves it, and reaches srv on localhost
    let srv_hosts = e
        .rcd
        .state
        .join("networks/files/default")
        .join(e.cid("srv"))
        .join("hosts");
    let inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&srv_hosts).unwrap());
    let before = inode();
    let mut o = sh("sleep 60");
    o.network = "front".into();
    e.run("late", "late", o).await;
    let hosts = std::fs::read_to_string(&srv_hosts).unwrap();
    assert!(names(&hosts, "late"), "{hosts}");
    assert!(!names(&hosts, "cl"), "a removed peer stays out: {hosts}");
    assert_eq!(inode(), before, "rewritten in place");
    let mut o = sh("wget -q -O - http://127.0.0.1/ | grep -q hello && ping -c 1 -W 3 late");
    o.network = "container:srv".into();
    e.run("side", "", o).await;
    assert_eq!(e.wait("side", Duration::from_secs(20)).await, 0);
    e.remove("side", false).await;

    // in use: refused
    let err = e
        .networks()
        .delete(pb::DeleteNetworkRequest {
            name: "front".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("in use"), "{err:?}");
    // container: of a container that does not run
    e.stop("late").await;
    let hosts = std::fs::read_to_string(&srv_hosts).unwrap();
    assert!(!names(&hosts, "late"), "{hosts}");
    let mut o = sh("true");
    o.network = "container:late".into();
    e.create("side2", "", o).await.unwrap();
    let err = e.start("side2").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not running"), "{err:?}");
    e.containers()
        .delete(pb::DeleteContainerRequest {
            id: e.cid("side2"),
            ..Default::default()
        })
        .await
        .unwrap();
    e.containers()
        .delete(pb::DeleteContainerRequest {
            id: e.cid("late"),
            ..Default::default()
        })
        .await
        .unwrap();
    e.remove("srv", false).await;
    finish(e, &["front"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_create_list_get_remove_and_errors() {
    let e = env(3).await;
    let mut c = e.networks();
    // "bridge" exists before its first use
    let ls = c
        .list(pb::ListNetworksRequest {})
        .await
        .unwrap()
        .into_inner()
        .networks;
    assert_eq!(
        ls.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["bridge"]
    );
    let made = c
        .create(pb::CreateNetworkRequest {
            name: "back".into(),
            subnet: "10.43.200.0/24".into(),
            labels: [("tier".to_owned(), "db".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .network
        .unwrap();
    assert_eq!(made.gateway, "10.43.200.1");
    assert_eq!(made.id.len(), 64);
    assert!(made.bridge.starts_with("rt3-"), "{made:?}");
    let conflist: serde_json::Value = serde_json::from_slice(&made.conflist).unwrap();
    let types: Vec<&str> = conflist["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["bridge", "portmap", "firewall"]);
    assert_eq!(e.network(&made.id[..12]).await.unwrap().name, "back");
    assert_eq!(e.network("back").await.unwrap().labels["tier"], "db");
    let ls = c
        .list(pb::ListNetworksRequest {})
        .await
        .unwrap()
        .into_inner()
        .networks;
    assert_eq!(
        ls.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["back", "bridge"]
    );

    let create = |name: &str, subnet: &str, gateway: &str, driver: &str| pb::CreateNetworkRequest {
        name: name.into(),
        subnet: subnet.into(),
        gateway: gateway.into(),
        driver: driver.into(),
        ..Default::default()
    };
    for (req, code, want) in [
        (
            create("back", "", "", ""),
            Code::AlreadyExists,
            "already exists",
        ),
        (
            create("bridge", "", "", ""),
            Code::AlreadyExists,
            "already exists",
        ),
        (
            create("x", "10.43.200.128/25", "", ""),
            Code::InvalidArgument,
            "overlaps 10.43.200.0/24 of network \"back\"",
        ),
        (
            create("x", "10.99.0.0/24", "", ""),
            Code::InvalidArgument,
            "overlaps the CRI pod network",
        ),
        (
            create("x", "10.43.7.9/24", "", ""),
            Code::InvalidArgument,
            "host bits",
        ),
        (
            create("x", "nonsense", "", ""),
            Code::InvalidArgument,
            "invalid subnet \"nonsense\"",
        ),
        (
            create("x", "10.43.7.0/24", "10.43.8.1", ""),
            Code::InvalidArgument,
            "invalid gateway",
        ),
        (
            create("x", "", "", "overlay"),
            Code::InvalidArgument,
            "only \"bridge\"",
        ),
        (
            create("a/b", "", "", ""),
            Code::InvalidArgument,
            "invalid network name",
        ),
        (create("host", "", "", ""), Code::InvalidArgument, "a mode"),
    ] {
        let err = c.create(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert!(err.message().contains(want), "{req:?}: {err:?}");
    }
    let err = e.network("nope").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .delete(pb::DeleteNetworkRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .delete(pb::DeleteNetworkRequest {
            name: "bridge".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("cannot be removed"), "{err:?}");

    // containers: an unknown network, bad ports, ports without a network
    let mut o = sh("true");
    o.network = "nope".into();
    let err = e.create("c1", "", o).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("network create nope"), "{err:?}");
    let mut o = sh("true");
    o.network = "bridge".into();
    o.ports = vec![port(8080, 0)];
    let err = e.create("c1", "", o).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("\"8080:0/tcp\""), "{err:?}");
    let mut o = sh("true");
    o.ports = vec![port(8080, 80)];
    let err = e.create("c1", "", o).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("needs a network"), "{err:?}");
    let mut o = sh("true");
    o.network = "container:ghost".into();
    let err = e.create("c1", "", o).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let mut o = sh("true");
    o.network = "bridge".into();
    o.dns = vec!["not-an-ip".into()];
    let err = e.create("c1", "", o).await.unwrap_err();
    assert!(
        err.message().contains("invalid dns server \"not-an-ip\""),
        "{err:?}"
    );
    // nothing was kept of the failed creates
    let ls = e
        .containers()
        .list(pb::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(ls.is_empty(), "{ls:?}");

    // host mode: the host's network; none: only lo
    let mut o = sh("grep -q lo: /proc/net/dev && ! grep -q eth0 /proc/net/dev");
    o.network = "none".into();
    e.run("iso", "", o).await;
    assert_eq!(e.wait("iso", Duration::from_secs(20)).await, 0);
    e.remove("iso", false).await;
    // a server on the host's loopback only: reached from a host-mode container
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nfrom the host\n");
        }
    });
    let mut o = sh(&format!(
        "wget -q -O - http://127.0.0.1:{lport}/ | grep -q 'from the host'"
    ));
    o.network = "host".into();
    e.run("hst", "", o).await;
    assert_eq!(e.wait("hst", Duration::from_secs(20)).await, 0);
    e.remove("hst", false).await;
    finish(e, &["back"]).await;
}

/// rcd killed while a container runs: the next rcd still detaches it (CNI DEL from the
/// cache, host port rules gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_after_a_daemon_kill() {
    let mut e = env(4).await;
    let fixed = free_port();
    let mut o = sh(HTTPD);
    o.network = "bridge".into();
    o.ports = vec![port(fixed as u32, 80)];
    e.run("web", "web", o).await;
    http_get(&format!("127.0.0.1:{fixed}"), Duration::from_secs(10)).unwrap();
    e.rcd.kill9();
    e.rcd.spawn();
    e.ch = netcommon::connect(&e.rcd.address).await;
    e.stop("web").await;
    assert!(
        nat_rules_naming(fixed).is_empty(),
        "{:?}",
        nat_rules_naming(fixed)
    );
    e.remove("web", false).await;
    finish(e, &[]).await;
}

/// The network's ADD runs while the task is created. When its last plugin fails, the created
/// task is undone (killed, deleted, its shim gone) and so is the network (bridge's ADD deleted:
/// no veth, no address, no rules, no netns), with the plugin's message in the error; once the
/// plugin works, the same container starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attach_undoes_the_created_task_and_the_network() {
    let plugins = tempfile::tempdir().unwrap();
    for p in ["bridge", "host-local", "portmap", "loopback", "firewall"] {
        std::os::unix::fs::symlink(format!("/usr/lib/cni/{p}"), plugins.path().join(p)).unwrap();
    }
    let firewall = plugins.path().join("firewall");
    std::fs::remove_file(&firewall).unwrap();
    // fails its ADD only: the undo's DEL goes through
    std::fs::write(
        &firewall,
        "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  echo \'{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"refused by the test\"}\'\n  exit 1\nfi\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &firewall,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let e = env_with(
        5,
        &format!(
            "[cri]\ncni_bin_dirs = [{:?}]\n",
            plugins.path().display().to_string()
        ),
    )
    .await;
    let mut o = sh("sleep 300");
    o.network = "bridge".into();
    e.create("f", "f", o).await.unwrap();
    let err = e.start("f").await.unwrap_err();
    assert!(
        err.message().contains("attaching container")
            && err.message().contains("refused by the test"),
        "{err:?}"
    );
    let tasks = e
        .tasks()
        .list(pb::ListTasksRequest {})
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.is_empty(), "tasks left: {tasks:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !common::shims_of(&e.rcd.address).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "shims left: {:?}",
            common::shims_of(&e.rcd.address)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let netns = e.rcd.state.join("networks/netns/default");
    let left: Vec<_> = std::fs::read_dir(&netns)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "netns left: {left:?}");
    let bridge = e.network("bridge").await.unwrap().bridge;
    let ports = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", &bridge])
        .output()
        .unwrap();
    assert!(ports.stdout.is_empty(), "veths left: {ports:?}");
    let rules: Vec<_> = host_leftovers(e.n)
        .into_iter()
        .filter(|l| l.starts_with("-A "))
        .collect();
    assert!(rules.is_empty(), "iptables rules left: {rules:?}");
    // the plugin works again: the same container starts, on its network
    std::fs::remove_file(&firewall).unwrap();
    std::os::unix::fs::symlink("/usr/lib/cni/firewall", &firewall).unwrap();
    e.start("f").await.unwrap();
    e.remove("f", false).await;
    finish(e, &[]).await;
}
