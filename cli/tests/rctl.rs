//! rctl against Debian's containerd 1.6 CRI plugin, started privately (its own root, state,
//! socket, CNI bridge network and cgroup parent), with images from a loopback registry.
//! Run as root: `cargo test -p rcd-cli --test rctl`.

use rtest::containerd::{Containerd, CriConfig};
use rtest::{busybox_image, pause_image, Registry};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RCTL: &str = env!("CARGO_BIN_EXE_rctl");

struct Env {
    sock: PathBuf,
    dir: tempfile::TempDir,
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(RCTL);
        c.env_remove("CONTAINER_RUNTIME_ENDPOINT")
            .env_remove("IMAGE_SERVICE_ENDPOINT")
            .env_remove("CRI_CONFIG_FILE")
            .arg("-c")
            .arg(self.dir.path().join("crictl.yaml"))
            .arg("-r")
            .arg(format!("unix://{}", self.sock.display()))
            .arg("-t")
            .arg("20s")
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        run_timeout(self.cmd(args), None, Duration::from_secs(60))
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "rctl {args:?} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("rctl {args:?}: {e}: {out}"))
    }

    /// Fails with exit code 1 and a message containing `want`.
    fn fails(&self, args: &[&str], want: &str) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "rctl {args:?}: {err}");
        assert!(err.contains(want), "rctl {args:?}: {err:?} lacks {want:?}");
        err
    }

    /// Creates a container from `config` (written as `<name>.json`) in `pod` and starts it;
    /// its id.
    fn start_in(&self, pod: &str, pod_cfg: &Path, name: &str, config: &Value) -> String {
        let cfg = self.write(&format!("{name}.json"), config);
        let id = self
            .ok(&[
                "create",
                pod,
                cfg.to_str().unwrap(),
                pod_cfg.to_str().unwrap(),
            ])
            .trim()
            .to_owned();
        self.ok(&["start", &id]);
        id
    }

    fn write(&self, name: &str, v: &Value) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
        p
    }
}

fn run_timeout(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    run_with(cmd, stdin, false, timeout)
}

/// `hold_stdin`: keep stdin open after writing (a tty exec ends its output when stdin ends).
fn run_with(mut cmd: Command, stdin: Option<&[u8]>, hold_stdin: bool, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning rctl");
    if let Some(data) = stdin {
        let mut si = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = si.write_all(&data);
            if hold_stdin {
                std::thread::sleep(Duration::from_secs(30));
            }
        });
    }
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let ro = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = so.read_to_end(&mut v);
        v
    });
    let re = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "rctl timed out after {timeout:?}; stdout {:?}, stderr {:?}",
                String::from_utf8_lossy(&ro.join().unwrap()),
                String::from_utf8_lossy(&re.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: ro.join().unwrap(),
        stderr: re.join().unwrap(),
    }
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pod_config(env: &Env, t: &Target, name: &str) -> PathBuf {
    let logs = env.dir.path().join(format!("logs-{name}"));
    std::fs::create_dir_all(&logs).unwrap();
    // Both spellings crictl accepts: snake_case fields and camelCase ones.
    env.write(
        &format!("pod-{name}.json"),
        &serde_json::json!({
            "metadata": {"name": name, "namespace": "rtest", "uid": format!("uid-{name}"), "attempt": 1},
            "log_directory": logs,
            "labels": {"app": name},
            "linux": {"cgroupParent": t.cgroup_parent},
        }),
    )
}

