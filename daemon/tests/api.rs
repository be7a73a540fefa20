//! The daemon process and its native API through `rctr`: real `rcd` processes on temp
//! root/state/socket, a real registry on loopback. Build `rctr` first
//! (`cargo build -p rcd-cli`); it is looked for next to `rcd`.

use rtest::{busybox_image, spawn_tied, Registry};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn rctr_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_rcd")).with_file_name("rctr");
    assert!(
        p.exists(),
        "{} missing: build it first (cargo build -p rcd-cli)",
        p.display()
    );
    p
}

/// A running `rcd`; SIGTERM'ed (then killed) and reaped on drop.
struct Rcd {
    child: Option<Child>,
    root: PathBuf,
    state: PathBuf,
    address: PathBuf,
    /// rcd's arguments
    args: Vec<std::ffi::OsString>,
    log: PathBuf,
}

impl Rcd {
    /// A daemon with its own root, state and socket under `dir`.
    fn start(dir: &Path) -> Rcd {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.toml");
        // No mirrors: loopback registries are reached directly over plain HTTP.
        std::fs::write(&config, "log_level = \"debug\"\n").unwrap();
        let (root, state, address) = (
            dir.join("root"),
            dir.join("state"),
            dir.join("state/rcd.sock"),
        );
        let args = vec![
            "--config".into(),
            config.into(),
            "--root".into(),
            root.clone().into(),
            "--state".into(),
            state.clone().into(),
            "--address".into(),
            address.clone().into(),
        ];
        let mut d = Rcd {
            child: None,
            root,
            state,
            address,
            args,
            log: dir.join("rcd.log"),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rcd"));
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = spawn_tied(cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.address).is_ok() {
                break;
            }
            if let Some(st) = child.try_wait().unwrap() {
                panic!("rcd exited {st} at start:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "rcd did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait; the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("rcd running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("rcd ignored SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rctr(&self, args: &[&str]) -> Output {
        rctr(&self.address, args)
    }

    /// Runs rctr, expecting success; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.rctr(args);
        assert!(
            out.status.success(),
            "rctr {args:?}: {}\nstdout: {}\nstderr: {}\nrcd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Rcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
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
    }
}

fn rctr(address: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(rctr_bin());
    cmd.arg("--address")
        .arg(address)
        .args(args)
        .env_remove("RCD_ADDRESS")
        .env_remove("RCD_NAMESPACE")
        .stdin(Stdio::null());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = spawn_tied(cmd).unwrap();
    child.wait_with_output().unwrap()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The whole slice: pull with progress, ls, content ls/get, namespaces, rm, restart.
#[test]
fn pull_list_content_remove_restart() {
    let reg = Registry::start().unwrap();
    let image = busybox_image();
    reg.push(image, "library/busybox", "latest").unwrap();
    let name = reg.image_ref("library/busybox", "latest");
    let tmp = tempfile::tempdir().unwrap();
    let mut rcd = Rcd::start(tmp.path());

    let started = Instant::now();
    let out = rcd.ok(&["images", "pull", &name]);
    eprintln!("pull: {:?}\n{out}", started.elapsed());
    // Plain progress lines (stdout is a pipe) for every blob, then the result.
    for d in image
        .layer_digests()
        .into_iter()
        .chain([image.digest(), image.config.digest.as_str()])
    {
        let short = &d["sha256:".len()..][..12];
        assert!(
            out.lines().any(|l| l.contains(short) && l.contains("done")),
            "no done line for {d}:\n{out}"
        );
    }
    assert!(
        out.contains(&format!("{name}: {}", image.digest())),
        "{out}"
    );

    let ls = rcd.ok(&["images", "ls"]);
    let lines: Vec<&str> = ls.lines().collect();
    assert!(lines[0].starts_with("REF"), "{ls}");
    assert_eq!(lines.len(), 2, "{ls}");
    assert!(lines[1].starts_with(&name), "{ls}");
    assert!(lines[1].contains(image.digest()), "{ls}");
    assert!(lines[1].contains("linux/amd64"), "{ls}");
    assert_eq!(rcd.ok(&["images", "ls", "-q"]), format!("{name}\n"));

    // Namespaces isolate image lists.
    assert_eq!(rcd.ok(&["-n", "other", "images", "ls", "-q"]), "");
    let bad_ns = rcd.rctr(&["-n", "../x", "images", "ls"]);
    assert_eq!(bad_ns.status.code(), Some(1));

    // Content: every blob is there, the config reads back byte for byte.
    let content = rcd.ok(&["content", "ls", "-q"]);
    for d in image
        .layer_digests()
        .into_iter()
        .chain([image.digest(), image.config.digest.as_str()])
    {
        assert!(content.lines().any(|l| l == d), "{d} missing:\n{content}");
    }
    let out = rcd.rctr(&["content", "get", &image.config.digest]);
    assert!(out.status.success());
    assert_eq!(sha256(&out.stdout), image.config.digest);
    let cfg: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cfg["architecture"], "amd64");

    // Restart: the image list lives in the root; SIGTERM removes the socket.
    assert!(rcd.stop().success());
    assert!(!rcd.address.exists(), "socket left after SIGTERM");
    rcd.spawn();
    assert_eq!(rcd.ok(&["images", "ls", "-q"]), format!("{name}\n"));

    // A second pull finds every blob in the store.
    let again = rcd.ok(&["images", "pull", &name]);
    assert!(again.contains("exists"), "{again}");

    // rm: gone from the list; rm of a missing image names it, exit 1.
    assert_eq!(rcd.ok(&["images", "rm", &name]), format!("{name}\n"));
    assert_eq!(rcd.ok(&["images", "ls", "-q"]), "");
    let out = rcd.rctr(&["images", "rm", &name]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found") && err.contains(&name), "{err}");

    // content rm
    rcd.ok(&["content", "rm", &image.config.digest]);
    assert!(!rcd
        .ok(&["content", "ls", "-q"])
        .contains(&image.config.digest));
    let out = rcd.rctr(&["content", "get", &image.config.digest]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn pull_errors_name_the_reference() {
    let reg = Registry::start().unwrap();
    reg.push(busybox_image(), "library/busybox", "latest")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rcd = Rcd::start(tmp.path());
    let missing = reg.image_ref("library/busybox", "nope");
    let out = rcd.rctr(&["images", "pull", &missing]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("rctr: ") && err.contains(&missing), "{err}");
    assert!(err.contains("not found"), "{err}");

    // A registry nobody serves: the daemon's Unavailable names the reference.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let gone = format!("127.0.0.1:{port}/library/busybox:latest");
    let out = rcd.rctr(&["images", "pull", &gone]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&gone) && !err.contains("lost connection"),
        "{err}"
    );

    let out = rcd.rctr(&["images", "pull", "Bad Ref!"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid image reference") && err.contains("Bad Ref!"),
        "{err}"
    );
    assert_eq!(rcd.ok(&["images", "ls", "-q"]), "");
}

#[test]
fn no_daemon_and_bad_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("rcd.sock");
    let out = rctr(&sock, &["images", "ls"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("daemon not running at {}", sock.display())),
        "{err}"
    );
    // A stale socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let out = rctr(&sock, &["version"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("daemon not running at"), "{err}");
    assert!(err.contains("connection refused"), "{err}");

    let out = rctr(&sock, &["images", "ls", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

#[test]
fn instances_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Rcd::start(&tmp.path().join("a"));
    let b = Rcd::start(&tmp.path().join("b"));
    for d in [&a, &b] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&d.address).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660, "socket mode {mode:o}");
        let v = d.ok(&["version"]);
        assert!(v.contains("Server:"), "{v}");
    }
    // A third on a's socket refuses to start and leaves a running.
    let out = Command::new(env!("CARGO_BIN_EXE_rcd"))
        .arg("--root")
        .arg(tmp.path().join("c/root"))
        .arg("--state")
        .arg(tmp.path().join("c/state"))
        .arg("--address")
        .arg(&a.address)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another rcd is serving"));
    a.ok(&["version"]);
    // A daemon on b's root (another socket) is refused too.
    let out = Command::new(env!("CARGO_BIN_EXE_rcd"))
        .arg("--root")
        .arg(&b.root)
        .arg("--state")
        .arg(&b.state)
        .arg("--address")
        .arg(tmp.path().join("d.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another rcd"));

    // Killed hard: the stale socket is removed by the next start.
    let mut b = b;
    let mut child = b.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(b.address.exists());
    b.spawn();
    b.ok(&["version"]);
}

/// `--user` credentials reach the registry; `--platform` picks from an index.
#[test]
fn pull_with_user_and_platform() {
    let reg = Registry::builder()
        .htpasswd("alice", "s3cret")
        .start()
        .unwrap();
    let index = rtest::busybox_index();
    reg.push_index(index, "library/multi", "1").unwrap();
    let name = reg.image_ref("library/multi", "1");
    let tmp = tempfile::tempdir().unwrap();
    let rcd = Rcd::start(tmp.path());

    let out = rcd.rctr(&["images", "pull", &name]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unauthorized") && err.contains(&name), "{err}");

    let out = rcd.ok(&[
        "images",
        "pull",
        "--plain-http",
        "--user",
        "alice:s3cret",
        "--platform",
        "linux/arm64",
        &name,
    ]);
    assert!(out.contains(&name), "{out}");
    let ls = rcd.ok(&["images", "ls"]);
    assert!(ls.contains("linux/arm64"), "{ls}");
    assert!(ls.contains("index"), "{ls}");
}

/// The config file: its registry mirrors are used; flags override its paths; a bad file or
/// log level is refused.
#[test]
fn config_file() {
    let reg = Registry::start().unwrap();
    let image = busybox_image();
    reg.push(image, "library/busybox", "latest").unwrap();
    let mirror = reg.image_ref("library/busybox", "latest");
    let mirror_host = mirror.split('/').next().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
root = "{root}"
state = "{state}"
address = "{unused}"
[registries."registry.example"]
server = "https://registry.example.invalid"
[[registries."registry.example".mirrors]]
url = "http://{mirror_host}"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            unused = dir.join("unused.sock").display(),
        ),
    )
    .unwrap();
    // root and state from the file, the socket from the flag
    let sock = dir.join("flag.sock");
    let mut rcd = Rcd {
        child: None,
        root: dir.join("root"),
        state: dir.join("state"),
        address: sock.clone(),
        args: vec![
            "--config".into(),
            config.clone().into(),
            "--address".into(),
            sock.clone().into(),
        ],
        log: dir.join("rcd.log"),
    };
    rcd.spawn();
    assert!(!dir.join("unused.sock").exists());
    assert!(dir.join("state").is_dir());
    let out = rcd.ok(&["images", "pull", "registry.example/library/busybox:latest"]);
    assert!(out.contains(image.digest()), "{out}");
    assert!(dir.join("root/images.json").exists());
    assert!(dir.join("root/content/blobs").is_dir());

    std::fs::write(dir.join("bad.toml"), "nonsense = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rcd"))
        .arg("--config")
        .arg(dir.join("bad.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid config") && err.contains("nonsense"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rcd"))
        .args(["--log-level", "loud", "--address"])
        .arg(dir.join("x.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid log level"));
}
