//! A process's stdio as containerd names it (FIFO paths, `file://` URIs or nothing).
//!
//! Without a terminal the process gets the FIFOs themselves, no copying: the shim keeps a
//! reader open on each output FIFO (so the process never dies of SIGPIPE when the client goes
//! away, and nothing written before the client opens its end is lost). The client sees EOF
//! on the output once the process and everything it forked close it. Stdin alone is copied
//! (into a pipe), so the process reads EOF neither before the client comes nor later than
//! CloseIO.
//!
//! With a terminal the runtime sends the pty master over a console socket and one small
//! thread copies between it and the FIFOs.

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::Error;

/// What the shim holds for a process's life.
#[derive(Default)]
pub struct Held {
    /// The stdin copier, closed on CloseIO.
    pub stdin: Option<StdinCopy>,
    /// Readers on output FIFOs.
    pub readers: Vec<File>,
    /// The pty master (for ResizePty).
    pub console: Option<File>,
    /// Set when the tty copier has passed on everything the pty held (it hung up).
    pub tty_done: Option<Arc<AtomicBool>>,
    /// The read end of a just started logger's ready pipe: [`Held::wait_logger`].
    pub logger_ready: Option<File>,
}

impl Held {
    /// Waits for the logger to be ready (its log open, its attach socket bound): it closes
    /// its end of the pipe then. The runtime's create runs meanwhile: the process cannot
    /// write before its start, and what it writes earlier waits in the pipe.
    pub fn wait_logger(&mut self) {
        if let Some(mut ready) = self.logger_ready.take() {
            let mut b = [0u8; 1];
            let _ = ready.read(&mut b);
        }
    }
}

/// The fds the runtime passes on to the process; dropped once the runtime has run.
#[derive(Default)]
pub struct ForChild {
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
}

fn is_fifo(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_fifo())
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let what = format!("opening {what} {}", path.display());
    move |e| Error::Io(what, e)
}

/// `file:///p` → `/p`; `binary://` is handled by [`open`] (a logger process); anything else
/// is a path.
fn target(uri: &str, what: &str) -> Result<Option<PathBuf>, Error> {
    if uri.is_empty() {
        return Ok(None);
    }
    if let Some(p) = uri.strip_prefix("file://") {
        return Ok(Some(PathBuf::from(p)));
    }
    if uri.starts_with("binary://") {
        return Err(Error::Invalid(format!(
            "{what} {uri}: binary:// logging is only for a task's stdout and stderr together"
        )));
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        return Err(Error::Invalid(format!(
            "{what} {uri}: unknown scheme {scheme}"
        )));
    }
    Ok(Some(PathBuf::from(uri)))
}

fn open_output(uri: &str, what: &str, held: &mut Held) -> Result<Option<File>, Error> {
    let Some(p) = target(uri, what)? else {
        return Ok(None);
    };
    if is_fifo(&p) {
        // A reader first, so opening the writer cannot block.
        let r = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p)
            .map_err(io_err(what, &p))?;
        held.readers.push(r);
        let w = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(io_err(what, &p))?;
        return Ok(Some(w));
    }
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(&p)
        .map_err(io_err(what, &p))?;
    Ok(Some(f))
}

fn open_input(uri: &str, for_copier: bool, held: &mut Held) -> Result<Option<File>, Error> {
    let Some(p) = target(uri, "stdin")? else {
        return Ok(None);
    };
    if !is_fifo(&p) {
        return Ok(Some(File::open(&p).map_err(io_err("stdin", &p))?));
    }
    if for_copier {
        // Polled: a reader opened before the client's writer sees neither data nor hang-up
        // until the client has come and gone.
        let r = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p)
            .map_err(io_err("stdin", &p))?;
        return Ok(Some(r));
    }
    let (child, copy) = StdinCopy::start(p)?;
    held.stdin = Some(copy);
    Ok(Some(child))
}

/// The one input the shim copies: the process reads a pipe, fed from the stdin FIFO once the
/// client's writer is there. The process reads EOF when the client closes the FIFO, or on
/// CloseIO, and never before the client came.
pub struct StdinCopy {
    writer: Arc<Mutex<Option<File>>>,
    path: PathBuf,
    done: Arc<AtomicBool>,
    /// Set by CloseIO: the copier copies what the FIFO still holds, then closes the pipe.
    closing: Arc<AtomicBool>,
    /// Set once the copier has met its client (opened the FIFO).
    opened: Arc<AtomicBool>,
}

