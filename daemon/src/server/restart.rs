//! Restart policies (`rcd.io/restart`), kept by rcd itself as docker's daemon keeps them.
//!
//! The monitor listens to the task manager's events: on the exit of a container's init it
//! decides with [`should_restart`] (always / unless-stopped unless `rcd.io/explicitly-stopped`
//! — which `always` forgets when rcd starts, as dockerd does —,
//! on-failure[:N] on a non-zero exit while `rcd.io/restart-count` < N), waits docker's backoff
//! (100 ms, doubled per restart up to a minute, back to 100 ms once a task ran 10 s), then
//! deletes the old task and creates and starts a new one through
//! `tasks::{delete_task, create_task}`, counting in `rcd.io/restart-count`. At start-up the
//! same decision is made for every container whose task is stopped or gone (one that was
//! started at least once: `rcd.io/restart-count` is present), without the wait.
//!
//! A restart runs under the container's lock, which Containers.Delete also takes: a delete
//! while a restart is pending either comes first (the restart then finds no container) or
//! after (it then sees the new task and is refused), so no task is left without a container.

use super::containers::{Runtime, TxError};
use super::tasks::{create_task, delete_task};
use crate::metadata::ContainerRecord;
use crate::task::{IoConfig, TaskEventKind, TaskStatus};
use chrono::Utc;
use rcd_proto::labels;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;
use tracing::{info, warn};

/// docker's first delay.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// docker's cap.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// A task that ran this long resets the delay.
const RESET_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    No,
    Always,
    UnlessStopped,
    /// At most this many restarts; 0: no limit (docker's rule).
    OnFailure(u32),
}

impl Policy {
    /// `""`/`no`, `always`, `unless-stopped`, `on-failure`, `on-failure:N`.
    pub fn parse(s: &str) -> Result<Policy, String> {
        let bad = |why: &str| format!("invalid restart policy {s:?}: {why}");
        let (name, max) = match s.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (s, None),
        };
        let p = match name {
            "" | "no" => Policy::No,
            "always" => Policy::Always,
            "unless-stopped" => Policy::UnlessStopped,
            "on-failure" => Policy::OnFailure(match max {
                None => 0,
                Some(m) => m
                    .parse()
                    .map_err(|_| bad("the count must be a number of restarts (on-failure:3)"))?,
            }),
            _ => return Err(bad("expected no, always, on-failure[:N] or unless-stopped")),
        };
        if max.is_some() && !matches!(p, Policy::OnFailure(_)) {
            return Err(bad("only on-failure takes a count"));
        }
        Ok(p)
    }

    fn of(l: &crate::metadata::Labels) -> Policy {
        l.get(labels::RESTART)
            .and_then(|s| Policy::parse(s).ok())
            .unwrap_or(Policy::No)
    }
}

