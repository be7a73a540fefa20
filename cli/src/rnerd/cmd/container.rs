//! Container life: start, stop, restart, kill, rm, wait, rename, pause/unpause, port, top,
//! attach.

use super::super::args::{KillArgs, NamesArgs, RmArgs, StartArgs, StopArgs};
use super::super::names::{self, name_of};
use super::super::{Ctx, Exit};
use super::{delete_task, each, get, list, resolve, state, task, State};
use crate::cmd::stdio::Readers;
use crate::cmd::tasks::attached;
use anyhow::{anyhow, bail, Result};
use rcd_proto::labels;
use rcd_proto::v1 as pb;
use std::time::Duration;

/// How the user named `c` (docker echoes each name as given).
fn shown(names: &[String], c: &pb::Container) -> String {
    names
        .iter()
        .find(|n| names::find(std::slice::from_ref(c), n).is_ok())
        .cloned()
        .unwrap_or(c.id.clone())
}

async fn set_labels(ctx: &Ctx, id: &str, l: &[(&str, &str)]) -> Result<()> {
    ctx.client
        .containers()
        .update(pb::UpdateContainerRequest {
            id: id.to_owned(),
            labels: l
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .await
        .map_err(ctx.st())?;
    Ok(())
}

/// Whether the container's spec gives it a terminal.
fn spec_tty(c: &pb::Container) -> bool {
    let spec: serde_json::Value = serde_json::from_slice(&c.spec).unwrap_or_default();
    spec["process"]["terminal"].as_bool().unwrap_or(false)
}

/// Starts a container's task (a stopped one's old task is deleted first); attached with
/// `attach`, returning its exit code.
async fn start_one(ctx: &Ctx, c: &pb::Container, attach: bool, stdin: bool) -> Result<u32> {
    let s = state(ctx, c).await?;
    if s.running() {
        if attach {
            bail!(
                "container {} is already running: use `rnerd attach`",
                name_of(c)
            );
        }
        return Ok(0);
    }
    if s.status == "exited" || s.status == "created" {
        delete_task(ctx, &c.id, true).await?;
    }
    // a start clears an earlier stop for the restart monitor
    set_labels(ctx, &c.id, &[(labels::EXPLICITLY_STOPPED, "")]).await?;
    let tty = spec_tty(c);
    if !attach {
        super::run::start_task(ctx, &c.id, pb::Stdio::default()).await?;
        return Ok(0);
    }
    // as `run`: without -i/-t rcd's logger takes the output (a container with a log), and
    // rnerd reads it from the logger's attach socket
    let logged =
        !stdin && !tty && c.labels.get(labels::LOG).map(String::as_str) == Some("json-file");
    let fifos = if logged {
        None
    } else {
        Some(crate::cmd::stdio::Fifos::create(&c.id, stdin, tty)?)
    };
    let readers = match &fifos {
        Some(f) => Readers::open(Some(&f.stdout), f.stderr.as_deref())?,
        None => Readers::none(),
    };
    let created = ctx
        .client
        .tasks()
        .create(pb::CreateTaskRequest {
            container_id: c.id.clone(),
            stdio: Some(fifos.as_ref().map(|f| f.stdio()).unwrap_or_default()),
        })
        .await
        .map_err(ctx.st())?
        .into_inner();
    let readers = if logged {
        match super::run::logger_readers(&c.id, &created.attach_socket).await {
            Ok(r) => r,
            Err(e) => {
                let _ = delete_task(ctx, &c.id, true).await;
                return Err(e);
            }
        }
    } else {
        readers
    };
    let status = attached(
        &ctx.client,
        &c.id,
        "",
        tty,
        true,
        fifos.as_ref().and_then(|f| f.stdin.as_deref()),
        readers,
    )
    .await;
    delete_task(ctx, &c.id, true).await?;
    status
}

pub async fn start(ctx: &Ctx, a: StartArgs) -> Result<()> {
    if a.attach || a.interactive {
        if a.containers.len() != 1 {
            bail!(
                "start -a attaches to one container, not {}",
                a.containers.len()
            );
        }
        let c = resolve(ctx, &a.containers[0]).await?;
        let code = start_one(ctx, &c, true, a.interactive).await?;
        if code != 0 {
            return Err(Exit(code.min(255) as u8).into());
        }
        return Ok(());
    }
    each(ctx, &a.containers.clone(), |c| {
        let shown = shown(&a.containers, &c);
        async move {
            start_one(ctx, &c, false, false).await?;
            println!("{shown}");
            Ok(())
        }
    })
    .await
}

/// Stops a container: the explicitly-stopped label first (the restart monitor must not
/// bring it back), its stop signal, SIGKILL after `timeout`, then its task is deleted.
pub async fn stop_one(ctx: &Ctx, c: &pb::Container, timeout: Duration) -> Result<()> {
    set_labels(ctx, &c.id, &[(labels::EXPLICITLY_STOPPED, "true")]).await?;
    let Some(t) = task(ctx, &c.id).await? else {
        return Ok(());
    };
    if t.status == pb::TaskStatus::Stopped as i32 {
        delete_task(ctx, &c.id, true).await?;
        return Ok(());
    }
    let sig = c
        .labels
        .get(labels::STOP_SIGNAL)
        .filter(|s| !s.is_empty())
        .map(|s| crate::cmd::parse_signal(s))
        .transpose()?
        .unwrap_or(libc::SIGTERM as u32);
    if t.status == pb::TaskStatus::Paused as i32 {
        // a frozen process cannot take its signal: thaw it after the signal is queued
        let _ = kill(ctx, &c.id, sig).await;
        let _ = ctx
            .client
            .tasks()
            .resume(pb::ResumeTaskRequest {
                container_id: c.id.clone(),
            })
            .await;
    } else {
        kill(ctx, &c.id, sig).await?;
    }
    let waited = tokio::time::timeout(timeout, wait_task(ctx, &c.id)).await;
    if waited.is_err() {
        kill(ctx, &c.id, libc::SIGKILL as u32).await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), wait_task(ctx, &c.id)).await;
    }
    delete_task(ctx, &c.id, true).await?;
    Ok(())
}

