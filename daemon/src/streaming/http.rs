//! The HTTP/1.1 side: routes `/{exec,attach,portforward}/<token>`, checks the upgrade request,
//! negotiates the subprotocol, answers `101 Switching Protocols` and hands the upgraded
//! connection to the SPDY or WebSocket session code. Every refusal is a plain-text HTTP error
//! that says what was wrong.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::cache::{self, Pending};
use super::{portforward, remotecommand, Inner};

/// SPDY subprotocols of exec/attach, in the order this server prefers them.
pub(crate) const REMOTECOMMAND_SPDY: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];
pub(crate) const PORTFORWARD_SPDY: &[&str] = &["portforward.k8s.io"];
/// WebSocket subprotocols of exec/attach (kubelet's, plus v5's stdin CLOSE signal).
pub(crate) const REMOTECOMMAND_WS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
/// WebSocket subprotocols of port forwarding: kubelet's channel pairs, and client-go's SPDY
/// tunnelled through WebSocket messages.
pub(crate) const PORTFORWARD_WS: &[&str] = &[
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "portforward.k8s.io",
    "SPDY/3.1+portforward.k8s.io",
];

type Body = Full<Bytes>;

pub(crate) async fn serve(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // out of descriptors and the like: do not spin
                    tracing::warn!("streaming server accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let svc_inner = inner.clone();
            let svc = service_fn(move |req| {
                let inner = svc_inner.clone();
                async move { Ok::<_, Infallible>(route(inner, req)) }
            });
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades();
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!("streaming connection from {peer}: {e}");
                },
                _ = inner.shutdown.cancelled() => {}
            }
        });
    }
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    msg.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(msg)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// All values of a (possibly repeated, possibly comma-separated) header.
fn list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn negotiate(client: &[String], server: &'static [&'static str]) -> Option<&'static str> {
    client
        .iter()
        .find_map(|c| server.iter().find(|s| s.eq_ignore_ascii_case(c)).copied())
}

