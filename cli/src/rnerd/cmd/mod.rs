//! rnerd's commands, one module each (flags are in `super::args`), and what they share:
//! finding containers and telling their state.

pub mod commit;
pub mod container;
pub mod cp;
pub mod exec;
pub mod images;
pub mod images2;
pub mod info;
pub mod inspect;
pub mod logs;
pub mod network;
pub mod ps;
pub mod run;
pub mod stats;

use super::args::Command;
use super::names;
use super::{Ctx, Reported};
use anyhow::Result;
use rcd_proto::v1 as pb;

pub async fn dispatch(ctx: &Ctx, cmd: Command) -> Result<()> {
    use super::args::ContainerCommand as C;
    let cmd = match cmd {
        Command::Container(c) => match c {
            C::Ls(a) => Command::Ps(a),
            C::Run(a) => Command::Run(a),
            C::Create(a) => Command::Create(a),
            C::Start(a) => Command::Start(a),
            C::Stop(a) => Command::Stop(a),
            C::Restart(a) => Command::Restart(a),
            C::Kill(a) => Command::Kill(a),
            C::Rm(a) => Command::Rm(a),
            C::Logs(a) => Command::Logs(a),
            C::Exec(a) => Command::Exec(a),
            C::Inspect(mut a) => {
                a.kind = Some("container".into());
                Command::Inspect(a)
            }
            C::Prune { force } => return network::container_prune(ctx, force).await,
        },
        c => c,
    };
    match cmd {
        Command::Run(a) => run::run(ctx, *a, true).await,
        Command::Create(a) => run::run(ctx, *a, false).await,
        Command::Start(a) => container::start(ctx, a).await,
        Command::Stop(a) => container::stop(ctx, a, false).await,
        Command::Restart(a) => container::stop(ctx, a, true).await,
        Command::Kill(a) => container::kill_cmd(ctx, a).await,
        Command::Rm(a) => container::rm(ctx, a).await,
        Command::Ps(a) => ps::ps(ctx, a).await,
        Command::Logs(a) => logs::logs(ctx, a).await,
        Command::Exec(a) => exec::exec(ctx, a).await,
        Command::Inspect(a) => inspect::inspect(ctx, a).await,
        Command::Wait(a) => container::wait(ctx, a).await,
        Command::Rename {
            container,
            new_name,
        } => container::rename(ctx, &container, &new_name).await,
        Command::Pause(a) => container::pause(ctx, a, true).await,
        Command::Unpause(a) => container::pause(ctx, a, false).await,
        Command::Port { container, port } => container::port(ctx, &container, port).await,
        Command::Top { container } => container::top(ctx, &container).await,
        Command::Stats(a) => stats::stats(ctx, a).await,
        Command::Attach { container } => container::attach(ctx, &container).await,
        Command::Cp { src, dst } => cp::cp(ctx, &src, &dst).await,
        Command::Commit {
            message,
            author,
            pause,
            container,
            image,
        } => commit::commit(ctx, &container, &image, message, author, pause).await,
        Command::Pull(a) => images::pull_cmd(ctx, a).await,
        Command::Images(a) => images::images(ctx, a).await,
        Command::Rmi(a) => images::rmi(ctx, a).await,
        Command::Push(a) => images2::push(ctx, a).await,
        Command::Tag { source, target } => images2::tag(ctx, &source, &target).await,
        Command::Save(a) => images2::save(ctx, a).await,
        Command::Load(a) => images2::load(ctx, a).await,
        Command::Image(c) => images2::image(ctx, c).await,
        Command::Login(_) | Command::Logout { .. } => unreachable!("handled before connecting"),
        Command::Network(c) => network::network(ctx, c).await,
        Command::Volume(c) => network::volume(ctx, c).await,
        Command::System(c) => network::system(ctx, c).await,
        Command::Events { filter, format } => network::events(ctx, filter, format).await,
        Command::Version => info::version(ctx).await,
        Command::Info => info::info(ctx).await,
        Command::Compose(a) => crate::compose::main(ctx, *a).await,
        Command::Completion { .. } => unreachable!("handled before connecting"),
        Command::Container(_) => unreachable!("mapped above"),
    }
}

/// Every container of the namespace (without specs).
pub async fn list(ctx: &Ctx) -> Result<Vec<pb::Container>> {
    Ok(ctx
        .client
        .containers()
        .list(pb::ListContainersRequest { filters: vec![] })
        .await
        .map_err(ctx.st())?
        .into_inner()
        .containers)
}

