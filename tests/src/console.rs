//! The receiving end of `--console-socket`: a unix socket on which the runtime sends the
//! pseudo-terminal master of a container process over `SCM_RIGHTS`.

use anyhow::{bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A listening unix socket in its own temporary directory.
pub struct ConsoleSocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: UnixListener,
}

fn poll_in(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> nix::Result<bool> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let n = poll(
        &mut fds,
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
    )?;
    Ok(n > 0)
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket> {
        let dir = tempfile::Builder::new()
            .prefix("rtest-console-")
            .tempdir()?;
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path).context("binding console socket")?;
        Ok(ConsoleSocket {
            _dir: dir,
            path,
            listener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Accepts one connection and returns the file descriptor it carries.
    pub fn recv_master(&self, timeout: Duration) -> Result<OwnedFd> {
        if !poll_in(self.listener.as_fd(), timeout)? {
            bail!(
                "no connection on console socket {} within {timeout:?}",
                self.path.display()
            );
        }
        let (conn, _) = self
            .listener
            .accept()
            .context("accepting on console socket")?;
        if !poll_in(conn.as_fd(), timeout)? {
            bail!("no message on console socket within {timeout:?}");
        }
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 2]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("recvmsg on console socket")?;
        for c in msg.cmsgs().context("control messages")? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed this descriptor in our table for us.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        bail!("console socket message carried no file descriptor")
    }
}

/// Reads from a pty master until `done(text so far)` holds, the other side is closed (EIO)
/// or `timeout` passes; returns what was read with `\r` removed.
pub fn read_pty(master: &OwnedFd, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&out).replace('\r', "");
        if done(&text) {
            return text;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return text;
        }
        match poll_in(master.as_fd(), left.min(Duration::from_millis(200))) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return text,
        }
        let mut buf = [0u8; 4096];
        match nix::unistd::read(master.as_raw_fd(), &mut buf) {
            Ok(0) => return String::from_utf8_lossy(&out).replace('\r', ""),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
            // EIO: every slave descriptor is closed, the process is gone
            Err(_) => return String::from_utf8_lossy(&out).replace('\r', ""),
        }
    }
}
