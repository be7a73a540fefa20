//! A server-side SPDY/3.1 session on an upgraded connection: one task reads and dispatches frames,
//! one task owns the write half and the header compressor, and stream handles talk to both
//! through shared state.
//!
//! Flow control: the session sends WINDOW_UPDATEs (stream and session level) as the application
//! consumes data, and its senders stay inside the peer's windows (64 KiB by default, changed by
//! SETTINGS and WINDOW_UPDATE). moby/spdystream, which kubelet, kubectl and crictl use, implements
//! no flow control at all: it never sends WINDOW_UPDATE and ignores the ones it gets. A sender that
//! used up a window of such a peer would wait forever, so when a window runs out before the peer
//! has ever sent a WINDOW_UPDATE, the session waits `FLOW_CONTROL_GRACE` for one and then stops
//! enforcing windows on that connection (TCP's own backpressure still applies). The first
//! WINDOW_UPDATE the peer sends turns enforcement back on.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::frame::{self, Frame, FrameError, HeaderDecoder, HeaderEncoder, Headers};

/// SPDY/3.1's initial stream and session window.
pub const DEFAULT_WINDOW: i64 = 64 * 1024;
/// Largest DATA frame this side sends.
const MAX_CHUNK: usize = 32 * 1024;
/// Consumed bytes that trigger a WINDOW_UPDATE: half a default window, as browsers did.
const UPDATE_THRESHOLD: u32 = 32 * 1024;
/// Bytes one stream may hold unread before the reader stops reading the connection; only a peer
/// ignoring flow control gets there.
const MAX_BUFFERED: usize = 1024 * 1024;
/// DATA frames queued for the writer at once, across all streams.
const MAX_QUEUED_FRAMES: usize = 64;
/// How long a sender whose window ran out waits for a first WINDOW_UPDATE (see module doc).
pub const FLOW_CONTROL_GRACE: Duration = Duration::from_millis(500);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct StreamState {
    send_window: i64,
    recv: VecDeque<Bytes>,
    recv_buffered: usize,
    recv_fin: bool,
    local_fin: bool,
    reset: bool,
    unacked: u32,
    handles: usize,
}

struct State {
    streams: HashMap<u32, StreamState>,
    session_send_window: i64,
    session_unacked: u32,
    initial_send_window: i64,
    peer_flow_control: bool,
    enforce: bool,
    gone: bool,
    closing: bool,
    last_peer_stream: u32,
    /// When a frame was last read or written (kubelet's idle timeout counts both).
    last_activity: Instant,
}

enum Out {
    Frame(Frame, Option<OwnedSemaphorePermit>),
    Shutdown,
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
    out: mpsc::UnboundedSender<Out>,
    permits: Arc<Semaphore>,
    lost: watch::Sender<bool>,
    /// Stops the reader and the writer at once (idle timeout).
    kill: CancellationToken,
}

impl Shared {
    fn queue(&self, frame: Frame) {
        let _ = self.out.send(Out::Frame(frame, None));
    }

    fn touch(&self) {
        lock(&self.state).last_activity = Instant::now();
    }

    fn mark_gone(&self) {
        lock(&self.state).gone = true;
        self.lost.send_replace(true);
        self.changed.notify_waiters();
    }
}

/// A stream the peer opened and the application has not answered yet.
pub struct Incoming {
    id: u32,
    headers: Headers,
    shared: Option<Arc<Shared>>,
}

impl Incoming {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The first value of a header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split('\0').next().unwrap_or(""))
    }

    /// Sends SYN_REPLY and hands out the stream.
    pub fn accept(mut self) -> SpdyStream {
        let shared = self.shared.take().expect("incoming stream used once");
        {
            let mut st = lock(&shared.state);
            if let Some(s) = st.streams.get_mut(&self.id) {
                s.handles += 1;
            }
            shared.queue(Frame::SynReply {
                stream_id: self.id,
                fin: false,
                headers: Vec::new(),
            });
        }
        SpdyStream {
            id: self.id,
            shared,
        }
    }

    /// Turns the stream down with RST_STREAM(REFUSED_STREAM).
    pub fn refuse(mut self) {
        if let Some(shared) = self.shared.take() {
            refuse(&shared, self.id);
        }
    }
}