impl StdinCopy {
    fn start(path: PathBuf) -> Result<(File, StdinCopy), Error> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| Error::Failed(format!("creating the stdin pipe: {e}")))?;
        let writer = Arc::new(Mutex::new(Some(File::from(w))));
        let done = Arc::new(AtomicBool::new(false));
        let closing = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicBool::new(false));
        let (w2, d2, p2, c2, o2) = (
            writer.clone(),
            done.clone(),
            path.clone(),
            closing.clone(),
            opened.clone(),
        );
        std::thread::Builder::new()
            .name("stdin".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                // Blocks until the client opens its writer (or Drop opens one to end this).
                if let Ok(mut fifo) = File::open(&p2) {
                    o2.store(true, Ordering::SeqCst);
                    let mut buf = vec![0u8; 8192];
                    loop {
                        // Poll in short steps so that CloseIO is seen while the client still
                        // holds its writer; what the FIFO holds is copied before closing (a
                        // client writes, closes and calls CloseIO at once: nothing may be lost).
                        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
                        let ready = match poll(&mut fds, PollTimeout::from(50u16)) {
                            Ok(n) => n > 0,
                            Err(nix::errno::Errno::EINTR) => continue,
                            Err(_) => break,
                        };
                        if !ready {
                            if c2.load(Ordering::SeqCst) {
                                break;
                            }
                            continue;
                        }
                        let n = match fifo.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut w = w2.lock().unwrap();
                        let written = w.as_mut().is_some_and(|f| f.write_all(&buf[..n]).is_ok());
                        if !written {
                            break;
                        }
                    }
                }
                *w2.lock().unwrap() = None;
                d2.store(true, Ordering::SeqCst);
            })
            .map_err(|e| Error::Io("starting the stdin copier".into(), e))?;
        Ok((
            File::from(r),
            StdinCopy {
                writer,
                path,
                done,
                closing,
                opened,
            },
        ))
    }

    /// CloseIO: the process reads EOF once what the FIFO holds has been copied. A copier
    /// still waiting for its client (it never opened the FIFO) closes the pipe at once.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        if !self.opened.load(Ordering::SeqCst) {
            // a copier still in open(2) waiting for a writer: meet it with one that closes at
            // once; it then copies whatever a client left in the FIFO and ends
            let _ = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.path);
        }
    }
}

impl Drop for StdinCopy {
    fn drop(&mut self) {
        self.close();
        *self.writer.lock().unwrap() = None;
        if !self.done.load(Ordering::SeqCst) {
            // A copier still waiting for a client: meet its open with a writer that closes
            // at once, so it reads EOF and ends.
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.path);
        }
    }
}

/// Opens the stdio of a process without a terminal. `binary://` outputs start the logger
/// (`id` and `namespace` go into its environment).
pub fn open(
    stdin: &str,
    stdout: &str,
    stderr: &str,
    id: &str,
    namespace: &str,
) -> Result<(Held, ForChild), Error> {
    let mut held = Held::default();
    if stdout.starts_with("binary://") || stderr.starts_with("binary://") {
        if stdout != stderr {
            return Err(Error::Invalid(format!(
                "stdout {stdout:?} and stderr {stderr:?}: binary:// logging takes both streams, \
                 with one URI"
            )));
        }
        let (out, err, ready) = start_logger(stdout, id, namespace)?;
        held.logger_ready = Some(ready);
        let child = ForChild {
            stdin: open_input(stdin, false, &mut held)?,
            stdout: Some(out),
            stderr: Some(err),
        };
        return Ok((held, child));
    }
    let child = ForChild {
        stdin: open_input(stdin, false, &mut held)?,
        stdout: open_output(stdout, "stdout", &mut held)?,
        stderr: open_output(stderr, "stderr", &mut held)?,
    };
    Ok((held, child))
}

/// Decodes `%XX` escapes of a URI part.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `binary:///path?k=v&k2` → the binary and its arguments (`k v k2`), as containerd runs it.
pub fn binary_command(uri: &str) -> Result<(PathBuf, Vec<String>), Error> {
    let rest = uri
        .strip_prefix("binary://")
        .ok_or_else(|| Error::Invalid(format!("{uri}: not a binary:// URI")))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = unescape(path);
    if !path.starts_with('/') {
        return Err(Error::Invalid(format!(
            "{uri}: the logger must be an absolute path"
        )));
    }
    let mut args = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        args.push(unescape(k));
        if !v.is_empty() {
            args.push(unescape(v));
        }
    }
    Ok((PathBuf::from(path), args))
}

/// containerd's binary logging protocol: the logger gets the process's stdout on fd 3, its
/// stderr on fd 4 and a pipe on fd 5 it closes once ready; the process gets the write ends,
/// the caller the read end of the ready pipe.
fn start_logger(uri: &str, id: &str, namespace: &str) -> Result<(File, File, File), Error> {
    let (bin, args) = binary_command(uri)?;
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| Error::Failed(format!("creating a logger pipe: {e}")))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let env = [
        format!("CONTAINER_ID={id}"),
        format!("CONTAINER_NAMESPACE={namespace}"),
    ];
    spawn_logger(&bin, &args, &env, [&out_r, &err_r, &ready_w])
        .map_err(|e| Error::Io(format!("starting the logger {}", bin.display()), e))?;
    // the reaper collects its exit
    drop((out_r, err_r, ready_w));
    Ok((File::from(out_w), File::from(err_w), File::from(ready_r)))
}

