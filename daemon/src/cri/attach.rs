//! Attach: the live stdio of a running container, served by its logger (CRI containers'
//! `cri-logger`, and the native API's `json-logger`, see `server::logs`).
//!
//! The container's output already passes through the logger (a child of the shim that
//! outlives rcd), so the logger is where attach clients are fed from: it listens on
//! `<control dir>/attach.sock` and sends every client what the container writes from the
//! moment it connects. A container created with `stdin: true` reads a FIFO
//! `<control dir>/stdin` that rcd makes before the task starts; the logger holds it open for
//! writing (so the container does not read EOF between attaches) and writes what clients send.
//! With `<control dir>/stdin-once` present (the config's `stdin_once`), the first client's end
//! of input closes the container's stdin, as kubelet expects.
//!
//! The frames are `rcd_proto::attach`'s (shared with the clients). A client too slow to take
//! the output is dropped (told so with [`LOST`]) rather than holding the container's log
//! back. At the end of the output the logger calls [`Hub::close`], so clients get all of it
//! and then end-of-stream.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

// the wire format is shared with the clients (rnerd): one implementation, in rcd-proto
pub use rcd_proto::attach::{
    encode, read_frame, socket_path, ATTACHED, LOST, SOCKET, STDERR, STDIN, STDIN_END, STDOUT,
};

/// The stdin FIFO and the stdin-once marker, in a container's control dir.
pub const STDIN_FIFO: &str = "stdin";
pub const STDIN_ONCE: &str = "stdin-once";

/// Output chunks queued per client before it counts as too slow.
const CLIENT_QUEUE: usize = 1024;

/// One attached client: its output queue and whether it was dropped for being slow.
struct Client {
    id: u64,
    tx: SyncSender<Vec<u8>>,
    lost: Arc<AtomicBool>,
}

/// The logger's side: the clients currently attached and the container's stdin.
pub struct Hub {
    clients: Mutex<Vec<Client>>,
    next: AtomicU64,
    stdin: Mutex<Option<File>>,
    stdin_once: bool,
    /// Writer threads still sending to their client, for [`Hub::close`] to wait on.
    writers: Mutex<usize>,
    writers_done: Condvar,
}

impl Hub {
    /// `start`, for a logger: without the socket the logger still writes the log, so a
    /// failure is reported (by `logger`, e.g. "rcd cri-logger") and attach is off.
    pub fn start_or_warn(dir: &Path, logger: &str) -> Option<Arc<Hub>> {
        match Hub::start(dir) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!(
                    "{logger}: no attach for {}: {e}",
                    dir.join(SOCKET).display()
                );
                None
            }
        }
    }

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
            writers: Mutex::new(0),
            writers_done: Condvar::new(),
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
        // queued ahead of any output, which the client gets from its registration on
        let _ = tx.try_send(encode(ATTACHED, b""));
        let me = self.next.fetch_add(1, Ordering::Relaxed);
        let lost = Arc::new(AtomicBool::new(false));
        *self.writers.lock().unwrap() += 1;
        self.clients.lock().unwrap().push(Client {
            id: me,
            tx,
            lost: lost.clone(),
        });
        let hub = self.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut ok = true;
                for frame in rx {
                    if out.write_all(&frame).is_err() {
                        ok = false;
                        break;
                    }
                }
                if ok && lost.load(Ordering::SeqCst) {
                    let _ = out.write_all(&encode(LOST, b""));
                }
                let _ = out.shutdown(std::net::Shutdown::Both);
                *hub.writers.lock().unwrap() -= 1;
                hub.writers_done.notify_all();
            });
        if spawned.is_err() {
            self.clients.lock().unwrap().retain(|c| c.id != me);
            *self.writers.lock().unwrap() -= 1;
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
                self.clients.lock().unwrap().retain(|c| c.id != me);
            });
    }

    /// Sends what the container wrote on `kind` to every client; drops slow or gone ones
    /// (a slow one gets [`LOST`] once its queue is sent).
    pub fn broadcast(&self, kind: u8, data: &[u8]) {
        let mut clients = self.clients.lock().unwrap();
        if clients.is_empty() || data.is_empty() {
            return;
        }
        let frame = encode(kind, data);
        clients.retain(|c| match c.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                c.lost.store(true, Ordering::SeqCst);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    /// The output has ended: lets every client take what is queued for it, then closes its
    /// connection; waits at most `grace` for that (a client that stopped reading must not
    /// keep the logger alive).
    pub fn close(&self, grace: Duration) {
        // dropping the senders ends each writer once its queue is sent
        self.clients.lock().unwrap().clear();
        let deadline = Instant::now() + grace;
        let mut n = self.writers.lock().unwrap();
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            n = self.writers_done.wait_timeout(n, left).unwrap().0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn frames(mut c: UnixStream) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(f) = read_frame(&mut c).unwrap() {
            out.push(f);
        }
        out
    }

    /// Connects as a client does, up to the hub's acknowledgement.
    fn connect(dir: &Path) -> UnixStream {
        let (p, _d) = socket_path(dir, SOCKET).unwrap();
        let mut c = UnixStream::connect(p).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(read_frame(&mut c).unwrap(), Some((ATTACHED, vec![])));
        c
    }

    /// Waits until the hub has taken `n` clients on.
    fn wait_clients(hub: &Hub, n: usize) {
        let t = Instant::now();
        while hub.clients.lock().unwrap().len() < n {
            assert!(t.elapsed() < Duration::from_secs(10), "client not taken on");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn close_sends_what_is_queued_then_ends_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::start(dir.path()).unwrap();
        let c = connect(dir.path());
        wait_clients(&hub, 1);
        for i in 0..200 {
            hub.broadcast(STDOUT, format!("{i}\n").as_bytes());
        }
        hub.broadcast(STDERR, b"err");
        hub.close(Duration::from_secs(10));
        let got = frames(c);
        assert_eq!(got.len(), 201);
        assert_eq!(got[199], (STDOUT, b"199\n".to_vec()));
        assert_eq!(got[200], (STDERR, b"err".to_vec()));
    }

    #[test]
    fn a_slow_client_is_told_it_lost_output() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::start(dir.path()).unwrap();
        let mut c = connect(dir.path());
        wait_clients(&hub, 1);
        // more than the queue and the socket buffers hold while the client does not read
        let chunk = vec![b'x'; 4096];
        for _ in 0..2 * CLIENT_QUEUE {
            hub.broadcast(STDOUT, &chunk);
        }
        assert!(hub.clients.lock().unwrap().is_empty());
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        let mut r = &all[..];
        let mut last = None;
        while let Some((k, _)) = read_frame(&mut r).unwrap() {
            last = Some(k);
        }
        assert_eq!(last, Some(LOST));
        hub.close(Duration::from_secs(10));
    }
}
