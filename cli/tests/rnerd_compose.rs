//! `rnerd compose` through the real binary against a real `rcd` started here (build it and
//! the shim first: `cargo build -p rcd -p rshim`; both are looked for next to rnerd), with
//! busybox served by a loopback registry and pulled by `compose up` itself.

use rcd_cli::client::Client;
use rcd_proto::v1 as pb;
use rtest::{busybox_image, hostnet, spawn_tied, Registry};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RNERD: &str = env!("CARGO_BIN_EXE_rnerd");

fn sibling(name: &str) -> PathBuf {
    let p = Path::new(RNERD).with_file_name(name);
    assert!(
        p.exists(),
        "{} missing: build it first (cargo build -p rcd -p rshim)",
        p.display()
    );
    p
}

/// Test `n`'s network pool (10.<200+n>.0.0/16) and bridge prefix (`rc<nn>-`): tests run in
/// parallel, each with an rcd of its own, and must not share bridges or subnets.
fn pool_prefix(n: u8) -> String {
    format!("10.{}.", 200 + n)
}

fn bridge_prefix(n: u8) -> String {
    format!("rc{n:02}-")
}

/// Removes what test `n` left on the host (a killed run): bridges, rules, per-pod chains.
fn purge_host(n: u8) {
    hostnet::purge_test_net(&bridge_prefix(n), &pool_prefix(n));
}

/// A daemon of the test's own and a project directory.
struct Env {
    n: u8,
    rcd: Option<Child>,
    address: PathBuf,
    image: String,
    registry: String,
    log: PathBuf,
    dir: tempfile::TempDir,
    project: String,
    _reg: Registry,
}