async fn kill(ctx: &Ctx, id: &str, sig: u32) -> Result<()> {
    ctx.client
        .tasks()
        .kill(pb::KillTaskRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
            signal: sig,
            all: false,
        })
        .await
        .map_err(ctx.st())?;
    Ok(())
}

async fn wait_task(ctx: &Ctx, id: &str) -> Result<u32> {
    Ok(ctx
        .client
        .tasks()
        .wait(pb::WaitTaskRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        })
        .await
        .map_err(ctx.st())?
        .into_inner()
        .exit_status)
}

pub async fn stop(ctx: &Ctx, a: StopArgs, restart: bool) -> Result<()> {
    let timeout = Duration::from_secs(a.time);
    let names = a.containers.clone();
    each(ctx, &names, |c| {
        let shown = shown(&names, &c);
        async move {
            stop_one(ctx, &c, timeout).await?;
            if restart {
                let c = get(ctx, &c.id).await?;
                start_one(ctx, &c, false, false).await?;
            }
            println!("{shown}");
            Ok(())
        }
    })
    .await
}

pub async fn kill_cmd(ctx: &Ctx, a: KillArgs) -> Result<()> {
    let sig = crate::cmd::parse_signal(&a.signal)?;
    let names = a.containers.clone();
    each(ctx, &names, |c| {
        let shown = shown(&names, &c);
        async move {
            let s = state(ctx, &c).await?;
            if !s.running() {
                bail!("container {} is not running", name_of(&c));
            }
            kill(ctx, &c.id, sig).await?;
            println!("{shown}");
            Ok(())
        }
    })
    .await
}

pub async fn rm(ctx: &Ctx, a: RmArgs) -> Result<()> {
    let names = a.containers.clone();
    each(ctx, &names, |c| {
        let shown = shown(&names, &c);
        async move {
            let s = state(ctx, &c).await?;
            if s.running() && !a.force {
                bail!(
                    "container {} is running: stop it first, or rm -f",
                    name_of(&c)
                );
            }
            // the restart monitor must not bring it back between the task's delete and the
            // container's (a stopped one may be waiting out its backoff)
            if c.labels
                .get(labels::RESTART)
                .is_some_and(|r| !r.is_empty() && r != "no")
                || s.running()
            {
                set_labels(ctx, &c.id, &[(labels::EXPLICITLY_STOPPED, "true")]).await?;
            }
            let mut tries = 0;
            loop {
                delete_task(ctx, &c.id, true).await?;
                match ctx
                    .client
                    .containers()
                    .delete(pb::DeleteContainerRequest {
                        id: c.id.clone(),
                        keep_snapshot: false,
                        remove_volumes: a.volumes,
                    })
                    .await
                {
                    Ok(_) => break,
                    // a restart made a new task in between: once more
                    Err(s) if s.code() == tonic::Code::FailedPrecondition && tries < 3 => {
                        tries += 1
                    }
                    Err(s) => return Err(ctx.st()(s)),
                }
            }
            println!("{shown}");
            Ok(())
        }
    })
    .await
}

pub async fn wait(ctx: &Ctx, a: NamesArgs) -> Result<()> {
    each(ctx, &a.containers, |c| async move {
        let code = match task(ctx, &c.id).await? {
            Some(_) => wait_task(ctx, &c.id).await?,
            None => super::state_of(&c, None).exit_code.unwrap_or(0),
        };
        println!("{code}");
        Ok(())
    })
    .await
}

