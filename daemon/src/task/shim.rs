//! Running a shim binary's actions (`start`, `delete`) and talking to a running shim.
//!
//! The command line and environment are containerd 1.6's (`runtime/v2/shim/util.go`):
//! `<shim> -namespace NS -address <daemon socket> -publish-binary <rcd> -id ID start`, run in
//! the bundle, with `TTRPC_ADDRESS` (where the shim forwards its events) in the environment.
//! `start` prints the ttrpc address of the shim server it left running (a daemon: its
//! parent exits), or the JSON bootstrap parameters newer shims print.

use super::error::{Result, ShimCode, TaskError};
use super::record::LOG_FIFO;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim_async::TaskClient;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// rshim's binary name, as containerd finds it for runtime `io.containerd.runr.v2`.
pub(crate) const RSHIM: &str = "containerd-shim-runr-v2";

/// containerd 1.6's shim socket, which rshim's `start` uses too:
/// `/run/containerd/s/<sha256(address/namespace/id)>`.
fn socket_path(address: &str, namespace: &str, id: &str) -> PathBuf {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{address}/{namespace}/{id}").as_bytes());
    Path::new("/run/containerd/s").join(hex::encode(d))
}

/// How long a shim's `start` or `delete` action may take.
const ACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Calls that answer at once in a healthy shim; `Wait` has no limit.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the shim process is told to reach rcd.
#[derive(Debug, Clone)]
pub(crate) struct ShimEnv {
    pub binary: PathBuf,
    pub daemon_address: String,
    pub ttrpc_address: PathBuf,
    pub publish_binary: PathBuf,
    pub state_dir: PathBuf,
}

impl ShimEnv {
    async fn run_action(
        &self,
        namespace: &str,
        id: &str,
        bundle: &Path,
        action: &str,
    ) -> std::result::Result<Vec<u8>, String> {
        let mut args = self.args(namespace, id);
        if action == "delete" {
            args.extend(["-bundle".into(), bundle.into()]);
        }
        args.push(action.into());
        // the protocol's bundle is the action's working directory
        let out =
            super::spawn::run(&self.binary, &args, bundle, &self.env(), ACTION_TIMEOUT).await?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim();
            return Err(format!(
                "{}{}",
                out.status,
                if stderr.is_empty() {
                    String::new()
                } else {
                    format!(": {stderr}")
                }
            ));
        }
        Ok(out.stdout)
    }

    /// The arguments every action and the serving copy get.
    fn args(&self, namespace: &str, id: &str) -> Vec<std::ffi::OsString> {
        vec![
            "-namespace".into(),
            namespace.into(),
            "-address".into(),
            self.daemon_address.clone().into(),
            "-publish-binary".into(),
            self.publish_binary.clone().into(),
            "-id".into(),
            id.into(),
        ]
    }

    /// Whether the shim is rshim, which rcd can start serving itself (`serve`).
    pub fn is_rshim(&self) -> bool {
        self.binary.file_name() == Some(std::ffi::OsStr::new(RSHIM))
    }

    /// Starts rshim's serving copy as rcd's own child, as rshim's `start` would (same socket,
    /// same arguments, same `address` file), without running `start`: rcd binds the socket
    /// and hands it over, so the address is known at once and a call made right away waits
    /// in the socket's backlog until the shim takes it. Returns the address and the shim's
    /// pid.
    pub async fn serve(&self, namespace: &str, id: &str, bundle: &Path) -> Result<(String, u32)> {
        let err = |message: String| TaskError::ShimStart {
            id: id.to_owned(),
            binary: self.binary.clone(),
            message,
        };
        let sock = socket_path(&self.daemon_address, namespace, id);
        let address = format!("unix://{}", sock.display());
        match std::fs::remove_file(&sock) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(format!("removing {}: {e}", sock.display()))),
        }
        let dir = sock.parent().expect("a socket path has a parent");
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        let listener = std::os::unix::net::UnixListener::bind(&sock)
            .map_err(|e| err(format!("listening on {}: {e}", sock.display())))?;
        // above fd 3, where the child wants it (close-on-exec, as std made the listener)
        let listener = nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&listener),
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10),
        )
        // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
        .map(|fd| unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        .map_err(|e| err(format!("duplicating the listener: {e}")))?;
        let args = self.args(namespace, id);
        let pid = super::spawn::daemon(&self.binary, &args, bundle, &self.env(), &listener)
            .map_err(|e| {
                let _ = std::fs::remove_file(&sock);
                err(format!("cannot execute it: {e}"))
            })?;
        std::fs::write(bundle.join("address"), &address)
            .map_err(|e| err(format!("writing {}: {e}", bundle.join("address").display())))?;
        Ok((address, pid as u32))
    }

    fn env(&self) -> [(&str, &std::ffi::OsStr); 3] {
        [
            ("TTRPC_ADDRESS", self.ttrpc_address.as_os_str()),
            // Go shims keep fewer threads (containerd sets the same)
            ("GOMAXPROCS", "2".as_ref()),
            // for `rcd publish` run by a shim while rcd is down: where to spool the event
            (super::events::STATE_DIR_ENV, self.state_dir.as_os_str()),
        ]
    }

    /// Runs `start` and returns the shim's ttrpc address.
    pub async fn start(&self, namespace: &str, id: &str, bundle: &Path) -> Result<String> {
        let err = |message: String| TaskError::ShimStart {
            id: id.to_owned(),
            binary: self.binary.clone(),
            message,
        };
        let out = self
            .run_action(namespace, id, bundle, "start")
            .await
            .map_err(err)?;
        let text = String::from_utf8_lossy(&out);
        parse_start_output(text.trim()).map_err(err)
    }

    /// Runs `delete`: the shim binary releases what a shim left behind when the shim itself
    /// is gone (runc's `delete --force`, the rootfs mounts). Returns the init's last words.
    pub async fn delete(
        &self,
        namespace: &str,
        id: &str,
        bundle: &Path,
    ) -> Result<api::DeleteResponse> {
        let out = self
            .run_action(namespace, id, bundle, "delete")
            .await
            .map_err(|message| TaskError::ShimDelete {
                id: id.to_owned(),
                binary: self.binary.clone(),
                message,
            })?;
        api::DeleteResponse::parse_from_bytes(&out).map_err(|e| TaskError::ShimDelete {
            id: id.to_owned(),
            binary: self.binary.clone(),
            message: format!("unreadable answer: {e}"),
        })
    }
}

