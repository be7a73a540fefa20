//! Task events go to containerd (or whatever `-publish-binary` names) by running
//! `<binary> --address <address> publish --topic <topic> --namespace <ns>` with the event as a
//! protobuf `Any` on stdin, one at a time and in order. A failed publish is logged and
//! dropped: the task's state stays queryable through the Task API.

use protobuf::well_known_types::any::Any;
use protobuf::Message;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use crate::reaper::Reaper;

pub struct Publisher {
    tx: Mutex<Option<Sender<(&'static str, Any)>>>,
    /// Set once every event queued before [`Publisher::close`] went out (or was given up).
    drained: Arc<AtomicBool>,
}

impl Publisher {
    pub fn new(binary: &str, address: &str, namespace: &str, reaper: Arc<Reaper>) -> Publisher {
        if binary.is_empty() {
            return Publisher {
                tx: Mutex::new(None),
                drained: Arc::new(AtomicBool::new(true)),
            };
        }
        let drained = Arc::new(AtomicBool::new(false));
        let done = drained.clone();
        let (tx, rx) = channel::<(&'static str, Any)>();
        let (binary, address, namespace) = (
            PathBuf::from(binary),
            address.to_owned(),
            namespace.to_owned(),
        );
        let spawned = std::thread::Builder::new()
            .name("events".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                for (topic, event) in rx {
                    let mut cmd = Command::new(&binary);
                    cmd.args(["--address", &address, "publish", "--topic", topic])
                        .args(["--namespace", &namespace])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                    let mut child = match reaper.spawn(&mut cmd) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(binary = %binary.display(), topic, error = %e, "publishing event");
                            continue;
                        }
                    };
                    if let Some(mut stdin) = child.stdin.take() {
                        let _ = stdin.write_all(&event.write_to_bytes().unwrap_or_default());
                    }
                    let exit = reaper.wait(child.id() as i32);
                    if exit.status != 0 {
                        tracing::warn!(binary = %binary.display(), topic, status = exit.status, "publishing event failed");
                    }
                }
                done.store(true, Ordering::SeqCst);
                // wakes the main thread, which waits for this before it exits
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::this(),
                    nix::sys::signal::Signal::SIGUSR1,
                );
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
            let _ = tx.send((topic, event));
        }
    }
}
