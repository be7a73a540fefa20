//! `rctr run IMAGE ID [CMD...]`: containers create + tasks start (+ wait, delete), as ctr's.

use super::containers::ContainerFlags;
use super::stdio::Readers;
use super::tasks::{attached, delete_task, Io};
use super::{st, ExitStatus};
use crate::client::Client;
use anyhow::{bail, Result};
use clap::Args;
use rcd_proto::v1 as pb;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container when its task exits
    #[arg(long)]
    pub rm: bool,
    /// Return once the task started
    #[arg(short, long)]
    pub detach: bool,
    /// Send the output to /dev/null
    #[arg(long)]
    pub null_io: bool,
    #[command(flatten)]
    pub flags: ContainerFlags,
    /// Image (as `images ls` names it, or short: busybox)
    pub image: String,
    /// Container ID
    pub id: String,
    /// Command and arguments (default: the image's)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub async fn run(client: &Client, a: RunArgs) -> Result<()> {
    if a.rm && a.detach {
        bail!("--rm and --detach exclude each other");
    }
    let st = st(client);
    let req = a.flags.request(&a.id, &a.image, &a.args)?;
    client.containers().create(req).await.map_err(&st)?;
    let remove_container = || async {
        let _ = client
            .containers()
            .delete(pb::DeleteContainerRequest {
                id: a.id.clone(),
                keep_snapshot: false,
                remove_volumes: false,
            })
            .await;
    };
    let tty = a.flags.tty;
    let mut io = match Io::new(&a.id, tty, a.detach, a.null_io) {
        Ok(io) => io,
        Err(e) => {
            remove_container().await;
            return Err(e);
        }
    };
    if let Err(s) = client
        .tasks()
        .create(pb::CreateTaskRequest {
            container_id: a.id.clone(),
            stdio: Some(io.stdio()),
        })
        .await
    {
        // a container that never ran is not kept (ctr keeps it; nothing could use it)
        remove_container().await;
        return Err(st(s));
    }
    if a.detach {
        if let Err(s) = client
            .tasks()
            .start(pb::StartTaskRequest {
                container_id: a.id.clone(),
                exec_id: String::new(),
            })
            .await
        {
            let _ = delete_task(client, &a.id).await;
            return Err(st(s));
        }
        return Ok(());
    }
    let readers = io.readers_take().unwrap_or(Readers::none());
    let stdin = io.fifos.as_ref().and_then(|f| f.stdin.clone());
    let status = attached(client, &a.id, "", tty, true, stdin.as_deref(), readers).await;
    let deleted = delete_task(client, &a.id).await;
    if a.rm {
        remove_container().await;
    }
    let status = status?;
    deleted?;
    if status != 0 {
        return Err(ExitStatus(status).into());
    }
    Ok(())
}