fn refuse(shared: &Shared, id: u32) {
    let mut st = lock(&shared.state);
    st.streams.remove(&id);
    shared.queue(Frame::RstStream {
        stream_id: id,
        status: frame::RST_REFUSED_STREAM,
    });
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            refuse(&shared, self.id);
        }
    }
}

/// One accepted stream. Clones share the stream; when the last one is dropped the local half is
/// finished (FIN) if it was still open and the stream is forgotten.
pub struct SpdyStream {
    id: u32,
    shared: Arc<Shared>,
}

impl Clone for SpdyStream {
    fn clone(&self) -> Self {
        if let Some(s) = lock(&self.shared.state).streams.get_mut(&self.id) {
            s.handles += 1;
        }
        SpdyStream {
            id: self.id,
            shared: self.shared.clone(),
        }
    }
}

impl Drop for SpdyStream {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        let Some(s) = st.streams.get_mut(&self.id) else {
            return;
        };
        s.handles = s.handles.saturating_sub(1);
        if s.handles > 0 {
            return;
        }
        if !s.local_fin && !s.reset {
            self.shared.queue(Frame::Data {
                stream_id: self.id,
                fin: true,
                data: Bytes::new(),
            });
        }
        st.streams.remove(&self.id);
        drop(st);
        // the reader may be waiting for this stream's buffer to drain
        self.shared.changed.notify_waiters();
    }
}