fn route(inner: Arc<Inner>, mut req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {} is not allowed on the streaming server (GET or POST)",
                req.method()
            ),
        );
    }
    let path = req.uri().path().to_string();
    let Some((kind, token)) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(k, t)| {
            matches!(*k, "exec" | "attach" | "portforward") && !t.is_empty() && !t.contains('/')
        })
    else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no streaming endpoint at {path:?}: use /exec/<token>, /attach/<token> or /portforward/<token>"),
        );
    };
    let (kind, token) = (kind.to_string(), token.to_string());
    let gone = |inner: &Inner| {
        text(
            StatusCode::NOT_FOUND,
            format!(
                "{kind} token {token:?} is unknown, already used or expired (tokens are single-use and live {:?})",
                cache::lock(&inner.cache).ttl()
            ),
        )
    };
    if !cache::lock(&inner.cache).peek(&kind, &token) {
        return gone(&inner);
    }

    let headers = req.headers();
    let connection = list(headers, "connection");
    let upgrade = header_str(headers, "upgrade").to_string();
    if !connection.iter().any(|c| c.eq_ignore_ascii_case("upgrade")) || upgrade.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "unable to upgrade: missing upgrade headers in request (Connection: {:?}, Upgrade: {upgrade:?}); \
                 this server needs Connection: Upgrade with Upgrade: SPDY/3.1 or websocket",
                header_str(headers, "connection")
            ),
        );
    }

    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        let client = list(headers, "x-stream-protocol-version");
        let server = if kind == "portforward" {
            PORTFORWARD_SPDY
        } else {
            REMOTECOMMAND_SPDY
        };
        let protocol = if client.is_empty() && kind == "portforward" {
            // port forwarding has a single protocol; old clients do not name it
            PORTFORWARD_SPDY[0]
        } else if client.is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "unable to upgrade: the request names no X-Stream-Protocol-Version; this server speaks {}",
                    server.join(", ")
                ),
            );
        } else {
            match negotiate(&client, server) {
                Some(p) => p,
                None => {
                    let mut r = text(
                        StatusCode::FORBIDDEN,
                        format!(
                            "unable to upgrade: unable to negotiate protocol: client supports [{}], server supports [{}]",
                            client.join(" "),
                            server.join(" ")
                        ),
                    );
                    for p in server {
                        r.headers_mut().append(
                            "x-accepted-stream-protocol-versions",
                            HeaderValue::from_static(p),
                        );
                    }
                    return r;
                }
            }
        };
        let Some(pending) = cache::lock(&inner.cache).consume(&kind, &token) else {
            return gone(&inner);
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    match pending {
                        Pending::Exec(r) => {
                            remotecommand::serve_spdy(inner, r.into(), protocol, io).await
                        }
                        Pending::Attach(r) => {
                            remotecommand::serve_spdy(inner, r.into(), protocol, io).await
                        }
                        Pending::PortForward(r) => portforward::serve_spdy(inner, r, io).await,
                    }
                }
                Err(e) => tracing::warn!("spdy upgrade of {kind} session failed: {e}"),
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        h.insert(
            "x-stream-protocol-version",
            HeaderValue::from_static(protocol),
        );
        return r;
    }

    if upgrade.eq_ignore_ascii_case("websocket") {
        let version = header_str(headers, "sec-websocket-version");
        if version != "13" {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "unable to upgrade: websocket version {version:?} is not supported (13 is)"
                ),
            );
        }
        let key = header_str(headers, "sec-websocket-key").to_string();
        if key.is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                "unable to upgrade: the websocket request has no Sec-WebSocket-Key",
            );
        }
        let client = list(headers, "sec-websocket-protocol");
        let server = if kind == "portforward" {
            PORTFORWARD_WS
        } else {
            REMOTECOMMAND_WS
        };
        let protocol = if client.is_empty() {
            // kubelet's legacy default: binary channels, no version
            ""
        } else {
            match negotiate(&client, server) {
                Some(p) => p,
                None => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "unable to upgrade: requested websocket protocol(s) [{}] are not supported; this server supports [{}]",
                            client.join(" "),
                            server.join(" ")
                        ),
                    )
                }
            }
        };
        let query_ports = match query_ports(req.uri().query().unwrap_or("")) {
            Ok(p) => p,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let Some(pending) = cache::lock(&inner.cache).consume(&kind, &token) else {
            return gone(&inner);
        };
        let mut channel_ports = Vec::new();
        if let Pending::PortForward(pf) = &pending {
            if !protocol.starts_with("SPDY/3.1+") {
                channel_ports = if pf.ports.is_empty() {
                    query_ports
                } else {
                    pf.ports.iter().map(|p| *p as u16).collect()
                };
                if channel_ports.is_empty() {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "websocket port forwarding needs the ports in the PortForward request or as port query parameters",
                    );
                }
            }
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    match pending {
                        Pending::Exec(r) => {
                            remotecommand::serve_ws(inner, r.into(), protocol, io).await
                        }
                        Pending::Attach(r) => {
                            remotecommand::serve_ws(inner, r.into(), protocol, io).await
                        }
                        Pending::PortForward(r) if protocol.starts_with("SPDY/3.1+") => {
                            portforward::serve_ws_tunnel(inner, r, io).await
                        }
                        Pending::PortForward(r) => {
                            portforward::serve_ws(inner, r, channel_ports, protocol, io).await
                        }
                    }
                }
                Err(e) => tracing::warn!("websocket upgrade of {kind} session failed: {e}"),
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        h.insert(
            "sec-websocket-accept",
            HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
        );
        if !protocol.is_empty() {
            h.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
        }
        return r;
    }

    text(
        StatusCode::BAD_REQUEST,
        format!("unable to upgrade: unsupported upgrade protocol {upgrade:?} (this server speaks SPDY/3.1 and websocket)"),
    )
}

/// The `port` query parameters (each may list several ports, comma-separated).
fn query_ports(query: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "port" {
            continue;
        }
        for p in v.split(',') {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => {
                    return Err(format!(
                        "invalid port query parameter {p:?}: ports are 1-65535"
                    ))
                }
            }
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_client_preference() {
        let c = vec![
            "v4.channel.k8s.io".to_string(),
            "v5.channel.k8s.io".to_string(),
        ];
        assert_eq!(negotiate(&c, REMOTECOMMAND_SPDY), Some("v4.channel.k8s.io"));
        let c = vec!["v9.channel.k8s.io".to_string()];
        assert_eq!(negotiate(&c, REMOTECOMMAND_SPDY), None);
    }

    #[test]
    fn port_query_parameters_parse_strictly() {
        assert_eq!(
            query_ports("port=80&port=443,8080&x=1").unwrap(),
            vec![80, 443, 8080]
        );
        assert_eq!(query_ports("").unwrap(), Vec::<u16>::new());
        assert_eq!(
            query_ports("port=0").unwrap_err(),
            "invalid port query parameter \"0\": ports are 1-65535"
        );
        assert!(query_ports("port=http").is_err());
    }
}
