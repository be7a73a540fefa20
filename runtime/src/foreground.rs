//! What `run` and `exec` do when they stay in the foreground: forward signals to the process,
//! reap it and return its exit status; with a terminal, own the pty master and copy it to and
//! from this process's stdio.

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::{SfdFlags, SigSet, SignalFd};
use nix::sys::termios::{self, SetArg, Termios};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The exit code a shell would report: the status, or 128 + the signal.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// A console socket of our own, for `-t` without `--console-socket`: the container sends its
/// pty master here and we proxy it to our own terminal.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn new(dir: &Path, id: &str) -> Result<Self> {
        let path = dir.join(format!(".console-{id}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("failed to listen on console socket {}", path.display()))?;
        Ok(Self { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the pty master the container sends over the socket.
    pub fn receive_master(&self, timeout: Duration) -> Result<OwnedFd> {
        let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        if poll(&mut fds, PollTimeout::from(ms))? == 0 {
            anyhow::bail!("the container did not send its terminal within {timeout:?}");
        }
        let (stream, _) = self
            .listener
            .accept()
            .context("failed to accept console connection")?;
        recv_fd(stream.as_fd())
    }
}

/// The console socket a container gets: the caller's, else one of ours when it needs a terminal.
/// Returns ours (to receive the pty master from) and the path to hand to libcontainer.
pub fn console_for(
    terminal: bool,
    given: Option<&Path>,
    dir: &Path,
    id: &str,
) -> Result<(Option<ConsoleSocket>, Option<PathBuf>)> {
    if let Some(p) = given {
        return Ok((None, Some(p.to_path_buf())));
    }
    if !terminal {
        return Ok((None, None));
    }
    let own = ConsoleSocket::new(dir, id)?;
    let path = own.path().to_path_buf();
    Ok((Some(own), Some(path)))
}

/// Processes orphaned inside the container are reparented to us and reaped, as with runc.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Receives one file descriptor sent with SCM_RIGHTS.
pub fn recv_fd(sock: BorrowedFd<'_>) -> Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("failed to receive the terminal from the container")?;
    for c in msg
        .cmsgs()
        .context("bad control message on console socket")?
    {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    anyhow::bail!("the console socket message carried no file descriptor")
}

/// Puts our terminal in raw mode while the container owns it, and restores it on drop.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

fn copy_window_size(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ read and write a winsize struct we own.
    unsafe {
        if libc::ioctl(from.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Blocks the signals we forward so they queue on a signalfd instead of killing us. Must be
/// called after the container's processes are forked: they would inherit the mask.
pub fn block_signals() -> Result<SignalFd> {
    let mut mask = SigSet::all();
    // signals that mean a fault in runr itself stay deliverable
    for s in [
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGILL,
        Signal::SIGFPE,
        Signal::SIGABRT,
    ] {
        mask.remove(s);
    }
    mask.thread_block().context("failed to block signals")?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).context("failed to create signalfd")
}

/// Waits for `pid`, forwarding signals to it and, with `console`, copying between the pty master
/// and our stdio. Returns the process's exit code.
pub fn wait(pid: Pid, sfd: SignalFd, console: Option<OwnedFd>) -> Result<i32> {
    let _raw = console.as_ref().and_then(|_| RawMode::enter());
    if let Some(m) = &console {
        copy_window_size(std::io::stdin().as_fd(), m.as_fd());
    }
    let stdin = std::io::stdin();
    let mut stdin_open = console.is_some();
    let mut master_open = console.is_some();
    let mut status = None;
    // The child may have exited before the signal mask was in place: look once before waiting.
    if let Some(code) = reap(pid)? {
        status = Some(code);
    }
    let mut buf = vec![0u8; 32 * 1024];
    while status.is_none() || master_open {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let master_idx = if master_open {
            fds.push(PollFd::new(
                console.as_ref().unwrap().as_fd(),
                PollFlags::POLLIN,
            ));
            Some(fds.len() - 1)
        } else {
            None
        };
        let stdin_idx = if stdin_open && status.is_none() {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            Some(fds.len() - 1)
        } else {
            None
        };
        // once the process is gone, drain what is left of its output without blocking forever
        let timeout = if status.is_some() {
            PollTimeout::from(100u8)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("poll failed"),
        }
        let ready = |i: usize| {
            fds[i].revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        let sig_ready = ready(0);
        let master_ready = master_idx.is_some_and(ready);
        let stdin_ready = stdin_idx.is_some_and(ready);
        drop(fds);
        if sig_ready {
            if let Some(info) = sfd.read_signal().context("failed to read signalfd")? {
                let signo = info.ssi_signo as i32;
                if signo == libc::SIGCHLD {
                    if let Some(code) = reap(pid)? {
                        status = Some(code);
                    }
                } else if signo == libc::SIGWINCH {
                    if let Some(m) = &console {
                        copy_window_size(stdin.as_fd(), m.as_fd());
                    }
                } else if signo != libc::SIGURG {
                    if let Ok(sig) = Signal::try_from(signo) {
                        let _ = kill(pid, sig);
                    } else {
                        // SAFETY: plain kill(2) with a real-time signal number.
                        unsafe { libc::kill(pid.as_raw(), signo) };
                    }
                }
            }
        }
        if master_ready {
            let m = console.as_ref().unwrap();
            match nix::unistd::read(m.as_raw_fd(), &mut buf) {
                Ok(0) | Err(Errno::EIO) => master_open = false,
                Ok(n) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => master_open = false,
            }
        }
        if stdin_ready {
            match stdin.lock().read(&mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let m = console.as_ref().unwrap();
                    let _ = nix::unistd::write(m, &buf[..n]);
                }
            }
        }
    }
    Ok(status.unwrap_or(0))
}

/// Reaps every child that has exited or exits within a short grace period (processes killed
/// with their pid namespace take a moment to become zombies).
pub fn reap_all() {
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if std::time::Instant::now() >= deadline {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Reaps every exited child; returns the exit code if `pid` was among them.
fn reap(pid: Pid) -> Result<Option<i32>> {
    let mut found = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => break,
            Ok(st) => {
                if st.pid() == Some(pid) {
                    found = exit_code(st);
                }
            }
            Err(Errno::ECHILD) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waitpid failed"),
        }
    }
    Ok(found)
}
