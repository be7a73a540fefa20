//! Shared by the daemon's API tests: a real `rcd` on a temp root/state/socket, driven with
//! the real `rctr` (build it first: `cargo build -p rcd-cli`; it is looked for next to `rcd`).

#![allow(dead_code)]

use rtest::spawn_tied;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn rctr_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_rcd")).with_file_name("rctr");
    assert!(
        p.exists(),
        "{} missing: build it first (cargo build -p rcd-cli)",
        p.display()
    );
    p
}

/// A running `rcd`; SIGTERM'ed (then killed) and reaped on drop.
pub struct Rcd {
    pub child: Option<Child>,
    pub root: PathBuf,
    pub state: PathBuf,
    pub address: PathBuf,
    /// rcd's arguments
    pub args: Vec<std::ffi::OsString>,
    pub log: PathBuf,
}

impl Rcd {
    /// A daemon with its own root, state and socket under `dir`.
    pub fn start(dir: &Path) -> Rcd {
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

    pub fn spawn(&mut self) {
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait; the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
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

    pub fn rctr(&self, args: &[&str]) -> Output {
        rctr(&self.address, args)
    }

    /// Runs rctr, expecting success; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
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

impl Rcd {
    /// Runs rctr, expecting exit 1; its stderr (`rctr: …`).
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.rctr(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "rctr {args:?} should fail\nstdout: {}\nstderr: {err}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(err.starts_with("rctr: "), "{err}");
        err
    }

    /// SIGKILL, reaped.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("rcd running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// Unmounts (lazily) what a test may have left mounted, when dropped: a failing test must
/// not leave mounts behind.
pub struct Unmount(pub Vec<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for t in &self.0 {
            let c = std::ffi::CString::new(t.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid C string; the result is checked by nobody on purpose.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Whether `path` is a mount point (in /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(p))
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

pub fn rctr(address: &Path, args: &[&str]) -> Output {
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

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The shims serving the rcd at `address`: `-address ADDRESS` in their argv (rcd's own flag
/// is `--address`), as `argv` joined by spaces.
pub fn shims_of(address: &Path) -> Vec<String> {
    let address = address.display().to_string();
    let mut out = vec![];
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<_> = cmd.split(|b| *b == 0).collect();
        if args
            .windows(2)
            .any(|w| w[0] == b"-address" && w[1] == address.as_bytes())
        {
            out.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
        }
    }
    out
}