/// A plain address (`unix:///run/…/s/<hash>`), or `{"version":2,"address":…,"protocol":"ttrpc"}`.
fn parse_start_output(text: &str) -> std::result::Result<String, String> {
    if text.is_empty() {
        return Err("it printed no address".into());
    }
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("unreadable bootstrap parameters {text:?}: {e}"))?;
        if let Some(p) = v.get("protocol").and_then(|p| p.as_str()) {
            if p != "ttrpc" {
                return Err(format!("it speaks {p}, only ttrpc is supported"));
            }
        }
        return v
            .get("address")
            .and_then(|a| a.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("bootstrap parameters without an address: {text}"));
    }
    Ok(text.to_owned())
}

/// Connects to a shim's ttrpc address.
pub(crate) async fn connect(id: &str, address: &str) -> Result<TaskClient> {
    let err = |message: String| TaskError::ShimConnect {
        id: id.to_owned(),
        address: address.to_owned(),
        message,
    };
    let client = tokio::time::timeout(
        Duration::from_secs(5),
        ttrpc::asynchronous::Client::connect(address),
    )
    .await
    .map_err(|_| err("no answer within 5 s".into()))?
    .map_err(|e| err(e.to_string()))?;
    Ok(TaskClient::new(client))
}

/// The context of a call: a deadline (none for `Wait`) and the namespace, as containerd sends
/// it (`containerd-namespace-ttrpc` metadata).
pub(crate) fn ctx(namespace: &str, timeout: Option<Duration>) -> ttrpc::context::Context {
    let mut c = match timeout {
        Some(t) => ttrpc::context::with_duration(t),
        None => ttrpc::context::with_timeout(0),
    };
    c.add("containerd-namespace-ttrpc".into(), namespace.to_owned());
    c
}

/// Whether a failed call means the shim cannot be reached any more (as opposed to an
/// answer with an error status).
pub(crate) fn is_transport_error(e: &ttrpc::Error) -> bool {
    !matches!(e, ttrpc::Error::RpcStatus(_))
}

pub(crate) fn status_of(e: &ttrpc::Error) -> (ShimCode, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
        other => (ShimCode::UNAVAILABLE, other.to_string()),
    }
}

/// Creates the shim's log FIFO (the Go shims refuse to run without it) and copies what the
/// shim logs into rcd's log. The FIFO is opened read-write so it never reports end-of-file
/// before the shim has opened it; the copier is aborted when the task goes.
pub(crate) fn open_log(bundle: &Path, id: &str) -> Result<JoinHandle<()>> {
    let path = bundle.join(LOG_FIFO);
    match nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(TaskError::io("creating the shim log fifo", &path, e.into())),
    }
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .map_err(|e| TaskError::io("opening the shim log fifo", &path, e))?;
    let id = id.to_owned();
    Ok(tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(rx).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => debug!(task = %id, "shim: {line}"),
                Ok(None) => break,
                Err(e) => {
                    warn!(task = %id, "reading the shim log: {e}");
                    break;
                }
            }
        }
    }))
}

/// Whether process `pid` exists (not a zombie).
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits up to `limit` for `pid` to go away.
pub(crate) async fn wait_gone(pid: u32, limit: Duration) -> bool {
    if !process_alive(pid) {
        return true;
    }
    // A pidfd turns readable the moment the process exits (a zombie counts): no polling
    // interval added to every task delete. Shims are not rcd's children, so no SIGCHLD.
    if let Some(fd) = pidfd_open(pid) {
        use tokio::io::{unix::AsyncFd, Interest};
        // SAFETY: the OwnedFd is moved into the AsyncFd and stays open, unchanged, as long
        // as it lives.
        if let Ok(afd) = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
            return match tokio::time::timeout(limit, afd.readable()).await {
                Ok(Ok(_)) => true,
                _ => !process_alive(pid),
            };
        }
    }
    let deadline = tokio::time::Instant::now() + limit;
    while process_alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// `pidfd_open(2)`; `None` on kernels before 5.3 or when `pid` is gone.
pub(crate) fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall with integer arguments; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_gone_returns_at_the_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(
            !wait_gone(pid, Duration::from_millis(20)).await,
            "still running"
        );
        let t = std::time::Instant::now();
        assert!(wait_gone(pid, Duration::from_secs(5)).await);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // a zombie is gone too
        assert!(wait_gone(pid, Duration::from_millis(1)).await);
        child.wait().unwrap();
    }

    #[test]
    fn start_output() {
        assert_eq!(
            parse_start_output("unix:///run/x").unwrap(),
            "unix:///run/x"
        );
        assert_eq!(
            parse_start_output(r#"{"version":2,"address":"unix:///a","protocol":"ttrpc"}"#)
                .unwrap(),
            "unix:///a"
        );
        assert!(parse_start_output("").unwrap_err().contains("no address"));
        assert!(
            parse_start_output(r#"{"version":2,"address":"x","protocol":"grpc"}"#)
                .unwrap_err()
                .contains("grpc")
        );
        assert!(parse_start_output("{").unwrap_err().contains("unreadable"));
    }
}