#[test]
fn rctl_against_containerd_cri() {
    let t0 = Instant::now();
    let reg = Registry::start().expect("registry");
    reg.push(pause_image(), "rtest/pause", "3.10").unwrap();
    reg.push(busybox_image(), "rtest/busybox", "latest")
        .unwrap();
    let busybox = reg.image_ref("rtest/busybox", "latest");
    let private = Registry::builder()
        .htpasswd("rctl", "s3cret")
        .start()
        .expect("registry with auth");
    // Another image than busybox: removing an image removes all its names.
    private.push(pause_image(), "rtest/private", "v1").unwrap();
    let cri = CriConfig::new(
        &reg.image_ref("rtest/pause", "3.10"),
        &[reg.host(), private.host()],
    );
    let ctd = Containerd::start_cri(cri.clone()).expect("containerd with CRI");
    let env = Env {
        sock: ctd.address(),
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::write(env.dir.path().join("crictl.yaml"), "").unwrap();
    let target = Target {
        rcd: false,
        cgroup_parent: cri.cgroup_parent.clone(),
        subnet: cri.subnet.clone(),
    };
    suite(&env, &target, &busybox, &private);

    let left = ctd.stop().unwrap();
    assert!(left.is_empty(), "leftovers: {left:?}");
    eprintln!("rctl suite took {:?}", t0.elapsed());
}

/// What differs between the runtimes under test.
struct Target {
    /// rcd (else containerd 1.6).
    rcd: bool,
    cgroup_parent: String,
    subnet: String,
}

/// crictl's commands end to end against one CRI runtime: `busybox` pullable, `private` a
/// registry with htpasswd `rctl:s3cret` holding `rtest/private:v1`.
/// The runtime records a container's exit a moment after its streams end.
fn wait_exited(env: &Env, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.json(&["inspect", id])["status"]["state"] != "CONTAINER_EXITED" {
        assert!(Instant::now() < deadline, "{id} did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn suite(env: &Env, t: &Target, busybox: &str, private: &Registry) {
    let busybox = busybox.to_owned();
    // version / info
    let v = env.ok(&["version"]);
    let name = if t.rcd { "rcd" } else { "containerd" };
    assert!(v.contains(&format!("RuntimeName:  {name}\n")), "{v}");
    assert!(v.contains("RuntimeApiVersion:  v1"), "{v}");
    let info = env.json(&["info"]);
    let conds = info["status"]["conditions"].as_array().unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "RuntimeReady" && c["status"] == true),
        "{info}"
    );
    if t.rcd {
        let rc = env.ok(&["runtime-config"]);
        assert!(rc.contains("cgroupfs") || rc.contains("CGROUPFS"), "{rc}");
    } else {
        // containerd 1.6 has no RuntimeConfig RPC: a clear error, not a hang.
        env.fails(&["runtime-config"], "does not implement");
    }

    // images
    let pulled = env.ok(&["pull", &busybox]);
    assert!(
        pulled.starts_with("Image is up to date for sha256:"),
        "{pulled}"
    );
    let ids = env.ok(&["images", "-q"]);
    let imgs = env.json(&["images", "-o", "json"]);
    let img = imgs["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| {
            i["repoTags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == &busybox)
        })
        .unwrap_or_else(|| panic!("{busybox} not in {imgs}"))
        .clone();
    assert!(ids.lines().any(|l| l == img["id"]), "{ids}");
    let table = env.ok(&["images"]);
    assert!(table.starts_with("IMAGE"), "{table}");
    assert!(table.contains("rtest/busybox"), "{table}");
    let insp = env.json(&["inspecti", &busybox]);
    assert_eq!(insp["status"]["id"], img["id"]);
    env.fails(&["inspecti", "no.such/image:x"], "no such image");
    let dig = env.ok(&["images", "--digests", "--no-trunc", "rtest/busybox"]);
    assert!(dig.lines().next().unwrap().contains("DIGEST"), "{dig}");
    assert!(
        dig.contains(img["id"].as_str().unwrap().trim_start_matches("sha256:")),
        "{dig}"
    );
    let verbose = env.ok(&["images", "-v"]);
    assert!(
        verbose.contains(&format!("RepoTags: {busybox}")),
        "{verbose}"
    );
    // registry auth: refused without, pulled with --creds, and with --auth + --pod-config
    let secret = private.image_ref("rtest/private", "v1");
    let denied = env.fails(&["pull", &secret], &format!("pulling image {secret}"));
    assert!(denied.contains("401"), "{denied}");
    env.ok(&["pull", "--creds", "rctl:s3cret", &secret]);
    assert!(env.ok(&["rmi", &secret]).contains("Deleted"));
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode("rctl:s3cret")
    };
    let for_pod = pod_config(env, t, "puller");
    env.ok(&[
        "pull",
        "--auth",
        &auth,
        "--pod-config",
        for_pod.to_str().unwrap(),
        &secret,
    ]);
    assert!(env.ok(&["rmi", &secret]).contains("Deleted"));
    let yaml = env.ok(&["images", "-o", "yaml"]);
    assert!(yaml.contains("repoTags:"), "{yaml}");

    // pods
    let pod_cfg = pod_config(env, t, "web");
    let pod = env
        .ok(&["runp", pod_cfg.to_str().unwrap()])
        .trim()
        .to_owned();
    assert_eq!(pod.len(), 64, "{pod}");
    let pods = env.ok(&["pods"]);
    assert!(pods.starts_with("POD ID"), "{pods}");
    assert!(
        pods.contains(&pod[..13]) && pods.contains("Ready") && pods.contains("web"),
        "{pods}"
    );
    assert_eq!(
        env.ok(&["pods", "-q", "--name", "^we", "--label", "app=web"])
            .trim(),
        pod
    );
    assert_eq!(env.ok(&["pods", "-q", "--name", "nomatch"]).trim(), "");
    let pj = env.json(&["pods", "-o", "json"]);
    assert_eq!(pj["items"][0]["state"], "SANDBOX_READY", "{pj}");
    let ip = env.json(&["inspectp", &pod]);
    let pod_ip = ip["status"]["network"]["ip"].as_str().unwrap().to_owned();
    let prefix = t.subnet.rsplit_once('.').unwrap().0;
    assert!(
        pod_ip.starts_with(prefix),
        "pod ip {pod_ip} outside {}",
        t.subnet
    );

    // containers
    let web_cfg = env.write(
        "ctr-web.json",
        &serde_json::json!({
            "metadata": {"name": "httpd"},
            "image": {"image": busybox},
            "command": ["sh", "-c", "mkdir -p /www && echo port-forward-ok > /www/index.html && echo hello-out && echo hello-err >&2 && exec httpd -f -p 8080 -h /www"],
            "log_path": "httpd/0.log",
            "linux": {},
        }),
    );
    let cid = env
        .ok(&[
            "create",
            &pod,
            web_cfg.to_str().unwrap(),
            pod_cfg.to_str().unwrap(),
        ])
        .trim()
        .to_owned();
    let created = env.json(&["ps", "-a", "-o", "json"]);
    assert_eq!(
        created["containers"][0]["state"], "CONTAINER_CREATED",
        "{created}"
    );
    env.ok(&["start", &cid]);
    let ps = env.ok(&["ps"]);
    assert!(ps.starts_with("CONTAINER"), "{ps}");
    assert!(
        ps.contains(&cid[..13])
            && ps.contains("Running")
            && ps.contains("httpd")
            && ps.contains("web"),
        "{ps}"
    );
    assert_eq!(
        env.ok(&["ps", "-q", "--pod", &pod, "--name", "http"])
            .trim(),
        cid
    );
    let st = env.json(&["inspect", &cid]);
    assert_eq!(st["status"]["state"], "CONTAINER_RUNNING", "{st}");
    assert!(st["status"]["logPath"]
        .as_str()
        .unwrap()
        .ends_with("httpd/0.log"));

    // exec -s: output and exit code
    let o = env.run(&[
        "exec",
        "-s",
        &cid,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");

    // exec over SPDY and WebSocket
    for transport in ["spdy", "websocket"] {
        let o = run_with(
            env.cmd(&[
                "exec",
                "-i",
                "-t",
                "--transport",
                transport,
                &cid,
                "sh",
                "-c",
                "read x; echo tty-$((x+2)); [ -t 0 ] && exit 4",
            ]),
            Some(b"40\n"),
            true,
            Duration::from_secs(30),
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("tty-42"),
            "{transport}: {out:?} {} {:?}",
            String::from_utf8_lossy(&o.stderr),
            o.status
        );
        assert_eq!(o.status.code(), Some(4), "{transport}: {out:?}");
        let o = run_timeout(
            env.cmd(&[
                "exec",
                "--transport",
                transport,
                &cid,
                "sh",
                "-c",
                "echo a; echo b >&2; exit 5",
            ]),
            None,
            Duration::from_secs(30),
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout), "a\n", "{transport}");
        assert_eq!(String::from_utf8_lossy(&o.stderr), "b\n", "{transport}");
        assert_eq!(o.status.code(), Some(5), "{transport}");
    }
    // stdin to EOF, non-tty (SPDY closes the stdin stream)
    let o = run_timeout(
        env.cmd(&["exec", "-i", &cid, "cat"]),
        Some(b"through-stdin"),
        Duration::from_secs(30),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "through-stdin");
    assert!(o.status.success());
    env.fails(&["exec", "-s", &cid, "/no/such/binary"], "");

    // logs
    let logs = env.run(&["logs", &cid]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "hello-out\n");
    assert_eq!(String::from_utf8_lossy(&logs.stderr), "hello-err\n");
    let tail = env.run(&["logs", "--tail", "1", "-t", &cid]);
    // The two streams are written by separate copiers: either may be last.
    let line = format!(
        "{}{}",
        String::from_utf8_lossy(&tail.stdout),
        String::from_utf8_lossy(&tail.stderr)
    );
    assert_eq!(line.lines().count(), 1, "{line:?}");
    assert!(
        line.starts_with("20") && line.contains(" hello-"),
        "{line:?}"
    );
    let only = env.run(&["logs", "-s", "stderr", &cid]);
    assert!(only.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&only.stderr), "hello-err\n");

    // logs -f follows a container writing over time and ends when it exits
    let tick_cfg = env.write(
        "ctr-tick.json",
        &serde_json::json!({
            "metadata": {"name": "ticker"},
            "image": {"image": busybox},
            "command": ["sh", "-c", "for i in 1 2 3 4 5 6; do echo tick-$i; sleep 0.3; done"],
            "log_path": "ticker/0.log",
        }),
    );
    let tick = env
        .ok(&[
            "create",
            &pod,
            tick_cfg.to_str().unwrap(),
            pod_cfg.to_str().unwrap(),
        ])
        .trim()
        .to_owned();
    env.ok(&["start", &tick]);
    let o = run_timeout(
        env.cmd(&["logs", "-f", &tick]),
        None,
        Duration::from_secs(30),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        out, "tick-1\ntick-2\ntick-3\ntick-4\ntick-5\ntick-6\n",
        "{out:?}"
    );

    // port-forward to busybox httpd
    let mut pf = KillOnDrop(
        env.cmd(&["port-forward", &pod, ":8080"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut first = String::new();
    {
        let mut so = pf.0.stdout.take().unwrap();
        let mut b = [0u8; 1];
        while !first.ends_with('\n') {
            if so.read(&mut b).unwrap() == 0 {
                break;
            }
            first.push(b[0] as char);
        }
        std::thread::spawn(move || std::io::copy(&mut so, &mut std::io::sink()));
    }
    let port: u16 = first
        .trim()
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|r| r.split_once(' '))
        .and_then(|(p, _)| p.parse().ok())
        .unwrap_or_else(|| panic!("port-forward said {first:?}"));
    for _ in 0..2 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(
            resp.contains("200") && resp.contains("port-forward-ok"),
            "{resp:?}"
        );
    }
    drop(pf);
    if !t.rcd {
        // containerd 1.6 has no SPDY-in-WebSocket tunnel: a clear refusal, not a hang.
        let o = run_timeout(
            env.cmd(&["port-forward", "--transport", "websocket", &pod, ":8080"]),
            None,
            Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("refused port forwarding over websocket"),
            "{err}"
        );
    }
    // A port nothing listens on: the local connection closes and the runtime's error is shown.
    let mut pf = KillOnDrop(
        env.cmd(&["port-forward", &pod, ":9999"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut so = pf.0.stdout.take().unwrap();
    let mut first = vec![];
    let mut b = [0u8; 1];
    while first.last() != Some(&b'\n') && so.read(&mut b).unwrap() == 1 {
        first.push(b[0]);
    }
    let first = String::from_utf8_lossy(&first).into_owned();
    let port: u16 = first
        .trim()
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|r| r.split_once(' '))
        .and_then(|(p, _)| p.parse().ok())
        .unwrap_or_else(|| panic!("port-forward said {first:?}"));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut resp = vec![];
    let _ = s.read_to_end(&mut resp);
    assert!(resp.is_empty(), "{resp:?}");
    std::thread::sleep(Duration::from_millis(200));
    let _ = pf.0.kill();
    let mut err = String::new();
    pf.0.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("error forwarding port 9999"), "{err:?}");
    drop(pf);

    // stats, update
    let stats = env.ok(&["stats"]);
    assert!(
        stats.starts_with("CONTAINER") && stats.contains("httpd"),
        "{stats}"
    );
    let sj = env.json(&["stats", "-o", "json", "--id", &cid]);
    assert_eq!(sj["stats"][0]["attributes"]["id"], cid.as_str(), "{sj}");
    let sp = env.run(&["statsp"]);
    assert!(
        sp.status.success() || String::from_utf8_lossy(&sp.stderr).contains("does not implement"),
        "{sp:?}"
    );
    env.ok(&["update", "--memory", "64m", &cid]);

    if t.rcd {
        events_stream(env, &pod, &pod_cfg, &busybox);
    } else {
        // Debian's containerd 1.6 has no GetContainerEvents: a clear error naming the endpoint.
        let ev = run_timeout(env.cmd(&["events"]), None, Duration::from_secs(5 * 60));
        let err = String::from_utf8_lossy(&ev.stderr);
        assert_eq!(ev.status.code(), Some(1), "{err}");
        assert!(
            err.contains("does not implement") && err.contains(&format!("{}", env.sock.display())),
            "{err}"
        );
    }
    assert!(
        String::from_utf8_lossy(&sp.stdout).contains("web"),
        "{sp:?}"
    );

    // attach: stdin to a container reading one line, over both transports
    for transport in ["spdy", "websocket"] {
        let cat = env.start_in(
            &pod,
            &pod_cfg,
            &format!("ctr-cat-{transport}"),
            &serde_json::json!({
                "metadata": {"name": format!("cat-{transport}")},
                "image": {"image": busybox},
                // lingers after its line: containerd 1.6 may end an attach at the exit before
                // the last output has reached it (seen once under load, WebSocket)
                "command": ["sh", "-c", "read x; echo got-$x; sleep 1"],
                "stdin": true,
                "log_path": format!("cat-{transport}/0.log"),
            }),
        );
        // The container ends by itself once it has read a line: attach then ends too.
        let o = run_with(
            env.cmd(&["attach", "-i", "--transport", transport, &cat]),
            Some(b"attached-input\n"),
            true,
            Duration::from_secs(30),
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "got-attached-input\n",
            "{transport}: {o:?}"
        );
        assert!(o.status.success(), "{o:?}");
        wait_exited(env, &cat);
        env.ok(&["rm", "-f", &cat]);

        // a terminal: input echoed by the tty, stdin_once closes it when the client's ends
        let tty = env.start_in(
            &pod,
            &pod_cfg,
            &format!("ctr-tty-{transport}"),
            &serde_json::json!({
                "metadata": {"name": format!("tty-{transport}")},
                "image": {"image": busybox},
                "command": ["sh", "-c", "read x; [ -t 0 ] && echo tty-$x; sleep 1"],
                "stdin": true,
                "stdin_once": true,
                "tty": true,
                "log_path": format!("tty-{transport}/0.log"),
            }),
        );
        let o = run_with(
            env.cmd(&["attach", "-i", "-t", "--transport", transport, &tty]),
            Some(b"on-a-tty\n"),
            true,
            Duration::from_secs(30),
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("tty-on-a-tty\r\n"),
            "{transport}: {out:?} {}",
            String::from_utf8_lossy(&o.stderr)
        );
        // removed once it has ended by itself: containerd 1.6's runc shim answered a kill that
        // raced the tty container's own exit with "ttrpc: closed" (1 run in 3 here)
        wait_exited(env, &tty);
        env.ok(&["rm", "-f", &tty]);

        // stdin_once: the end of the client's input is the end of the container's.
        // Debian's containerd 1.6 kept the container's stdin open here over both transports
        // (the attach then waits for the container forever): checked against rcd only.
        if !t.rcd {
            continue;
        }
        let once = env.start_in(
            &pod,
            &pod_cfg,
            &format!("ctr-once-{transport}"),
            &serde_json::json!({
                "metadata": {"name": format!("once-{transport}")},
                "image": {"image": busybox},
                "command": ["sh", "-c", "cat; echo cat-ended; sleep 1"],
                "stdin": true,
                "stdin_once": true,
                "log_path": format!("once-{transport}/0.log"),
            }),
        );
        let o = run_timeout(
            env.cmd(&["attach", "-i", "--transport", transport, &once]),
            Some(b"line-1\nline-2\n"),
            Duration::from_secs(30),
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "line-1\nline-2\ncat-ended\n",
            "{transport}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        env.ok(&["rm", "-f", &once]);
    }

    // bad inputs against a live runtime
    env.fails(&["inspect", "0000000000000000dead"], "0000000000000000dead");
    env.fails(
        &["inspectp", "0000000000000000dead"],
        "0000000000000000dead",
    );
    env.fails(&["logs", "0000000000000000dead"], "0000000000000000dead");
    env.fails(&["rm", &cid], "is running");
    env.fails(&["rmp", &pod], "is running");

    // teardown through rctl
    env.ok(&["stop", "-t", "1", &cid]);
    let exited = env.json(&["inspect", &cid]);
    assert_eq!(exited["status"]["state"], "CONTAINER_EXITED");
    env.ok(&["rm", &cid, &tick]);
    assert_eq!(env.ok(&["ps", "-a", "-q"]).trim(), "");
    env.ok(&["stopp", &pod]);
    assert!(env.ok(&["pods"]).contains("NotReady"));
    env.ok(&["rmp", &pod]);
    assert_eq!(env.ok(&["pods", "-q"]).trim(), "");
    let rmi = env.ok(&["rmi", &busybox]);
    assert!(rmi.contains("Deleted"), "{rmi}");

    // run = runp + create + start; rm -f / rmp -f -a clean it all
    let run_pod = pod_config(env, t, "runner");
    let sleeper = env.write(
        "ctr-sleep.json",
        &serde_json::json!({"metadata": {"name": "sleeper"}, "image": {"image": busybox}, "command": ["sleep", "60"]}),
    );
    let rid = env
        .ok(&["run", sleeper.to_str().unwrap(), run_pod.to_str().unwrap()])
        .trim()
        .to_owned();
    assert!(env.ok(&["ps", "-q"]).contains(&rid));
    env.ok(&["rm", "-f", "-a"]);
    env.ok(&["rmp", "-f", "-a"]);
    assert_eq!(env.ok(&["pods", "-q"]).trim(), "");
}

/// `rctl events` streams GetContainerEvents: a container created and started while it runs
/// shows up.
fn events_stream(env: &Env, pod: &str, pod_cfg: &Path, busybox: &str) {
    let mut ev = KillOnDrop(
        env.cmd(&["events", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let so = ev.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(so).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // the subscription is live once it has seen an event: create containers until one shows
    let cfg = env.write(
        "ctr-ev.json",
        &serde_json::json!({"metadata": {"name": "ev"}, "image": {"image": busybox}, "command": ["true"]}),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    'outer: loop {
        assert!(Instant::now() < deadline, "no container event: {seen}");
        let id = env
            .ok(&[
                "create",
                pod,
                cfg.to_str().unwrap(),
                pod_cfg.to_str().unwrap(),
            ])
            .trim()
            .to_owned();
        env.ok(&["rm", &id]);
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            seen.push_str(&l);
            if seen.contains(&id) && seen.contains("CONTAINER_CREATED_EVENT") {
                break 'outer;
            }
        }
    }
    drop(ev);
}

/// The test's own CNI bridge for rcd's pods (removed with the rules naming its subnet).
const RCD_BRIDGE: &str = "rctlrcd0";
const RCD_SUBNET: &str = "10.233.7.0/24";

fn purge_rcd_net() {
    let _ = Command::new("ip")
        .args(["link", "del", RCD_BRIDGE])
        .stderr(Stdio::null())
        .status();
    let prefix = RCD_SUBNET.rsplit_once('.').unwrap().0.to_owned() + ".";
    for table in ["nat", "filter"] {
        let out = Command::new("iptables-save")
            .args(["-t", table])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.starts_with("-A ") && line.contains(&prefix) {
                let _ = Command::new("sh")
                    .arg("-c")
                    .arg(format!("iptables -w -t {table} -D {}", &line[3..]))
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// A private rcd (its own root, state, socket, CNI bridge and cgroup parent); killed on drop.
struct RcdDaemon {
    child: Child,
    log: PathBuf,
}

impl Drop for RcdDaemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_rcd(dir: &Path) -> (RcdDaemon, PathBuf) {
    purge_rcd_net();
    let conf = dir.join("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    let net = rcd::cni::BridgeNetwork {
        name: "rctl-rcd".into(),
        bridge: RCD_BRIDGE.into(),
        subnets: vec![RCD_SUBNET.into()],
        ipam_data_dir: Some(dir.join("ipam")),
    };
    std::fs::write(
        conf.join("10-rctl.conflist"),
        net.render().unwrap().to_bytes(),
    )
    .unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "log_level = \"debug\"\n\n[cri]\ncni_conf_dir = {:?}\ncgroup_parent = \"/rctl-rcd\"\n",
            conf.display().to_string()
        ),
    )
    .unwrap();
    let sock = dir.join("state/rcd.sock");
    let log = dir.join("rcd.log");
    let rcd_bin = Path::new(RCTL).with_file_name("rcd");
    assert!(
        rcd_bin.exists(),
        "{} missing: build it first (cargo build --workspace --bins)",
        rcd_bin.display()
    );
    let child = Command::new(&rcd_bin)
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--address")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let d = RcdDaemon { child, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "rcd did not start: {}",
            std::fs::read_to_string(&d.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (d, sock)
}

#[test]
fn rctl_against_rcd_cri() {
    let t0 = Instant::now();
    let reg = Registry::start().expect("registry");
    reg.push(busybox_image(), "rtest/busybox", "latest")
        .unwrap();
    let busybox = reg.image_ref("rtest/busybox", "latest");
    let private = Registry::builder()
        .htpasswd("rctl", "s3cret")
        .start()
        .expect("registry with auth");
    private.push(pause_image(), "rtest/private", "v1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (daemon, sock) = start_rcd(dir.path());
    let env = Env {
        sock,
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::write(env.dir.path().join("crictl.yaml"), "").unwrap();
    let target = Target {
        rcd: true,
        cgroup_parent: "/rctl-rcd".into(),
        subnet: RCD_SUBNET.into(),
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        suite(&env, &target, &busybox, &private)
    }));
    if r.is_err() {
        let _ = env.run(&["rm", "-f", "-a"]);
        let _ = env.run(&["rmp", "-f", "-a"]);
    }
    let log = daemon.log.clone();
    drop(daemon);
    purge_rcd_net();
    if let Err(e) = r {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!(
            "rcd log (end):\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
        std::panic::resume_unwind(e);
    }
    eprintln!("rctl suite against rcd took {:?}", t0.elapsed());
}

#[test]
fn rctl_bad_inputs_without_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let rctl = |args: &[&str]| {
        let mut c = Command::new(RCTL);
        c.env_remove("CONTAINER_RUNTIME_ENDPOINT")
            .env_remove("IMAGE_SERVICE_ENDPOINT")
            .env_remove("CRI_CONFIG_FILE")
            .args(args);
        run_timeout(c, None, Duration::from_secs(30))
    };
    let fails = |args: &[&str], want: &str| {
        let o = rctl(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
    };
    let gone = dir.path().join("gone.sock");
    let ep = format!("unix://{}", gone.display());
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    let e = empty.to_str().unwrap();
    fails(
        &["-c", e, "-r", &ep, "version"],
        &format!("cannot reach the runtime at {ep}: no such socket"),
    );
    fails(&["-c", e, "-r", &ep, "pods"], &ep);
    fails(
        &["-c", e, "-r", "tcp://1.2.3.4:5", "version"],
        "only unix://",
    );
    // nothing set: rcd's default socket, and the message says what to set
    let o = rctl(&["-c", e, "version"]);
    if !Path::new("/run/rcd/rcd.sock").exists() {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("CONTAINER_RUNTIME_ENDPOINT"), "{err}");
    }
    // the endpoint from the config file / env
    let cfg = dir.path().join("crictl.yaml");
    std::fs::write(&cfg, format!("runtime-endpoint: {ep}\ntimeout: 3\n")).unwrap();
    fails(&["-c", cfg.to_str().unwrap(), "version"], &ep);
    let mut c = Command::new(RCTL);
    c.env("CONTAINER_RUNTIME_ENDPOINT", &ep)
        .args(["-c", e, "version"]);
    let o = run_timeout(c, None, Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&ep));
    // config files
    fails(
        &[
            "-c",
            dir.path().join("nope.yaml").to_str().unwrap(),
            "version",
        ],
        "reading config file",
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "timeout: soon\n").unwrap();
    fails(&["-c", bad.to_str().unwrap(), "version"], "timeout");
    std::fs::write(&bad, "runtime-endpoint: [\n").unwrap();
    fails(&["-c", bad.to_str().unwrap(), "version"], "not valid YAML");
    // config get/set/list
    let c2 = dir.path().join("sub/new.yaml");
    let c2s = c2.to_str().unwrap();
    let ok = |args: &[&str]| {
        let o = rctl(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&[
        "-c",
        c2s,
        "config",
        "--set",
        "runtime-endpoint=unix:///x.sock,timeout=7",
    ]);
    ok(&["-c", c2s, "config", "debug", "true"]);
    assert_eq!(ok(&["-c", c2s, "config", "--get", "timeout"]), "7\n");
    assert_eq!(
        ok(&["-c", c2s, "config", "--get", "runtime-endpoint"]),
        "unix:///x.sock\n"
    );
    let list = ok(&["-c", c2s, "config", "--list"]);
    assert!(list.contains("debug") && list.contains("true"), "{list}");
    fails(
        &["-c", c2s, "config", "--set", "bogus=1"],
        "unknown config key",
    );
    fails(&["-c", c2s, "config", "--set", "timeout=x"], "timeout");
    // bad pod/container configs are named before any call
    let pod = dir.path().join("pod.json");
    std::fs::write(&pod, r#"{"metadata": {"name": 7}}"#).unwrap();
    fails(
        &["-c", e, "-r", &ep, "runp", pod.to_str().unwrap()],
        "metadata.name",
    );
    std::fs::write(&pod, "{not json").unwrap();
    fails(
        &["-c", e, "-r", &ep, "runp", pod.to_str().unwrap()],
        "neither JSON",
    );
    fails(
        &["-c", e, "-r", &ep, "runp", "/no/such/pod.json"],
        "/no/such/pod.json",
    );
    // bad flags and values exit 1
    fails(&["pods", "--bogus"], "--bogus");
    fails(
        &["-c", e, "-r", &ep, "pods", "-s", "sideways"],
        "invalid pod state",
    );
    fails(
        &["-c", e, "-r", &ep, "pods", "--label", "novalue"],
        "invalid label",
    );
    fails(
        &["-c", e, "-r", &ep, "update", "--memory", "12q", "x"],
        "invalid size",
    );
    fails(
        &["-c", e, "-r", &ep, "port-forward", "p", "x:80"],
        "invalid port",
    );
    fails(
        &["-c", e, "-r", &ep, "pull", "--creds", ":pw", "img"],
        "--creds",
    );
    // completion
    let comp = ok(&["completion", "bash"]);
    assert!(comp.contains("rctl"));
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Not a test: timings of rctl against containerd 1.6's CRI (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn rctl_containerd_timings() {
    const PODS: usize = 10;
    let reg = Registry::start().expect("registry");
    reg.push(pause_image(), "rtest/pause", "3.10").unwrap();
    reg.push(busybox_image(), "rtest/busybox", "latest")
        .unwrap();
    let busybox = reg.image_ref("rtest/busybox", "latest");
    let cri = CriConfig::new(&reg.image_ref("rtest/pause", "3.10"), &[reg.host()]);
    let ctd = Containerd::start_cri(cri.clone()).expect("containerd with CRI");
    let env = Env {
        sock: ctd.address(),
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::write(env.dir.path().join("crictl.yaml"), "").unwrap();
    let target = Target {
        rcd: false,
        cgroup_parent: cri.cgroup_parent.clone(),
        subnet: cri.subnet.clone(),
    };
    let timed = |args: &[&str]| {
        let t = Instant::now();
        let out = env.ok(args);
        (t.elapsed(), out)
    };
    let version = median((0..20).map(|_| timed(&["version"]).0).collect());
    env.ok(&["pull", &busybox]);
    let ctr = env.write(
        "ctr.json",
        &serde_json::json!({"metadata": {"name": "sleeper"}, "image": {"image": busybox}, "command": ["sleep", "600"]}),
    );
    let mut starts = vec![];
    for i in 0..PODS {
        let pod_cfg = pod_config(&env, &target, &format!("bench{i}"));
        let t = Instant::now();
        let pod = env
            .ok(&["runp", pod_cfg.to_str().unwrap()])
            .trim()
            .to_owned();
        let cid = env
            .ok(&[
                "create",
                &pod,
                ctr.to_str().unwrap(),
                pod_cfg.to_str().unwrap(),
            ])
            .trim()
            .to_owned();
        env.ok(&["start", &cid]);
        starts.push(t.elapsed());
    }
    let total: Duration = starts.iter().sum();
    let pods = median((0..20).map(|_| timed(&["pods", "-q"]).0).collect());
    let ps = median((0..20).map(|_| timed(&["ps", "-q"]).0).collect());
    let cid = env.ok(&["ps", "-q", "-l"]).trim().to_owned();
    let exec = median(
        (0..10)
            .map(|_| timed(&["exec", "-s", &cid, "true"]).0)
            .collect(),
    );
    let exec_spdy = median((0..10).map(|_| timed(&["exec", &cid, "true"]).0).collect());
    eprintln!(
        "rctl vs containerd 1.6 CRI: version {version:?}; pod+container to running: median {:?}, {PODS} in a row {total:?}; with {PODS} pods: pods -q {pods:?}, ps -q {ps:?}; exec -s {exec:?}; exec (spdy) {exec_spdy:?}",
        median(starts.clone())
    );
    let t = Instant::now();
    env.ok(&["rm", "-f", "-a"]);
    env.ok(&["rmp", "-f", "-a"]);
    eprintln!("rm -f -a + rmp -f -a of {PODS} pods: {:?}", t.elapsed());
    let left = ctd.stop().unwrap();
    assert!(left.is_empty(), "{left:?}");
}
