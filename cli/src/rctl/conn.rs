//! The CRI gRPC connection: endpoints (`unix:///path` or a bare path), one channel per
//! distinct socket, per-call deadlines, and error messages that name the endpoint.

use anyhow::{bail, Result};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use std::io;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where rctl goes when nothing names an endpoint: rcd's own socket (one default, no scan
/// over other runtimes' sockets as crictl once did).
pub const DEFAULT_ENDPOINT: &str = "unix:///run/rcd/rcd.sock";

/// Lifecycle calls (pod start with CNI, create, stop) routinely outlast crictl's 2 s
/// default on a loaded node; they get at least this long.
pub const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A unix socket path from `unix:///path` or `/path`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let p = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if p.is_empty() {
        bail!("empty endpoint {endpoint:?}: give unix:///path/to/socket");
    }
    if endpoint.contains("://") && !endpoint.starts_with("unix://") {
        bail!("unsupported endpoint {endpoint:?}: only unix:// sockets are spoken");
    }
    if !p.starts_with('/') {
        bail!("endpoint {endpoint:?} is not an absolute socket path");
    }
    Ok(PathBuf::from(p))
}

/// Where the endpoints came from, to say what to set when they fail.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub runtime: String,
    pub image: String,
    /// Whether the runtime endpoint is the built-in default (nothing was set).
    pub defaulted: bool,
}

/// Both CRI services; the image service may be on another socket.
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
    pub endpoints: Endpoints,
    pub timeout: Duration,
}

fn channel(path: PathBuf) -> Channel {
    // The URI is unused: every connection goes to the socket. Lazy, so a command that only
    // needs one service does not fail on the other's socket.
    Endpoint::from_static("http://cri.sock").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        },
    ))
}

impl Cri {
    pub fn new(endpoints: Endpoints, timeout: Duration) -> Result<Cri> {
        let rt = socket_path(&endpoints.runtime)?;
        let im = socket_path(&endpoints.image)?;
        let rch = channel(rt.clone());
        let ich = if im == rt { rch.clone() } else { channel(im) };
        Ok(Cri {
            // Image lists and verbose infos can be large.
            runtime: RuntimeServiceClient::new(rch).max_decoding_message_size(64 << 20),
            images: ImageServiceClient::new(ich).max_decoding_message_size(64 << 20),
            endpoints,
            timeout,
        })
    }

    /// A request with the query deadline (`-t`).
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if !self.timeout.is_zero() {
            r.set_timeout(self.timeout);
        }
        r
    }

    /// A request for a lifecycle call: at least [`LIFECYCLE_TIMEOUT`], plus `extra`.
    pub fn req_long<T>(&self, msg: T, extra: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.timeout.max(LIFECYCLE_TIMEOUT) + extra);
        r
    }

    /// The message for a failed runtime-service call.
    pub fn rt_err(&self, what: &str, s: tonic::Status) -> anyhow::Error {
        status_error(&self.endpoints, &self.endpoints.runtime, what, s)
    }

    /// The message for a failed image-service call.
    pub fn img_err(&self, what: &str, s: tonic::Status) -> anyhow::Error {
        status_error(&self.endpoints, &self.endpoints.image, what, s)
    }
}

/// The innermost I/O error of a transport failure, if any.
fn io_cause(s: &tonic::Status) -> Option<&io::Error> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        src = e.source();
    }
    None
}

pub fn status_error(
    eps: &Endpoints,
    endpoint: &str,
    what: &str,
    s: tonic::Status,
) -> anyhow::Error {
    let hint = if eps.defaulted {
        " (no endpoint set: use -r/--runtime-endpoint, CONTAINER_RUNTIME_ENDPOINT or runtime-endpoint in the config file)"
    } else {
        ""
    };
    if let Some(io) = io_cause(&s) {
        let why = match io.kind() {
            io::ErrorKind::NotFound => "no such socket".to_owned(),
            io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => io.to_string(),
        };
        return anyhow::anyhow!("cannot reach the runtime at {endpoint}: {why}{hint}");
    }
    match s.code() {
        tonic::Code::DeadlineExceeded => {
            anyhow::anyhow!(
                "{what}: no answer from {endpoint} within the timeout (raise it with -t)"
            )
        }
        tonic::Code::Unimplemented => anyhow::anyhow!(
            "{what}: the runtime at {endpoint} does not implement this CRI call{}",
            if s.message().is_empty() {
                String::new()
            } else {
                format!(" ({})", s.message())
            }
        ),
        tonic::Code::Unavailable if s.message().is_empty() || s.message().contains("transport") => {
            anyhow::anyhow!(
                "cannot reach the runtime at {endpoint}: {}{hint}",
                s.message()
            )
        }
        _ if s.message().is_empty() => anyhow::anyhow!("{what}: {}", s.code()),
        _ => anyhow::anyhow!("{what}: {}", s.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(socket_path("/a/b").unwrap(), PathBuf::from("/a/b"));
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
        assert!(socket_path("unix://").is_err());
        assert!(socket_path("rel.sock").is_err());
    }
}
