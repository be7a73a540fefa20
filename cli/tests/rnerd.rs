//! rnerd through its real binary against a real `rcd` started here (build it and the shim
//! first: `cargo build -p rcd -p rshim`; both are looked for next to rnerd), with busybox
//! served by a loopback registry.

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

/// A daemon of the test's own, with busybox pulled.
struct Env {
    n: u8,
    rcd: Option<Child>,
    address: PathBuf,
    image: String,
    registry: String,
    log: PathBuf,
    dir: tempfile::TempDir,
    _reg: Registry,
}

/// Test `n`'s network pool (10.<140+n>.0.0/16) and bridge prefix (`rn<nn>-`): tests run in
/// parallel, each with an rcd of its own, and must not share bridges or subnets.
fn pool_prefix(n: u8) -> String {
    format!("10.{}.", 140 + n)
}

fn bridge_prefix(n: u8) -> String {
    format!("rn{n:02}-")
}

/// Removes what test `n` left on the host (a killed run): bridges, rules, per-pod chains.
fn purge_host(n: u8) {
    hostnet::purge_test_net(&bridge_prefix(n), &pool_prefix(n));
}

/// rcd with its state under `dir`, up once its socket answers.
fn spawn_rcd(config: &Path, dir: &Path, log: &Path) -> Child {
    let state = dir.join("state");
    let address = state.join("rcd.sock");
    let mut cmd = Command::new(sibling("rcd"));
    cmd.arg("--config")
        .arg(config)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(&state)
        .arg("--address")
        .arg(&address)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        );
    let mut child = spawn_tied(cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&address).is_err() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "rcd exited {st}:\n{}",
                std::fs::read_to_string(log).unwrap()
            );
        }
        assert!(Instant::now() < deadline, "rcd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// SIGTERM, then SIGKILL after 5 s; reaped.
fn stop_rcd(mut child: Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn env(n: u8) -> Env {
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
    let child = spawn_rcd(&config, dir.path(), &log);
    let e = Env {
        n,
        rcd: Some(child),
        address,
        image,
        registry,
        log,
        dir,
        _reg: reg,
    };
    e.ok(&["pull", "-q", &e.image]);
    e
}

impl Env {
    /// Stops rcd (its tasks keep running under their shims) and starts it again.
    fn restart_rcd(&mut self) {
        stop_rcd(self.rcd.take().expect("rcd running"));
        let config = self.dir.path().join("config.toml");
        self.rcd = Some(spawn_rcd(&config, self.dir.path(), &self.log));
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(RNERD);
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--insecure-registry")
            .arg(&self.registry)
            .args(args)
            .env_remove("RCD_NAMESPACE")
            .env("RCTR_FIFO_DIR", self.dir.path().join("fifo"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn rnerd(&self, args: &[&str]) -> Output {
        spawn_tied(self.cmd(args))
            .unwrap()
            .wait_with_output()
            .unwrap()
    }

    fn rcd_log(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Expects success; stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.rnerd(args);
        assert!(
            out.status.success(),
            "rnerd {args:?}: {}\nstdout: {}\nstderr: {}\nrcd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.rcd_log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Expects exit `code` and a message on stderr; the message.
    fn fails(&self, code: i32, args: &[&str]) -> String {
        let out = self.rnerd(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "rnerd {args:?}\nstdout: {}\nstderr: {err}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!err.trim().is_empty(), "rnerd {args:?}: no message");
        err
    }

    fn code(&self, args: &[&str]) -> Option<i32> {
        self.rnerd(args).status.code()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(child) = self.rcd.take() {
            // whatever a failed test left: removed with its tasks
            if let Ok(out) = self.cmd(&["ps", "-aq", "--no-trunc"]).output() {
                for id in String::from_utf8_lossy(&out.stdout).lines() {
                    let _ = self.cmd(&["rm", "-f", id]).output();
                }
            }
            stop_rcd(child);
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
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_rm_output_and_exit_codes() {
    let e = env(1);
    let out = e.rnerd(&["run", "--rm", &e.image, "echo", "hello", "-n"]);
    assert!(out.status.success(), "{out:?}\n{}", e.rcd_log());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello -n\n");
    // stderr stays stderr; the container's exit code is rnerd's
    let out = e.rnerd(&["run", "--rm", &e.image, "sh", "-c", "echo oops >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    // flags reach the container
    let out = e.ok(&[
        "run",
        "--rm",
        "-e",
        "A=1",
        "-w",
        "/tmp",
        "-u",
        "1000:1000",
        "-h",
        "box",
        &e.image,
        "sh",
        "-c",
        "echo $A $(pwd) $(id -u):$(id -g) $(hostname)",
    ]);
    assert_eq!(out, "1 /tmp 1000:1000 box\n");
    let out = e.ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "echo",
        &e.image,
        "via",
        "entrypoint",
    ]);
    assert_eq!(out, "via entrypoint\n");
    let err = e.fails(127, &["run", "--rm", &e.image, "no-such-command"]);
    assert!(err.contains("no-such-command"), "{err}");
    // nothing is left by --rm
    assert_eq!(e.ok(&["ps", "-aq"]), "");
    // a bad flag: docker's 125, with clap's message
    let err = e.fails(125, &["run", "--rm", "--bogus", &e.image, "true"]);
    assert!(err.contains("--bogus"), "{err}");
    // stdin only with -i
    let mut cmd = e.cmd(&["run", "--rm", "-i", &e.image, "sh", "-c", "cat; echo done"]);
    cmd.stdin(Stdio::piped());
    let mut child = spawn_tied(cmd).unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"in\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in\ndone\n");
}

#[test]
fn detached_ps_exec_inspect_stop_start_rm() {
    let e = env(2);
    let id = e.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-l",
        "tier=front",
        &e.image,
        "sleep",
        "300",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "{id}");
    let ps = e.ok(&["ps"]);
    let header = ps.lines().next().unwrap();
    for col in [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ] {
        assert!(header.contains(col), "{ps}");
    }
    let row = ps.lines().nth(1).unwrap();
    assert!(
        row.starts_with(&id[..12]) && row.contains("Up ") && row.ends_with("web"),
        "{ps}"
    );
    assert!(row.contains("\"sleep 300\""), "{ps}");
    assert_eq!(
        e.ok(&["ps", "--format", "{{.Names}} {{.State}}"]),
        "web running\n"
    );
    assert_eq!(
        e.ok(&["ps", "-q", "--filter", "label=tier=front"]),
        format!("{}\n", &id[..12])
    );
    assert_eq!(e.ok(&["ps", "-q", "--filter", "status=exited"]), "");
    // a name, the id or a prefix
    assert_eq!(e.ok(&["exec", "web", "echo", "hi"]), "hi\n");
    assert_eq!(e.ok(&["exec", &id[..5], "sh", "-c", "echo $X",]), "\n");
    assert_eq!(
        e.ok(&[
            "exec",
            "-e",
            "X=2",
            "-w",
            "/etc",
            id,
            "sh",
            "-c",
            "echo $X $(pwd)"
        ]),
        "2 /etc\n"
    );
    assert_eq!(e.code(&["exec", "web", "sh", "-c", "exit 3"]), Some(3));
    e.fails(127, &["exec", "web", "no-such-command"]);
    // inspect: docker's shape
    let v: serde_json::Value = serde_json::from_str(&e.ok(&["inspect", "web"])).unwrap();
    let c = &v[0];
    assert_eq!(c["Id"], id);
    assert_eq!(c["Name"], "/web");
    assert_eq!(c["State"]["Status"], "running");
    assert_eq!(c["State"]["Running"], true);
    assert!(c["State"]["Pid"].as_u64().unwrap() > 0);
    assert_eq!(c["Config"]["Labels"]["tier"], "front");
    assert_eq!(c["Config"]["Cmd"], serde_json::json!(["sleep", "300"]));
    assert_eq!(
        e.ok(&["inspect", "-f", "{{.State.Status}} {{.Name}}", "web"]),
        "running /web\n"
    );
    // the name is taken
    let err = e.fails(125, &["run", "-d", "--name", "web", &e.image, "true"]);
    assert!(err.contains("\"web\" is taken"), "{err}");
    // four clients racing for one name: exactly one wins, the others are told it is taken
    let racers: Vec<_> = (0..4)
        .map(|_| spawn_tied(e.cmd(&["create", "--name", "race", &e.image, "true"])).unwrap())
        .collect();
    let outs: Vec<Output> = racers
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let won = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(won, 1, "{outs:?}");
    for o in outs.iter().filter(|o| !o.status.success()) {
        assert_eq!(o.status.code(), Some(125), "{o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("\"race\" is taken"),
            "{o:?}"
        );
    }
    e.ok(&["rm", "race"]);
    // top and stats see it
    let top = e.ok(&["top", "web"]);
    assert!(top.contains("sleep 300"), "{top}");
    let stats = e.ok(&["stats", "--no-stream"]);
    assert!(
        stats.contains("web") && stats.contains("MEM USAGE"),
        "{stats}"
    );
    // pause / unpause
    e.ok(&["pause", "web"]);
    assert_eq!(e.ok(&["ps", "--format", "{{.State}}"]), "paused\n");
    e.fails(125, &["exec", "web", "true"]);
    e.ok(&["unpause", "web"]);
    // stop: SIGTERM is ignored by sleep as pid 1, so SIGKILL after -t
    let t = Instant::now();
    assert_eq!(e.ok(&["stop", "-t", "1", "web"]), "web\n");
    assert!(t.elapsed() < Duration::from_secs(8));
    let v: serde_json::Value = serde_json::from_str(&e.ok(&["inspect", "web"])).unwrap();
    assert_eq!(v[0]["State"]["Status"], "exited");
    assert_eq!(v[0]["State"]["ExitCode"], 137);
    let row = e.ok(&["ps", "-a", "--format", "{{.Status}}"]);
    assert!(row.starts_with("Exited (137)"), "{row}");
    assert_eq!(e.ok(&["ps", "-q"]), "");
    // start again, rename, kill, wait
    e.ok(&["start", "web"]);
    assert_eq!(e.ok(&["ps", "--format", "{{.Names}}"]), "web\n");
    e.ok(&["rename", "web", "web2"]);
    e.fails(125, &["rm", "web2"]);
    e.ok(&["kill", "-s", "TERM", "web2"]);
    e.ok(&["kill", "web2"]);
    assert_eq!(e.ok(&["wait", "web2"]), "137\n");
    assert_eq!(e.ok(&["rm", "web2"]), "web2\n");
    assert_eq!(e.ok(&["ps", "-aq"]), "");
    // create + start -a: the container's exit code
    let id = e.ok(&[
        "create",
        "--name",
        "c1",
        &e.image,
        "sh",
        "-c",
        "echo created; exit 4",
    ]);
    assert_eq!(id.trim().len(), 64);
    assert_eq!(e.ok(&["ps", "-a", "--format", "{{.Status}}"]), "Created\n");
    let out = e.rnerd(&["start", "-a", "c1"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "created\n");
    e.ok(&["rm", "-f", "c1"]);
    // rm -f of a running one
    e.ok(&["run", "-d", "--name", "r", &e.image, "sleep", "300"]);
    e.ok(&["rm", "-f", "r"]);
    assert_eq!(e.ok(&["ps", "-aq"]), "");
}

#[test]
fn bad_flags_and_unknown_names_exit_125() {
    let e = env(3);
    for args in [
        vec!["stop", "nope"],
        vec!["start", "nope"],
        vec!["rm", "nope"],
        vec!["kill", "nope"],
        vec!["exec", "nope", "true"],
        vec!["logs", "nope"],
        vec!["wait", "nope"],
        vec!["pause", "nope"],
        vec!["port", "nope"],
        vec!["top", "nope"],
        vec!["rename", "nope", "x"],
        vec!["inspect", "nope"],
    ] {
        let err = e.fails(125, &args);
        assert!(
            err.contains("no such container \"nope\"")
                || err.contains("no such container or image"),
            "{args:?}: {err}"
        );
    }
    let bad: &[(&[&str], &str)] = &[
        (&["-p", "99999:80"], "invalid port"),
        (&["-p", "80/sctp"], "tcp or udp"),
        (&["--restart", "sometimes"], "invalid restart policy"),
        (&["--pull", "sometimes"], "invalid --pull"),
        (&["-m", "lots"], "invalid memory"),
        (&["--cpus", "0"], "invalid --cpus"),
        (&["--name", "a/b"], "invalid container name"),
        (&["-v", "data:relative"], "must be absolute"),
        (&["--mount", "type=nfs,target=/x"], "type \"nfs\""),
        (&["--env-file", "/nonexistent/env"], "/nonexistent/env"),
        (&["--rm", "--restart", "always"], "exclude each other"),
        (&["--stop-signal", "SIGNOPE"], "invalid signal"),
    ];
    for (flags, want) in bad {
        let mut args = vec!["run", "--rm"];
        if flags[0] == "--rm" {
            args.pop();
        }
        args.extend_from_slice(flags);
        args.extend([e.image.as_str(), "true"]);
        let err = e.fails(125, &args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // nothing was made by the refused runs
    assert_eq!(e.ok(&["ps", "-aq"]), "");
    let err = e.fails(
        125,
        &[
            "run",
            "--rm",
            "--pull",
            "never",
            "example.invalid/none:1",
            "true",
        ],
    );
    assert!(err.contains("not found") && err.contains("pull"), "{err}");
    let missing = format!("{}/library/nope:1", e.registry);
    let err = e.fails(125, &["run", "--rm", &missing, "true"]);
    assert!(
        err.contains("nope") && err.contains("check the name"),
        "{err}"
    );
    let err = e.fails(125, &["pull", &missing]);
    assert!(
        err.contains("nope") && err.contains("check the name"),
        "{err}"
    );
    let err = e.fails(125, &["ps", "--filter", "colour=red"]);
    assert!(err.contains("invalid filter"), "{err}");
    let err = e.fails(125, &["rmi", "nope"]);
    assert!(err.contains("no such image"), "{err}");
    let err = e.fails(125, &["ps", "--bogus"]);
    assert!(err.contains("--bogus"), "{err}");
    let err = e.fails(125, &["bogus-command"]);
    assert!(err.contains("bogus-command"), "{err}");
    // no daemon
    let out = Command::new(RNERD)
        .args(["--address", "/nonexistent/rcd.sock", "ps"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("daemon not running") && err.contains("--address"),
        "{err}"
    );
    // help and completions are not errors
    let out = Command::new(RNERD)
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Examples"));
    let out = Command::new(RNERD)
        .args(["completion", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("rnerd"));
}

/// rnerd under `script`, on a pty of its own: (exit code, what the terminal showed).
fn on_pty(e: &Env, args: &[&str], input: &[u8]) -> (Option<i32>, String) {
    let mut line = format!(
        "stty cols 101 rows 31; RCTR_FIFO_DIR={} {RNERD} --address {}",
        e.dir.path().join("fifo").display(),
        e.address.display()
    );
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let mut cmd = Command::new("script");
    cmd.args(["-qefc", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_tied(cmd).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    {
        use std::io::Write;
        stdin.write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).replace('\r', ""),
    )
}

#[test]
fn terminal_run_and_exec_it() {
    let e = env(4);
    let (code, shown) = on_pty(
        &e,
        &[
            "run",
            "--rm",
            "-t",
            &e.image,
            "sh",
            "-c",
            "tty; stty size; exit 5",
        ],
        b"",
    );
    assert_eq!(code, Some(5), "{shown}");
    assert!(
        shown.contains("/dev/pts/") && shown.contains("31 101"),
        "{shown}"
    );
    e.ok(&["run", "-d", "--name", "t", &e.image, "sleep", "300"]);
    let (code, shown) = on_pty(
        &e,
        &["exec", "-it", "t", "sh"],
        b"echo in-$((6*7))\nexit 3\n",
    );
    assert_eq!(code, Some(3), "{shown}");
    assert!(shown.contains("in-42"), "{shown}");
    e.ok(&["rm", "-f", "t"]);
    // -dit keeps the terminal for attach
    e.ok(&["run", "-dit", "--name", "it", &e.image, "sh"]);
    let (code, shown) = on_pty(&e, &["attach", "it"], b"echo at-$((6*7))\nexit 4\n");
    assert_eq!(code, Some(4), "{shown}");
    assert!(shown.contains("at-42"), "{shown}");
    assert_eq!(e.ok(&["ps", "-a", "--format", "{{.State}}"]), "exited\n");
    e.ok(&["rm", "it"]);
    wait_for("rm", Duration::from_secs(5), || {
        e.ok(&["ps", "-aq"]).is_empty()
    });
}

#[test]
fn images_tag_save_rmi_load_push_login() {
    let e = env(5);
    let images = e.ok(&["images"]);
    let header = images.lines().next().unwrap();
    for col in ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(header.contains(col), "{images}");
    }
    let repo = format!("{}/library/busybox", e.registry);
    assert!(
        images.contains(&repo) && images.contains("latest"),
        "{images}"
    );
    assert_eq!(e.ok(&["images", "-q"]).lines().count(), 1);
    let digests = e.ok(&["images", "--digests", "--format", "{{.Digest}}"]);
    assert!(digests.starts_with("sha256:"), "{digests}");
    e.ok(&["tag", &e.image, "mine:v1"]);
    let names = e.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(names.contains("mine:v1"), "{names}");
    let v: serde_json::Value =
        serde_json::from_str(&e.ok(&["image", "inspect", "mine:v1"])).unwrap();
    assert_eq!(v[0]["Os"], "linux");
    assert!(v[0]["Id"].as_str().unwrap().starts_with("sha256:"));
    let hist = e.ok(&["image", "history", "mine:v1"]);
    assert!(
        hist.starts_with("IMAGE") && hist.lines().count() >= 2,
        "{hist}"
    );
    // save → rmi → load
    let tar = e.dir.path().join("mine.tar");
    e.ok(&["save", "-o", tar.to_str().unwrap(), "mine:v1"]);
    assert!(std::fs::metadata(&tar).unwrap().len() > 100_000);
    assert!(e.ok(&["rmi", "mine:v1"]).contains("mine:v1"));
    e.fails(125, &["image", "inspect", "mine:v1"]);
    let loaded = e.ok(&["load", "-i", tar.to_str().unwrap()]);
    assert_eq!(loaded, "Loaded image: docker.io/library/mine:v1\n");
    assert_eq!(
        e.ok(&["run", "--rm", "--pull", "never", "mine:v1", "echo", "loaded"]),
        "loaded\n"
    );
    // a container keeps its image: rmi refuses without -f
    e.ok(&["create", "--name", "user", "mine:v1", "true"]);
    let err = e.fails(125, &["rmi", "mine:v1"]);
    assert!(err.contains("used by container user"), "{err}");
    e.ok(&["rm", "user"]);
    e.ok(&["rmi", "mine:v1"]);
    // a bad archive and a missing one
    let junk = e.dir.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar").unwrap();
    e.fails(125, &["load", "-i", junk.to_str().unwrap()]);
    let err = e.fails(125, &["load", "-i", "/nonexistent.tar"]);
    assert!(err.contains("/nonexistent.tar"), "{err}");
    let err = e.fails(125, &["save", "-o", tar.to_str().unwrap(), "nope:1"]);
    assert!(err.contains("nope"), "{err}");
    // push under another name, pull it back
    let pushed = format!("{}/mine/pushed:v2", e.registry);
    e.ok(&["tag", &e.image, &pushed]);
    let out = e.ok(&["push", &pushed]);
    assert!(out.contains("digest: sha256:"), "{out}");
    e.ok(&["rmi", &pushed]);
    e.ok(&["pull", &pushed]);
    // login/logout: docker's config.json
    let cfg = e.dir.path().join("docker");
    let mut cmd = e.cmd(&["login", "-u", "me", "--password-stdin", "registry.example"]);
    cmd.env("DOCKER_CONFIG", &cfg).stdin(Stdio::piped());
    let mut child = spawn_tied(cmd).unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.join("config.json")).unwrap()).unwrap();
    assert_eq!(v["auths"]["registry.example"]["auth"], "bWU6c2VjcmV0");
    let mut cmd = e.cmd(&["logout", "registry.example"]);
    cmd.env("DOCKER_CONFIG", &cfg);
    assert!(cmd.output().unwrap().status.success());
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.join("config.json")).unwrap()).unwrap();
    assert!(v["auths"].as_object().unwrap().is_empty());
    // version and info talk to rcd
    assert!(e.ok(&["version"]).contains("Server"));
    assert!(e.ok(&["info"]).contains("Images: "));
}

#[test]
fn events_df_and_system_prune() {
    let e = env(6);
    let mut cmd = e.cmd(&["events", "--filter", "type=container"]);
    cmd.stdout(Stdio::piped());
    let mut events = spawn_tied(cmd).unwrap();
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    // the subscription is live once an event of ours comes through
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|l: &String| l.contains(" container exit ")) {
        assert!(Instant::now() < deadline, "no exit event: {seen:?}");
        e.ok(&["run", "--rm", &e.image, "true"]);
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
            seen.push(l);
        }
    }
    assert!(
        seen.iter().any(|l| l.contains(" container start ")),
        "{seen:?}"
    );
    let _ = events.kill();
    let _ = events.wait();
    // df counts; prune removes stopped containers only
    e.ok(&["create", "--name", "stopped", &e.image, "true"]);
    e.ok(&["run", "-d", "--name", "up", &e.image, "sleep", "300"]);
    let df = e.ok(&["system", "df"]);
    assert!(df.contains("Images") && df.contains("Containers"), "{df}");
    let out = e.ok(&["system", "prune", "-f"]);
    assert!(out.contains("Deleted Containers:"), "{out}");
    assert_eq!(e.ok(&["ps", "-a", "--format", "{{.Names}}"]), "up\n");
    // docker's container group
    e.ok(&["container", "create", "--name", "c2", &e.image, "true"]);
    assert_eq!(e.ok(&["container", "ls", "-a", "-q"]).lines().count(), 2);
    let out = e.ok(&["container", "prune", "-f"]);
    assert!(out.contains("Deleted Containers:"), "{out}");
    assert_eq!(e.ok(&["container", "ls", "--format", "{{.Names}}"]), "up\n");
    e.ok(&["rm", "-f", "up"]);
}

#[test]
fn cp_both_ways_stays_in_the_container() {
    let e = env(7);
    e.ok(&["run", "-d", "--name", "box", &e.image, "sleep", "300"]);
    // the container makes a symlink pointing out of itself
    e.ok(&["exec", "box", "sh", "-c", "mkdir -p /data/sub && echo one > /data/a && echo two > /data/sub/b && ln -s /etc /data/etc-link && ln -s ../../../../../../ /escape"]);
    let host = e.dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    // out: a file, then a directory into an existing directory
    e.ok(&["cp", "box:/data/a", host.join("a.txt").to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(host.join("a.txt")).unwrap(),
        "one\n"
    );
    e.ok(&["cp", "box:/data", host.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(host.join("data/sub/b")).unwrap(),
        "two\n"
    );
    assert!(std::fs::symlink_metadata(host.join("data/etc-link"))
        .unwrap()
        .file_type()
        .is_symlink());
    // in: a directory and a file
    std::fs::create_dir(host.join("site")).unwrap();
    std::fs::write(host.join("site/index.html"), "hello").unwrap();
    e.ok(&["cp", host.join("site").to_str().unwrap(), "box:/tmp"]);
    assert_eq!(
        e.ok(&["exec", "box", "cat", "/tmp/site/index.html"]),
        "hello"
    );
    e.ok(&[
        "cp",
        host.join("a.txt").to_str().unwrap(),
        "box:/tmp/renamed",
    ]);
    assert_eq!(e.ok(&["exec", "box", "cat", "/tmp/renamed"]), "one\n");
    // through the container's escaping symlink: still inside the container
    let marker = e.dir.path().join("marker-outside");
    let escaped = format!("box:/escape{}", marker.display());
    let err = e.fails(125, &["cp", host.join("a.txt").to_str().unwrap(), &escaped]);
    assert!(err.contains("make the directory first"), "{err}");
    assert!(!marker.exists());
    e.ok(&[
        "cp",
        host.join("a.txt").to_str().unwrap(),
        "box:/escape/tmp/via-link",
    ]);
    assert_eq!(e.ok(&["exec", "box", "cat", "/tmp/via-link"]), "one\n");
    assert!(!Path::new("/tmp/via-link").exists());
    // errors
    let err = e.fails(125, &["cp", "box:/nope", host.to_str().unwrap()]);
    assert!(err.contains("/nope"), "{err}");
    e.fails(125, &["cp", "/nonexistent-src", "box:/tmp"]);
    e.fails(125, &["cp", "a", "b"]);
    e.ok(&["stop", "-t", "0", "box"]);
    let err = e.fails(125, &["cp", "box:/etc/hostname", host.to_str().unwrap()]);
    assert!(err.contains("not running"), "{err}");
    e.ok(&["rm", "box"]);
}

/// Not a test: `rnerd run --rm busybox true` against `rctr run --rm` on the same rcd
/// (`cargo test -p rcd-cli --test rnerd -- --ignored --nocapture bench`).
#[test]
#[ignore]
fn bench_run_rm() {
    let e = env(8);
    let rctr = sibling("rctr");
    let n = 20;
    let time = |f: &dyn Fn(usize)| {
        f(0);
        let t = Instant::now();
        for i in 1..=n {
            f(i);
        }
        t.elapsed() / n as u32
    };
    let rnerd = time(&|_| {
        e.ok(&["run", "--rm", &e.image, "true"]);
    });
    // -i keeps the FIFO path (no logger): the cost of logging an attached run
    let rnerd_i = time(&|_| {
        e.ok(&["run", "--rm", "-i", &e.image, "true"]);
    });
    let rctr_t = time(&|i| {
        let out = Command::new(&rctr)
            .args([
                "--address",
                e.address.to_str().unwrap(),
                "run",
                "--rm",
                &e.image,
                &format!("b{i}"),
                "true",
            ])
            .env("RCTR_FIFO_DIR", e.dir.path().join("fifo"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    });
    println!("rnerd run --rm busybox true: {rnerd:?} per run ({n} runs)");
    println!("rnerd run --rm -i busybox true (FIFOs, not logged): {rnerd_i:?} per run");
    println!("rctr run --rm busybox ID true: {rctr_t:?} per run");
}

#[test]
fn commit_makes_an_image_of_the_changes() {
    let e = env(9);
    e.ok(&[
        "run",
        "-d",
        "--name",
        "src",
        &e.image,
        "sh",
        "-c",
        "echo made > /made; rm /bin/vi; mkdir /d; sleep 300",
    ]);
    wait_for("the changes", Duration::from_secs(10), || {
        e.rnerd(&["exec", "src", "test", "-d", "/d"])
            .status
            .success()
    });
    let id = e.ok(&["commit", "-m", "a note", "src", "committed:v1"]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    // the change is there, the removal too, and the container's command is the image's
    let out = e.ok(&[
        "run",
        "--rm",
        "committed:v1",
        "sh",
        "-c",
        "cat /made; test -e /bin/vi || echo no-vi",
    ]);
    assert_eq!(out, "made\nno-vi\n");
    let hist = e.ok(&["image", "history", "committed:v1"]);
    assert!(
        hist.contains("rnerd commit src") && hist.contains("a note"),
        "{hist}"
    );
    e.ok(&["rm", "-f", "src"]);
    e.fails(125, &["commit", "nope", "x:1"]);
}

/// GET / on `addr`, retried until `timeout`: the body.
fn http_get(addr: &str, timeout: Duration) -> String {
    use std::io::{Read, Write};
    let deadline = Instant::now() + timeout;
    loop {
        let r = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match r {
            Ok(body) if body.contains(" 200 ") => {
                return body.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()
            }
            other => assert!(Instant::now() < deadline, "GET {addr}: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn published_port_named_network_and_volumes() {
    let e = env(10);
    // -p: busybox httpd reachable from the host
    e.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "18080:80",
        &e.image,
        "sh",
        "-c",
        "mkdir -p /www && echo hello from web > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    assert_eq!(
        http_get("127.0.0.1:18080", Duration::from_secs(10)),
        "hello from web\n"
    );
    assert_eq!(e.ok(&["port", "web"]), "80/tcp -> 0.0.0.0:18080\n");
    assert_eq!(e.ok(&["port", "web", "80"]), "0.0.0.0:18080\n");
    e.fails(125, &["port", "web", "81"]);
    let ports = e.ok(&["ps", "--format", "{{.Ports}}"]);
    assert_eq!(ports, "0.0.0.0:18080->80/tcp\n");
    let ip = e.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]);
    assert!(ip.starts_with(&pool_prefix(e.n)), "{ip}");
    let v: serde_json::Value = serde_json::from_str(&e.ok(&["inspect", "web"])).unwrap();
    assert_eq!(
        v[0]["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"],
        "18080"
    );
    assert_eq!(v[0]["HostConfig"]["NetworkMode"], "bridge");
    e.ok(&["rm", "-f", "web"]);
    // a named network: containers resolve each other by name
    let id = e.ok(&["network", "create", "app"]);
    assert_eq!(id.trim().len(), 64, "{id}");
    let ls = e.ok(&["network", "ls"]);
    assert!(ls.contains("app") && ls.contains("bridge"), "{ls}");
    let subnet = e.ok(&["network", "inspect", "-f", "{{.Name}}", "app"]);
    assert_eq!(subnet, "app\n");
    e.ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "--network",
        "app",
        "--network-alias",
        "database",
        &e.image,
        "sleep",
        "300",
    ]);
    e.ok(&[
        "run",
        "--rm",
        "--network",
        "app",
        &e.image,
        "ping",
        "-c",
        "1",
        "-W",
        "3",
        "db",
    ]);
    e.ok(&[
        "run",
        "--rm",
        "--network",
        "app",
        &e.image,
        "ping",
        "-c",
        "1",
        "-W",
        "3",
        "database",
    ]);
    let err = e.fails(125, &["network", "rm", "app"]);
    assert!(!err.is_empty());
    let err = e.fails(125, &["run", "--rm", "--network", "nope", &e.image, "true"]);
    assert!(err.contains("nope"), "{err}");
    e.ok(&["rm", "-f", "db"]);
    assert_eq!(e.ok(&["network", "rm", "app"]), "app\n");
    e.fails(125, &["network", "inspect", "app"]);
    // host and none
    let out = e.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &e.image,
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(out, "lo\n");
    // a named volume outlives its containers; a bind mount shows on the host
    e.ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        &e.image,
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    assert_eq!(
        e.ok(&[
            "run",
            "--rm",
            "-v",
            "data:/data:ro",
            &e.image,
            "cat",
            "/data/f"
        ]),
        "kept\n"
    );
    assert_eq!(e.ok(&["volume", "ls", "-q"]), "data\n");
    let mp = e.ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "data"]);
    assert_eq!(
        std::fs::read_to_string(Path::new(mp.trim()).join("f")).unwrap(),
        "kept\n"
    );
    e.fails(
        1,
        &[
            "run",
            "--rm",
            "-v",
            "data:/data:ro",
            &e.image,
            "touch",
            "/data/x",
        ],
    );
    let host = e.dir.path().join("bind");
    std::fs::create_dir(&host).unwrap();
    let bind = format!("{}:/b", host.display());
    e.ok(&[
        "run",
        "--rm",
        "-v",
        &bind,
        &e.image,
        "sh",
        "-c",
        "echo from-ctr > /b/out",
    ]);
    assert_eq!(
        std::fs::read_to_string(host.join("out")).unwrap(),
        "from-ctr\n"
    );
    let m = format!("type=bind,source={},target=/m,readonly", host.display());
    assert_eq!(
        e.ok(&["run", "--rm", "--mount", &m, &e.image, "cat", "/m/out"]),
        "from-ctr\n"
    );
    e.fails(
        1,
        &["run", "--rm", "--mount", &m, &e.image, "touch", "/m/x"],
    );
    // in use: not removable; then removed
    e.ok(&[
        "create",
        "--name",
        "holder",
        "-v",
        "data:/data",
        &e.image,
        "true",
    ]);
    e.fails(125, &["volume", "rm", "data"]);
    e.ok(&["rm", "holder"]);
    assert_eq!(e.ok(&["volume", "rm", "data"]), "data\n");
    e.fails(125, &["volume", "inspect", "data"]);
}

#[test]
fn logs_tail_timestamps_and_follow() {
    let e = env(11);
    e.ok(&[
        "run",
        "-d",
        "--name",
        "l",
        &e.image,
        "sh",
        "-c",
        "echo one; echo two >&2; sleep 0.5; echo three; sleep 300",
    ]);
    wait_for("the log", Duration::from_secs(10), || {
        e.ok(&["logs", "l"]).contains("three")
    });
    let out = e.rnerd(&["logs", "l"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\nthree\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "two\n");
    assert_eq!(e.ok(&["logs", "--tail", "1", "l"]), "three\n");
    let t = e.ok(&["logs", "-t", "--tail", "1", "l"]);
    let (time, line) = t.split_once(' ').unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok() && line == "three\n",
        "{t}"
    );
    assert_eq!(
        e.ok(&["logs", "--since", "1h", "--tail", "1", "l"]),
        "three\n"
    );
    e.fails(125, &["logs", "--tail", "x", "l"]);
    // a run attached to rnerd wrote to rnerd and to the log, as docker's
    assert_eq!(
        e.ok(&["run", "--name", "fg", &e.image, "echo", "attached"]),
        "attached\n"
    );
    assert_eq!(e.ok(&["logs", "fg"]), "attached\n");
    e.ok(&["rm", "fg"]);
    e.fails(125, &["logs", "--since", "yesterday", "l"]);
    e.ok(&["rm", "-f", "l"]);
    // -f follows new lines and ends when the container does
    e.ok(&[
        "run",
        "-d",
        "--name",
        "f",
        &e.image,
        "sh",
        "-c",
        "echo first; sleep 2; echo second",
    ]);
    let t = Instant::now();
    let out = e.ok(&["logs", "-f", "f"]);
    assert_eq!(out, "first\nsecond\n");
    assert!(
        t.elapsed() > Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // attach to a detached container: its output as it comes, its exit code
    e.ok(&["rm", "f"]);
    e.ok(&[
        "run",
        "-d",
        "--name",
        "a",
        &e.image,
        "sh",
        "-c",
        "sleep 1; echo attached; exit 6",
    ]);
    let out = e.rnerd(&["attach", "a"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "attached\n");
    e.ok(&["rm", "-f", "a"]);
}

fn restart_count(e: &Env, name: &str) -> u64 {
    e.ok(&["inspect", "-f", "{{.RestartCount}}", name])
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn restart_policies() {
    let e = env(12);
    e.ok(&[
        "run",
        "-d",
        "--name",
        "al",
        "--restart",
        "always",
        &e.image,
        "sh",
        "-c",
        "echo ran; exit 3",
    ]);
    wait_for("two restarts", Duration::from_secs(20), || {
        restart_count(&e, "al") >= 2
    });
    let v: serde_json::Value = serde_json::from_str(&e.ok(&["inspect", "al"])).unwrap();
    assert_eq!(v[0]["HostConfig"]["RestartPolicy"]["Name"], "always");
    // a stop keeps it down
    e.ok(&["stop", "-t", "1", "al"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(e.ok(&["ps", "-q", "--filter", "name=al"]), "");
    assert!(e
        .ok(&["ps", "-a", "--format", "{{.Status}}"])
        .starts_with("Exited"));
    e.ok(&["rm", "al"]);
    // on-failure:2 gives up after two restarts
    e.ok(&[
        "run",
        "-d",
        "--name",
        "of",
        "--restart",
        "on-failure:2",
        &e.image,
        "sh",
        "-c",
        "exit 1",
    ]);
    wait_for("two restarts", Duration::from_secs(20), || {
        restart_count(&e, "of") == 2
    });
    wait_for("the end", Duration::from_secs(10), || {
        e.ok(&["inspect", "-f", "{{.State.Status}}", "of"]) == "exited\n"
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(restart_count(&e, "of"), 2);
    e.ok(&["rm", "of"]);
    // a clean exit is not a failure
    e.ok(&[
        "run",
        "-d",
        "--name",
        "ok",
        "--restart",
        "on-failure",
        &e.image,
        "true",
    ]);
    e.ok(&["wait", "ok"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(restart_count(&e, "ok"), 0);
    e.ok(&["rm", "ok"]);
    // rm -f of an always container in its restart loop
    e.ok(&[
        "run",
        "-d",
        "--name",
        "loop",
        "--restart",
        "always",
        &e.image,
        "true",
    ]);
    wait_for("a restart", Duration::from_secs(20), || {
        restart_count(&e, "loop") >= 1
    });
    e.ok(&["rm", "-f", "loop"]);
    assert_eq!(e.ok(&["ps", "-aq"]), "");
}

fn pid(e: &Env, name: &str) -> u32 {
    e.ok(&["inspect", "-f", "{{.State.Pid}}", name])
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn restart_policy_survives_an_rcd_restart() {
    let mut e = env(13);
    e.ok(&[
        "run",
        "-d",
        "--name",
        "keep",
        "--restart",
        "always",
        &e.image,
        "sleep",
        "300",
    ]);
    e.ok(&["run", "-d", "--name", "plain", &e.image, "sleep", "300"]);
    e.restart_rcd();
    // both still run (their shims outlived rcd)
    let names = e.ok(&["ps", "--format", "{{.Names}}"]);
    assert!(names.contains("keep") && names.contains("plain"), "{names}");
    // killed while rcd is down: only the one with a policy comes back when rcd does
    let (kp, pp) = (pid(&e, "keep"), pid(&e, "plain"));
    stop_rcd(e.rcd.take().unwrap());
    unsafe {
        libc::kill(kp as i32, libc::SIGKILL);
        libc::kill(pp as i32, libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(300));
    e.rcd = Some(spawn_rcd(
        &e.dir.path().join("config.toml"),
        e.dir.path(),
        &e.log,
    ));
    wait_for("keep to come back", Duration::from_secs(20), || {
        e.ok(&["ps", "--format", "{{.Names}}"]) == "keep\n"
    });
    assert_ne!(pid(&e, "keep"), kp);
    assert!(e
        .ok(&[
            "ps",
            "-a",
            "--filter",
            "name=plain",
            "--format",
            "{{.Status}}"
        ])
        .starts_with("Exited (137)"));
    e.ok(&["rm", "-f", "keep", "plain"]);
}

#[test]
fn detached_and_created_rm_are_removed_by_rcd_at_their_exit() {
    let e = env(14);
    // -d --rm: gone once it exits, with its anonymous volume; no client is waiting. It
    // exits when told (not after a sleep, which a loaded machine can outlast before the
    // checks below)
    let id = e.ok(&[
        "run",
        "-d",
        "--rm",
        "--name",
        "brief",
        "-v",
        "/scratch",
        &e.image,
        "sh",
        "-c",
        "until [ -e /scratch/go ]; do sleep 0.05; done",
    ]);
    let id = id.trim().to_owned();
    assert!(e.ok(&["ps", "-q", "--no-trunc"]).contains(&id));
    assert_eq!(e.ok(&["volume", "ls", "-q"]).lines().count(), 1);
    e.ok(&["exec", "brief", "touch", "/scratch/go"]);
    wait_for("the auto-removal", Duration::from_secs(20), || {
        e.ok(&["ps", "-a", "-q", "--no-trunc"]).trim().is_empty()
    });
    assert_eq!(e.ok(&["volume", "ls", "-q"]), "");
    // create --rm, started later: removed at that exit too
    e.ok(&["create", "--rm", "--name", "later", &e.image, "true"]);
    assert!(e.ok(&["ps", "-a"]).contains("later"));
    e.ok(&["start", "later"]);
    wait_for("the auto-removal", Duration::from_secs(20), || {
        !e.ok(&["ps", "-a"]).contains("later")
    });
    // with a restart policy: refused before anything is made
    let err = e.fails(
        125,
        &["run", "-d", "--rm", "--restart", "always", &e.image, "true"],
    );
    assert!(err.contains("--rm"), "{err}");
    assert_eq!(e.ok(&["ps", "-a", "-q"]), "");
}

/// An attached run without -i/-t goes through rcd's json-file logger, as docker's: rnerd
/// prints what the logger's attach socket sends, and `rnerd logs` has it too.
#[test]
fn attached_run_is_logged() {
    let e = env(15);
    let out = e.rnerd(&[
        "run",
        "--name",
        "x",
        &e.image,
        "sh",
        "-c",
        "echo out; echo err >&2",
    ]);
    assert!(out.status.success(), "{out:?}\n{}", e.rcd_log());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let logs = e.rnerd(&["logs", "x"]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&logs.stderr), "err\n");
    // start -a (no -i) goes the same way: printed, and added to the same log
    let out = e.rnerd(&["start", "-a", "x"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let logs = e.rnerd(&["logs", "x"]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "out\nout\n");
    assert_eq!(String::from_utf8_lossy(&logs.stderr), "err\nerr\n");
    e.ok(&["rm", "x"]);

    // --rm: the exit code and the output stay, nothing is left
    let out = e.rnerd(&[
        "run",
        "--rm",
        "--name",
        "gone",
        &e.image,
        "sh",
        "-c",
        "echo before; echo bad >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "bad\n");
    assert_eq!(e.ok(&["ps", "-aq"]), "");

    // a larger output arrives whole on rnerd's stdout and in the log
    let want: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    let out = e.ok(&["run", "--name", "big", &e.image, "seq", "1", "20000"]);
    assert!(out == want, "{} of {} bytes", out.len(), want.len());
    let logged = e.ok(&["logs", "big"]);
    assert!(logged == want, "{} of {} bytes", logged.len(), want.len());
    e.ok(&["rm", "big"]);

    // a command that cannot run: docker's 127 still, and nothing left with --rm
    let err = e.fails(127, &["run", "--rm", &e.image, "no-such-command"]);
    assert!(err.contains("no-such-command"), "{err}");
    assert_eq!(e.ok(&["ps", "-aq"]), "");
}
