//! The CRI streaming server: Exec, Attach and PortForward over one-time URLs, as kubelet's
//! `k8s.io/kubelet/pkg/cri/streaming` serves them for containerd and CRI-O.
//!
//! The CRI service registers a request ([`StreamingServer::exec_url`] and friends) and returns the
//! URL to kubelet or crictl. The client then connects to `http://<addr>/{exec,attach,portforward}/
//! <token>` and upgrades the connection to one of:
//! - SPDY/3.1 (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version` `v5`/`v4`/`v3`/`v2.channel.k8s.io`
//!   or `portforward.k8s.io`): the client opens one SPDY stream per standard stream
//!   (`streamtype` header) or per forwarded connection (`port`, `requestid`);
//! - WebSocket (`Sec-WebSocket-Protocol` `v5`/`v4.channel.k8s.io`, their base64 variants, or the
//!   older unversioned ones): binary messages prefixed with a channel byte; for port forwarding a
//!   data and an error channel per requested port, or SPDY tunnelled in binary messages
//!   (`SPDY/3.1+portforward.k8s.io`, what client-go's websocket port-forward dialer speaks).
//!
//! How processes are run is not this module's business: it calls a [`Runtime`] the CRI side
//! implements with plain tokio streams, so a shim-backed exec (FIFOs + ResizePty) and an
//! in-process test runtime both fit.

mod cache;
mod http;
mod portforward;
mod remotecommand;
pub mod spdy;
mod status;
mod ws;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
pub use tokio_util::sync::CancellationToken;

/// An Exec request as the CRI's `ExecRequest` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// An Attach request as the CRI's `AttachRequest` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A PortForward request as the CRI's `PortForwardRequest` carries it. SPDY clients name the port
/// of each forwarded connection themselves (as with kubelet, any port of the pod is reachable);
/// WebSocket clients get exactly these ports (or the `port` query parameters when this is empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortForwardRequest {
    pub pod_sandbox_id: String,
    pub ports: Vec<i32>,
}

/// A terminal size from the client's resize stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// Bytes from the client (EOF when the client closes stdin).
pub type InputStream = Box<dyn AsyncRead + Send + Unpin>;
/// Bytes to the client. Dropping or shutting it down ends that stream for the client.
pub type OutputStream = Box<dyn AsyncWrite + Send + Unpin>;

/// The client's side of an exec or attach session, handed to the [`Runtime`].
pub struct Streams {
    /// Present when the request asked for stdin.
    pub stdin: Option<InputStream>,
    /// Present when the request asked for stdout. With a tty it carries the terminal's output.
    pub stdout: Option<OutputStream>,
    /// Present when the request asked for stderr (never with a tty).
    pub stderr: Option<OutputStream>,
    pub tty: bool,
    /// Terminal sizes (the first one right after the client connects), with a tty only.
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
    /// Cancelled when the client goes away or the server shuts down: the runtime should then
    /// stop the exec'd process (or detach) and return.
    pub cancel: CancellationToken,
}

/// A forwarded connection: reads give what the client sends (EOF when it half-closes), writes go
/// to the client, `shutdown()` half-closes toward the client.
pub type PortStream = tokio::io::DuplexStream;

/// What a runtime failure tells the client (kubelet's "Internal error occurred: ..." status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(pub String);

/// What the CRI side implements to run streamed requests.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Runs `req.cmd` in the container with `streams` and returns its exit code (128 + signal
    /// number for a process killed by a signal). The output streams must be written before
    /// returning: the session ends right after (with the exit code on the error stream).
    async fn exec(&self, req: ExecRequest, streams: Streams) -> Result<i32, RuntimeError>;

    /// Connects `streams` to the container's main process until it exits or the client leaves.
    async fn attach(&self, req: AttachRequest, streams: Streams) -> Result<(), RuntimeError>;

    /// Connects `stream` to `port` inside the pod's network namespace until either side closes.
    /// `cancel` fires when the client goes away.
    async fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
        stream: PortStream,
        cancel: CancellationToken,
    ) -> Result<(), RuntimeError>;
}