/// The container `what` names (name, id or unique id prefix), with its spec.
pub async fn resolve(ctx: &Ctx, what: &str) -> Result<pb::Container> {
    let list = list(ctx).await?;
    let id = names::find(&list, what)?.id.clone();
    get(ctx, &id).await
}

/// The container with its spec, or None when it is gone: a listing races with removals
/// (`--rm` containers, restart-policy cleanups) that rcd makes on its own.
pub async fn try_get(ctx: &Ctx, id: &str) -> Result<Option<pb::Container>> {
    match ctx
        .client
        .containers()
        .get(pb::GetContainerRequest { id: id.to_owned() })
        .await
    {
        Ok(r) => Ok(Some(r.into_inner().container.unwrap_or_default())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(ctx.st()(s)),
    }
}

pub async fn get(ctx: &Ctx, id: &str) -> Result<pb::Container> {
    Ok(ctx
        .client
        .containers()
        .get(pb::GetContainerRequest { id: id.to_owned() })
        .await
        .map_err(ctx.st())?
        .into_inner()
        .container
        .unwrap_or_default())
}

/// A container's state as docker tells it.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// created, running, paused, exited
    pub status: &'static str,
    pub pid: u32,
    pub exit_code: Option<u32>,
    /// RFC 3339
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl State {
    pub fn running(&self) -> bool {
        matches!(self.status, "running" | "paused")
    }
}

/// Labels rnerd keeps about a task it deleted: docker shows a stopped container's exit.
pub const LABEL_EXIT_CODE: &str = "rnerd/exit-code";
pub const LABEL_FINISHED_AT: &str = "rnerd/finished-at";
pub const LABEL_STARTED_AT: &str = "rnerd/started-at";

/// The task of `id`, if it has one.
pub async fn task(ctx: &Ctx, id: &str) -> Result<Option<pb::Process>> {
    match ctx
        .client
        .tasks()
        .get(pb::GetTaskRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        })
        .await
    {
        Ok(r) => Ok(r.into_inner().process),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(ctx.st()(s)),
    }
}

pub async fn state(ctx: &Ctx, c: &pb::Container) -> Result<State> {
    let t = task(ctx, &c.id).await?;
    Ok(state_of(c, t.as_ref()))
}

/// When process `pid` started (from /proc: rcd's tasks run on this host), RFC 3339.
pub fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the fields after the command (which may hold spaces) in parentheses
    let after = &stat[stat.rfind(')')? + 2..];
    let ticks: u64 = after.split(' ').nth(19)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ms = btime * 1000 + ticks * 1000 / hz;
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

pub fn state_of(c: &pb::Container, t: Option<&pb::Process>) -> State {
    let label = |k: &str| c.labels.get(k).filter(|v| !v.is_empty()).cloned();
    match t {
        Some(p) => {
            let status = match pb::TaskStatus::try_from(p.status).unwrap_or_default() {
                pb::TaskStatus::Running => "running",
                pb::TaskStatus::Paused | pb::TaskStatus::Pausing => "paused",
                pb::TaskStatus::Stopped => "exited",
                _ => "created",
            };
            let exited = status == "exited";
            State {
                status,
                pid: if exited { 0 } else { p.pid },
                exit_code: exited.then_some(p.exit_status),
                started_at: if status == "created" {
                    None
                } else if exited {
                    label(LABEL_STARTED_AT)
                } else {
                    process_start(p.pid).or_else(|| label(LABEL_STARTED_AT))
                },
                finished_at: (exited && !p.exited_at.is_empty()).then(|| p.exited_at.clone()),
            }
        }
        None => match label(LABEL_EXIT_CODE) {
            Some(code) => State {
                status: "exited",
                pid: 0,
                exit_code: code.parse().ok(),
                started_at: label(LABEL_STARTED_AT),
                finished_at: label(LABEL_FINISHED_AT),
            },
            None => State {
                status: "created",
                ..Default::default()
            },
        },
    }
}

