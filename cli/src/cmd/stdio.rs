//! ctr's way with stdio: rctr makes FIFOs, names them in the task request, and copies its
//! own stdin/stdout/stderr to and from them; the shim opens the other ends. (rnerd's
//! attached run without -i/-t reads a logger's attach socket instead: [`Readers::attach`].)
//!
//! Output FIFOs are opened for reading (non-blocking) before the task exists and then
//! polled: a FIFO reports hang-up only after a writer has come and gone, so a process that
//! writes and exits before rctr gets to read loses nothing, and a shim that opens its end
//! late (containerd's Go shim) finds a reader. stdin is opened read-write so opening never
//! waits; at end of input rctr closes it and asks the daemon to close the process's stdin.

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rcd_proto::v1 as pb;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Where rctr makes its FIFOs: one directory per process, `<base>/<id>-<random>/`.
/// Detached processes keep theirs (for `tasks attach`) until `tasks delete`.
pub fn fifo_base() -> PathBuf {
    std::env::var_os("RCTR_FIFO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("rctr-fifo"))
}

/// The FIFOs of one process.
pub struct Fifos {
    pub dir: PathBuf,
    pub stdin: Option<PathBuf>,
    pub stdout: PathBuf,
    /// `None` on a terminal (stderr goes to stdout).
    pub stderr: Option<PathBuf>,
    pub terminal: bool,
    keep: bool,
}

fn mkfifo(p: &Path) -> Result<()> {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .with_context(|| format!("creating fifo {}", p.display()))
}

impl Fifos {
    /// Makes the FIFOs for process `id` under [`fifo_base`].
    pub fn create(id: &str, stdin: bool, terminal: bool) -> Result<Fifos> {
        let base = fifo_base();
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let dir = base.join(format!("{id}-{:08x}", fastrand_u32()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let f = Fifos {
            stdin: stdin.then(|| dir.join("stdin")),
            stdout: dir.join("stdout"),
            stderr: (!terminal).then(|| dir.join("stderr")),
            dir,
            terminal,
            keep: false,
        };
        for p in [f.stdin.clone(), Some(f.stdout.clone()), f.stderr.clone()]
            .into_iter()
            .flatten()
        {
            mkfifo(&p)?;
        }
        Ok(f)
    }

    /// The task request's view of them.
    pub fn stdio(&self) -> pb::Stdio {
        let s = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        pb::Stdio {
            stdin: s(&self.stdin),
            stdout: self.stdout.display().to_string(),
            stderr: s(&self.stderr),
            terminal: self.terminal,
        }
    }

    /// Leaves the FIFOs in place when dropped (a detached process: `tasks attach` reopens
    /// them, `tasks delete` removes them).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Fifos {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn fastrand_u32() -> u32 {
    // no RNG crate needed for a name: time and pid differ between runs
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ std::process::id().rotate_left(16)) ^ (t.as_secs() as u32)
}

/// Removes the FIFO directory of a process if `path` (one of its stdio paths) is one rctr
/// made.
pub fn remove_fifo_dir_of(path: &str) {
    let p = Path::new(path);
    let Some(dir) = p.parent() else { return };
    if dir.parent() == Some(fifo_base().as_path()) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Output FIFOs opened for reading, before the task is created; or a connection to the
/// attach socket of the task's logger (rnerd's attached run of a logged task).
pub struct Readers {
    stdout: Option<File>,
    stderr: Option<File>,
    attach: Option<UnixStream>,
}

fn open_reader(p: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .with_context(|| format!("opening fifo {}", p.display()))
}

impl Readers {
    /// Nothing to copy (null stdio).
    pub fn none() -> Readers {
        Readers {
            stdout: None,
            stderr: None,
            attach: None,
        }
    }

    pub fn open(stdout: Option<&Path>, stderr: Option<&Path>) -> Result<Readers> {
        Ok(Readers {
            stdout: stdout.map(open_reader).transpose()?,
            stderr: stderr.map(open_reader).transpose()?,
            attach: None,
        })
    }

    /// The output frames of a logger's attach socket (`rcd_proto::attach`), connected
    /// before the task starts.
    pub fn attach(conn: UnixStream) -> Readers {
        Readers {
            stdout: None,
            stderr: None,
            attach: Some(conn),
        }
    }
}

/// How long rnerd waits for a logger's attach socket to accept it.
pub const ATTACH_WAIT: Duration = Duration::from_secs(5);

/// Connects to the attach socket at `path`. rcd's Create returns once the logger is ready,
/// socket included; a shim that does not wait for its logger could return earlier, so a
/// missing or refusing socket is retried for up to `wait`.
pub fn connect_attach(path: &Path, wait: Duration) -> Result<UnixStream> {
    use rcd_proto::attach::socket_path;
    let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) => (d, n),
        _ => anyhow::bail!("invalid attach socket path {}", path.display()),
    };
    let deadline = std::time::Instant::now() + wait;
    loop {
        let tried = socket_path(dir, name).and_then(|(p, _dirfd)| UnixStream::connect(p));
        match tried {
            Ok(c) => return Ok(c),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "connecting to the container's logger at {} (waited up to {} s): {e}",
                    path.display(),
                    wait.as_secs()
                ))
            }
        }
    }
}