/// Where and how the server runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address; port 0 picks a free one.
    pub addr: SocketAddr,
    /// What the URLs start with (`http://host:port`), when clients must reach the server by
    /// another name than the listen address (kubelet's `BaseURL`); default `http://<bound addr>`.
    pub base_url: Option<String>,
    /// How long a URL stays valid when nobody connects to it.
    pub token_ttl: Duration,
    /// Most URLs pending at once.
    pub max_pending: usize,
    /// How long a SPDY client may take to open the streams it announced.
    pub stream_creation_timeout: Duration,
    /// How long a finished session waits for the client to close the connection itself.
    pub linger: Duration,
    /// A session without traffic for this long is dropped (kubelet's stream idle timeout);
    /// for SPDY frames either way count, for WebSocket the client's messages.
    pub idle_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: None,
            token_ttl: Duration::from_secs(60),
            max_pending: 1000,
            stream_creation_timeout: Duration::from_secs(30),
            linger: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(4 * 3600)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("streaming server cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid {kind} request: {reason}")]
    InvalidRequest { kind: &'static str, reason: String },
    #[error("too many pending streaming requests ({0}): wait for some to be used or expire")]
    TooManyPending(usize),
    #[error("cannot get random bytes for a streaming token: {0}")]
    Random(std::io::Error),
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) cache: Mutex<cache::Cache>,
    pub(crate) shutdown: CancellationToken,
}

/// The running server. Dropping it without [`StreamingServer::shutdown`] leaves it serving.
pub struct StreamingServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl StreamingServer {
    /// Binds `config.addr` and starts serving.
    pub async fn start(
        config: Config,
        runtime: Arc<dyn Runtime>,
    ) -> Result<StreamingServer, StreamingError> {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| StreamingError::Bind {
                addr: config.addr,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StreamingError::Bind {
                addr: config.addr,
                source,
            })?;
        let inner = Arc::new(Inner {
            cache: Mutex::new(cache::Cache::new(config.token_ttl, config.max_pending)),
            config,
            runtime,
            shutdown: CancellationToken::new(),
        });
        let accept = tokio::spawn(http::serve(listener, inner.clone()));
        tracing::info!("streaming server listening on {addr}");
        Ok(StreamingServer {
            inner,
            addr,
            accept,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers an exec and returns its one-time URL.
    pub fn exec_url(&self, req: ExecRequest) -> Result<String, StreamingError> {
        validate_streams(
            "exec",
            &req.container_id,
            req.tty,
            req.stdin,
            req.stdout,
            req.stderr,
        )?;
        if req.cmd.is_empty() {
            return Err(invalid("exec", "cmd is empty"));
        }
        self.register("exec", cache::Pending::Exec(req))
    }

    /// Registers an attach and returns its one-time URL.
    pub fn attach_url(&self, req: AttachRequest) -> Result<String, StreamingError> {
        validate_streams(
            "attach",
            &req.container_id,
            req.tty,
            req.stdin,
            req.stdout,
            req.stderr,
        )?;
        self.register("attach", cache::Pending::Attach(req))
    }

    /// Registers a port forward and returns its one-time URL.
    pub fn port_forward_url(&self, req: PortForwardRequest) -> Result<String, StreamingError> {
        if req.pod_sandbox_id.is_empty() {
            return Err(invalid("port forward", "missing required pod_sandbox_id"));
        }
        if let Some(p) = req.ports.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(invalid(
                "port forward",
                format!("port {p} is out of range (1-65535)"),
            ));
        }
        self.register("portforward", cache::Pending::PortForward(req))
    }

    fn register(&self, path: &str, pending: cache::Pending) -> Result<String, StreamingError> {
        let token = cache::lock(&self.inner.cache).insert(pending)?;
        Ok(match &self.inner.config.base_url {
            Some(base) => format!("{}/{path}/{token}", base.trim_end_matches('/')),
            None => format!("http://{}/{path}/{token}", self.addr),
        })
    }

    /// Stops accepting connections and cancels the sessions in progress.
    pub async fn shutdown(self) {
        self.inner.shutdown.cancel();
        let _ = self.accept.await;
    }
}

fn invalid(kind: &'static str, reason: impl Into<String>) -> StreamingError {
    StreamingError::InvalidRequest {
        kind,
        reason: reason.into(),
    }
}

fn validate_streams(
    kind: &'static str,
    container_id: &str,
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> Result<(), StreamingError> {
    if container_id.is_empty() {
        return Err(invalid(kind, "missing required container_id"));
    }
    if tty && stderr {
        // a terminal has one output: stdout and stderr cannot be told apart
        return Err(invalid(kind, "tty and stderr cannot both be true"));
    }
    if !stdin && !stdout && !stderr {
        return Err(invalid(kind, "one of stdin, stdout, or stderr must be set"));
    }
    Ok(())
}