fn env(project: &str, n: u8) -> Env {
    purge_host(n);
    let reg = Registry::start().unwrap();
    reg.push(busybox_image(), "library/busybox", "latest")
        .unwrap();
    let image = reg.image_ref("library/busybox", "latest");
    let registry = image.split('/').next().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let shim = std::env::var_os("RCD_TEST_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| sibling("containerd-shim-runr-v2"));
    std::fs::write(
        &config,
        format!(
            "log_level = \"debug\"\nshim = {:?}\n\n[networks]\npool = \"{}0.0/16\"\nbridge_prefix = {:?}\n",
            shim.display().to_string(),
            pool_prefix(n),
            bridge_prefix(n),
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let address = state.join("rcd.sock");
    let log = dir.path().join("rcd.log");
    let mut cmd = Command::new(sibling("rcd"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(&state)
        .arg("--address")
        .arg(&address)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = spawn_tied(cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&address).is_err() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "rcd exited {st}:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        assert!(Instant::now() < deadline, "rcd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::create_dir(dir.path().join("proj")).unwrap();
    Env {
        n,
        rcd: Some(child),
        address,
        image,
        registry,
        log,
        dir,
        project: project.to_owned(),
        _reg: reg,
    }
}

impl Env {
    fn proj(&self) -> PathBuf {
        self.dir.path().join("proj")
    }

    fn write(&self, compose: &str) {
        std::fs::write(
            self.proj().join("compose.yaml"),
            compose.replace("IMAGE", &self.image),
        )
        .unwrap();
    }

    /// `rnerd compose -p <project> ARGS` in the project directory.
    fn compose(&self, args: &[&str]) -> Output {
        spawn_tied(self.compose_cmd(args))
            .unwrap()
            .wait_with_output()
            .unwrap()
    }

    fn compose_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(RNERD);
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--insecure-registry")
            .arg(&self.registry)
            .arg("compose");
        if !args.contains(&"-p") {
            cmd.arg("-p").arg(&self.project);
        }
        cmd.args(args)
            .current_dir(self.proj())
            .env_remove("RCD_NAMESPACE")
            .env_remove("COMPOSE_PROJECT_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn rcd_log(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Expects success; (stdout, stderr).
    fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.compose(args);
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "compose {args:?}: {}\nstdout: {o}\nstderr: {e}\nrcd log:\n{}",
            out.status,
            self.rcd_log()
        );
        (o, e)
    }

    /// Expects exit 125 and a message; the message.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(125),
            "compose {args:?}\nstdout: {}\nstderr: {err}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(err.starts_with("rnerd: "), "{err}");
        err
    }

    fn api<T>(&self, f: impl AsyncFnOnce(Client) -> T) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = Client::connect(&self.address, "default", Duration::from_secs(5))
                .await
                .unwrap();
            f(c).await
        })
    }

    /// Every container of the namespace: (name label, id).
    fn containers(&self) -> Vec<(String, String)> {
        self.api(async |c| {
            let mut v: Vec<(String, String)> = c
                .containers()
                .list(pb::ListContainersRequest::default())
                .await
                .unwrap()
                .into_inner()
                .containers
                .into_iter()
                .map(|c| {
                    (
                        c.labels
                            .get(rcd_proto::labels::NAME)
                            .cloned()
                            .unwrap_or_default(),
                        c.id,
                    )
                })
                .collect();
            v.sort();
            v
        })
    }

    fn networks(&self) -> Vec<String> {
        self.api(async |c| {
            c.networks()
                .list(pb::ListNetworksRequest {})
                .await
                .unwrap()
                .into_inner()
                .networks
                .into_iter()
                .map(|n| n.name)
                .collect()
        })
    }

    /// Whatever a failed test left: tasks, containers and networks.
    fn cleanup(&self) {
        self.api(async |c| {
            for ct in c
                .containers()
                .list(pb::ListContainersRequest::default())
                .await
                .map(|r| r.into_inner().containers)
                .unwrap_or_default()
            {
                let _ = c
                    .tasks()
                    .delete(pb::DeleteTaskRequest {
                        container_id: ct.id.clone(),
                        force: true,
                    })
                    .await;
                let _ = c
                    .containers()
                    .delete(pb::DeleteContainerRequest {
                        id: ct.id,
                        keep_snapshot: false,
                        remove_volumes: true,
                    })
                    .await;
            }
            for n in c
                .networks()
                .list(pb::ListNetworksRequest {})
                .await
                .map(|r| r.into_inner().networks)
                .unwrap_or_default()
            {
                if n.name != "bridge" {
                    let _ = c
                        .networks()
                        .delete(pb::DeleteNetworkRequest { name: n.name })
                        .await;
                }
            }
        });
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut child) = self.rcd.take() {
            self.cleanup();
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // every container went through rcd, whose CNI DELs take their rules with them
            let left = hostnet::pool_rules(&pool_prefix(self.n));
            purge_host(self.n);
            if !std::thread::panicking() {
                assert!(left.is_empty(), "iptables rules left: {left:#?}");
            }
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines of `compose`'s progress on stderr that end with `state`, as the names they are about.
fn progress(stderr: &str, state: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (_kind, name, st) = (w.next()?, w.next()?, w.next()?);
            (st == state).then(|| name.to_owned())
        })
        .collect()
}

const TWO: &str = r#"
services:
  web:
    image: IMAGE
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www"]
  client:
    image: IMAGE
    depends_on: [web]
    command: ["sh", "-c", "until wget -qO- http://web:80/; do sleep 0.2; done; echo client-done"]
"#;

