//! `rnerd exec`: another process in a running container.

use super::super::args::ExecArgs;
use super::super::names::name_of;
use super::super::{CodedError, Ctx, Exit, EXIT_CANNOT_INVOKE, EXIT_NOT_FOUND};
use super::{resolve, state};
use crate::cmd::stdio::{Fifos, Readers};
use crate::cmd::tasks::attached;
use anyhow::{anyhow, bail, Result};
use rcd_proto::v1 as pb;

fn exec_error(msg: String) -> anyhow::Error {
    let m = msg.to_ascii_lowercase();
    if m.contains("not found") || m.contains("no such file") {
        return CodedError(EXIT_NOT_FOUND, msg).into();
    }
    if m.contains("permission denied") || m.contains("exec format") {
        return CodedError(EXIT_CANNOT_INVOKE, msg).into();
    }
    anyhow!(msg)
}

pub async fn exec(ctx: &Ctx, a: ExecArgs) -> Result<()> {
    let c = resolve(ctx, &a.container).await?;
    let s = state(ctx, &c).await?;
    match s.status {
        "running" => {}
        "paused" => bail!("container {} is paused: unpause it first", name_of(&c)),
        st => bail!(
            "container {} is {st}, not running: `rnerd start` it first",
            name_of(&c)
        ),
    }
    let exec_id = format!("exec-{:016x}", fastrand::u64(..));
    let fifos = Fifos::create(
        &format!("{}-{exec_id}", &c.id[..12.min(c.id.len())]),
        a.interactive,
        a.tty,
    )?;
    let readers = Readers::open(Some(&fifos.stdout), fifos.stderr.as_deref())?;
    let stdio = if a.detach {
        pb::Stdio::default()
    } else {
        fifos.stdio()
    };
    ctx.client
        .tasks()
        .exec(pb::ExecTaskRequest {
            container_id: c.id.clone(),
            exec_id: exec_id.clone(),
            args: a.command.clone(),
            env: a.env.clone(),
            cwd: a.workdir.clone().unwrap_or_default(),
            user: a.user.clone().unwrap_or_default(),
            stdio: Some(pb::Stdio {
                terminal: a.tty,
                ..stdio
            }),
        })
        .await
        .map_err(|s| exec_error(crate::client::status_message(ctx.client.address(), &s)))?;
    let delete = || async {
        let _ = ctx
            .client
            .tasks()
            .delete_process(pb::DeleteProcessRequest {
                container_id: c.id.clone(),
                exec_id: exec_id.clone(),
            })
            .await;
    };
    if a.detach {
        drop(readers);
        if let Err(s) = ctx
            .client
            .tasks()
            .start(pb::StartTaskRequest {
                container_id: c.id.clone(),
                exec_id: exec_id.clone(),
            })
            .await
        {
            delete().await;
            return Err(exec_error(crate::client::status_message(
                ctx.client.address(),
                &s,
            )));
        }
        return Ok(());
    }
    let status = attached(
        &ctx.client,
        &c.id,
        &exec_id,
        a.tty,
        true,
        fifos.stdin.as_deref(),
        readers,
    )
    .await;
    delete().await;
    let status = status.map_err(|e| exec_error(format!("{e:#}")))?;
    if status != 0 {
        return Err(Exit(status.min(255) as u8).into());
    }
    Ok(())
}