/// Deletes the container's stopped task (forcing it with `force`), recording its exit in
/// the container's labels; removes the stdio FIFOs rnerd made for it.
pub async fn delete_task(ctx: &Ctx, id: &str, force: bool) -> Result<Option<u32>> {
    let t = task(ctx, id).await?;
    let Some(t) = t else { return Ok(None) };
    let started = process_start(t.pid);
    let r = match ctx
        .client
        .tasks()
        .delete(pb::DeleteTaskRequest {
            container_id: id.to_owned(),
            force,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
        Err(s) => return Err(ctx.st()(s)),
    };
    crate::cmd::stdio::remove_fifo_dir_of(&t.stdout);
    let mut labels = std::collections::HashMap::from([
        (LABEL_EXIT_CODE.to_owned(), r.exit_status.to_string()),
        (LABEL_FINISHED_AT.to_owned(), r.exited_at.clone()),
    ]);
    if let Some(s) = started {
        labels.insert(LABEL_STARTED_AT.to_owned(), s);
    }
    let _ = ctx
        .client
        .containers()
        .update(pb::UpdateContainerRequest {
            id: id.to_owned(),
            labels,
        })
        .await;
    Ok(Some(r.exit_status))
}

/// Runs `f` for each container named; failures are printed and make the command fail at
/// the end (docker's way with several names).
pub async fn each<F, Fut>(ctx: &Ctx, names: &[String], mut f: F) -> Result<()>
where
    F: FnMut(pb::Container) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut failed = false;
    let all = list(ctx).await?;
    for n in names {
        let r = match names::find(&all, n) {
            Ok(c) => match get(ctx, &c.id).await {
                Ok(c) => f(c).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            eprintln!("rnerd: {e:#}");
            failed = true;
        }
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

/// "3 seconds", "2 minutes", "About an hour" (docker's go-units HumanDuration).
pub fn human_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    if s < 1 {
        "Less than a second".into()
    } else if s == 1 {
        "1 second".into()
    } else if s < 60 {
        format!("{s} seconds")
    } else if s / 60 == 1 {
        "About a minute".into()
    } else if s < 3600 {
        format!("{} minutes", s / 60)
    } else if s / 3600 == 1 {
        "About an hour".into()
    } else if s < 48 * 3600 {
        format!("{} hours", s / 3600)
    } else if s < 14 * 86400 {
        format!("{} days", s / 86400)
    } else {
        format!("{} weeks", s / (7 * 86400))
    }
}

/// Time since an RFC 3339 instant.
pub fn since(t: &str) -> Option<chrono::Duration> {
    let t = chrono::DateTime::parse_from_rfc3339(t).ok()?;
    Some(chrono::Utc::now().signed_duration_since(t))
}

/// docker's STATUS column.
pub fn status_text(s: &State) -> String {
    let ago = |t: &Option<String>| t.as_deref().and_then(since).map(human_duration);
    match s.status {
        "running" => match ago(&s.started_at) {
            Some(d) => format!("Up {d}"),
            None => "Up".into(),
        },
        "paused" => match ago(&s.started_at) {
            Some(d) => format!("Up {d} (Paused)"),
            None => "Up (Paused)".into(),
        },
        "exited" => {
            let code = s.exit_code.map(|c| c.to_string()).unwrap_or("?".into());
            match ago(&s.finished_at) {
                Some(d) => format!("Exited ({code}) {d} ago"),
                None => format!("Exited ({code})"),
            }
        }
        _ => "Created".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = chrono::Duration::seconds;
        assert_eq!(human_duration(d(0)), "Less than a second");
        assert_eq!(human_duration(d(5)), "5 seconds");
        assert_eq!(human_duration(d(90)), "About a minute");
        assert_eq!(human_duration(d(600)), "10 minutes");
        assert_eq!(human_duration(d(7200)), "2 hours");
    }

    #[test]
    fn own_start_time() {
        let t = process_start(std::process::id()).unwrap();
        let ago = since(&t).unwrap();
        assert!(ago.num_seconds() >= 0 && ago.num_seconds() < 3600, "{t}");
    }

    #[test]
    fn states() {
        let c = pb::Container::default();
        assert_eq!(state_of(&c, None).status, "created");
        let p = pb::Process {
            status: pb::TaskStatus::Stopped as i32,
            exit_status: 3,
            exited_at: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        };
        let s = state_of(&c, Some(&p));
        assert_eq!((s.status, s.exit_code), ("exited", Some(3)));
        assert!(status_text(&s).starts_with("Exited (3) "));
        let mut c = pb::Container::default();
        c.labels.insert(LABEL_EXIT_CODE.into(), "0".into());
        assert_eq!(status_text(&state_of(&c, None)), "Exited (0)");
    }
}
