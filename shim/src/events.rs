//! Task events go to the daemon over ttrpc: `Events/Forward` on `$TTRPC_ADDRESS`, the socket
//! containerd (and rcd) name in every shim's environment, as containerd's own shims do. When
//! that fails (no `TTRPC_ADDRESS`, or no daemon answers there) an event goes the old way:
//! `<binary> --address <address> publish --topic <topic> --namespace <ns>` with the event as a
//! protobuf `Any` on stdin (rcd's `publish` spools it for the next daemon). One at a time and
//! in order. A failed publish is logged and dropped: the task's state stays queryable through
//! the Task API.

use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_sync::EventsClient;
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::{Message, MessageField};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::reaper::Reaper;

/// How long one Forward may take before the event goes through the publish binary.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

struct Queued {
    topic: &'static str,
    event: Any,
    at: SystemTime,
}

pub struct Publisher {
    tx: Mutex<Option<Sender<Queued>>>,
    /// Set once every event queued before [`Publisher::close`] went out (or was given up).
    drained: Arc<AtomicBool>,
}

/// Where events go: the daemon's ttrpc socket first, else the publish binary.
struct Sink {
    ttrpc_address: Option<String>,
    binary: Option<PathBuf>,
    address: String,
    namespace: String,
    reaper: Arc<Reaper>,
}

impl Sink {
    /// Sends `first` and whatever else is queued already over one connection, so a burst
    /// (create, start, exit, delete of a short task) costs one connect; the connection is
    /// not kept, so an idle shim holds no client threads.
    fn send_burst(&self, first: Queued, rx: &Receiver<Queued>) {
        let mut client = self.ttrpc_address.as_deref().and_then(|a| {
            ttrpc::Client::connect(&socket_url(a))
                .map_err(|e| tracing::debug!(address = a, error = %e, "events socket"))
                .ok()
                .map(EventsClient::new)
        });
        let mut next = Some(first);
        while let Some(q) = next.take() {
            if let Some(c) = &client {
                match forward(c, &self.namespace, &q) {
                    Ok(()) => {
                        next = rx.try_recv().ok();
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(topic = q.topic, error = %e, "forwarding event");
                        client = None;
                    }
                }
            }
            self.run_binary(&q);
            next = rx.try_recv().ok();
        }
    }

    fn run_binary(&self, q: &Queued) {
        let Some(binary) = &self.binary else {
            tracing::warn!(topic = q.topic, "no way to publish the event: dropped");
            return;
        };
        let topic = q.topic;
        let mut cmd = Command::new(binary);
        cmd.args(["--address", &self.address, "publish", "--topic", topic])
            .args(["--namespace", &self.namespace])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = match self.reaper.spawn(&mut cmd) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(binary = %binary.display(), topic, error = %e, "publishing event");
                return;
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&q.event.write_to_bytes().unwrap_or_default());
        }
        let exit = self.reaper.wait(child.id() as i32);
        if exit.status != 0 {
            tracing::warn!(binary = %binary.display(), topic, status = exit.status, "publishing event failed");
        }
    }
}

/// `TTRPC_ADDRESS` is a path (containerd's `<socket>.ttrpc`); ttrpc wants a URL.
fn socket_url(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("unix://{address}")
    }
}

fn forward(client: &EventsClient, namespace: &str, q: &Queued) -> Result<(), ttrpc::Error> {
    let since = q.at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = since.as_secs() as i64;
    ts.nanos = since.subsec_nanos() as i32;
    let mut env = Envelope::new();
    env.timestamp = MessageField::some(ts);
    env.namespace = namespace.to_owned();
    env.topic = q.topic.to_owned();
    env.event = MessageField::some(q.event.clone());
    let mut req = ForwardRequest::new();
    req.envelope = MessageField::some(env);
    let mut ctx = ttrpc::context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
    ctx.add("containerd-namespace".into(), namespace.to_owned());
    client.forward(ctx, &req).map(|_| ())
}

