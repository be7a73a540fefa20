//! Attach: the live stdio of a running CRI container, served by its logger.
//!
//! The container's output already passes through `rcd cri-logger` (a child of the shim that
//! outlives rcd), so the logger is where attach clients are fed from: it listens on
//! `<control dir>/attach.sock` and sends every client what the container writes from the
//! moment it connects. A container created with `stdin: true` reads a FIFO
//! `<control dir>/stdin` that rcd makes before the task starts; the logger holds it open for
//! writing (so the container does not read EOF between attaches) and writes what clients send.
//! With `<control dir>/stdin-once` present (the config's `stdin_once`), the first client's end
//! of input closes the container's stdin, as kubelet expects.
//!
//! Frames both ways are `[kind u8][len u32 big-endian][len bytes]`: the logger sends
//! [`STDOUT`] and [`STDERR`]; a client sends [`STDIN`] and an empty [`STDIN_END`]. A client too
//! slow to take the output is dropped rather than holding the container's log back.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STDIN_END: u8 = 3;

/// The socket, the stdin FIFO and the stdin-once marker, in a container's control dir.
pub const SOCKET: &str = "attach.sock";
pub const STDIN_FIFO: &str = "stdin";
pub const STDIN_ONCE: &str = "stdin-once";

/// Largest frame a peer may send: bigger lengths mean a broken peer, not data.
const MAX_FRAME: usize = 1 << 20;
/// Output chunks queued per client before it counts as too slow.
const CLIENT_QUEUE: usize = 1024;

pub fn encode(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + data.len());
    f.push(kind);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes());
    f.extend_from_slice(data);
    f
}

/// Reads one frame; `None` at a clean end of stream between frames.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..])?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("attach frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)?;
    Ok(Some((head[0], data)))
}

/// A path to `name` in `dir` short enough for a unix socket address (108 bytes): through the
/// `/proc/self/fd` link of an open `dir` when the plain path is too long. Keep the returned
/// `File` open while the path is in use.
pub fn socket_path(dir: &Path, name: &str) -> std::io::Result<(PathBuf, Option<File>)> {
    let plain = dir.join(name);
    if plain.as_os_str().len() < 100 {
        return Ok((plain, None));
    }
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    let p = PathBuf::from(format!("/proc/self/fd/{}/{name}", d.as_raw_fd()));
    Ok((p, Some(d)))
}

/// The logger's side: the clients currently attached and the container's stdin.
pub struct Hub {
    clients: Mutex<Vec<(u64, SyncSender<Vec<u8>>)>>,
    next: std::sync::atomic::AtomicU64,
    stdin: Mutex<Option<File>>,
    stdin_once: bool,
}

impl Hub {
    /// Listens in `dir` (a stale socket of an earlier logger is replaced) and opens the stdin
    /// FIFO if rcd made one.
    pub fn start(dir: &Path) -> std::io::Result<Arc<Hub>> {
        let fifo = dir.join(STDIN_FIFO);
        let stdin = match std::fs::metadata(&fifo) {
            // read-write: never blocks, and the container does not see EOF while no client
            // is attached
            Ok(m) if m.file_type().is_fifo() => Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&fifo)?,
            ),
            _ => None,
        };
        let hub = Arc::new(Hub {
            clients: Mutex::new(Vec::new()),
            next: Default::default(),
            stdin: Mutex::new(stdin),
            stdin_once: dir.join(STDIN_ONCE).exists(),
        });
        let (path, _dirfd) = socket_path(dir, SOCKET)?;
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        let h = hub.clone();
        std::thread::Builder::new()
            .name("attach".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    h.clone().serve(conn);
                }
            })?;
        Ok(hub)
    }

    fn serve(self: Arc<Hub>, conn: UnixStream) {
        let Ok(mut out) = conn.try_clone() else {
            return;
        };
        let (tx, rx) = sync_channel::<Vec<u8>>(CLIENT_QUEUE);
        let me = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.clients.lock().unwrap().push((me, tx));
        let spawned = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                for frame in rx {
                    if out.write_all(&frame).is_err() {
                        break;
                    }
                }
                let _ = out.shutdown(std::net::Shutdown::Both);
            });
        if spawned.is_err() {
            return;
        }
        let _ = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut conn = conn;
                while let Ok(Some((kind, data))) = read_frame(&mut conn) {
                    match kind {
                        STDIN => {
                            let mut w = self.stdin.lock().unwrap();
                            if let Some(f) = w.as_mut() {
                                if f.write_all(&data).is_err() {
                                    *w = None;
                                }
                            }
                        }
                        STDIN_END if self.stdin_once => {
                            *self.stdin.lock().unwrap() = None;
                        }
                        _ => {}
                    }
                }
                // the client is gone: its writer ends with its queue
                self.clients.lock().unwrap().retain(|(id, _)| *id != me);
            });
    }

    /// Sends what the container wrote on `kind` to every client; drops slow or gone ones.
    pub fn broadcast(&self, kind: u8, data: &[u8]) {
        let mut clients = self.clients.lock().unwrap();
        if clients.is_empty() || data.is_empty() {
            return;
        }
        let frame = encode(kind, data);
        clients.retain(|(_, c)| match c.try_send(frame.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_lengths() {
        let mut buf = encode(STDOUT, b"hello");
        buf.extend(encode(STDIN_END, b""));
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((STDOUT, b"hello".to_vec()))
        );
        assert_eq!(read_frame(&mut r).unwrap(), Some((STDIN_END, vec![])));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        // cut inside a frame: an error, not a clean end
        let cut = encode(STDERR, b"abc");
        assert!(read_frame(&mut &cut[..6]).is_err());
        let mut huge = vec![STDIN];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let e = read_frame(&mut &huge[..]).unwrap_err();
        assert!(e.to_string().contains("over the"), "{e}");
    }

    #[test]
    fn long_dirs_get_short_socket_paths() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("x".repeat(120));
        std::fs::create_dir(&long).unwrap();
        let (p, fd) = socket_path(&long, SOCKET).unwrap();
        assert!(fd.is_some() && p.as_os_str().len() < 108, "{p:?}");
        let l = UnixListener::bind(&p).unwrap();
        assert!(long.join(SOCKET).exists());
        let (p2, _fd2) = socket_path(&long, SOCKET).unwrap();
        let _c = UnixStream::connect(&p2).unwrap();
        l.accept().unwrap();
        let (p, fd) = socket_path(dir.path(), SOCKET).unwrap();
        assert!(fd.is_none());
        assert_eq!(p, dir.path().join(SOCKET));
    }
}