#[test]
fn up_ps_logs_down_two_services() {
    let e = env("two", 1);
    e.write(TWO);
    let (_, err) = e.ok(&["up", "-d"]);
    assert_eq!(
        progress(&err, "Started"),
        ["two-web-1", "two-client-1"],
        "{err}"
    );
    assert_eq!(
        progress(&err, "Created").len(),
        3,
        "network + 2 containers: {err}"
    );
    assert!(
        e.networks().contains(&"two_default".to_owned()),
        "{:?}",
        e.networks()
    );

    // the client reaches web by its service name and prints the page
    wait_for("the client's output", Duration::from_secs(30), || {
        e.ok(&["logs", "client"]).0.contains("client-done")
    });
    let (logs, _) = e.ok(&["logs", "client"]);
    assert!(logs.contains("client-1 | hello-from-web"), "{logs}");
    let (logs, _) = e.ok(&["logs", "--no-log-prefix", "client"]);
    assert!(logs.lines().any(|l| l == "hello-from-web"), "{logs}");

    // ps: web runs; the client exited 0 (shown with -a)
    let (ps, _) = e.ok(&["ps"]);
    assert!(ps.starts_with("NAME"), "{ps}");
    assert!(ps.contains("two-web-1") && ps.contains("running"), "{ps}");
    assert!(!ps.contains("two-client-1"), "{ps}");
    let (ps, _) = e.ok(&["ps", "-a"]);
    assert!(
        ps.contains("two-client-1") && ps.contains("exited (0)"),
        "{ps}"
    );
    let (q, _) = e.ok(&["ps", "-aq"]);
    assert_eq!(q.lines().count(), 2, "{q}");
    let (json, _) = e.ok(&["ps", "--format", "json", "web"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["Service"], "web");
    assert_eq!(v["Project"], "two");
    assert_eq!(v["State"], "running");

    // up again: nothing duplicated, nothing recreated
    let before = e.containers();
    let (_, err) = e.ok(&["up", "-d"]);
    assert_eq!(progress(&err, "Running"), ["two-web-1"], "{err}");
    assert_eq!(progress(&err, "Created"), Vec::<String>::new(), "{err}");
    assert_eq!(e.containers(), before);

    // down: containers, then the network
    let (_, err) = e.ok(&["down", "-t", "2"]);
    assert_eq!(
        progress(&err, "Removed"),
        ["two-client-1", "two-web-1", "two_default"],
        "{err}"
    );
    assert!(e.containers().is_empty(), "{:?}", e.containers());
    assert!(!e.networks().contains(&"two_default".to_owned()));
    assert_eq!(hostnet::bridges(&bridge_prefix(e.n)), Vec::<String>::new());
    // down again: nothing to do
    let (_, err) = e.ok(&["down"]);
    assert!(progress(&err, "Removed").is_empty(), "{err}");
}

#[test]
fn depends_on_order_recreate_and_restart() {
    let e = env("order", 2);
    let file = r#"
services:
  c: {image: IMAGE, command: sleep 300, depends_on: [b]}
  a: {image: IMAGE, command: sleep 300}
  b: {image: IMAGE, command: sleep 300, depends_on: {a: {condition: service_started}}}
"#;
    e.write(file);
    let (_, err) = e.ok(&["up", "-d"]);
    assert_eq!(
        progress(&err, "Started"),
        ["order-a-1", "order-b-1", "order-c-1"],
        "{err}"
    );
    let before = e.containers();
    assert_eq!(before.len(), 3);

    // a changed service is recreated, the others left running
    e.write(&file.replace(
        "c: {image: IMAGE, command: sleep 300",
        "c: {image: IMAGE, command: sleep 301",
    ));
    let (_, err) = e.ok(&["up", "-d", "-t", "1"]);
    assert_eq!(
        progress(&err, "Running"),
        ["order-a-1", "order-b-1"],
        "{err}"
    );
    assert_eq!(progress(&err, "Started"), ["order-c-1"], "{err}");
    let after = e.containers();
    assert_eq!(after[..2], before[..2]);
    assert_ne!(after[2].1, before[2].1);

    // restart: stopped in reverse, started in order
    let (_, err) = e.ok(&["restart", "-t", "1"]);
    assert_eq!(
        progress(&err, "Stopped"),
        ["order-c-1", "order-b-1", "order-a-1"],
        "{err}"
    );
    assert_eq!(
        progress(&err, "Started"),
        ["order-a-1", "order-b-1", "order-c-1"],
        "{err}"
    );

    let (_, err) = e.ok(&["down", "-t", "1"]);
    assert_eq!(
        progress(&err, "Removed"),
        ["order-c-1", "order-b-1", "order-a-1", "order_default"],
        "{err}"
    );
    assert!(e.containers().is_empty());
}

#[test]
fn bad_files_are_clear_errors() {
    let e = env("bad", 3);
    // no file at all
    let err = e.fails(&["up", "-d"]);
    assert!(err.contains("no compose file found in"), "{err}");
    assert!(err.contains("give one with -f"), "{err}");
    let err = e.fails(&["-f", "nope.yaml", "ps"]);
    assert!(err.contains("reading compose file"), "{err}");
    assert!(err.contains("nope.yaml: no such file"), "{err}");

    e.write("services:\n  web:\n    image: IMAGE\n    imagee: x\n");
    let err = e.fails(&["up", "-d"]);
    assert!(
        err.contains("compose.yaml: service \"web\": unknown key \"imagee\""),
        "{err}"
    );

    e.write(
        "services:\n  a: {image: IMAGE, depends_on: [b]}\n  b: {image: IMAGE, depends_on: [a]}\n",
    );
    let err = e.fails(&["up", "-d"]);
    assert!(
        err.contains("dependency cycle between services: a -> b -> a"),
        "{err}"
    );

    e.write("services:\n  a: {image: IMAGE, ports: [\"http:80\"]}\n");
    let err = e.fails(&["config"]);
    assert!(
        err.contains("service \"a\": ports[0]: invalid port \"http:80\""),
        "{err}"
    );

    e.write("services: [\n");
    let err = e.fails(&["config"]);
    assert!(err.contains("compose.yaml: invalid YAML"), "{err}");

    let err = e.fails(&["logs", "nope"]);
    assert!(err.contains("invalid YAML"), "{err}");
    e.write(TWO);
    let err = e.fails(&["logs", "nope"]);
    assert!(
        err.contains("no such service: \"nope\" (services: web, client)"),
        "{err}"
    );
    let err = e.fails(&["-p", "Bad!", "ps"]);
    assert!(
        err.contains("invalid project name \"Bad!\" (from -p)"),
        "{err}"
    );

    // a good one: config prints it normalised
    let (cfg, _) = e.ok(&["config"]);
    assert!(cfg.contains("name: bad\n"), "{cfg}");
    assert!(cfg.contains("condition: service_started"), "{cfg}");
    let (svcs, _) = e.ok(&["config", "--services"]);
    assert_eq!(svcs, "client\nweb\n");
    // nothing was made
    assert!(e.containers().is_empty());
}

fn volumes(e: &Env) -> Vec<String> {
    e.api(async |c| {
        c.volumes()
            .list(pb::ListVolumesRequest { size: false })
            .await
            .unwrap()
            .into_inner()
            .volumes
            .into_iter()
            .filter(|v| !v.anonymous)
            .map(|v| v.name)
            .collect()
    })
}

fn http_get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    // A SYN that meets the port before its forwarding is set up can hang for minutes.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn attached_up_volumes_ports_and_env() {
    let e = env("vol", 4);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::create_dir(e.proj().join("site")).unwrap();
    std::fs::write(e.proj().join("site/hello"), "hello from the host\n").unwrap();
    std::fs::write(e.proj().join(".env"), format!("PORT={port}\nWHO=dotenv\n")).unwrap();
    std::fs::write(e.proj().join("app.env"), "GREETING=\"hi from ${WHO}\"\n").unwrap();
    e.write(
        r#"
services:
  writer:
    image: IMAGE
    env_file: app.env
    environment: {WHO: "${WHO:-nobody}"}
    volumes: ["data:/data", "./site:/site:ro"]
    command: ["sh", "-c", "echo \"$$WHO\" > /data/index.html; cat /site/hello; touch /site/x 2>/dev/null || echo read-only; echo \"$$GREETING\""]
volumes:
  data:
"#,
    );
    // attached: the output, prefixed, until the service exits
    let (out, err) = e.ok(&["up"]);
    assert!(
        out.contains("writer-1 | hello from the host"),
        "{out}\n{err}"
    );
    assert!(out.contains("writer-1 | read-only"), "{out}");
    assert!(out.contains("writer-1 | hi from dotenv"), "{out}");
    assert_eq!(
        progress(&err, "Created"),
        ["vol_default", "vol_data", "vol-writer-1"],
        "{err}"
    );
    assert!(volumes(&e).contains(&"vol_data".to_owned()));

    // the named volume outlives its container; a published port reaches a service
    e.write(
        r#"
services:
  web:
    image: IMAGE
    volumes: ["data:/www"]
    ports: ["127.0.0.1:${PORT}:80"]
    command: httpd -f -p 80 -h /www
volumes:
  data:
"#,
    );
    let (_, err) = e.ok(&["up", "-d", "--remove-orphans"]);
    assert_eq!(progress(&err, "Removed"), ["vol-writer-1"], "{err}");
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < Duration::from_secs(20) {
        last = http_get(port);
        if last.as_ref().is_some_and(|r| r.ends_with("dotenv\n")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !last.as_ref().is_some_and(|r| r.ends_with("dotenv\n")) {
        panic!(
            "web not reachable on 127.0.0.1:{port}: {last:?}\nps: {}\nlogs: {}\nrcd log:\n{}",
            e.ok(&["ps", "-a"]).0,
            e.ok(&["logs"]).0,
            e.rcd_log()
        );
    }
    let (ps, _) = e.ok(&["ps"]);
    assert!(ps.contains(&format!("127.0.0.1:{port}->80/tcp")), "{ps}");

    // down keeps the volume; down -v removes it
    e.ok(&["down", "-t", "1"]);
    assert!(volumes(&e).contains(&"vol_data".to_owned()));
    e.ok(&["up", "-d"]);
    let (_, err) = e.ok(&["down", "-v", "-t", "1"]);
    assert!(
        progress(&err, "Removed").contains(&"vol_data".to_owned()),
        "{err}"
    );
    assert!(!volumes(&e).contains(&"vol_data".to_owned()));
    assert!(e.containers().is_empty());
}

/// A child's stdout lines as they come.
fn lines_of(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_line(rx: &std::sync::mpsc::Receiver<String>, what: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = l.contains(what);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
            Err(_) => panic!("no line with {what:?}; got {seen:?}"),
        }
    }
}

#[test]
fn logs_follow_and_ctrl_c_of_attached_up() {
    let e = env("att", 5);
    e.write(
        r#"
services:
  ticker:
    image: IMAGE
    command: ["sh", "-c", "trap 'echo bye; exit 0' TERM; i=0; while :; do i=$$((i+1)); echo tick-$$i; sleep 0.2; done"]
"#,
    );
    let mut up = spawn_tied(e.compose_cmd(&["up", "-t", "5"])).unwrap();
    let rx = lines_of(&mut up);
    wait_line(&rx, "ticker-1 | tick-2");

    // logs -f follows new lines of the running service
    let mut logs = spawn_tied(e.compose_cmd(&["logs", "-f", "--tail", "1"])).unwrap();
    let lrx = lines_of(&mut logs);
    let first = wait_line(&lrx, "tick-");
    let n: u32 = first[0].rsplit('-').next().unwrap().parse().unwrap();
    wait_line(&lrx, &format!("tick-{}", n + 2));
    logs.kill().unwrap();
    logs.wait().unwrap();

    // Ctrl-C stops the services (their stop signal first) and exits 130
    unsafe { libc::kill(up.id() as i32, libc::SIGINT) };
    let st = up.wait().unwrap();
    assert_eq!(st.code(), Some(130));
    let (ps, _) = e.ok(&["ps"]);
    assert_eq!(ps.lines().count(), 1, "only the header: {ps}");
    let (logs, _) = e.ok(&["logs"]);
    assert!(logs.trim_end().ends_with("ticker-1 | bye"), "{logs}");
    e.ok(&["down"]);
    assert!(e.containers().is_empty());
}
