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
    /// Remove images (the records; blobs stay in the content store)
    #[command(alias = "rm", alias = "remove")]
    Delete {
        #[arg(required = true)]
        references: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
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
        clap_complete::generate(shell, &mut Cli::command(), "rctr", &mut std::io::stdout());
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
                reference,
            } => pull(&client, platform, plain_http, user, reference).await?,
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
                ]];
                for i in list {
                    let t = i.target.unwrap_or_default();
                    rows.push(vec![
                        i.name,
                        t.media_type,
                        t.digest,
                        human_size(i.size.max(0) as u64),
                        i.platform.map(platform_string).unwrap_or_default(),
                    ]);
                }
                print!("{}", table(&rows));
            }
            ImagesCommand::Delete { references } => {
                let mut failed = false;
                for r in references {
                    match client
                        .images()
                        .delete(pb::DeleteImageRequest { name: r.clone() })
                        .await
                    {
                        Ok(_) => println!("{r}"),
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
        match self.state.as_str() {
            "downloading" | "waiting" => format!(
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
    reference: String,
) -> Result<()> {
    let (username, password) = match user {
        None => (String::new(), String::new()),
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (u.to_owned(), p.to_owned()),
            None => {
                // ctr prompts for the password; read it from stdin's first line instead.
                let mut p = String::new();
                std::io::stdin()
                    .read_line(&mut p)
                    .context("reading the password from stdin")?;
                (u, p.trim_end_matches(['\r', '\n']).to_owned())
            }
        },
    };
    let started = Instant::now();
    let mut stream = client
        .images()
        .pull(pb::PullRequest {
            reference: reference.clone(),
            platform: platform.unwrap_or_default(),
            plain_http,
            username,
            password,
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
                let idx = match lines.iter().position(|l| l.digest == p.digest) {
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
    let target = image.target.unwrap_or_default();
    writeln!(
        out,
        "elapsed: {:.1} s    total: {}",
        started.elapsed().as_secs_f64(),
        human_size(image.size.max(0) as u64)
    )?;
    writeln!(out, "{}: {}", image.name, target.digest)?;
    Ok(())
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