pub async fn rename(ctx: &Ctx, what: &str, new: &str) -> Result<()> {
    if !names::valid_name(new) {
        bail!("invalid container name {new:?}: letters, digits and _ . - (not first)");
    }
    let all = list(ctx).await?;
    let c = names::find(&all, what)?;
    if let Some(o) = all
        .iter()
        .find(|o| o.labels.get(labels::NAME).map(String::as_str) == Some(new))
    {
        if o.id != c.id {
            bail!(
                "the name {new:?} is taken by container {}: choose another",
                names::short_id(&o.id)
            );
        }
    }
    set_labels(ctx, &c.id, &[(labels::NAME, new)]).await
}

pub async fn pause(ctx: &Ctx, a: NamesArgs, pause: bool) -> Result<()> {
    let names = a.containers.clone();
    each(ctx, &names, |c| {
        let shown = shown(&names, &c);
        async move {
            let s = state(ctx, &c).await?;
            match (pause, s.status) {
                (true, "running") => {
                    ctx.client
                        .tasks()
                        .pause(pb::PauseTaskRequest {
                            container_id: c.id.clone(),
                        })
                        .await
                        .map_err(ctx.st())?;
                }
                (false, "paused") => {
                    ctx.client
                        .tasks()
                        .resume(pb::ResumeTaskRequest {
                            container_id: c.id.clone(),
                        })
                        .await
                        .map_err(ctx.st())?;
                }
                (true, st) => bail!("container {} is {st}, not running", name_of(&c)),
                (false, st) => bail!("container {} is {st}, not paused", name_of(&c)),
            }
            println!("{shown}");
            Ok(())
        }
    })
    .await
}

/// The published ports as recorded in the container's label.
pub fn ports_of(c: &pb::Container) -> Vec<serde_json::Value> {
    c.labels
        .get(labels::PORTS)
        .and_then(|s| serde_json::from_str::<Vec<serde_json::Value>>(s).ok())
        .unwrap_or_default()
}

/// `0.0.0.0:8080->80/tcp` for each.
pub fn ports_column(c: &pb::Container) -> String {
    ports_of(c)
        .iter()
        .map(|p| {
            let ip = p["host_ip"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("0.0.0.0");
            format!(
                "{ip}:{}->{}/{}",
                p["host_port"],
                p["container_port"],
                p["protocol"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("tcp")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn port(ctx: &Ctx, what: &str, which: Option<String>) -> Result<()> {
    let c = resolve(ctx, what).await?;
    let want = which.map(|w| match w.split_once('/') {
        Some((p, proto)) => (p.to_owned(), proto.to_owned()),
        None => (w, "tcp".to_owned()),
    });
    let mut found = false;
    for p in ports_of(&c) {
        let proto = p["protocol"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("tcp");
        let ip = p["host_ip"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("0.0.0.0");
        let ctr = p["container_port"].to_string();
        match &want {
            Some((wp, wproto)) if *wp == ctr && wproto == proto => {
                println!("{ip}:{}", p["host_port"]);
                found = true;
            }
            Some(_) => {}
            None => println!("{ctr}/{proto} -> {ip}:{}", p["host_port"]),
        }
    }
    if let (Some((p, proto)), false) = (&want, found) {
        bail!("no public port {p}/{proto} published for {}", name_of(&c));
    }
    Ok(())
}

fn running_or_fail(c: &pb::Container, s: &State) -> Result<()> {
    if !s.running() {
        bail!(
            "container {} is not running: `rnerd start` it first",
            name_of(c)
        );
    }
    Ok(())
}

pub async fn top(ctx: &Ctx, what: &str) -> Result<()> {
    let c = resolve(ctx, what).await?;
    running_or_fail(&c, &state(ctx, &c).await?)?;
    let pids = ctx
        .client
        .tasks()
        .list_pids(pb::ListPidsRequest {
            container_id: c.id.clone(),
        })
        .await
        .map_err(ctx.st())?
        .into_inner()
        .pids;
    let list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // rcd's tasks run on this host: ps shows them, as docker top does
    let out = std::process::Command::new("ps")
        .args(["-o", "uid,pid,ppid,c,stime,tty,time,cmd", "-p", &list])
        .output()
        .map_err(|e| anyhow!("running ps: {e}"))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

pub async fn attach(ctx: &Ctx, what: &str) -> Result<()> {
    let c = resolve(ctx, what).await?;
    running_or_fail(&c, &state(ctx, &c).await?)?;
    let p = task(ctx, &c.id).await?.unwrap_or_default();
    let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
    let (stdin, stdout, stderr) = (path(&p.stdin), path(&p.stdout), path(&p.stderr));
    if stdout.is_none() || !stdout.as_ref().is_some_and(|p| p.exists()) {
        // detached without -i/-t: its output is in rcd's log
        return super::logs::follow_until_exit(ctx, &c).await;
    }
    let readers = Readers::open(stdout.as_deref(), stderr.as_deref())?;
    let code = attached(
        &ctx.client,
        &c.id,
        "",
        p.terminal,
        false,
        stdin.as_deref(),
        readers,
    )
    .await?;
    if code != 0 {
        return Err(Exit(code.min(255) as u8).into());
    }
    Ok(())
}