/// Starts the logger with `fds` on its fds 3, 4 and 5, 0-2 on /dev/null, only `env` in its
/// environment, in a process group of its own, every signal at its default and none blocked.
/// Through posix_spawn: std's `Command` with `pre_exec` forks the shim (0.4 ms here), a
/// vfork-style spawn does not copy its page tables.
fn spawn_logger(
    bin: &Path,
    args: &[String],
    env: &[String],
    fds: [&OwnedFd; 3],
) -> std::io::Result<libc::pid_t> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstr = |b: &[u8]| {
        CString::new(b).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an argument holds a nul byte",
            )
        })
    };
    let prog = cstr(bin.as_os_str().as_bytes())?;
    let argv_owned = std::iter::once(Ok(prog.clone()))
        .chain(args.iter().map(|a| cstr(a.as_bytes())))
        .collect::<std::io::Result<Vec<_>>>()?;
    let env_owned = env
        .iter()
        .map(|e| cstr(e.as_bytes()))
        .collect::<std::io::Result<Vec<_>>>()?;
    let ptrs = |v: &[CString]| {
        v.iter()
            .map(|s| s.as_ptr() as *mut libc::c_char)
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect::<Vec<_>>()
    };
    let (argv, envp) = (ptrs(&argv_owned), ptrs(&env_owned));
    // Above 5 first: a source already on 3-5 would be overwritten by an earlier dup2, or
    // keep its close-on-exec through a dup2 onto itself.
    let high = fds
        .iter()
        .map(|fd| {
            nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
                // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
                .map(|n| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) })
                .map_err(std::io::Error::from)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(r))
        }
    };
    let mut pid: libc::pid_t = 0;
    // SAFETY: file actions and attributes are initialised before use and destroyed on every
    // path; every pointer given to posix_spawn points into CStrings and vectors that outlive
    // the call, and argv/envp end with a null pointer.
    unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut fa))?;
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        if let Err(e) = check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut fa);
            return Err(e);
        }
        let r = (|| {
            for (fd, flags) in [
                (0, libc::O_RDONLY),
                (1, libc::O_WRONLY),
                (2, libc::O_WRONLY),
            ] {
                check(libc::posix_spawn_file_actions_addopen(
                    &mut fa,
                    fd,
                    c"/dev/null".as_ptr(),
                    flags,
                    0,
                ))?;
            }
            for (i, fd) in high.iter().enumerate() {
                check(libc::posix_spawn_file_actions_adddup2(
                    &mut fa,
                    fd.as_raw_fd(),
                    3 + i as i32,
                ))?;
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            check(libc::posix_spawnattr_setsigmask(&mut attr, &none))?;
            check(libc::posix_spawnattr_setsigdefault(&mut attr, &all))?;
            check(libc::posix_spawnattr_setpgroup(&mut attr, 0))?;
            check(libc::posix_spawnattr_setflags(
                &mut attr,
                (libc::POSIX_SPAWN_SETSIGMASK
                    | libc::POSIX_SPAWN_SETSIGDEF
                    | libc::POSIX_SPAWN_SETPGROUP) as libc::c_short,
            ))?;
            // a bare name is looked up in the shim's PATH, as `Command` did
            check(libc::posix_spawnp(
                &mut pid,
                prog.as_ptr(),
                &fa,
                &attr,
                argv.as_ptr(),
                envp.as_ptr(),
            ))
        })();
        libc::posix_spawn_file_actions_destroy(&mut fa);
        libc::posix_spawnattr_destroy(&mut attr);
        r?;
    }
    Ok(pid)
}