impl SpdyStream {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next chunk the peer sent; `None` once the peer finished its half.
    pub async fn recv(&self) -> io::Result<Option<Bytes>> {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut guard = lock(&self.shared.state);
                let st = &mut *guard;
                let Some(s) = st.streams.get_mut(&self.id) else {
                    return Ok(None);
                };
                if let Some(chunk) = s.recv.pop_front() {
                    let n = chunk.len() as u32;
                    s.recv_buffered -= chunk.len();
                    s.unacked += n;
                    st.session_unacked += n;
                    if s.unacked >= UPDATE_THRESHOLD && !s.recv_fin {
                        self.shared.queue(Frame::WindowUpdate {
                            stream_id: self.id,
                            delta: std::mem::take(&mut s.unacked),
                        });
                    }
                    if st.session_unacked >= UPDATE_THRESHOLD {
                        self.shared.queue(Frame::WindowUpdate {
                            stream_id: 0,
                            delta: std::mem::take(&mut st.session_unacked),
                        });
                    }
                    drop(guard);
                    self.shared.changed.notify_waiters();
                    return Ok(Some(chunk));
                }
                if s.reset {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("spdy stream {} was reset", self.id),
                    ));
                }
                if s.recv_fin {
                    return Ok(None);
                }
                if st.gone {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the spdy connection closed",
                    ));
                }
            }
            notified.await;
        }
    }

    /// Sends `data` in DATA frames inside the peer's windows.
    pub async fn send(&self, mut data: &[u8]) -> io::Result<()> {
        enum Wait {
            Window { grace: bool },
            QueueSlot,
        }
        let broken = |what: String| Err(io::Error::new(io::ErrorKind::BrokenPipe, what));
        // A queue slot is only taken once the window allows a frame, so streams waiting for
        // their window never starve the ones that may send.
        let mut permit: Option<OwnedSemaphorePermit> = None;
        while !data.is_empty() {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let mut guard = lock(&self.shared.state);
                let st = &mut *guard;
                if st.gone {
                    return broken("the spdy connection closed".into());
                }
                let Some(s) = st.streams.get_mut(&self.id) else {
                    return broken(format!("spdy stream {} is closed", self.id));
                };
                if s.reset {
                    return broken(format!("spdy stream {} was reset", self.id));
                }
                if s.local_fin {
                    return broken(format!("spdy stream {} is already finished", self.id));
                }
                let allowed = if st.enforce {
                    s.send_window.min(st.session_send_window)
                } else {
                    i64::MAX
                };
                if allowed <= 0 {
                    permit = None;
                    Wait::Window {
                        grace: !st.peer_flow_control,
                    }
                } else if let Some(p) = permit
                    .take()
                    .or_else(|| self.shared.permits.clone().try_acquire_owned().ok())
                {
                    let n = data.len().min(MAX_CHUNK).min(allowed as usize);
                    if st.enforce {
                        s.send_window -= n as i64;
                        st.session_send_window -= n as i64;
                    }
                    let _ = self.shared.out.send(Out::Frame(
                        Frame::Data {
                            stream_id: self.id,
                            fin: false,
                            data: Bytes::copy_from_slice(&data[..n]),
                        },
                        Some(p),
                    ));
                    data = &data[n..];
                    continue;
                } else {
                    Wait::QueueSlot
                }
            };
            match wait {
                Wait::QueueSlot => {
                    permit = Some(
                        self.shared
                            .permits
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("the frame semaphore is never closed"),
                    );
                }
                Wait::Window { grace: true } => {
                    if tokio::time::timeout(FLOW_CONTROL_GRACE, notified)
                        .await
                        .is_err()
                    {
                        let mut st = lock(&self.shared.state);
                        if !st.peer_flow_control && st.enforce {
                            tracing::debug!(
                                "spdy peer sent no WINDOW_UPDATE: flow control off for this connection"
                            );
                            st.enforce = false;
                        }
                    }
                }
                Wait::Window { grace: false } => notified.await,
            }
        }
        Ok(())
    }

    /// Ends this side of the stream (an empty DATA frame with FIN); idempotent.
    pub fn finish(&self) {
        let mut st = lock(&self.shared.state);
        if let Some(s) = st.streams.get_mut(&self.id) {
            if !s.local_fin && !s.reset {
                s.local_fin = true;
                self.shared.queue(Frame::Data {
                    stream_id: self.id,
                    fin: true,
                    data: Bytes::new(),
                });
            }
        }
    }

    /// Aborts the stream with RST_STREAM(`status`).
    pub fn reset(&self, status: u32) {
        let mut st = lock(&self.shared.state);
        if let Some(s) = st.streams.get_mut(&self.id) {
            if !s.reset {
                s.reset = true;
                self.shared.queue(Frame::RstStream {
                    stream_id: self.id,
                    status,
                });
            }
        }
        drop(st);
        self.shared.changed.notify_waiters();
    }
}

/// The server side of one SPDY connection.
pub struct Session {
    shared: Arc<Shared>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
}