/// Copies a logger's output frames to stdout and stderr until the logger ends the stream.
fn copy_frames(conn: UnixStream) {
    use rcd_proto::attach::{read_frame, LOST, STDERR, STDOUT};
    let mut r = std::io::BufReader::with_capacity(64 * 1024, conn);
    loop {
        let (kind, data) = match read_frame(&mut r) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                eprintln!("rnerd: reading the container's output from its logger: {e}");
                return;
            }
        };
        let written = match kind {
            STDOUT => {
                let mut o = std::io::stdout().lock();
                o.write_all(&data).and_then(|_| o.flush())
            }
            STDERR => {
                let mut o = std::io::stderr().lock();
                o.write_all(&data).and_then(|_| o.flush())
            }
            LOST => {
                eprintln!(
                    "rnerd: output was lost here: this terminal took it too slowly for the \
                     container's logger (the container's log has all of it: `rnerd logs`)"
                );
                Ok(())
            }
            _ => Ok(()),
        };
        if written.is_err() {
            return;
        }
    }
}

/// The running copies of a process's output.
pub struct Copier {
    done: mpsc::Receiver<()>,
    outputs: usize,
    /// At least this long after the exit: a logger sends what it still holds then.
    min_grace: Duration,
}

/// How long, after the exit, a logger's attach stream may take to end: the logger ends it
/// once the output has ended and it sent every client what it held.
const ATTACH_GRACE: Duration = Duration::from_secs(5);

/// Copies a FIFO to `out` until every writer has closed it.
fn copy_out(f: File, mut out: impl Write) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut f = f;
    loop {
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        match f.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

impl Copier {
    /// Starts copying the output FIFOs to rctr's stdout and stderr.
    pub fn start(readers: Readers) -> Copier {
        let (tx, rx) = mpsc::channel();
        let mut outputs = 0;
        if let Some(f) = readers.stdout {
            outputs += 1;
            let tx = tx.clone();
            std::thread::spawn(move || {
                copy_out(f, std::io::stdout());
                let _ = tx.send(());
            });
        }
        if let Some(f) = readers.stderr {
            outputs += 1;
            let tx = tx.clone();
            std::thread::spawn(move || {
                copy_out(f, std::io::stderr());
                let _ = tx.send(());
            });
        }
        let mut min_grace = Duration::ZERO;
        if let Some(c) = readers.attach {
            outputs += 1;
            min_grace = ATTACH_GRACE;
            let tx = tx.clone();
            std::thread::spawn(move || {
                copy_frames(c);
                let _ = tx.send(());
            });
        }
        Copier {
            done: rx,
            outputs,
            min_grace,
        }
    }

    /// Waits (after the process exited) for the outputs to reach end-of-file; gives up
    /// after `grace` in case something the process forked still holds them open.
    pub fn wait(self, grace: Duration) {
        let deadline = std::time::Instant::now() + grace.max(self.min_grace);
        for _ in 0..self.outputs {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if self.done.recv_timeout(left).is_err() {
                return;
            }
        }
    }
}

/// Copies rctr's stdin into the stdin FIFO; the returned receiver fires at end of input
/// (the FIFO is closed then), for the caller to close the process's stdin.
pub fn copy_stdin(path: &Path) -> Result<tokio::sync::oneshot::Receiver<()>> {
    let mut fifo = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening fifo {}", path.display()))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if fifo.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        // The FIFO stays open until rctr exits: a FIFO's content is discarded when its last
        // descriptor closes, and the shim may not have opened its end yet.
        std::mem::forget(fifo);
        let _ = tx.send(());
    });
    Ok(rx)
}

/// rctr's terminal in raw mode for as long as this lives.
pub struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    /// Puts stdin's terminal in raw mode; `None` when stdin is not a terminal.
    pub fn enter() -> Option<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin().as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// The size of rctr's terminal (stdin's, else stdout's): (columns, rows).
pub fn terminal_size() -> Option<(u32, u32)> {
    for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO] {
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ fills the winsize it is given.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 {
            return Some((ws.ws_col as u32, ws.ws_row as u32));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_made_and_removed() {
        let base = tempfile::tempdir().unwrap();
        std::env::set_var("RCTR_FIFO_DIR", base.path());
        let f = Fifos::create("c1", true, false).unwrap();
        let s = f.stdio();
        assert!(s.stdin.ends_with("/stdin") && s.stderr.ends_with("/stderr"));
        assert!(!s.terminal);
        let dir = f.dir.clone();
        assert!(dir.join("stdout").exists());
        drop(f);
        assert!(!dir.exists());
        let mut t = Fifos::create("c2", false, true).unwrap();
        let s = t.stdio();
        assert!(s.stdin.is_empty() && s.stderr.is_empty() && s.terminal);
        t.keep();
        let dir = t.dir.clone();
        drop(t);
        assert!(dir.exists());
        remove_fifo_dir_of(&s.stdout);
        assert!(!dir.exists());
    }

    #[test]
    fn attach_socket_waited_for_then_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("attach.sock");
        let t = std::time::Instant::now();
        let e = connect_attach(&p, Duration::from_millis(200)).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(200));
        let m = e.to_string();
        assert!(
            m.contains(&p.display().to_string()) && m.contains("waited"),
            "{m}"
        );
        // a socket that shows up late is found
        let p2 = p.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let l = std::os::unix::net::UnixListener::bind(&p2).unwrap();
            l.accept().unwrap();
        });
        connect_attach(&p, Duration::from_secs(10)).unwrap();
        late.join().unwrap();
        assert!(connect_attach(Path::new("/"), Duration::ZERO).is_err());
    }

    #[test]
    fn output_before_reader_is_kept_and_eof_after_writer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out");
        mkfifo(&p).unwrap();
        let r = open_reader(&p).unwrap();
        // a writer that writes and goes away before anyone reads
        let mut w = OpenOptions::new().write(true).open(&p).unwrap();
        w.write_all(b"hello").unwrap();
        drop(w);
        let mut got = Vec::new();
        copy_out(r, &mut got);
        assert_eq!(got, b"hello");
    }
}
