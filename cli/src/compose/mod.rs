//! `rnerd compose`: docker compose's file and commands over rcd's native API.
//!
//! [`model`] reads, interpolates and validates compose files into a [`model::Project`];
//! [`plan`] turns it into the network, volumes and containers to ask rcd for; `exec` talks
//! to rcd. Only the last one does I/O beyond reading files.

mod exec;
pub mod interpolate;
pub mod model;
pub mod plan;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The compose file names looked for, in order, in the current directory and its parents.
pub const DEFAULT_FILES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];

use crate::rnerd::{Ctx, Exit, EXIT_ERROR};

#[derive(clap::Args, Debug)]
#[command(
    about = "Run a multi-container project from a compose file",
    after_help = "Examples:\n  rnerd compose up -d\n  rnerd compose -f app.yaml -p demo ps\n  rnerd compose logs -f web\n  rnerd compose down -v"
)]
pub struct ComposeArgs {
    /// Compose file (repeat to merge several; default: compose.yaml, compose.yml,
    /// docker-compose.yml or docker-compose.yaml here or in a parent directory)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Project name (default: $COMPOSE_PROJECT_NAME, the file's `name:`, else the directory's name)
    #[arg(short = 'p', long = "project-name", value_name = "NAME")]
    pub project_name: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create and start the project's containers (and its network and volumes)
    Up(UpArgs),
    /// Stop and remove the project's containers and networks (-v: volumes too)
    Down(DownArgs),
    /// List the project's containers
    Ps(PsArgs),
    /// Show the services' output
    Logs(LogsArgs),
    /// Restart services
    Restart(StopArgs),
    /// Stop services without removing them
    Stop(StopArgs),
    /// Start stopped services
    Start(ServicesArg),
    /// Validate the file and print it normalised
    Config(ConfigArgs),
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Detached: start and return (default: follow the services' logs)
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Remove containers of services no longer in the file
    #[arg(long)]
    pub remove_orphans: bool,
    /// Recreate containers even if their configuration did not change
    #[arg(long)]
    pub force_recreate: bool,
    /// Seconds to wait for a container to stop before killing it
    #[arg(short = 't', long, default_value_t = 10)]
    pub timeout: u64,
    /// Services to start (with what they depend on); default all
    pub services: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct DownArgs {
    /// Also remove the named volumes of the file and the containers' anonymous volumes
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Remove containers of services no longer in the file
    #[arg(long)]
    pub remove_orphans: bool,
    /// Seconds to wait for a container to stop before killing it
    #[arg(short = 't', long, default_value_t = 10)]
    pub timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// Show stopped containers too
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only container ids
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Only the services' names
    #[arg(long)]
    pub services: bool,
    /// Output: table or json
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Services to list; default all
    #[arg(value_name = "SERVICE")]
    pub names: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// Follow: keep printing until the containers stop (Ctrl-C to leave)
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines of each container ("all" for everything)
    #[arg(long, default_value = "all")]
    pub tail: String,
    /// Show timestamps
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// No "service-1 | " prefix
    #[arg(long)]
    pub no_log_prefix: bool,
    /// Services; default all
    pub services: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait for a container to stop before killing it
    #[arg(short = 't', long, default_value_t = 10)]
    pub timeout: u64,
    /// Services; default all
    pub services: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct ServicesArg {
    /// Services; default all
    pub services: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// Only validate: print nothing
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Print the services' names, one a line
    #[arg(long)]
    pub services: bool,
    /// Print the volumes' names, one a line
    #[arg(long)]
    pub volumes: bool,
}

/// Runs `rnerd compose ...` with rnerd's connection and global flags. Errors are rnerd's
/// (printed by it, exit code 125); a non-zero exit without an error is [`Exit`].
/// `compose config` only reads files: it needs no daemon (rnerd calls it before connecting).
/// `None` when `args` is another subcommand.
pub fn offline(args: &ComposeArgs) -> Option<anyhow::Result<()>> {
    matches!(args.command, Command::Config(_)).then(|| config(args))
}

fn config(args: &ComposeArgs) -> anyhow::Result<()> {
    let (project, warnings) = load_project(&args.files, args.project_name.clone())?;
    for w in &warnings {
        eprintln!("rnerd: warning: {w}");
    }
    if let Command::Config(c) = &args.command {
        if c.services {
            for s in project.services.keys() {
                println!("{s}");
            }
        } else if c.volumes {
            for v in project.volumes.keys() {
                println!("{v}");
            }
        } else if !c.quiet {
            print!("{}", serde_norway::to_string(&project)?);
        }
    }
    Ok(())
}

pub async fn main(ctx: &Ctx, args: ComposeArgs) -> anyhow::Result<()> {
    if let Some(r) = offline(&args) {
        return r;
    }
    let (project, warnings) = load_project(&args.files, args.project_name.clone())?;
    for w in &warnings {
        eprintln!("rnerd: warning: {w}");
    }
    let plain_http = project
        .services
        .values()
        .filter(|s| ctx.plain_http(&s.image))
        .map(|s| s.image.clone())
        .collect();
    let ex = exec::Exec::new(ctx.client.clone(), project, plain_http);
    let code = match args.command {
        Command::Up(a) => ex.up(&a).await,
        Command::Down(a) => ex.down(&a).await,
        Command::Ps(a) => ex.ps(&a).await,
        Command::Logs(a) => ex.logs(&a).await,
        Command::Restart(a) => ex.restart(&a).await,
        Command::Stop(a) => ex.stop(&a).await,
        Command::Start(a) => ex.start(&a.services).await,
        Command::Config(_) => unreachable!("handled above"),
    }?;
    match u8::try_from(code) {
        Ok(0) => Ok(()),
        Ok(c) => Err(Exit(c).into()),
        Err(_) => Err(Exit(EXIT_ERROR).into()),
    }
}

/// Finds the files (`-f`, else the default names here or above), reads them with the `.env`
/// of the project directory and the process environment, and validates them.
pub fn load_project(
    files: &[PathBuf],
    project_name: Option<String>,
) -> anyhow::Result<(model::Project, Vec<String>)> {
    let cwd = std::env::current_dir()?;
    let paths: Vec<PathBuf> = if files.is_empty() {
        vec![find_default(&cwd)?]
    } else {
        files.iter().map(|f| cwd.join(f)).collect()
    };
    let mut sources = Vec::new();
    for p in &paths {
        let text = std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("reading compose file {}: {}", p.display(), io_msg(&e)))?;
        sources.push(model::Source {
            path: p.clone(),
            text,
        });
    }
    let dir = paths[0].parent().unwrap_or(Path::new("/"));
    let mut env = BTreeMap::new();
    let dotenv = dir.join(".env");
    match std::fs::read_to_string(&dotenv) {
        Ok(text) => {
            let process = |k: &str| std::env::var(k).ok();
            for (k, v) in model::parse_env_file(&text, &process)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dotenv.display()))?
            {
                if let Some(v) = v {
                    env.insert(k, v);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("reading {}: {}", dotenv.display(), io_msg(&e)),
    }
    for (k, v) in std::env::vars_os() {
        if let (Ok(k), Ok(v)) = (k.into_string(), v.into_string()) {
            env.insert(k, v);
        }
    }
    let read = |p: &Path| std::fs::read_to_string(p);
    let opts = model::Options {
        project_name,
        env: &env,
        read_file: &read,
        home: std::env::var_os("HOME").map(PathBuf::from),
    };
    Ok(model::load(&sources, &opts)?)
}

fn io_msg(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        _ => e.to_string(),
    }
}

fn find_default(cwd: &Path) -> anyhow::Result<PathBuf> {
    for dir in cwd.ancestors() {
        for name in DEFAULT_FILES {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    anyhow::bail!(
        "no compose file found in {} or its parents (looked for {}): give one with -f",
        cwd.display(),
        DEFAULT_FILES.join(", ")
    )
}