fn restart_count(l: &crate::metadata::Labels) -> u32 {
    l.get(labels::RESTART_COUNT)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Whether a container with labels `l` whose init exited with `status` (`None`: unknown,
/// its task is gone) is restarted.
pub fn should_restart(l: &crate::metadata::Labels, status: Option<u32>) -> bool {
    if l.get(labels::EXPLICITLY_STOPPED).map(String::as_str) == Some("true") {
        return false;
    }
    match Policy::of(l) {
        Policy::No => false,
        Policy::Always | Policy::UnlessStopped => true,
        Policy::OnFailure(max) => {
            status.is_some_and(|s| s != 0) && (max == 0 || restart_count(l) < max)
        }
    }
}

/// Validates what `ContainerOptions` asks of rcd's lifecycle and records it in `labels`:
/// the restart policy, the json-file log, the stop signal.
pub(crate) fn option_labels(
    o: &rcd_proto::v1::ContainerOptions,
    l: &mut crate::metadata::Labels,
) -> Result<(), Status> {
    if !o.restart.is_empty() {
        Policy::parse(&o.restart).map_err(Status::invalid_argument)?;
        l.insert(labels::RESTART.into(), o.restart.clone());
    }
    if o.auto_remove {
        if !matches!(Policy::of(l), Policy::No) {
            return Err(Status::invalid_argument(format!(
                "auto-remove and restart policy {:?} exclude each other",
                o.restart
            )));
        }
        l.insert(labels::AUTO_REMOVE.into(), "true".into());
    }
    if o.log {
        l.insert(labels::LOG.into(), super::logs::JSON_FILE.into());
    }
    if !o.stop_signal.is_empty() {
        l.insert(labels::STOP_SIGNAL.into(), parse_signal(&o.stop_signal)?);
    }
    if o.pids_limit < -1 {
        return Err(Status::invalid_argument(format!(
            "invalid pids limit {}: 0 or -1 for none, else at least 1",
            o.pids_limit
        )));
    }
    Ok(())
}

/// Without a stop signal of its own, a container records its image's (docker's rule), when
/// valid.
pub(crate) fn image_stop_signal(
    cfg: &oci_spec::image::ImageConfiguration,
    l: &mut crate::metadata::Labels,
) {
    if l.contains_key(labels::STOP_SIGNAL) {
        return;
    }
    let sig = cfg.config().as_ref().and_then(|c| c.stop_signal().clone());
    if let Some(Ok(name)) = sig.map(|s| parse_signal(&s)) {
        l.insert(labels::STOP_SIGNAL.into(), name);
    }
}

/// `SIGTERM`, `TERM`, `term`, `15` → the signal's name (`SIGRTMIN+N` stays as given).
pub fn parse_signal(s: &str) -> Result<String, Status> {
    let bad = || {
        Status::invalid_argument(format!(
            "invalid stop signal {s:?}: a signal name (SIGTERM, TERM) or number (1-64)"
        ))
    };
    if let Ok(n) = s.parse::<i32>() {
        return match nix::sys::signal::Signal::try_from(n) {
            Ok(sig) => Ok(sig.as_str().to_owned()),
            Err(_) if (1..=64).contains(&n) => Ok(n.to_string()),
            Err(_) => Err(bad()),
        };
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    if let Some(n) = name
        .strip_prefix("SIGRTMIN+")
        .or(name.strip_prefix("SIGRTMAX-"))
    {
        return match n.parse::<u32>() {
            Ok(n) if n <= 30 => Ok(name),
            _ => Err(bad()),
        };
    }
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig.as_str().to_owned())
        .map_err(|_| bad())
}

#[derive(Default)]
struct Entry {
    lock: Arc<tokio::sync::Mutex<()>>,
    pending: bool,
    delay: Duration,
    started: Option<Instant>,
}

/// The monitor's per-container state (in memory: backoff restarts at 100 ms after a daemon
/// restart).
#[derive(Default)]
pub struct Restarts {
    inner: Mutex<HashMap<(String, String), Entry>>,
}

impl Restarts {
    fn with<T>(&self, ns: &str, id: &str, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut m = self.inner.lock().unwrap();
        f(m.entry((ns.to_owned(), id.to_owned())).or_default())
    }

    /// The container's lock: held by a restart and by Containers.Delete.
    pub fn lock(&self, ns: &str, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.with(ns, id, |e| e.lock.clone())
    }

    /// Whether a restart is waiting or under way.
    pub fn pending(&self, ns: &str, id: &str) -> bool {
        self.inner
            .lock()
            .unwrap()
            .get(&(ns.to_owned(), id.to_owned()))
            .is_some_and(|e| e.pending)
    }

    /// Drops a deleted container's state.
    pub fn forget(&self, ns: &str, id: &str) {
        self.inner
            .lock()
            .unwrap()
            .remove(&(ns.to_owned(), id.to_owned()));
    }

    fn started(&self, ns: &str, id: &str) {
        self.with(ns, id, |e| e.started = Some(Instant::now()));
    }

    /// Ends a pending restart (without making an entry for a forgotten container).
    fn done(&self, ns: &str, id: &str) {
        if let Some(e) = self
            .inner
            .lock()
            .unwrap()
            .get_mut(&(ns.to_owned(), id.to_owned()))
        {
            e.pending = false;
        }
    }
}

/// A client's start (Tasks.Create): clears `rcd.io/explicitly-stopped`, and for a container
/// with a restart policy sets `rcd.io/restart-count` to 0 (docker resets its count on a
/// manual start; its presence also marks the container as started once, for the start-up
/// scan) and the backoff.
pub(crate) async fn client_start(rt: &Runtime, ns: &str, c: &ContainerRecord) {
    let stopped = c.labels.contains_key(labels::EXPLICITLY_STOPPED);
    let policy = Policy::of(&c.labels) != Policy::No;
    if policy {
        rt.restarts.with(ns, &c.id, |e| {
            e.delay = Duration::ZERO;
            e.started = Some(Instant::now());
        });
    }
    if !stopped && (!policy || c.labels.get(labels::RESTART_COUNT).map(String::as_str) == Some("0"))
    {
        return;
    }
    let mut set = vec![(labels::EXPLICITLY_STOPPED, None)];
    if policy {
        set.push((labels::RESTART_COUNT, Some("0".to_owned())));
    }
    if let Err(e) = update_labels(rt, ns, &c.id, set).await {
        warn!(namespace = %ns, id = %c.id, "recording a start: {e}");
    }
}

async fn update_labels(
    rt: &Runtime,
    ns: &str,
    id: &str,
    set: Vec<(&'static str, Option<String>)>,
) -> Result<(), Status> {
    let md = rt.d.md.clone();
    let (ns_, id_) = (ns.to_owned(), id.to_owned());
    super::service::blocking(move || {
        md.write(|tx| -> Result<(), TxError> {
            let Some(mut c) = tx.container(&ns_, &id_)? else {
                return Ok(());
            };
            for (k, v) in set {
                match v {
                    Some(v) => c.labels.insert(k.to_owned(), v),
                    None => c.labels.remove(k),
                };
            }
            c.updated = Utc::now();
            tx.update_container(&ns_, &c)?;
            Ok(())
        })
        .map_err(Status::from)
    })
    .await?;
    rt.events
        .publish(ns, "/containers/update", &[("id", id.to_owned())]);
    Ok(())
}

fn auto_remove(l: &crate::metadata::Labels) -> bool {
    l.get(labels::AUTO_REMOVE).map(String::as_str) == Some("true")
}

/// Deletes the exited task of an auto-remove container, then the container with its
/// anonymous volumes (docker's `--rm`), under the same lock as a client's delete.
fn spawn_auto_remove(rt: Arc<Runtime>, ns: String, id: String) {
    tokio::spawn(async move {
        match super::tasks::delete_task(&rt, &ns, &id).await {
            Ok(_) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => {
                warn!(namespace = %ns, id = %id, "auto-remove: deleting the task: {}", e.message());
                return;
            }
        }
        match super::containers::delete_container(&rt, &ns, &id, false, true).await {
            Ok(()) => info!(namespace = %ns, id = %id, "auto-removed"),
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => warn!(namespace = %ns, id = %id, "auto-remove: {}", e.message()),
        }
    });
}

/// Starts the monitor: first the scan of what happened while no rcd ran, then every exit.
pub(crate) fn start(rt: Arc<Runtime>) {
    let mut rx = rt.tasks.subscribe();
    tokio::spawn(async move {
        scan(&rt, true).await;
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    if let TaskEventKind::Exit {
                        id,
                        exec_id,
                        pid,
                        exit_status,
                        ..
                    } = ev.kind
                    {
                        if exec_id.is_empty() || exec_id == id {
                            on_exit(&rt, &ev.namespace, &id, pid, exit_status);
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    warn!("restart monitor: {n} task events lost: scanning every container");
                    scan(&rt, false).await;
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// Every container whose policy asks for it and whose task is stopped or gone is restarted
/// now (start-up, or events lost). At the daemon's start, `always` also brings back a
/// container a client stopped (docker's rule: only `unless-stopped` stays down then).
async fn scan(rt: &Arc<Runtime>, daemon_start: bool) {
    let namespaces = match rt.d.md.read(|tx| tx.all_namespaces()) {
        Ok(n) => n,
        Err(e) => {
            warn!("restart monitor: listing namespaces: {e}");
            return;
        }
    };
    for ns in namespaces {
        let Ok(list) = rt.d.md.containers(&ns) else {
            continue;
        };
        let tasks = rt.tasks.list(Some(&ns));
        for c in list {
            if Policy::of(&c.labels) == Policy::No || !c.labels.contains_key(labels::RESTART_COUNT)
            {
                continue;
            }
            let status = match tasks.iter().find(|t| t.id == c.id) {
                None => None,
                Some(t) if t.exit.is_some() || t.shim_dead => {
                    Some(t.exit.map_or(137, |e| e.status))
                }
                Some(_) => match rt.tasks.state(&ns, &c.id, None).await {
                    Ok(st) if st.status == TaskStatus::Stopped => {
                        Some(st.exit.map_or(0, |e| e.status))
                    }
                    _ => continue,
                },
            };
            if auto_remove(&c.labels) {
                if tasks.iter().any(|t| t.id == c.id) && status.is_some() {
                    info!(namespace = %ns, id = %c.id, "removing an auto-remove container whose task ended while rcd was away");
                    spawn_auto_remove(rt.clone(), ns.clone(), c.id.clone());
                }
                continue;
            }
            let stopped_always = daemon_start
                && Policy::of(&c.labels) == Policy::Always
                && c.labels.get(labels::EXPLICITLY_STOPPED).map(String::as_str) == Some("true");
            if stopped_always {
                if let Err(e) =
                    update_labels(rt, &ns, &c.id, vec![(labels::EXPLICITLY_STOPPED, None)]).await
                {
                    warn!(namespace = %ns, id = %c.id, "clearing an explicit stop: {e}");
                    continue;
                }
                info!(namespace = %ns, id = %c.id, "starting a stopped `always` container with the daemon");
                schedule(rt.clone(), ns.clone(), c.id.clone(), status, Duration::ZERO);
            } else if should_restart(&c.labels, status) {
                info!(namespace = %ns, id = %c.id, "restarting a container whose task ended while rcd was away");
                schedule(rt.clone(), ns.clone(), c.id.clone(), status, Duration::ZERO);
            }
        }
    }
}

fn on_exit(rt: &Arc<Runtime>, ns: &str, id: &str, pid: u32, status: u32) {
    // an exit of an earlier task of the container, reported late (a replayed event)
    if let Some(t) = rt.tasks.list(Some(ns)).into_iter().find(|t| t.id == id) {
        if t.pid != 0 && pid != 0 && t.pid != pid {
            return;
        }
    }
    let labels = match rt.d.md.container(ns, id) {
        Ok(Some(c)) => c.labels,
        _ => return,
    };
    if auto_remove(&labels) {
        spawn_auto_remove(rt.clone(), ns.to_owned(), id.to_owned());
        return;
    }
    if !should_restart(&labels, Some(status)) {
        return;
    }
    let delay = rt.restarts.with(ns, id, |e| {
        if e.started.is_some_and(|s| s.elapsed() >= RESET_AFTER) || e.delay.is_zero() {
            e.delay = FIRST_DELAY;
        } else {
            e.delay = (e.delay * 2).min(MAX_DELAY);
        }
        e.delay
    });
    schedule(
        rt.clone(),
        ns.to_owned(),
        id.to_owned(),
        Some(status),
        delay,
    );
}

/// Restarts the container after `delay`, unless a restart is pending already; a failed
/// restart is tried again with the backoff.
fn schedule(rt: Arc<Runtime>, ns: String, id: String, status: Option<u32>, delay: Duration) {
    if rt
        .restarts
        .with(&ns, &id, |e| std::mem::replace(&mut e.pending, true))
    {
        return;
    }
    tokio::spawn(async move {
        let mut delay = delay;
        loop {
            tokio::time::sleep(delay).await;
            match restart(&rt, &ns, &id, status).await {
                Ok(()) => break,
                Err(e) => {
                    delay = rt.restarts.with(&ns, &id, |e| {
                        e.pending = true;
                        e.delay = (e.delay.max(FIRST_DELAY) * 2).min(MAX_DELAY);
                        e.delay
                    });
                    warn!(namespace = %ns, id = %id, retry_in = ?delay, "restarting: {}", e.message());
                }
            }
        }
    });
}

/// One restart, under the container's lock; nothing if the container is gone, runs again,
/// or no longer asks for it. The restart stops being pending once it is decided (before the
/// new task starts: its exit, however quick, schedules the next one).
async fn restart(rt: &Arc<Runtime>, ns: &str, id: &str, status: Option<u32>) -> Result<(), Status> {
    let lock = rt.restarts.lock(ns, id);
    let _held = lock.lock().await;
    let r = restart_locked(rt, ns, id, status).await;
    // Ok(false): nothing to do, no longer pending (a restart made clears it before its
    // start, and a later exit may have scheduled the next one since)
    if let Ok(false) = r {
        rt.restarts.done(ns, id);
    }
    r.map(|_| ())
}

async fn restart_locked(
    rt: &Arc<Runtime>,
    ns: &str,
    id: &str,
    status: Option<u32>,
) -> Result<bool, Status> {
    let Some(c) =
        rt.d.md
            .container(ns, id)
            .map_err(super::service::metadata_status)?
    else {
        return Ok(false);
    };
    let task = rt.tasks.list(Some(ns)).into_iter().find(|t| t.id == id);
    let mut status = status;
    if let Some(t) = &task {
        if t.exit.is_none() && !t.shim_dead {
            match rt.tasks.state(ns, id, None).await {
                Ok(st) if st.status != TaskStatus::Stopped => return Ok(false),
                Ok(st) => status = st.exit.map(|e| e.status).or(status),
                Err(_) => {}
            }
        } else if let Some(e) = t.exit {
            status = Some(e.status);
        }
    }
    if !should_restart(&c.labels, status) {
        return Ok(false);
    }
    if task.is_some() {
        match delete_task(rt, ns, id).await {
            Ok(_) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let io = IoConfig {
        terminal: super::logs::spec_terminal(&c.spec),
        ..Default::default()
    };
    let (pid, _) = create_task(rt, ns, &c, io).await?;
    // a stop that came while the task was being made wins
    let now = rt.d.md.container(ns, id).ok().flatten();
    if !now.is_some_and(|c| should_restart(&c.labels, status)) {
        let _ = delete_task(rt, ns, id).await;
        return Ok(false);
    }
    rt.restarts.done(ns, id);
    if let Err(e) = rt.tasks.start(ns, id, None).await {
        let _ = delete_task(rt, ns, id).await;
        return Err(super::tasks::task_status(e));
    }
    rt.restarts.started(ns, id);
    let count = restart_count(&c.labels) + 1;
    update_labels(
        rt,
        ns,
        id,
        vec![(labels::RESTART_COUNT, Some(count.to_string()))],
    )
    .await?;
    info!(namespace = %ns, id, pid, count, "container restarted");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> crate::metadata::Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn policies() {
        assert_eq!(Policy::parse("").unwrap(), Policy::No);
        assert_eq!(Policy::parse("no").unwrap(), Policy::No);
        assert_eq!(Policy::parse("always").unwrap(), Policy::Always);
        assert_eq!(
            Policy::parse("unless-stopped").unwrap(),
            Policy::UnlessStopped
        );
        assert_eq!(Policy::parse("on-failure").unwrap(), Policy::OnFailure(0));
        assert_eq!(Policy::parse("on-failure:3").unwrap(), Policy::OnFailure(3));
        for bad in [
            "sometimes",
            "always:3",
            "on-failure:x",
            "on-failure:-1",
            "no:1",
        ] {
            let e = Policy::parse(bad).unwrap_err();
            assert!(e.starts_with("invalid restart policy"), "{bad}: {e}");
        }
    }

    #[test]
    fn decisions() {
        let r = labels::RESTART;
        assert!(should_restart(&l(&[(r, "always")]), Some(0)));
        assert!(should_restart(&l(&[(r, "unless-stopped")]), None));
        assert!(!should_restart(
            &l(&[(r, "always"), (labels::EXPLICITLY_STOPPED, "true")]),
            Some(1)
        ));
        assert!(!should_restart(&l(&[(r, "on-failure")]), Some(0)));
        assert!(!should_restart(&l(&[(r, "on-failure")]), None));
        assert!(should_restart(&l(&[(r, "on-failure:2")]), Some(3)));
        assert!(should_restart(
            &l(&[(r, "on-failure:2"), (labels::RESTART_COUNT, "1")]),
            Some(3)
        ));
        assert!(!should_restart(
            &l(&[(r, "on-failure:2"), (labels::RESTART_COUNT, "2")]),
            Some(3)
        ));
        assert!(!should_restart(&l(&[]), Some(1)));
        assert!(!should_restart(&l(&[(r, "no")]), Some(1)));
    }

    #[test]
    fn image_signal_unless_given() {
        let cfg = |sig: &str| {
            let c = oci_spec::image::ConfigBuilder::default()
                .stop_signal(sig)
                .build()
                .unwrap();
            oci_spec::image::ImageConfigurationBuilder::default()
                .config(c)
                .build()
                .unwrap()
        };
        let mut l = crate::metadata::Labels::new();
        image_stop_signal(&cfg("SIGQUIT"), &mut l);
        assert_eq!(l.get(labels::STOP_SIGNAL).unwrap(), "SIGQUIT");
        image_stop_signal(&cfg("SIGINT"), &mut l);
        assert_eq!(l.get(labels::STOP_SIGNAL).unwrap(), "SIGQUIT");
        let mut l = crate::metadata::Labels::new();
        image_stop_signal(&cfg("bogus"), &mut l);
        assert!(l.is_empty());
    }

    #[test]
    fn auto_remove_excludes_a_restart_policy() {
        let mut o = rcd_proto::v1::ContainerOptions {
            auto_remove: true,
            ..Default::default()
        };
        let mut labels = l(&[]);
        option_labels(&o, &mut labels).unwrap();
        assert!(auto_remove(&labels));
        o.restart = "on-failure:2".into();
        let e = option_labels(&o, &mut l(&[])).unwrap_err();
        assert!(e.message().contains("exclude each other"), "{e:?}");
        o.restart = "no".into();
        option_labels(&o, &mut l(&[])).unwrap();
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), "SIGTERM");
        assert_eq!(parse_signal("quit").unwrap(), "SIGQUIT");
        assert_eq!(parse_signal("9").unwrap(), "SIGKILL");
        assert_eq!(parse_signal("SIGRTMIN+3").unwrap(), "SIGRTMIN+3");
        for bad in ["SIGNOPE", "0", "65", "", "RTMIN+99"] {
            let e = parse_signal(bad).unwrap_err();
            assert!(
                e.message().starts_with("invalid stop signal"),
                "{bad}: {e:?}"
            );
        }
    }
}
