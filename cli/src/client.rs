//! Connecting to rcd's gRPC socket and calling it in a namespace.

use rcd_proto::v1::{
    content_client::ContentClient, images_client::ImagesClient, leases_client::LeasesClient,
    snapshots_client::SnapshotsClient, version_client::VersionClient,
};
use rcd_proto::{valid_namespace, NAMESPACE_HEADER};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why a client could not talk to the daemon; the messages are what the CLIs print.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("daemon not running at {0} (no socket)")]
    NoSocket(PathBuf),
    #[error("daemon not running at {0} (connection refused)")]
    Refused(PathBuf),
    #[error("permission denied connecting to {0}")]
    PermissionDenied(PathBuf),
    #[error("timed out connecting to {0}")]
    Timeout(PathBuf),
    #[error("connecting to {path}: {message}")]
    Connect { path: PathBuf, message: String },
    #[error("invalid namespace {0:?}: letters, digits, '-', '_' in '.'-separated labels")]
    InvalidNamespace(String),
}

/// Adds the `rcd-namespace` header to every call.
#[derive(Clone)]
pub struct Namespace(MetadataValue<Ascii>);

impl Interceptor for Namespace {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(NAMESPACE_HEADER, self.0.clone());
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, Namespace>;

/// A connection to rcd, in one namespace.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    namespace: Namespace,
    address: PathBuf,
}

fn classify(address: &Path, e: &io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::NotFound => ClientError::NoSocket(address.to_owned()),
        io::ErrorKind::ConnectionRefused => ClientError::Refused(address.to_owned()),
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(address.to_owned()),
        io::ErrorKind::TimedOut => ClientError::Timeout(address.to_owned()),
        _ => ClientError::Connect {
            path: address.to_owned(),
            message: e.to_string(),
        },
    }
}

impl Client {
    /// Connects to the socket at `address` within `timeout`.
    pub async fn connect(
        address: &Path,
        namespace: &str,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        if !valid_namespace(namespace) {
            return Err(ClientError::InvalidNamespace(namespace.to_owned()));
        }
        let ns = Namespace(
            namespace
                .parse()
                .map_err(|_| ClientError::InvalidNamespace(namespace.to_owned()))?,
        );
        let path = address.to_owned();
        // The URI is unused: every connection goes to the socket.
        let endpoint = Endpoint::from_static("http://rcd.sock").connect_timeout(timeout);
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        });
        let channel =
            match tokio::time::timeout(timeout, endpoint.connect_with_connector(connector)).await {
                Err(_) => return Err(ClientError::Timeout(address.to_owned())),
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                    while let Some(s) = src {
                        if let Some(io) = s.downcast_ref::<io::Error>() {
                            return Err(classify(address, io));
                        }
                        src = s.source();
                    }
                    return Err(ClientError::Connect {
                        path: address.to_owned(),
                        message: e.to_string(),
                    });
                }
            };
        Ok(Client {
            channel,
            namespace: ns,
            address: address.to_owned(),
        })
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    pub fn version(&self) -> VersionClient<Svc> {
        VersionClient::with_interceptor(self.channel.clone(), self.namespace.clone())
    }

    pub fn images(&self) -> ImagesClient<Svc> {
        ImagesClient::with_interceptor(self.channel.clone(), self.namespace.clone())
    }

    pub fn content(&self) -> ContentClient<Svc> {
        ContentClient::with_interceptor(self.channel.clone(), self.namespace.clone())
    }

    pub fn snapshots(&self) -> SnapshotsClient<Svc> {
        SnapshotsClient::with_interceptor(self.channel.clone(), self.namespace.clone())
    }

    pub fn leases(&self) -> LeasesClient<Svc> {
        LeasesClient::with_interceptor(self.channel.clone(), self.namespace.clone())
    }
}

/// The container half of the API (containers, tasks, namespaces, events, introspection).
impl Client {
    pub fn containers(&self) -> rcd_proto::v1::containers_client::ContainersClient<Svc> {
        rcd_proto::v1::containers_client::ContainersClient::with_interceptor(
            self.channel.clone(),
            self.namespace.clone(),
        )
    }

    pub fn tasks(&self) -> rcd_proto::v1::tasks_client::TasksClient<Svc> {
        rcd_proto::v1::tasks_client::TasksClient::with_interceptor(
            self.channel.clone(),
            self.namespace.clone(),
        )
    }

    pub fn namespaces(&self) -> rcd_proto::v1::namespaces_client::NamespacesClient<Svc> {
        rcd_proto::v1::namespaces_client::NamespacesClient::with_interceptor(
            self.channel.clone(),
            self.namespace.clone(),
        )
    }

    pub fn events(&self) -> rcd_proto::v1::events_client::EventsClient<Svc> {
        rcd_proto::v1::events_client::EventsClient::with_interceptor(
            self.channel.clone(),
            self.namespace.clone(),
        )
    }

    pub fn networks(&self) -> rcd_proto::v1::networks_client::NetworksClient<Svc> {
        rcd_proto::v1::networks_client::NetworksClient::with_interceptor(
            self.channel.clone(),
            self.namespace.clone(),
        )
    }

    pub fn volumes(&self) -> rcd_proto::v1::volumes_client::VolumesClient<Svc> {
        rcd_proto::v1::volumes_client::VolumesClient::with_interceptor(
            self.channel.clone(),
            self.namespace.clone(),
        )
    }

    pub fn introspection(&self) -> rcd_proto::v1::introspection_client::IntrospectionClient<Svc> {
        rcd_proto::v1::introspection_client::IntrospectionClient::with_interceptor(
            self.channel.clone(),
            self.namespace.clone(),
        )
    }
}

/// The message to print for a failed call: the daemon's message, or for transport failures
/// (the daemon went away mid-call) a short description.
pub fn status_message(address: &Path, s: &tonic::Status) -> String {
    // Statuses made by the client itself (the connection failed or broke) wrap the transport
    // error as their source; the daemon's come off the wire without one.
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
            if std::error::Error::source(s).is_some() =>
        {
            format!(
                "lost connection to rcd at {}: {}",
                address.display(),
                s.message()
            )
        }
        _ if s.message().is_empty() => format!("{}", s.code()),
        _ => s.message().to_owned(),
    }
}

/// Parses a duration as `10s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration {s:?} (e.g. 10s, 500ms, 2m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("1d").is_err());
    }
}
