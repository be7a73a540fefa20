//! rctr: rcd's raw API client, as containerd's `ctr`.

use anyhow::{anyhow, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use rcd_cli::client::{parse_duration, status_message, Client};
use rcd_cli::format::{human_size, table};
use rcd_proto::v1 as pb;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "rctr",
    version,
    about = "rctr: rcd's raw API client (as containerd's ctr)"
)]
struct Cli {
    /// rcd's socket
    #[arg(short, long, env = "RCD_ADDRESS", default_value = rcd_proto::DEFAULT_ADDRESS, global = true)]
    address: PathBuf,
    /// Namespace of the calls
    #[arg(short, long, env = "RCD_NAMESPACE", default_value = rcd_proto::DEFAULT_NAMESPACE, global = true)]
    namespace: String,
    /// Total timeout of the command, e.g. 30s, 2m (0: none)
    #[arg(long, default_value = "0s", value_parser = parse_duration, global = true)]
    timeout: Duration,
    /// Timeout for connecting to rcd
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true)]
    connect_timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
// each subcommand's arguments are built only when it runs: the whole tree costs ~1 ms
#[command(defer = true)]
enum Command {
    /// Print the client and server versions
    Version,
    /// Manage images
    #[command(alias = "image", alias = "i")]
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Manage content (blobs)
    Content {
        #[command(subcommand)]
        command: ContentCommand,
    },
    /// Manage snapshots (image layers, image mounts)
    #[command(alias = "snapshot", alias = "s")]
    Snapshots {
        #[command(subcommand)]
        command: SnapshotsCommand,
    },
    /// Manage leases (what keeps content and snapshots from the garbage collector)
    #[command(alias = "lease")]
    Leases {
        #[command(subcommand)]
        command: LeasesCommand,
    },
    /// Manage containers
    #[command(alias = "container", alias = "c")]
    Containers {
        #[command(subcommand)]
        command: rcd_cli::cmd::containers::ContainersCommand,
    },
    /// Manage tasks (a container's running processes)
    #[command(alias = "task", alias = "t")]
    Tasks {
        #[command(subcommand)]
        command: rcd_cli::cmd::tasks::TasksCommand,
    },
    /// Run a container (containers create + tasks start)
    Run(rcd_cli::cmd::run::RunArgs),
    /// Manage namespaces
    #[command(alias = "namespace", alias = "ns")]
    Namespaces {
        #[command(subcommand)]
        command: rcd_cli::cmd::namespaces::NamespacesCommand,
    },
    /// Print the daemon's events (FILTER: topic==/tasks/exit, namespace==NS, topic~=/tasks/)
    Events { filters: Vec<String> },
    /// Print what the daemon says about itself
    Info,
    /// Print a shell completion script
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
enum ImagesCommand {
    /// Pull an image from a registry
    Pull {
        /// os/arch[/variant] to pull (default: the daemon's)
        #[arg(long)]
        platform: Option<String>,
        /// Reach the registry over plain HTTP
        #[arg(long)]
        plain_http: bool,
        /// Registry credentials, USER:PASSWORD
        #[arg(short, long, value_name = "USER:PASS")]
        user: Option<String>,
        /// Download only: do not unpack the layers into snapshots
        #[arg(long, alias = "skip-unpack")]
        no_unpack: bool,
        /// Image reference (busybox, host:port/repo:tag, repo@sha256:…)
        reference: String,
    },
    /// List images
    #[command(alias = "ls")]
    List {
        /// Print only the names
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print an image's details as JSON: descriptors, platform, sizes, config, history
    #[command(alias = "info")]
    Inspect { reference: String },
    /// Give an image more names
    Tag {
        /// Replace a target name that exists
        #[arg(long)]
        force: bool,
        source: String,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Remove images: a name removes that name; a digest (sha256:…) every name of it.
    /// Content and snapshots nothing else uses are then collected.
    #[command(alias = "rm", alias = "remove")]
    Delete {
        /// Collect before returning
        #[arg(long)]
        sync: bool,
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Collect content and snapshots nothing uses; --all: remove every image not mounted first
    Prune {
        #[arg(long)]
        all: bool,
    },
    /// Mount an image's rootfs on a directory (read-only unless --rw)
    Mount {
        /// A writable mount (its changes go when unmounted)
        #[arg(long)]
        rw: bool,
        reference: String,
        target: PathBuf,
    },
    /// Unmount an image mounted with `images mount`, removing its snapshot
    #[command(alias = "umount")]
    Unmount { target: PathBuf },
    /// Write images to OUT ("-": stdout) as an OCI image layout tar with Docker's
    /// manifest.json (docker load, skopeo and ctr import read it)
    Export {
        /// Platform of an index for manifest.json (default: the daemon's)
        #[arg(long)]
        platform: Option<String>,
        out: PathBuf,
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Import images from an archive ("-": stdin): an OCI image layout or a Docker `save` tar,
    /// plain, gzip or zstd; every named image is recorded and unpacked
    Import {
        /// Name for images an OCI layout names by tag only (BASE:tag)
        #[arg(long)]
        base_name: Option<String>,
        /// Record only; do not unpack into snapshots
        #[arg(long)]
        no_unpack: bool,
        /// The platform of an index to record and unpack (default: the daemon's)
        #[arg(long)]
        platform: Option<String>,
        file: PathBuf,
    },
    /// Push an image to a registry: REMOTE [LOCAL] (LOCAL defaults to REMOTE)
    Push {
        /// Push only this platform's manifest of an index
        #[arg(long)]
        platform: Option<String>,
        /// Reach the registry over plain HTTP
        #[arg(long)]
        plain_http: bool,
        /// Registry credentials, USER:PASSWORD
        #[arg(short, long, value_name = "USER:PASS")]
        user: Option<String>,
        remote: String,
        local: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
enum SnapshotsCommand {
    /// List snapshots: KEY PARENT KIND
    #[command(alias = "ls")]
    List {
        /// Print only the keys
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print the snapshots as a tree, children under their parent
    Tree,
    /// Print a snapshot as JSON, with its disk usage
    Info { key: String },
    /// Print the mount commands of an active snapshot or view on TARGET
    Mounts { target: PathBuf, key: String },
    /// Make an active (writable) snapshot KEY on PARENT and print its mounts on TARGET
    Prepare {
        /// Where the printed mount commands mount it
        #[arg(long, default_value = "/tmp")]
        target: PathBuf,
        key: String,
        parent: Option<String>,
    },
    /// Make a read-only view KEY of PARENT and print its mounts on TARGET
    View {
        #[arg(long, default_value = "/tmp")]
        target: PathBuf,
        key: String,
        parent: Option<String>,
    },
    /// Commit the active snapshot KEY as NAME
    Commit { name: String, key: String },
    /// Remove snapshots (refused for parents, image layers in use, image mounts)
    #[command(alias = "rm", alias = "remove")]
    Delete {
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
enum LeasesCommand {
    /// List leases
    #[command(alias = "ls")]
    List {
        #[arg(short, long)]
        quiet: bool,
    },
    /// Create a lease and print its id
    Create {
        /// Id (default: random)
        #[arg(long)]
        id: Option<String>,
        /// Expiry, e.g. 24h, 30m (0: never)
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        expires_in: Duration,
    },
    /// Delete leases
    #[command(alias = "rm", alias = "remove")]
    Delete {
        /// Collect what they kept before returning
        #[arg(long)]
        sync: bool,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
enum ContentCommand {
    /// List blobs
    #[command(alias = "ls")]
    List {
        /// Print only the digests
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a blob to stdout
    Get { digest: String },
    /// Remove blobs
    #[command(alias = "rm", alias = "del")]
    Delete {
        #[arg(required = true)]
        digests: Vec<String>,
    },
}

/// An error already printed (partial failures of multi-argument commands).
#[derive(Debug)]
struct Reported;
impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("errors reported above")
    }
}
impl std::error::Error for Reported {}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`rctr content get D | head`), as ctr does.
    // SAFETY: nothing else runs yet; SIG_DFL is a valid disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    if let Command::Completion { shell } = cli.command {
        rcd_cli::print_completions(shell, Cli::command(), "rctr");
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let timeout = cli.timeout;
    let result = rt.block_on(async {
        if timeout.is_zero() {
            run(cli).await
        } else {
            tokio::time::timeout(timeout, run(cli))
                .await
                .unwrap_or_else(|_| Err(anyhow!("timed out after {timeout:?}")))
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Reported>().is_none() => {
            let (code, print) = rcd_cli::cmd::exit_code(&e);
            if print {
                eprintln!("rctr: {e:#}");
            }
            ExitCode::from(code)
        }
        Err(e) => {
            if e.downcast_ref::<Reported>().is_none() {
                eprintln!("rctr: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let client = Client::connect(&cli.address, &cli.namespace, cli.connect_timeout).await?;
    let st = |s: tonic::Status| anyhow!(status_message(client.address(), &s));
    match cli.command {
        Command::Completion { .. } => unreachable!(),
        Command::Containers { command } => rcd_cli::cmd::containers::run(&client, command).await?,
        Command::Tasks { command } => rcd_cli::cmd::tasks::run(&client, command).await?,
        Command::Run(args) => rcd_cli::cmd::run::run(&client, args).await?,
        Command::Namespaces { command } => rcd_cli::cmd::namespaces::run(&client, command).await?,
        Command::Events { filters } => rcd_cli::cmd::events::run(&client, filters).await?,
        Command::Info => rcd_cli::cmd::info::run(&client).await?,
        Command::Version => {
            let v = client
                .version()
                .version(pb::VersionRequest {})
                .await
                .map_err(st)?
                .into_inner();
            println!("Client:\n  Version:  {}", env!("CARGO_PKG_VERSION"));
            println!("\nServer:\n  Version:  {}", v.version);
            if !v.revision.is_empty() {
                println!("  Revision: {}", v.revision);
            }
        }
        Command::Images { command } => match command {
            ImagesCommand::Pull {
                platform,
                plain_http,
                user,
                no_unpack,
                reference,
            } => pull(&client, platform, plain_http, user, no_unpack, reference).await?,
            ImagesCommand::List { quiet } => {
                let list = client
                    .images()
                    .list(pb::ListImagesRequest {})
                    .await
                    .map_err(st)?
                    .into_inner()
                    .images;
                if quiet {
                    for i in list {
                        println!("{}", i.name);
                    }
                    return Ok(());
                }
                let mut rows = vec![vec![
                    "REF".to_owned(),
                    "TYPE".into(),
                    "DIGEST".into(),
                    "SIZE".into(),
                    "PLATFORMS".into(),
                    "STATUS".into(),
                ]];
                for i in list {
                    let t = i.target.clone().unwrap_or_default();
                    rows.push(vec![
                        i.name.clone(),
                        t.media_type,
                        t.digest,
                        human_size(i.size.max(0) as u64),
                        i.platform.clone().map(platform_string).unwrap_or_default(),
                        image_status(&i),
                    ]);
                }
                print!("{}", table(&rows));
            }
            ImagesCommand::Inspect { reference } => {
                let r = client
                    .images()
                    .get(pb::GetImageRequest { name: reference })
                    .await
                    .map_err(st)?
                    .into_inner();
                let doc = inspect_json(r);
                println!("{}", serde_json::to_string_pretty(&doc)?);
            }
            ImagesCommand::Tag {
                force,
                source,
                targets,
            } => {
                for target in targets {
                    let r = client
                        .images()
                        .tag(pb::TagImageRequest {
                            source: source.clone(),
                            target,
                            force,
                        })
                        .await
                        .map_err(st)?
                        .into_inner();
                    println!("{}", r.image.unwrap_or_default().name);
                }
            }
            ImagesCommand::Prune { all } => {
                let r = client
                    .images()
                    .prune(pb::PruneImagesRequest { all })
                    .await
                    .map_err(st)?
                    .into_inner();
                for i in &r.images {
                    println!("{i}");
                }
                println!(
                    "removed {} image(s), {} blob(s) ({}), {} snapshot(s)",
                    r.images.len(),
                    r.blobs,
                    human_size(r.bytes),
                    r.snapshots
                );
            }
            ImagesCommand::Mount {
                rw,
                reference,
                target,
            } => {
                let target = absolute(&target)?;
                client
                    .images()
                    .mount(pb::MountImageRequest {
                        name: reference,
                        target: target.clone(),
                        rw,
                    })
                    .await
                    .map_err(st)?;
                println!("{target}");
            }
            ImagesCommand::Export {
                platform,
                out,
                references,
            } => export(&client, platform, out, references).await?,
            ImagesCommand::Import {
                base_name,
                no_unpack,
                platform,
                file,
            } => import(&client, base_name, no_unpack, platform, file).await?,
            ImagesCommand::Push {
                platform,
                plain_http,
                user,
                remote,
                local,
            } => push(&client, platform, plain_http, user, remote, local).await?,
            ImagesCommand::Unmount { target } => {
                let target = absolute(&target)?;
                client
                    .images()
                    .unmount(pb::UnmountImageRequest {
                        target: target.clone(),
                    })
                    .await
                    .map_err(st)?;
                println!("{target}");
            }
            ImagesCommand::Delete { sync, references } => {
                let mut failed = false;
                for r in references {
                    match client
                        .images()
                        .delete(pb::DeleteImageRequest {
                            name: r.clone(),
                            sync,
                        })
                        .await
                    {
                        Ok(resp) => {
                            for n in resp.into_inner().names {
                                println!("{n}");
                            }
                        }
                        Err(s) => {
                            eprintln!("rctr: {}", status_message(client.address(), &s));
                            failed = true;
                        }
                    }
                }
                if failed {
                    return Err(Reported.into());
                }
            }
        },
        Command::Snapshots { command } => snapshots(&client, command).await?,
        Command::Leases { command } => leases(&client, command).await?,
        Command::Content { command } => match command {
            ContentCommand::List { quiet } => {
                let list = client
                    .content()
                    .list(pb::ListContentRequest {})
                    .await
                    .map_err(st)?
                    .into_inner()
                    .info;
                if quiet {
                    for i in list {
                        println!("{}", i.digest);
                    }
                    return Ok(());
                }
                let mut rows = vec![vec!["DIGEST".to_owned(), "SIZE".into(), "CREATED".into()]];
                for i in list {
                    rows.push(vec![
                        i.digest,
                        human_size(i.size.max(0) as u64),
                        i.created_at,
                    ]);
                }
                print!("{}", table(&rows));
            }
            ContentCommand::Get { digest } => {
                let mut stream = client
                    .content()
                    .read(pb::ReadContentRequest {
                        digest,
                        offset: 0,
                        size: 0,
                    })
                    .await
                    .map_err(st)?
                    .into_inner();
                let mut out = std::io::stdout().lock();
                while let Some(chunk) = stream.message().await.map_err(st)? {
                    out.write_all(&chunk.data).context("writing to stdout")?;
                }
                out.flush().context("writing to stdout")?;
            }
            ContentCommand::Delete { digests } => {
                let mut failed = false;
                for d in digests {
                    match client
                        .content()
                        .delete(pb::DeleteContentRequest { digest: d.clone() })
                        .await
                    {
                        Ok(_) => println!("{d}"),
                        Err(s) => {
                            eprintln!("rctr: {}", status_message(client.address(), &s));
                            failed = true;
                        }
                    }
                }
                if failed {
                    return Err(Reported.into());
                }
            }
        },
    }
    Ok(())
}

/// `unpacked`, `not unpacked`, or `broken: <what is missing>`.
fn image_status(i: &pb::Image) -> String {
    if !i.problem.is_empty() {
        format!("broken: {}", i.problem)
    } else if i.snapshot.is_empty() {
        "not unpacked".into()
    } else {
        "unpacked".into()
    }
}

/// The image as `images inspect` prints it.
fn inspect_json(r: pb::GetImageResponse) -> serde_json::Value {
    use serde_json::{json, Value};
    let i = r.image.unwrap_or_default();
    let d = |d: &Option<pb::Descriptor>| match d {
        Some(d) => json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size}),
        None => Value::Null,
    };
    let config: Value = serde_json::from_slice(&r.config).unwrap_or(Value::Null);
    json!({
        "name": i.name,
        "target": d(&i.target),
        "manifest": d(&i.manifest),
        "platform": i.platform.clone().map(platform_string),
        "size": i.size,
        "unpackedSize": i.unpacked_size,
        "snapshot": (!i.snapshot.is_empty()).then_some(&i.snapshot),
        "status": image_status(&i),
        "labels": i.labels,
        "createdAt": i.created_at,
        "updatedAt": i.updated_at,
        "layers": i.layers.iter().map(|l| d(&Some(l.clone()))).collect::<Vec<_>>(),
        "configDescriptor": d(&i.config),
        "history": config.get("history").cloned().unwrap_or(Value::Array(vec![])),
        "config": config,
    })
}

/// An absolute path as text (relative ones are made absolute against the current dir: the
/// daemon has another one).
fn absolute(p: &std::path::Path) -> Result<String> {
    let p = std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?;
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
}

async fn snapshots(client: &Client, command: SnapshotsCommand) -> Result<()> {
    let st = |s: tonic::Status| anyhow!(status_message(client.address(), &s));
    let mut svc = client.snapshots();
    match command {
        SnapshotsCommand::List { quiet } => {
            let list = svc
                .list(pb::ListSnapshotsRequest {})
                .await
                .map_err(st)?
                .into_inner()
                .snapshots;
            if quiet {
                for s in list {
                    println!("{}", s.key);
                }
                return Ok(());
            }
            let mut rows = vec![vec!["KEY".to_owned(), "PARENT".into(), "KIND".into()]];
            for s in list {
                rows.push(vec![s.key, s.parent, titled(&s.kind)]);
            }
            print!("{}", table(&rows));
        }
        SnapshotsCommand::Tree => {
            let list = svc
                .list(pb::ListSnapshotsRequest {})
                .await
                .map_err(st)?
                .into_inner()
                .snapshots;
            print!("{}", tree(&list));
        }
        SnapshotsCommand::Info { key } => {
            let s = svc
                .info(pb::SnapshotInfoRequest { key })
                .await
                .map_err(st)?
                .into_inner()
                .snapshot
                .unwrap_or_default();
            let doc = serde_json::json!({
                "Kind": titled(&s.kind),
                "Name": s.key,
                "Parent": (!s.parent.is_empty()).then_some(&s.parent),
                "Labels": s.labels,
                "Created": s.created_at,
                "Updated": s.updated_at,
                "Size": s.size,
                "Inodes": s.inodes,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        SnapshotsCommand::Mounts { target, key } => {
            let mounts = svc
                .mounts(pb::SnapshotMountsRequest { key })
                .await
                .map_err(st)?
                .into_inner()
                .mounts;
            print_mounts(&target, &mounts);
        }
        SnapshotsCommand::Prepare {
            target,
            key,
            parent,
        } => {
            let req = pb::PrepareSnapshotRequest {
                key,
                parent: parent.unwrap_or_default(),
                labels: Default::default(),
            };
            let mounts = svc.prepare(req).await.map_err(st)?.into_inner().mounts;
            print_mounts(&target, &mounts);
        }
        SnapshotsCommand::View {
            target,
            key,
            parent,
        } => {
            let req = pb::PrepareSnapshotRequest {
                key,
                parent: parent.unwrap_or_default(),
                labels: Default::default(),
            };
            let mounts = svc.view(req).await.map_err(st)?.into_inner().mounts;
            print_mounts(&target, &mounts);
        }
        SnapshotsCommand::Commit { name, key } => {
            svc.commit(pb::CommitSnapshotRequest {
                name,
                key,
                labels: Default::default(),
            })
            .await
            .map_err(st)?;
        }
        SnapshotsCommand::Delete { keys } => {
            let mut failed = false;
            for key in keys {
                match svc
                    .remove(pb::RemoveSnapshotRequest { key: key.clone() })
                    .await
                {
                    Ok(_) => println!("{key}"),
                    Err(s) => {
                        eprintln!("rctr: {}", status_message(client.address(), &s));
                        failed = true;
                    }
                }
            }
            if failed {
                return Err(Reported.into());
            }
        }
    }
    Ok(())
}

/// `active` → `Active` (ctr prints Go's kind names).
fn titled(kind: &str) -> String {
    let mut c = kind.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// Snapshots under their parents, ctr's shape: a root at the margin, each child one level
/// deeper as `\_ key`.
fn tree(list: &[pb::Snapshot]) -> String {
    let keys: std::collections::HashSet<&str> = list.iter().map(|s| s.key.as_str()).collect();
    let mut children: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    let mut roots = Vec::new();
    for s in list {
        if s.parent.is_empty() || !keys.contains(s.parent.as_str()) {
            roots.push(s.key.as_str());
        } else {
            children.entry(s.parent.as_str()).or_default().push(&s.key);
        }
    }
    roots.sort();
    let mut out = String::new();
    let mut stack: Vec<(&str, usize)> = roots.into_iter().rev().map(|k| (k, 0)).collect();
    while let Some((k, depth)) = stack.pop() {
        if depth == 0 {
            out.push_str(&format!("{k}\n"));
        } else {
            out.push_str(&format!("{}\\_ {k}\n", "  ".repeat(depth)));
        }
        if let Some(c) = children.get(k) {
            let mut c = c.clone();
            c.sort();
            stack.extend(c.into_iter().rev().map(|k| (k, depth + 1)));
        }
    }
    out
}

/// One `mount` command line per mount, as ctr's `snapshots mounts` prints them.
fn print_mounts(target: &std::path::Path, mounts: &[pb::Mount]) {
    for m in mounts {
        let opts = if m.options.is_empty() {
            String::new()
        } else {
            format!(" -o {}", m.options.join(","))
        };
        println!(
            "mount -t {} {} {}{opts}",
            m.r#type,
            m.source,
            target.display()
        );
    }
}

async fn leases(client: &Client, command: LeasesCommand) -> Result<()> {
    let st = |s: tonic::Status| anyhow!(status_message(client.address(), &s));
    let mut svc = client.leases();
    match command {
        LeasesCommand::List { quiet } => {
            let list = svc
                .list(pb::ListLeasesRequest {})
                .await
                .map_err(st)?
                .into_inner()
                .leases;
            if quiet {
                for l in list {
                    println!("{}", l.id);
                }
                return Ok(());
            }
            let mut rows = vec![vec![
                "ID".to_owned(),
                "CREATED AT".into(),
                "EXPIRES AT".into(),
                "RESOURCES".into(),
                "LABELS".into(),
            ]];
            for l in list {
                let labels: Vec<String> =
                    l.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                rows.push(vec![
                    l.id,
                    l.created_at,
                    if l.expires_at.is_empty() {
                        "-".into()
                    } else {
                        l.expires_at
                    },
                    (l.content.len() + l.snapshots.len()).to_string(),
                    labels.join(","),
                ]);
            }
            print!("{}", table(&rows));
        }
        LeasesCommand::Create { id, expires_in } => {
            let l = svc
                .create(pb::CreateLeaseRequest {
                    id: id.unwrap_or_default(),
                    labels: Default::default(),
                    expire_seconds: expires_in.as_secs(),
                })
                .await
                .map_err(st)?
                .into_inner()
                .lease
                .unwrap_or_default();
            println!("{}", l.id);
        }
        LeasesCommand::Delete { sync, ids } => {
            let mut failed = false;
            for id in ids {
                match svc
                    .delete(pb::DeleteLeaseRequest {
                        id: id.clone(),
                        sync,
                    })
                    .await
                {
                    Ok(_) => println!("{id}"),
                    Err(s) => {
                        eprintln!("rctr: {}", status_message(client.address(), &s));
                        failed = true;
                    }
                }
            }
            if failed {
                return Err(Reported.into());
            }
        }
    }
    Ok(())
}

fn platform_string(p: pb::Platform) -> String {
    if p.variant.is_empty() {
        format!("{}/{}", p.os, p.architecture)
    } else {
        format!("{}/{}/{}", p.os, p.architecture, p.variant)
    }
}

/// One blob's line in the progress display.
struct Line {
    digest: String,
    kind: String,
    state: String,
    offset: u64,
    total: u64,
}

impl Line {
    fn render(&self) -> String {
        let short = self.digest.strip_prefix("sha256:").unwrap_or(&self.digest);
        let short = &short[..short.len().min(12)];
        let what = format!("{}-{short}", self.kind);
        if self.kind == "unpack" {
            return match self.state.as_str() {
                "done" => format!(
                    "{what}: {:<11} {} of {} layers applied",
                    "done", self.offset, self.total
                ),
                s => format!("{what}: {s:<11} {} layers", self.total),
            };
        }
        match self.state.as_str() {
            "downloading" | "uploading" | "waiting" => format!(
                "{what}: {:<11} {} / {}",
                self.state,
                human_size(self.offset),
                human_size(self.total)
            ),
            "exists" => format!("{what}: {:<11} {}", "exists", human_size(self.total)),
            _ => format!("{what}: {:<11} {}", self.state, human_size(self.total)),
        }
    }
}

async fn pull(
    client: &Client,
    platform: Option<String>,
    plain_http: bool,
    user: Option<String>,
    no_unpack: bool,
    reference: String,
) -> Result<()> {
    let (username, password) = credentials(user)?;
    let started = Instant::now();
    let mut stream = client
        .images()
        .pull(pb::PullRequest {
            reference: reference.clone(),
            platform: platform.unwrap_or_default(),
            plain_http,
            username,
            password,
            no_unpack,
        })
        .await
        .map_err(|s| anyhow!(status_message(client.address(), &s)))?
        .into_inner();
    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut lines: Vec<Line> = Vec::new();
    let mut drawn = 0usize;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut last_plain: std::collections::HashMap<String, Instant> = Default::default();
    let image = loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(anyhow!("{reference}: rcd ended the pull without a result")),
            Err(s) => {
                if tty && drawn > 0 {
                    let _ = writeln!(out);
                }
                return Err(anyhow!(status_message(client.address(), &s)));
            }
        };
        match msg.event {
            Some(pb::pull_response::Event::Progress(p)) => {
                let idx = match lines
                    .iter()
                    .position(|l| l.digest == p.digest && l.kind == p.kind)
                {
                    Some(i) => i,
                    None => {
                        lines.push(Line {
                            digest: p.digest.clone(),
                            kind: p.kind.clone(),
                            state: String::new(),
                            offset: 0,
                            total: 0,
                        });
                        lines.len() - 1
                    }
                };
                let changed = lines[idx].state != p.state;
                let l = &mut lines[idx];
                l.state = p.state;
                l.offset = p.offset;
                l.total = p.total;
                if tty {
                    if changed || last_draw.elapsed() >= Duration::from_millis(100) {
                        redraw(&mut out, &lines, &mut drawn)?;
                        last_draw = Instant::now();
                    }
                } else {
                    // Plain lines: every state change, byte counts at most once a second.
                    let now = Instant::now();
                    let due = last_plain
                        .get(&l.digest)
                        .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(1));
                    if changed || due {
                        writeln!(out, "{}", l.render())?;
                        last_plain.insert(l.digest.clone(), now);
                    }
                }
            }
            Some(pb::pull_response::Event::Image(img)) => break img,
            None => {}
        }
    };
    if tty {
        redraw(&mut out, &lines, &mut drawn)?;
    }
    let target = image.target.clone().unwrap_or_default();
    if !image.snapshot.is_empty() {
        writeln!(
            out,
            "unpacked {} {}: {}",
            image
                .platform
                .clone()
                .map(platform_string)
                .unwrap_or_default(),
            image.snapshot,
            human_size(image.unpacked_size.max(0) as u64)
        )?;
    }
    writeln!(
        out,
        "elapsed: {:.1} s    total: {}",
        started.elapsed().as_secs_f64(),
        human_size(image.size.max(0) as u64)
    )?;
    writeln!(out, "{}: {}", image.name, target.digest)?;
    Ok(())
}

/// `--user USER[:PASS]`: ctr prompts for a missing password; it is read from stdin's first
/// line instead.
fn credentials(user: Option<String>) -> Result<(String, String)> {
    Ok(match user {
        None => (String::new(), String::new()),
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (u.to_owned(), p.to_owned()),
            None => {
                let mut p = String::new();
                std::io::stdin()
                    .read_line(&mut p)
                    .context("reading the password from stdin")?;
                (u, p.trim_end_matches(['\r', '\n']).to_owned())
            }
        },
    })
}

async fn export(
    client: &Client,
    platform: Option<String>,
    out: PathBuf,
    references: Vec<String>,
) -> Result<()> {
    let st = |s: tonic::Status| anyhow!(status_message(client.address(), &s));
    let mut stream = client
        .images()
        .export(pb::ExportImagesRequest {
            names: references,
            platform: platform.unwrap_or_default(),
        })
        .await
        .map_err(st)?
        .into_inner();
    // the first message (data or error) comes before the file is made: a refused export
    // leaves no file
    let first = stream.message().await.map_err(st)?;
    let to_stdout = out.as_os_str() == "-";
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?,
        ))
    };
    let result = async {
        if let Some(m) = first {
            sink.write_all(&m.data)?;
        }
        while let Some(m) = stream.message().await.map_err(st)? {
            sink.write_all(&m.data)?;
        }
        sink.flush()?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if result.is_err() && !to_stdout {
        drop(sink);
        let _ = std::fs::remove_file(&out);
    }
    result
}

async fn import(
    client: &Client,
    base_name: Option<String>,
    no_unpack: bool,
    platform: Option<String>,
    file: PathBuf,
) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let st = |s: tonic::Status| anyhow!(status_message(client.address(), &s));
    let mut input: Box<dyn tokio::io::AsyncRead + Send + Unpin> = if file.as_os_str() == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?,
        )
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let name = file.display().to_string();
    let reader = tokio::spawn(async move {
        let mut first = Some(pb::ImportImagesRequest {
            data: Vec::new(),
            base_name: base_name.unwrap_or_default(),
            no_unpack,
            platform: platform.unwrap_or_default(),
        });
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let n = input
                .read(&mut buf)
                .await
                .with_context(|| format!("reading {name}"))?;
            buf.truncate(n);
            let msg = match first.take() {
                Some(mut m) => {
                    m.data = buf;
                    m
                }
                None if n == 0 => break,
                None => pb::ImportImagesRequest {
                    data: buf,
                    ..Default::default()
                },
            };
            if tx.send(msg).await.is_err() || n == 0 {
                break;
            }
        }
        Ok::<_, anyhow::Error>(())
    });
    let result = client
        .images()
        .import(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reader.await.context("reading the archive")??;
    let r = result.map_err(st)?.into_inner();
    for i in &r.images {
        println!(
            "{}: {}",
            i.name,
            i.target.clone().unwrap_or_default().digest
        );
    }
    if r.unnamed > 0 {
        eprintln!(
            "rctr: {} image(s) without a name skipped (--base-name names OCI tags)",
            r.unnamed
        );
    }
    Ok(())
}

async fn push(
    client: &Client,
    platform: Option<String>,
    plain_http: bool,
    user: Option<String>,
    remote: String,
    local: Option<String>,
) -> Result<()> {
    let st = |s: tonic::Status| anyhow!(status_message(client.address(), &s));
    let (username, password) = credentials(user)?;
    let started = Instant::now();
    let mut stream = client
        .images()
        .push(pb::PushImageRequest {
            remote,
            local: local.unwrap_or_default(),
            platform: platform.unwrap_or_default(),
            plain_http,
            username,
            password,
        })
        .await
        .map_err(st)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    let mut states: std::collections::HashMap<String, String> = Default::default();
    loop {
        let Some(msg) = stream.message().await.map_err(st)? else {
            return Err(anyhow!("rcd ended the push without a result"));
        };
        match msg.event {
            // one line per state change of a blob
            Some(pb::push_image_response::Event::Progress(p))
                if states.get(&p.digest) != Some(&p.state) =>
            {
                states.insert(p.digest.clone(), p.state.clone());
                let l = Line {
                    digest: p.digest,
                    kind: p.kind,
                    state: p.state,
                    offset: p.offset,
                    total: p.total,
                };
                writeln!(out, "{}", l.render())?;
            }
            Some(pb::push_image_response::Event::Progress(_)) => {}
            Some(pb::push_image_response::Event::Result(r)) => {
                writeln!(
                    out,
                    "elapsed: {:.1} s    uploaded: {}    already there: {}",
                    started.elapsed().as_secs_f64(),
                    r.uploaded,
                    r.skipped
                )?;
                writeln!(out, "{}: {}", r.name, r.digest)?;
                return Ok(());
            }
            None => {}
        }
    }
}

fn redraw(out: &mut impl Write, lines: &[Line], drawn: &mut usize) -> Result<()> {
    if *drawn > 0 {
        write!(out, "\x1b[{}A", *drawn)?;
    }
    for l in lines {
        writeln!(out, "\x1b[2K{}", l.render())?;
    }
    *drawn = lines.len();
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(key: &str, parent: &str) -> pb::Snapshot {
        pb::Snapshot {
            key: key.into(),
            parent: parent.into(),
            ..Default::default()
        }
    }

    #[test]
    fn trees() {
        let list = [
            snap("b", "a"),
            snap("a", ""),
            snap("c", "b"),
            snap("d", "a"),
            snap("z", ""),
            snap("orphan", "gone"),
        ];
        assert_eq!(tree(&list), "a\n  \\_ b\n    \\_ c\n  \\_ d\norphan\nz\n");
        assert_eq!(tree(&[]), "");
        assert_eq!(titled("committed"), "Committed");
        assert_eq!(titled(""), "");
    }
}