/// A listening console socket in a private temp dir (the bundle path may be too long for a
/// socket address).
pub struct ConsoleSocket {
    dir: PathBuf,
    pub path: PathBuf,
    listener: std::os::unix::net::UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket, Error> {
        let dir =
            std::env::temp_dir().join(format!("rshim-{}-{}", std::process::id(), crate::unique()));
        std::fs::create_dir(&dir).map_err(io_err("console socket dir", &dir))?;
        let path = dir.join("pty.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .map_err(io_err("console socket", &path))?;
        Ok(ConsoleSocket {
            dir,
            path,
            listener,
        })
    }

    /// The pty master the runtime sent; call once the runtime command has returned.
    pub fn receive(&self) -> Result<File, Error> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        self.listener
            .set_nonblocking(true)
            .map_err(|e| Error::Io("console socket".into(), e))?;
        let (conn, _) = self.listener.accept().map_err(|e| {
            Error::Failed(format!(
                "the runtime sent no pty master on {}: {e}",
                self.path.display()
            ))
        })?;
        conn.set_nonblocking(false)
            .map_err(|e| Error::Io("console socket".into(), e))?;
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| Error::Failed(format!("receiving the pty master: {e}")))?;
        for c in msg
            .cmsgs()
            .map_err(|e| Error::Failed(format!("pty cmsg: {e}")))?
        {
            if let ControlMessageOwned::ScmRights(fds) = c {
                if let Some(fd) = fds.first() {
                    // SAFETY: the kernel just installed this fd for us; nothing else owns it.
                    let owned: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(*fd) };
                    for extra in &fds[1..] {
                        let _ = nix::unistd::close(*extra);
                    }
                    return Ok(File::from(owned));
                }
            }
        }
        Err(Error::Failed(
            "the runtime's console message held no fd".into(),
        ))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the copier between a pty master and the process's FIFOs. It ends when the pty
/// hangs up (every holder of the slave is gone), closing stdout so the client sees EOF.
pub fn start_tty_copy(
    master: &File,
    stdin: &str,
    stdout: &str,
    held: &mut Held,
) -> Result<(), Error> {
    let input = open_input(stdin, true, held)?;
    // a terminal's one stream goes to the logger's stdout; its stderr pipe closes at once
    let output = if stdout.starts_with("binary://") {
        let (out, _, ready) = start_logger(stdout, "", "")?;
        held.logger_ready = Some(ready);
        held.wait_logger();
        Some(out)
    } else {
        open_output(stdout, "stdout", held)?
    };
    let master = master
        .try_clone()
        .map_err(|e| Error::Io("pty master".into(), e))?;
    let done = Arc::new(AtomicBool::new(false));
    held.tty_done = Some(done.clone());
    std::thread::Builder::new()
        .name("tty".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            copy_tty(master, input, output);
            done.store(true, Ordering::SeqCst);
            // wakes the signal loop: an exit it holds back for this copier goes out now
            // SAFETY: kill(2) on this very process with a signal its loop waits for.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGCHLD);
            }
        })
        .map_err(|e| Error::Io("starting the tty copier".into(), e))?;
    Ok(())
}

fn copy_tty(mut master: File, mut input: Option<File>, mut output: Option<File>) {
    let mut buf = vec![0u8; 8192];
    loop {
        let (m_ev, i_ev) = {
            let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
            if let Some(i) = &input {
                fds.push(PollFd::new(i.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::Error::EINTR) => continue,
                Err(_) => return,
                Ok(_) => {}
            }
            (
                fds[0].revents().unwrap_or(PollFlags::empty()),
                fds.get(1).and_then(|f| f.revents()),
            )
        };
        if !m_ev.is_empty() {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if let Some(o) = &mut output {
                        if o.write_all(&buf[..n]).is_err() {
                            output = None;
                        }
                    }
                }
            }
        }
        if let (Some(ev), Some(i)) = (i_ev, &mut input) {
            if ev.contains(PollFlags::POLLIN) {
                match i.read(&mut buf) {
                    Ok(0) => input = None,
                    Ok(n) => {
                        if master.write_all(&buf[..n]).is_err() {
                            input = None;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => input = None,
                }
            } else if !ev.is_empty() {
                // The writer hung up and nothing is left to read.
                input = None;
            }
        }
    }
}

pub fn resize(master: &File, width: u32, height: u32) -> Result<(), Error> {
    let ws = libc::winsize {
        ws_row: height as u16,
        ws_col: width as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(Error::Io(
            "resizing the pty".into(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_uris() {
        assert_eq!(target("", "stdout").unwrap(), None);
        assert_eq!(
            target("file:///var/log/x", "stdout").unwrap(),
            Some(PathBuf::from("/var/log/x"))
        );
        assert_eq!(
            target("/run/fifo/1-stdout", "stdout").unwrap(),
            Some(PathBuf::from("/run/fifo/1-stdout"))
        );
        let e = target("binary:///bin/logger?x=1", "stdout").unwrap_err();
        assert!(
            e.to_string().contains("binary:// logging is only for"),
            "{e}"
        );
        let (bin, args) =
            binary_command("binary:///usr/bin/rcd?cri-logger=1%2C/a%20b%2C/c").unwrap();
        assert_eq!(bin, PathBuf::from("/usr/bin/rcd"));
        assert_eq!(args, vec!["cri-logger", "1,/a b,/c"]);
        assert!(binary_command("binary://rel/x").is_err());
        let e = target("tcp://1.2.3.4", "stderr").unwrap_err();
        assert!(e.to_string().contains("unknown scheme tcp"), "{e}");
    }
}
