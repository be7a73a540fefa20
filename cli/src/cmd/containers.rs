//! `rctr containers create|ls|info|rm|label`.

use super::{labels_column, parse_labels, st, Reported};
use crate::client::{status_message, Client};
use crate::format::table;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use rcd_proto::v1 as pb;

// What `run` and `containers create` share: the container's options. (A plain comment: a
// doc comment would become the subcommands' about text, their own being set first.)
#[derive(Args, Debug, Clone, Default)]
pub struct ContainerFlags {
    /// Environment variable KEY=VALUE (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Mount, as ctr: type=bind,src=/host,dst=/ctr,options=rbind:ro (repeatable)
    #[arg(long = "mount", value_name = "SPEC")]
    pub mounts: Vec<String>,
    /// Use the host's network namespace
    #[arg(long)]
    pub net_host: bool,
    /// CPU limit as a fraction of CPUs (0.5, 2)
    #[arg(long)]
    pub cpus: Option<String>,
    /// Memory limit in bytes
    #[arg(long, value_name = "BYTES")]
    pub memory_limit: Option<u64>,
    /// Every capability, every device, no seccomp filter
    #[arg(long)]
    pub privileged: bool,
    /// Add a capability (NET_ADMIN, CAP_SYS_TIME, ALL) (repeatable)
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability (repeatable)
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// User: name|uid[:group|gid]
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory of the process
    #[arg(long)]
    pub cwd: Option<String>,
    /// Allocate a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Read-only root filesystem
    #[arg(long)]
    pub rootfs_readonly: bool,
    /// Replace the image's entrypoint
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Container label KEY=VALUE (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Shim binary to run the task under (default: the daemon's)
    #[arg(long)]
    pub runtime: Option<String>,
}

impl ContainerFlags {
    pub fn request(
        &self,
        id: &str,
        image: &str,
        args: &[String],
    ) -> Result<pb::CreateContainerRequest> {
        Ok(pb::CreateContainerRequest {
            id: id.to_owned(),
            image: image.to_owned(),
            options: Some(pb::ContainerOptions {
                args: args.to_vec(),
                env: self.env.clone(),
                cwd: self.cwd.clone().unwrap_or_default(),
                user: self.user.clone().unwrap_or_default(),
                mounts: self.mounts.clone(),
                net_host: self.net_host,
                cpus: self.cpus.clone().unwrap_or_default(),
                memory_limit: self.memory_limit.unwrap_or(0),
                privileged: self.privileged,
                cap_add: self.cap_add.clone(),
                cap_drop: self.cap_drop.clone(),
                tty: self.tty,
                readonly_rootfs: self.rootfs_readonly,
                entrypoint: self.entrypoint.iter().cloned().collect(),
                set_entrypoint: self.entrypoint.is_some(),
                hostname: String::new(),
                ..Default::default()
            }),
            labels: parse_labels(&self.labels)?,
            runtime: self.runtime.clone().unwrap_or_default(),
        })
    }
}

#[derive(Subcommand, Debug)]
// each subcommand's arguments are built only when it runs: the whole tree costs ~1 ms
#[command(defer = true)]
pub enum ContainersCommand {
    /// Create a container from an image (no task: `tasks start` runs it)
    Create {
        #[command(flatten)]
        flags: Box<ContainerFlags>,
        /// Image (as `images ls` names it, or short: busybox)
        image: String,
        /// Container ID
        id: String,
        /// Command and arguments (default: the image's)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List containers
    #[command(alias = "ls")]
    List {
        /// Print only the IDs
        #[arg(short, long)]
        quiet: bool,
        /// Filters: labels.KEY==VALUE, labels.KEY, id==ID, image==REF (all must match)
        filters: Vec<String>,
    },
    /// Show a container (with --spec, only its OCI spec)
    Info {
        /// Print only the OCI spec
        #[arg(long)]
        spec: bool,
        id: String,
    },
    /// Remove containers (refused while a task runs)
    #[command(alias = "rm", alias = "remove")]
    Delete {
        /// Keep the rootfs snapshot
        #[arg(long)]
        keep_snapshot: bool,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Set (KEY=VALUE) or remove (KEY=) labels
    Label {
        id: String,
        #[arg(required = true)]
        labels: Vec<String>,
    },
}

pub async fn run(client: &Client, cmd: ContainersCommand) -> Result<()> {
    let st = st(client);
    match cmd {
        ContainersCommand::Create {
            flags,
            image,
            id,
            args,
        } => {
            let req = flags.request(&id, &image, &args)?;
            client.containers().create(req).await.map_err(st)?;
        }
        ContainersCommand::List { quiet, filters } => {
            let list = client
                .containers()
                .list(pb::ListContainersRequest { filters })
                .await
                .map_err(st)?
                .into_inner()
                .containers;
            if quiet {
                for c in list {
                    println!("{}", c.id);
                }
                return Ok(());
            }
            let mut rows = vec![vec![
                "CONTAINER".to_owned(),
                "IMAGE".into(),
                "RUNTIME".into(),
                "LABELS".into(),
            ]];
            for c in list {
                rows.push(vec![
                    c.id,
                    c.image,
                    if c.runtime.is_empty() {
                        "default".into()
                    } else {
                        c.runtime
                    },
                    labels_column(&c.labels),
                ]);
            }
            print!("{}", table(&rows));
        }
        ContainersCommand::Info { spec, id } => {
            let c = client
                .containers()
                .get(pb::GetContainerRequest { id: id.clone() })
                .await
                .map_err(st)?
                .into_inner()
                .container;
            let Some(c) = c else {
                bail!("unknown container {id}");
            };
            let spec_json: serde_json::Value =
                serde_json::from_slice(&c.spec).unwrap_or(serde_json::Value::Null);
            if spec {
                println!("{}", serde_json::to_string_pretty(&spec_json)?);
                return Ok(());
            }
            let mut labels: Vec<_> = c.labels.into_iter().collect();
            labels.sort();
            let info = serde_json::json!({
                "ID": c.id,
                "Image": c.image,
                "Runtime": if c.runtime.is_empty() { "default".to_owned() } else { c.runtime },
                "SnapshotKey": c.snapshot_key,
                "Labels": labels
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect::<serde_json::Map<_, _>>(),
                "CreatedAt": c.created_at,
                "UpdatedAt": c.updated_at,
                "Spec": spec_json,
            });
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        ContainersCommand::Delete { keep_snapshot, ids } => {
            let mut failed = false;
            for id in ids {
                if let Err(s) = client
                    .containers()
                    .delete(pb::DeleteContainerRequest {
                        id: id.clone(),
                        keep_snapshot,
                        remove_volumes: false,
                    })
                    .await
                {
                    eprintln!("rctr: {}", status_message(client.address(), &s));
                    failed = true;
                }
            }
            if failed {
                return Err(Reported.into());
            }
        }
        ContainersCommand::Label { id, labels } => {
            let labels = parse_labels(&labels)?;
            let c = client
                .containers()
                .update(pb::UpdateContainerRequest { id, labels })
                .await
                .map_err(st)?
                .into_inner()
                .container
                .unwrap_or_default();
            println!("{}", labels_column(&c.labels));
        }
    }
    Ok(())
}
