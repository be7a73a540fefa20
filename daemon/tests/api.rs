//! The daemon process and its native API through `rctr`: real `rcd` processes on temp
//! root/state/socket, a real registry on loopback. Build `rctr` first
//! (`cargo build -p rcd-cli`); it is looked for next to `rcd`.

mod common;

use common::{rctr, sha256, Rcd};
use rtest::{busybox_image, Registry};
use std::process::Command;
use std::time::Instant;

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
    let short = &image.config.digest["sha256:".len()..][..12];
    assert!(
        out.contains(&format!("unpack-{short}: unpacking   1 layers"))
            && out.contains(&format!(
                "unpack-{short}: done        1 of 1 layers applied"
            )),
        "{out}"
    );
    // unpacked into the layer's snapshot (one layer: chain ID = diff ID)
    assert!(
        out.contains(&format!("unpacked linux/amd64 {}: ", image.diff_ids()[0])),
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
    assert!(again.contains("0 of 1 layers applied"), "{again}");

    // rm: gone from the list; rm of a missing image names it, exit 1.
    assert_eq!(
        rcd.ok(&["images", "rm", "--sync", &name]),
        format!("{name}\n")
    );
    assert_eq!(rcd.ok(&["images", "ls", "-q"]), "");
    let err = rcd.fail(&["images", "rm", &name]);
    assert!(err.contains("not found") && err.contains(&name), "{err}");

    // the collector took every blob of the image with it
    assert_eq!(rcd.ok(&["content", "ls", "-q"]), "");
    let err = rcd.fail(&["content", "get", &image.config.digest]);
    assert!(err.contains("not found"), "{err}");
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
    assert!(dir.join("root/meta.db").exists());
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