impl Session {
    /// Starts serving `io`; with `idle`, the connection is dropped after that long without a
    /// frame in either direction.
    pub fn start<T>(io: T, idle: Option<Duration>) -> Session
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                streams: HashMap::new(),
                session_send_window: DEFAULT_WINDOW,
                session_unacked: 0,
                initial_send_window: DEFAULT_WINDOW,
                peer_flow_control: false,
                enforce: true,
                gone: false,
                closing: false,
                last_peer_stream: 0,
                last_activity: Instant::now(),
            }),
            changed: Notify::new(),
            out: out_tx,
            permits: Arc::new(Semaphore::new(MAX_QUEUED_FRAMES)),
            lost: watch::channel(false).0,
            kill: CancellationToken::new(),
        });
        let writer = tokio::spawn(write_loop(w, out_rx, shared.clone()));
        let reader = tokio::spawn(read_loop(r, in_tx, shared.clone()));
        let watchdog = idle.map(|idle| tokio::spawn(watchdog(shared.clone(), idle)));
        Session {
            shared,
            incoming: in_rx,
            reader: Some(reader),
            writer: Some(writer),
            watchdog,
        }
    }

    /// The next stream the peer opens; `None` once the connection is gone.
    pub async fn accept(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }

    /// Becomes true when the connection to the peer is lost (or closed).
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.shared.lost.subscribe()
    }

    /// Ends the session gracefully: GOAWAY after everything already queued, then up to `linger`
    /// for the peer to close its side, then the connection is shut down.
    pub async fn close(mut self, linger: Duration) {
        {
            let mut st = lock(&self.shared.state);
            st.closing = true;
            self.shared.queue(Frame::GoAway {
                last_good_stream_id: st.last_peer_stream,
                status: frame::GOAWAY_OK,
            });
        }
        let mut lost = self.shared.lost.subscribe();
        let _ = tokio::time::timeout(linger, lost.wait_for(|gone| *gone)).await;
        let _ = self.shared.out.send(Out::Shutdown);
        if let Some(mut writer) = self.writer.take() {
            if tokio::time::timeout(Duration::from_secs(2), &mut writer)
                .await
                .is_err()
            {
                writer.abort();
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // without close(): tear the connection down; streams still held by tasks see it gone
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        if let Some(w) = self.writer.take() {
            w.abort();
        }
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        self.shared.mark_gone();
    }
}

async fn watchdog(shared: Arc<Shared>, idle: Duration) {
    let mut lost = shared.lost.subscribe();
    loop {
        let deadline = lock(&shared.state).last_activity + idle;
        if Instant::now() >= deadline {
            tracing::info!("spdy session idle for {idle:?}: closing it");
            shared.kill.cancel();
            shared.mark_gone();
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = lost.wait_for(|gone| *gone) => return,
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
    shared: Arc<Shared>,
) {
    let mut enc = HeaderEncoder::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut permits = Vec::new();
    loop {
        let first = tokio::select! {
            item = rx.recv() => match item {
                Some(item) => item,
                None => break,
            },
            _ = shared.kill.cancelled() => {
                let _ = w.shutdown().await;
                break;
            }
        };
        let mut next = Some(first);
        let mut shutdown = false;
        while let Some(item) = next.take() {
            match item {
                Out::Frame(f, permit) => {
                    frame::encode_frame(&f, &mut enc, &mut buf);
                    permits.extend(permit);
                }
                Out::Shutdown => {
                    shutdown = true;
                    break;
                }
            }
            if buf.len() < 64 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            if let Err(e) = async {
                w.write_all(&buf).await?;
                w.flush().await
            }
            .await
            {
                tracing::debug!("spdy write failed: {e}");
                shared.mark_gone();
                break;
            }
            shared.touch();
            buf.clear();
            permits.clear();
        }
        if shutdown {
            let _ = w.shutdown().await;
            break;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    incoming: mpsc::UnboundedSender<Incoming>,
    shared: Arc<Shared>,
) {
    let mut dec = HeaderDecoder::new();
    loop {
        let read = tokio::select! {
            read = frame::read_frame(&mut r, &mut dec) => read,
            _ = shared.kill.cancelled() => break,
        };
        match read {
            Ok(None) => break,
            Ok(Some(f)) => {
                shared.touch();
                if let Err(e) = dispatch(f, &incoming, &shared).await {
                    tracing::warn!("spdy session: {e}");
                    shared.queue(Frame::GoAway {
                        last_good_stream_id: lock(&shared.state).last_peer_stream,
                        status: frame::GOAWAY_PROTOCOL_ERROR,
                    });
                    break;
                }
            }
            Err(FrameError::Io(e)) => {
                tracing::debug!("spdy read ended: {e}");
                break;
            }
            Err(e) => {
                tracing::warn!("spdy session: {e}");
                shared.queue(Frame::GoAway {
                    last_good_stream_id: lock(&shared.state).last_peer_stream,
                    status: frame::GOAWAY_PROTOCOL_ERROR,
                });
                break;
            }
        }
    }
    shared.mark_gone();
}

async fn dispatch(
    f: Frame,
    incoming: &mpsc::UnboundedSender<Incoming>,
    shared: &Arc<Shared>,
) -> Result<(), String> {
    match f {
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => {
            let mut st = lock(&shared.state);
            if stream_id == 0 || stream_id % 2 == 0 || stream_id <= st.last_peer_stream {
                return Err(format!(
                    "the client opened stream {stream_id} (after {}): ids must be odd and increasing",
                    st.last_peer_stream
                ));
            }
            st.last_peer_stream = stream_id;
            if st.closing {
                shared.queue(Frame::RstStream {
                    stream_id,
                    status: frame::RST_REFUSED_STREAM,
                });
                return Ok(());
            }
            let window = st.initial_send_window;
            st.streams.insert(
                stream_id,
                StreamState {
                    send_window: window,
                    recv_fin: flags & frame::FLAG_FIN != 0,
                    local_fin: flags & frame::FLAG_UNIDIRECTIONAL != 0,
                    ..Default::default()
                },
            );
            drop(st);
            let _ = incoming.send(Incoming {
                id: stream_id,
                headers,
                shared: Some(shared.clone()),
            });
        }
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            {
                let mut st = lock(&shared.state);
                let Some(s) = st.streams.get_mut(&stream_id) else {
                    // a stream already forgotten (finished, refused or reset): drop its data
                    return Ok(());
                };
                if s.recv_fin || s.reset {
                    return Ok(());
                }
                if !data.is_empty() {
                    s.recv_buffered += data.len();
                    s.recv.push_back(data);
                }
                s.recv_fin |= fin;
            }
            shared.changed.notify_waiters();
            // A peer that ignores flow control can outrun the application: stop reading the
            // connection until the stream drains.
            loop {
                let notified = shared.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let st = lock(&shared.state);
                    match st.streams.get(&stream_id) {
                        Some(s) if s.recv_buffered > MAX_BUFFERED && !s.reset && !st.gone => {}
                        _ => break,
                    }
                }
                notified.await;
            }
        }
        Frame::Headers { stream_id, fin, .. } => {
            if fin {
                if let Some(s) = lock(&shared.state).streams.get_mut(&stream_id) {
                    s.recv_fin = true;
                }
                shared.changed.notify_waiters();
            }
        }
        Frame::RstStream { stream_id, .. } => {
            if let Some(s) = lock(&shared.state).streams.get_mut(&stream_id) {
                s.reset = true;
            }
            shared.changed.notify_waiters();
        }
        Frame::Settings { entries, .. } => {
            let mut st = lock(&shared.state);
            for (_, id, value) in entries {
                if id == frame::SETTINGS_INITIAL_WINDOW_SIZE {
                    let delta = value as i64 - st.initial_send_window;
                    st.initial_send_window = value as i64;
                    for s in st.streams.values_mut() {
                        s.send_window += delta;
                    }
                    st.peer_flow_control = true;
                    st.enforce = true;
                }
            }
            drop(st);
            shared.changed.notify_waiters();
        }
        Frame::Ping { id } => {
            // odd ids are the client's pings, to be echoed; even ones would answer ours
            if id % 2 == 1 {
                shared.queue(Frame::Ping { id });
            }
        }
        Frame::GoAway { .. } => {
            // the client opens no more streams; the open ones carry on
        }
        Frame::WindowUpdate { stream_id, delta } => {
            let mut st = lock(&shared.state);
            st.peer_flow_control = true;
            st.enforce = true;
            if stream_id == 0 {
                st.session_send_window = st.session_send_window.saturating_add(delta as i64);
            } else if let Some(s) = st.streams.get_mut(&stream_id) {
                s.send_window = s.send_window.saturating_add(delta as i64);
            }
            drop(st);
            shared.changed.notify_waiters();
        }
        Frame::SynReply { .. } | Frame::Unknown { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    /// The client end of a session, speaking raw frames.
    struct Peer {
        r: ReadHalf<DuplexStream>,
        w: WriteHalf<DuplexStream>,
        enc: HeaderEncoder,
        dec: HeaderDecoder,
    }

    impl Peer {
        async fn send(&mut self, f: Frame) {
            let mut buf = Vec::new();
            frame::encode_frame(&f, &mut self.enc, &mut buf);
            self.w.write_all(&buf).await.unwrap();
        }

        async fn next(&mut self, within: Duration) -> Option<Frame> {
            tokio::time::timeout(within, frame::read_frame(&mut self.r, &mut self.dec))
                .await
                .ok()
                .map(|f| f.unwrap().expect("the session closed the connection"))
        }

        async fn open(&mut self, id: u32, kind: &str) {
            self.send(Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), kind.into())],
            })
            .await;
        }

        /// Data bytes of `id` until nothing arrives for `quiet`.
        async fn data_until_quiet(&mut self, id: u32, quiet: Duration) -> usize {
            let mut n = 0;
            while let Some(f) = self.next(quiet).await {
                if let Frame::Data {
                    stream_id, data, ..
                } = f
                {
                    assert_eq!(stream_id, id);
                    n += data.len();
                }
            }
            n
        }
    }

    fn pair() -> (Session, Peer) {
        let (server, client) = tokio::io::duplex(4 << 20);
        let (r, w) = tokio::io::split(client);
        (
            Session::start(server, None),
            Peer {
                r,
                w,
                enc: HeaderEncoder::new(),
                dec: HeaderDecoder::new(),
            },
        )
    }

    #[tokio::test]
    async fn senders_stay_inside_the_windows_of_a_flow_controlling_peer() {
        let (mut session, mut peer) = pair();
        peer.send(Frame::Settings {
            flags: 0,
            entries: vec![(0, frame::SETTINGS_INITIAL_WINDOW_SIZE, 65536)],
        })
        .await;
        peer.open(1, "stdout").await;
        let incoming = session.accept().await.unwrap();
        assert_eq!(incoming.header("StreamType"), Some("stdout"));
        let stream = incoming.accept();
        let sender = tokio::spawn(async move { stream.send(&vec![7u8; 150_000]).await });
        assert!(matches!(
            peer.next(Duration::from_secs(5)).await,
            Some(Frame::SynReply { stream_id: 1, .. })
        ));
        // exactly one window, then silence well past the grace a silent peer would get
        let quiet = FLOW_CONTROL_GRACE + Duration::from_millis(300);
        assert_eq!(peer.data_until_quiet(1, quiet).await, 65536);
        // a stream update alone is not enough: the session window is spent too
        peer.send(Frame::WindowUpdate {
            stream_id: 1,
            delta: 100_000,
        })
        .await;
        assert_eq!(
            peer.data_until_quiet(1, Duration::from_millis(300)).await,
            0
        );
        peer.send(Frame::WindowUpdate {
            stream_id: 0,
            delta: 30_000,
        })
        .await;
        assert_eq!(
            peer.data_until_quiet(1, Duration::from_millis(300)).await,
            30_000
        );
        peer.send(Frame::WindowUpdate {
            stream_id: 0,
            delta: 1 << 20,
        })
        .await;
        assert_eq!(
            peer.data_until_quiet(1, Duration::from_millis(300)).await,
            150_000 - 95_536
        );
        sender.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn streams_waiting_for_their_window_do_not_block_the_others() {
        let (mut session, mut peer) = pair();
        peer.send(Frame::Settings {
            flags: 0,
            entries: vec![(0, frame::SETTINGS_INITIAL_WINDOW_SIZE, 1024)],
        })
        .await;
        peer.send(Frame::WindowUpdate {
            stream_id: 0,
            delta: 10 << 20,
        })
        .await;
        let mut blocked = Vec::new();
        for i in 0..(MAX_QUEUED_FRAMES as u32 + 6) {
            peer.open(2 * i + 1, "stdout").await;
            let stream = session.accept().await.unwrap().accept();
            blocked.push(tokio::spawn(async move { stream.send(&[0u8; 1025]).await }));
        }
        peer.open(1001, "stdout").await;
        let free = session.accept().await.unwrap().accept();
        tokio::time::sleep(Duration::from_millis(200)).await;
        tokio::time::timeout(Duration::from_secs(2), free.send(b"through"))
            .await
            .expect("a stream with window left is not starved")
            .unwrap();
        assert!(blocked.iter().all(|b| !b.is_finished()));
    }

    #[tokio::test]
    async fn a_peer_without_flow_control_is_served_after_the_grace() {
        let (mut session, mut peer) = pair();
        peer.open(1, "stdout").await;
        let stream = session.accept().await.unwrap().accept();
        let t = Instant::now();
        let sender = tokio::spawn(async move { stream.send(&vec![1u8; 200_000]).await });
        let got = peer
            .data_until_quiet(1, FLOW_CONTROL_GRACE + Duration::from_millis(500))
            .await;
        assert_eq!(got, 200_000);
        sender.await.unwrap().unwrap();
        assert!(t.elapsed() >= FLOW_CONTROL_GRACE);
    }

    #[tokio::test]
    async fn consumed_data_is_acknowledged_with_window_updates() {
        let (mut session, mut peer) = pair();
        peer.open(1, "stdin").await;
        let stream = session.accept().await.unwrap().accept();
        for _ in 0..5 {
            peer.send(Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::from(vec![0u8; 10_000]),
            })
            .await;
        }
        let mut total = 0;
        while total < 50_000 {
            total += stream.recv().await.unwrap().unwrap().len();
        }
        let mut stream_update = 0;
        let mut session_update = 0;
        while let Some(f) = peer.next(Duration::from_millis(300)).await {
            if let Frame::WindowUpdate { stream_id, delta } = f {
                if stream_id == 0 {
                    session_update += delta;
                } else {
                    stream_update += delta;
                }
            }
        }
        assert_eq!(stream_update, 40_000, "acknowledged in 32 KiB steps");
        peer.send(Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::new(),
        })
        .await;
        assert_eq!(stream.recv().await.unwrap(), None);
        assert_eq!(session_update, 40_000);
    }

    #[tokio::test]
    async fn pings_are_echoed_and_resets_end_streams() {
        let (mut session, mut peer) = pair();
        peer.send(Frame::Ping { id: 5 }).await;
        peer.send(Frame::Ping { id: 6 }).await;
        assert_eq!(
            peer.next(Duration::from_secs(5)).await,
            Some(Frame::Ping { id: 5 })
        );
        peer.open(1, "stdin").await;
        let stream = session.accept().await.unwrap().accept();
        peer.send(Frame::RstStream {
            stream_id: 1,
            status: frame::RST_CANCEL,
        })
        .await;
        let err = stream.recv().await.unwrap_err();
        assert_eq!(err.to_string(), "spdy stream 1 was reset");
        let err = stream.send(b"x").await.unwrap_err();
        assert_eq!(err.to_string(), "spdy stream 1 was reset");
    }

    #[tokio::test]
    async fn a_stream_id_out_of_order_ends_the_session() {
        let (mut session, mut peer) = pair();
        peer.open(3, "stdin").await;
        let _ = session.accept().await.unwrap();
        peer.open(1, "stdout").await;
        let mut got_goaway = false;
        while let Some(f) = peer.next(Duration::from_secs(2)).await {
            if let Frame::GoAway { status, .. } = f {
                assert_eq!(status, frame::GOAWAY_PROTOCOL_ERROR);
                got_goaway = true;
                break;
            }
        }
        assert!(got_goaway);
        assert!(session.accept().await.is_none());
        assert!(*session.lost().borrow());
    }
}