impl Publisher {
    pub fn new(binary: &str, address: &str, namespace: &str, reaper: Arc<Reaper>) -> Publisher {
        let ttrpc_address = std::env::var("TTRPC_ADDRESS")
            .ok()
            .filter(|a| !a.is_empty());
        Self::with_sink(
            Sink {
                ttrpc_address,
                binary: (!binary.is_empty()).then(|| PathBuf::from(binary)),
                address: address.to_owned(),
                namespace: namespace.to_owned(),
                reaper,
            },
            || {
                // wakes the main thread, which waits for this before it exits
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::this(),
                    nix::sys::signal::Signal::SIGUSR1,
                );
            },
        )
    }

    fn with_sink(sink: Sink, on_drained: impl FnOnce() + Send + 'static) -> Publisher {
        if sink.ttrpc_address.is_none() && sink.binary.is_none() {
            return Publisher {
                tx: Mutex::new(None),
                drained: Arc::new(AtomicBool::new(true)),
            };
        }
        let drained = Arc::new(AtomicBool::new(false));
        let done = drained.clone();
        let (tx, rx) = channel::<Queued>();
        let spawned = std::thread::Builder::new()
            .name("events".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                while let Ok(q) = rx.recv() {
                    sink.send_burst(q, &rx);
                    // the client code just run is resident again, and the shim idles now
                    crate::drop_mapped_text();
                }
                done.store(true, Ordering::SeqCst);
                on_drained();
            });
        match spawned {
            Ok(_) => Publisher {
                tx: Mutex::new(Some(tx)),
                drained,
            },
            Err(e) => {
                tracing::warn!(error = %e, "no event publisher thread: events are dropped");
                Publisher {
                    tx: Mutex::new(None),
                    drained: Arc::new(AtomicBool::new(true)),
                }
            }
        }
    }

    /// No more events: the publisher sends what is queued, then sets [`Publisher::drained`]
    /// and raises SIGUSR1.
    pub fn close(&self) {
        self.tx.lock().unwrap().take();
    }

    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst)
    }

    pub fn publish(&self, topic: &'static str, event: Any) {
        if let Some(tx) = self.tx.lock().unwrap().as_ref() {
            let _ = tx.send(Queued {
                topic,
                event,
                at: SystemTime::now(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::shim_sync::{create_events, Events};

    struct Got(Mutex<Vec<(String, String, String)>>);

    impl Events for Got {
        fn forward(
            &self,
            _: &ttrpc::TtrpcContext,
            req: ForwardRequest,
        ) -> ttrpc::Result<containerd_shim_protos::api::Empty> {
            let env = req.envelope.get_or_default();
            self.0.lock().unwrap().push((
                env.namespace.clone(),
                env.topic.clone(),
                env.event.type_url.clone(),
            ));
            Ok(Default::default())
        }
    }

    fn event(name: &str) -> Any {
        Any {
            type_url: format!("containerd.events.{name}"),
            ..Default::default()
        }
    }

    fn wait_drained(p: &Publisher) {
        for _ in 0..500 {
            if p.drained() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("events not drained");
    }

    #[test]
    fn events_are_forwarded_in_order_over_ttrpc() {
        let dir = std::env::temp_dir().join(format!("rshim-ev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("d.sock.ttrpc");
        let _ = std::fs::remove_file(&sock);
        let got = Arc::new(Got(Mutex::new(vec![])));
        let mut server = ttrpc::Server::new()
            .bind(&socket_url(sock.to_str().unwrap()))
            .unwrap()
            .register_service(create_events(got.clone()));
        server.start().unwrap();
        let p = Publisher::with_sink(
            Sink {
                ttrpc_address: Some(sock.to_string_lossy().into_owned()),
                binary: None,
                address: String::new(),
                namespace: "ns1".into(),
                reaper: Arc::new(Reaper::direct()),
            },
            || {},
        );
        for t in [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete",
        ] {
            p.publish(t, event(t));
        }
        p.close();
        wait_drained(&p);
        let got = got.0.lock().unwrap().clone();
        let topics: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
        assert_eq!(
            topics,
            [
                "/tasks/create",
                "/tasks/start",
                "/tasks/exit",
                "/tasks/delete"
            ]
        );
        assert!(
            got.iter().all(|g| g.0 == "ns1" && g.2.ends_with(&g.1)),
            "{got:?}"
        );
        server.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_daemon_socket_events_go_through_the_binary() {
        let dir = std::env::temp_dir().join(format!("rshim-evb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let bin = dir.join("publish.sh");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\necho \"$*\" >> {0}\ncat > /dev/null\n",
                out.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = Publisher::with_sink(
            Sink {
                ttrpc_address: Some(dir.join("nobody.ttrpc").to_string_lossy().into_owned()),
                binary: Some(bin),
                address: "/x.sock".into(),
                namespace: "ns2".into(),
                reaper: Arc::new(Reaper::direct()),
            },
            || {},
        );
        p.publish("/tasks/create", event("TaskCreate"));
        p.publish("/tasks/exit", event("TaskExit"));
        p.close();
        wait_drained(&p);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "--address /x.sock publish --topic /tasks/create --namespace ns2\n\
             --address /x.sock publish --topic /tasks/exit --namespace ns2\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ttrpc_addresses_become_urls() {
        assert_eq!(
            socket_url("/run/containerd/containerd.sock.ttrpc"),
            "unix:///run/containerd/containerd.sock.ttrpc"
        );
        assert_eq!(socket_url("unix:///x.ttrpc"), "unix:///x.ttrpc");
    }
}
