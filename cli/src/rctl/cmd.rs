//! The commands: crictl's names, flags and output shapes.

use super::config::{ConfigFile, DEFAULT_CONFIG};
use super::conn::{Cri, Endpoints, DEFAULT_ENDPOINT};
use super::input::read_file;
use super::logs;
use super::output::{
    ago, human_size, info_json, parse_labels, print_value, table, to_json, trunc_id, Format, Kind,
};
use super::stream::{self, Io, Transport};
use crate::client::parse_duration;
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use k8s_cri::v1 as cri;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "rctl",
    version,
    about = "crictl's commands over CRI v1 gRPC: works with any CRI runtime (rcd, containerd, CRI-O)",
    after_help = "Endpoint: -r, else $CONTAINER_RUNTIME_ENDPOINT, else runtime-endpoint in the config file, else rcd's socket (unix:///run/rcd/rcd.sock)."
)]
pub struct Cli {
    /// Runtime endpoint (unix:///path/to/socket)
    #[arg(
        short = 'r',
        long = "runtime-endpoint",
        env = "CONTAINER_RUNTIME_ENDPOINT"
    )]
    pub runtime_endpoint: Option<String>,
    /// Image endpoint (default: the runtime endpoint)
    #[arg(short = 'i', long = "image-endpoint", env = "IMAGE_SERVICE_ENDPOINT")]
    pub image_endpoint: Option<String>,
    /// Timeout of queries (2s, 500ms, 1m; default 2s or `timeout` in the config file)
    #[arg(short = 't', long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Debug logging to stderr
    #[arg(short = 'D', long)]
    pub debug: bool,
    /// Config file (default /etc/crictl.yaml)
    #[arg(short = 'c', long, env = "CRI_CONFIG_FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Debug, Clone, Default)]
pub struct OutFlags {
    /// Output format: table, json or yaml
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Subcommand, Debug)]
// each subcommand's arguments are built only when it runs: the whole tree costs ~1 ms
#[command(defer = true)]
pub enum Cmd {
    /// Runtime name and version
    Version,
    /// Runtime status and information (CRI Status, verbose)
    Info {
        #[arg(short = 'o', long = "output", value_enum, default_value = "json")]
        output: Format,
    },
    /// Runtime configuration (cgroup driver)
    RuntimeConfig,
    /// Pull an image
    Pull(PullArgs),
    /// List images
    #[command(alias = "img")]
    Images(ImagesArgs),
    /// Image status
    Inspecti {
        #[arg(short = 'o', long = "output", value_enum, default_value = "json")]
        output: Format,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove images
    Rmi {
        /// Remove all images
        #[arg(short = 'a', long)]
        all: bool,
        /// Remove all images not used by any container
        #[arg(short = 'q', long)]
        prune: bool,
        images: Vec<String>,
    },
    /// Image filesystem usage
    Imagefsinfo {
        #[arg(short = 'o', long = "output", value_enum, default_value = "json")]
        output: Format,
    },
    /// Run a pod sandbox from a config file (JSON or YAML)
    Runp {
        /// Runtime handler
        #[arg(short = 'r', long)]
        runtime: Option<String>,
        config: PathBuf,
    },
    /// Stop pod sandboxes
    Stopp {
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Remove pod sandboxes
    Rmp {
        /// Stop running pods first
        #[arg(short = 'f', long)]
        force: bool,
        /// Remove all pods
        #[arg(short = 'a', long)]
        all: bool,
        pods: Vec<String>,
    },
    /// List pod sandboxes
    Pods(PodsArgs),
    /// Pod sandbox status
    Inspectp {
        #[arg(short = 'o', long = "output", value_enum, default_value = "json")]
        output: Format,
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Create a container in a pod: POD-ID CONTAINER-CONFIG POD-CONFIG
    Create(CreateArgs),
    /// Run a container in a new pod: CONTAINER-CONFIG POD-CONFIG
    Run(RunArgs),
    /// Start created containers
    Start {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop running containers
    Stop {
        /// Seconds to wait before killing (0: the runtime's default)
        #[arg(short = 't', long, default_value_t = 0)]
        timeout: i64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers
    Rm {
        /// Stop running containers first
        #[arg(short = 'f', long)]
        force: bool,
        /// Remove all containers
        #[arg(short = 'a', long)]
        all: bool,
        containers: Vec<String>,
    },
    /// List containers
    Ps(PsArgs),
    /// Container status
    Inspect {
        #[arg(short = 'o', long = "output", value_enum, default_value = "json")]
        output: Format,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Print a container's logs
    Logs(LogsArgs),
    /// Run a command in a running container
    Exec(ExecArgs),
    /// Attach to a running container
    Attach {
        #[arg(short = 'i', long)]
        stdin: bool,
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(long, value_enum, default_value = "spdy")]
        transport: Transport,
        /// Connect to this streaming URL instead of asking the runtime for one (debugging)
        #[arg(long, hide = true)]
        url: Option<String>,
        container: String,
    },
    /// Forward local ports to a pod: POD [LOCAL:]REMOTE...
    PortForward {
        #[arg(long, value_enum, default_value = "spdy")]
        transport: Transport,
        /// Connect to this streaming URL instead of asking the runtime for one (debugging)
        #[arg(long, hide = true)]
        url: Option<String>,
        pod: String,
        #[arg(required = true)]
        ports: Vec<String>,
    },
    /// Container resource usage
    Stats(StatsArgs),
    /// Pod resource usage
    Statsp(StatspArgs),
    /// Update a container's resources
    Update(UpdateArgs),
    /// Stream container events
    Events {
        #[arg(short = 'o', long = "output", value_enum, default_value = "json")]
        output: Format,
    },
    /// Get and set the config file's options
    Config(ConfigArgs),
    /// Shell completion script
    Completion {
        #[arg(value_enum, default_value = "bash")]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// USERNAME[:PASSWORD] for the registry
    #[arg(long)]
    pub creds: Option<String>,
    /// base64 of USERNAME:PASSWORD
    #[arg(long)]
    pub auth: Option<String>,
    /// Pod config (JSON or YAML) the pull is for
    #[arg(short = 'p', long = "pod-config")]
    pub pod_config: Option<PathBuf>,
    pub image: String,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[arg(short = 'v', long)]
    pub verbose: bool,
    #[command(flatten)]
    pub out: OutFlags,
    #[arg(long)]
    pub digests: bool,
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// dangling=true|false, reference=NAME
    #[arg(short = 'f', long = "filter")]
    pub filter: Vec<String>,
    pub image: Option<String>,
}

#[derive(Args, Debug)]
pub struct PodsArgs {
    #[arg(long)]
    pub id: Option<String>,
    /// Regular expression on the pod name
    #[arg(long)]
    pub name: Option<String>,
    /// Regular expression on the pod namespace
    #[arg(long)]
    pub namespace: Option<String>,
    /// ready or notready
    #[arg(short = 's', long)]
    pub state: Option<String>,
    #[arg(long)]
    pub label: Vec<String>,
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[arg(short = 'v', long)]
    pub verbose: bool,
    #[command(flatten)]
    pub out: OutFlags,
    /// Only the latest pod
    #[arg(short = 'l', long)]
    pub latest: bool,
    /// Only the last N pods
    #[arg(short = 'n', long)]
    pub last: Option<usize>,
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[arg(long = "no-pull", conflicts_with = "with_pull")]
    pub no_pull: bool,
    #[arg(long = "with-pull")]
    pub with_pull: bool,
    #[arg(long)]
    pub creds: Option<String>,
    #[arg(long)]
    pub auth: Option<String>,
    pub pod: String,
    pub container_config: PathBuf,
    pub pod_config: PathBuf,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[arg(long = "no-pull")]
    pub no_pull: bool,
    #[arg(short = 'r', long)]
    pub runtime: Option<String>,
    #[arg(long)]
    pub creds: Option<String>,
    #[arg(long)]
    pub auth: Option<String>,
    pub container_config: PathBuf,
    pub pod_config: PathBuf,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    #[arg(short = 'a', long)]
    pub all: bool,
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[command(flatten)]
    pub out: OutFlags,
    #[arg(short = 'l', long)]
    pub latest: bool,
    #[arg(short = 'n', long)]
    pub last: Option<usize>,
    #[arg(long)]
    pub label: Vec<String>,
    /// Regular expression on the container name
    #[arg(long)]
    pub name: Option<String>,
    #[arg(short = 'p', long)]
    pub pod: Option<String>,
    #[arg(long)]
    pub image: Option<String>,
    /// created, running, exited, unknown
    #[arg(short = 's', long)]
    pub state: Option<String>,
    #[arg(long)]
    pub id: Option<String>,
    #[arg(short = 'v', long)]
    pub verbose: bool,
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Lines from the end (-1: all)
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    /// RFC 3339 time or a duration (10s, 5m)
    #[arg(long)]
    pub since: Option<String>,
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// The previous instance's log
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Ask the runtime to reopen the log file (after rotation) instead of printing
    #[arg(short = 'r', long)]
    pub reopen: bool,
    #[arg(long = "limit-bytes")]
    pub limit_bytes: Option<u64>,
    /// stdout or stderr only
    #[arg(short = 's', long)]
    pub stream: Option<String>,
    pub container: String,
}

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Run synchronously (ExecSync), printing the output when the command ends
    #[arg(short = 's', long)]
    pub sync: bool,
    /// Seconds before a synchronous exec is stopped (0: none)
    #[arg(long, default_value_t = 0)]
    pub timeout: i64,
    #[arg(short = 'i', long)]
    pub interactive: bool,
    #[arg(short = 't', long)]
    pub tty: bool,
    #[arg(long, value_enum, default_value = "spdy")]
    pub transport: Transport,
    /// Connect to this streaming URL instead of asking the runtime for one (debugging)
    #[arg(long, hide = true)]
    pub url: Option<String>,
    pub container: String,
    #[arg(required = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    #[arg(short = 'a', long)]
    pub all: bool,
    #[arg(long)]
    pub id: Option<String>,
    #[arg(short = 'p', long)]
    pub pod: Option<String>,
    #[arg(long)]
    pub label: Vec<String>,
    #[command(flatten)]
    pub out: OutFlags,
    pub container: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatspArgs {
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long)]
    pub label: Vec<String>,
    #[command(flatten)]
    pub out: OutFlags,
    pub pod: Option<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<i64>,
    #[arg(long = "cpu-quota")]
    pub cpu_quota: Option<i64>,
    #[arg(long = "cpu-share")]
    pub cpu_share: Option<i64>,
    /// Bytes, or with a k/m/g suffix
    #[arg(long, value_parser = parse_bytes)]
    pub memory: Option<i64>,
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Print the value of KEY
    #[arg(long)]
    pub get: Option<String>,
    /// KEY=VALUE[,KEY=VALUE...]
    #[arg(long)]
    pub set: Vec<String>,
    /// Print every option
    #[arg(long)]
    pub list: bool,
    /// KEY VALUE, as `--set KEY=VALUE`
    pub args: Vec<String>,
}

/// `64m`, `1g`, `1048576`.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: i64 = match c.to_ascii_lowercase() {
                'b' => 1,
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                _ => return Err(format!("invalid size {s:?} (e.g. 1048576, 64m, 1g)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("invalid size {s:?} (e.g. 1048576, 64m, 1g)"))
}

/// What the config file and flags settle on.
pub struct Settings {
    pub config: ConfigFile,
    pub endpoints: Endpoints,
    pub timeout: Duration,
}

pub fn settings(cli: &Cli) -> Result<Settings> {
    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    // `config --set` may create the file.
    let must_exist = explicit && !matches!(cli.cmd, Cmd::Config(_));
    let config = ConfigFile::load(&path, must_exist)?;
    let (runtime, defaulted) = match cli
        .runtime_endpoint
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| config.str("runtime-endpoint"))
    {
        Some(r) => (r, false),
        None => (DEFAULT_ENDPOINT.to_owned(), true),
    };
    let image = cli
        .image_endpoint
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| config.str("image-endpoint"))
        .unwrap_or_else(|| runtime.clone());
    let timeout = cli
        .timeout
        .or_else(|| {
            config
                .int("timeout")
                .filter(|t| *t > 0)
                .map(|t| Duration::from_secs(t as u64))
        })
        .unwrap_or(Duration::from_secs(2));
    Ok(Settings {
        config,
        endpoints: Endpoints {
            runtime,
            image,
            defaulted,
        },
        timeout,
    })
}

/// Runs the command; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    let s = settings(&cli)?;
    if let Cmd::Config(a) = &cli.cmd {
        return config_cmd(s.config, a);
    }
    if let Cmd::Completion { shell } = &cli.cmd {
        use clap::CommandFactory;
        rcd_cli::print_completions(*shell, Cli::command(), "rctl");
        return Ok(0);
    }
    let c = Cri::new(s.endpoints.clone(), s.timeout)?;
    match cli.cmd {
        Cmd::Version => version(&c).await,
        Cmd::Info { output } => info(&c, output).await,
        Cmd::RuntimeConfig => runtime_config(&c).await,
        Cmd::Pull(a) => pull(&c, &a).await,
        Cmd::Images(a) => images(&c, &a).await,
        Cmd::Inspecti { output, images } => inspecti(&c, output, &images).await,
        Cmd::Rmi { all, prune, images } => rmi(&c, all, prune, &images).await,
        Cmd::Imagefsinfo { output } => imagefsinfo(&c, output).await,
        Cmd::Runp { runtime, config } => runp(&c, runtime, &config).await,
        Cmd::Stopp { pods } => stopp(&c, &pods).await,
        Cmd::Rmp { force, all, pods } => rmp(&c, force, all, &pods).await,
        Cmd::Pods(a) => pods(&c, &a).await,
        Cmd::Inspectp { output, pods } => inspectp(&c, output, &pods).await,
        Cmd::Create(a) => {
            let pull = if a.no_pull {
                false
            } else {
                a.with_pull || s.config.bool("pull-image-on-create")
            };
            let id = create(
                &c,
                &a.pod,
                &a.container_config,
                &a.pod_config,
                pull,
                auth(a.creds.as_deref(), a.auth.as_deref())?,
            )
            .await?;
            println!("{id}");
            Ok(0)
        }
        Cmd::Run(a) => {
            let pull = !(a.no_pull || s.config.bool("disable-pull-on-run"));
            run_cmd(&c, &a, pull).await
        }
        Cmd::Start { containers } => start(&c, &containers).await,
        Cmd::Stop {
            timeout,
            containers,
        } => stop(&c, timeout, &containers).await,
        Cmd::Rm {
            force,
            all,
            containers,
        } => rm(&c, force, all, &containers).await,
        Cmd::Ps(a) => ps(&c, &a).await,
        Cmd::Inspect { output, containers } => inspect(&c, output, &containers).await,
        Cmd::Logs(a) => logs_cmd(&c, &a).await,
        Cmd::Exec(a) => exec(&c, &a).await,
        Cmd::Attach {
            stdin,
            tty,
            transport,
            url,
            container,
        } => attach(&c, stdin, tty, transport, url, &container).await,
        Cmd::PortForward {
            transport,
            url,
            pod,
            ports,
        } => port_forward(&c, transport, url, &pod, &ports).await,
        Cmd::Stats(a) => stats(&c, &a).await,
        Cmd::Statsp(a) => statsp(&c, &a).await,
        Cmd::Update(a) => update(&c, &a).await,
        Cmd::Events { output } => events(&c, output).await,
        Cmd::Config(_) | Cmd::Completion { .. } => unreachable!(),
    }
}

fn config_cmd(mut cfg: ConfigFile, a: &ConfigArgs) -> Result<i32> {
    if let Some(k) = &a.get {
        println!("{}", cfg.get(k)?);
        return Ok(0);
    }
    if a.list {
        let rows: Vec<Vec<String>> = std::iter::once(vec!["KEY".into(), "VALUE".into()])
            .chain(cfg.list().into_iter().map(|(k, v)| vec![k, v]))
            .collect();
        print!("{}", table(&rows));
        return Ok(0);
    }
    let mut pairs: Vec<(String, String)> = vec![];
    for s in &a.set {
        for kv in s.split(',') {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("invalid --set {kv:?}: expected key=value"))?;
            pairs.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    match a.args.as_slice() {
        [] => {}
        [k] => {
            println!("{}", cfg.get(k)?);
            return Ok(0);
        }
        [k, v] => pairs.push((k.clone(), v.clone())),
        _ => bail!("config takes KEY [VALUE]"),
    }
    if pairs.is_empty() {
        bail!("config needs --get KEY, --set KEY=VALUE, --list or KEY [VALUE]");
    }
    for (k, v) in pairs {
        cfg.set(&k, &v)?;
    }
    cfg.save()?;
    Ok(0)
}

async fn version(c: &Cri) -> Result<i32> {
    let v = c
        .runtime
        .clone()
        .version(c.req(cri::VersionRequest {
            version: "v1".into(),
        }))
        .await
        .map_err(|e| c.rt_err("version", e))?
        .into_inner();
    println!("Version:  {}", v.version);
    println!("RuntimeName:  {}", v.runtime_name);
    println!("RuntimeVersion:  {}", v.runtime_version);
    println!("RuntimeApiVersion:  {}", v.runtime_api_version);
    Ok(0)
}

async fn info(c: &Cri, output: Format) -> Result<i32> {
    let r = c
        .runtime
        .clone()
        .status(c.req(cri::StatusRequest { verbose: true }))
        .await
        .map_err(|e| c.rt_err("status", e))?
        .into_inner();
    let mut m = serde_json::Map::new();
    m.insert("status".into(), to_json(&r.status, Kind::Other));
    if !r.runtime_handlers.is_empty() {
        m.insert(
            "runtimeHandlers".into(),
            to_json(&r.runtime_handlers, Kind::Other),
        );
    }
    m.extend(info_json(&r.info));
    print_value(&Value::Object(m), output)?;
    Ok(0)
}

async fn runtime_config(c: &Cri) -> Result<i32> {
    let r = c
        .runtime
        .clone()
        .runtime_config(c.req(cri::RuntimeConfigRequest {}))
        .await
        .map_err(|e| c.rt_err("runtime config", e))?
        .into_inner();
    let driver = r
        .linux
        .map(|l| {
            cri::CgroupDriver::try_from(l.cgroup_driver)
                .map(|d| d.as_str_name().to_owned())
                .unwrap_or_else(|_| l.cgroup_driver.to_string())
        })
        .unwrap_or_default();
    println!("cgroup driver: {driver}");
    Ok(0)
}

fn auth(creds: Option<&str>, auth: Option<&str>) -> Result<Option<cri::AuthConfig>> {
    if creds.is_some() && auth.is_some() {
        bail!("--creds and --auth cannot be used together");
    }
    if let Some(c) = creds {
        let (u, p) = c.split_once(':').unwrap_or((c, ""));
        if u.is_empty() {
            bail!("invalid --creds: expected USERNAME[:PASSWORD]");
        }
        return Ok(Some(cri::AuthConfig {
            username: u.into(),
            password: p.into(),
            ..Default::default()
        }));
    }
    if let Some(a) = auth {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(a)
            .map_err(|_| anyhow::anyhow!("invalid --auth: not base64 of USERNAME:PASSWORD"))?;
        return Ok(Some(cri::AuthConfig {
            auth: a.into(),
            ..Default::default()
        }));
    }
    Ok(None)
}

async fn pull_image(
    c: &Cri,
    image: &str,
    auth: Option<cri::AuthConfig>,
    sandbox: Option<cri::PodSandboxConfig>,
) -> Result<String> {
    // No deadline: pulls take as long as the image takes.
    let r = c
        .images
        .clone()
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth,
            sandbox_config: sandbox,
        })
        .await
        .map_err(|e| c.img_err(&format!("pulling image {image}"), e))?;
    Ok(r.into_inner().image_ref)
}

async fn pull(c: &Cri, a: &PullArgs) -> Result<i32> {
    let sandbox = match &a.pod_config {
        Some(p) => Some(read_file::<cri::PodSandboxConfig>(p, "pod")?),
        None => None,
    };
    let r = pull_image(
        c,
        &a.image,
        auth(a.creds.as_deref(), a.auth.as_deref())?,
        sandbox,
    )
    .await?;
    println!("Image is up to date for {r}");
    Ok(0)
}

async fn list_images(c: &Cri, image: Option<&str>) -> Result<Vec<cri::Image>> {
    Ok(c.images
        .clone()
        .list_images(c.req(cri::ListImagesRequest {
            filter: image.map(|i| cri::ImageFilter {
                image: Some(cri::ImageSpec {
                    image: i.into(),
                    ..Default::default()
                }),
            }),
        }))
        .await
        .map_err(|e| c.img_err("listing images", e))?
        .into_inner()
        .images)
}

/// `repo:tag` → (repo, tag), the tag after the last `/`.
fn split_tag(s: &str) -> (String, String) {
    let slash = s.rfind('/').map_or(0, |i| i + 1);
    match s[slash..].rfind(':') {
        Some(i) => (s[..slash + i].to_owned(), s[slash + i + 1..].to_owned()),
        None => (s.to_owned(), "<none>".into()),
    }
}

async fn images(c: &Cri, a: &ImagesArgs) -> Result<i32> {
    let mut imgs = list_images(c, a.image.as_deref()).await?;
    for f in &a.filter {
        let (k, v) = f
            .split_once('=')
            .with_context(|| format!("invalid filter {f:?}: expected key=value"))?;
        match k {
            "dangling" => {
                let want: bool = v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("dangling filter takes true or false"))?;
                imgs.retain(|i| i.repo_tags.is_empty() == want);
            }
            "reference" => {
                imgs.retain(|i| i.repo_tags.iter().any(|t| t.contains(v)));
            }
            _ => bail!("unknown image filter {k:?} (known: dangling, reference)"),
        }
    }
    imgs.sort_by(|a, b| a.repo_tags.cmp(&b.repo_tags));
    if a.quiet {
        for i in &imgs {
            println!("{}", i.id);
        }
        return Ok(0);
    }
    match a.out.output {
        Format::Json | Format::Yaml => {
            return print_value(
                &json!({"images": to_json(&imgs, Kind::Other)}),
                a.out.output,
            )
            .map(|_| 0)
        }
        Format::Table => {}
    }
    if a.verbose {
        for i in &imgs {
            println!("ID: {}", i.id);
            for t in &i.repo_tags {
                println!("RepoTags: {t}");
            }
            for d in &i.repo_digests {
                println!("RepoDigests: {d}");
            }
            println!("Size: {}", i.size);
            if let Some(u) = &i.uid {
                println!("Uid: value:{}", u.value);
            }
            if !i.username.is_empty() {
                println!("Username: {}", i.username);
            }
            println!();
        }
        return Ok(0);
    }
    let mut head = vec!["IMAGE".to_owned(), "TAG".into()];
    if a.digests {
        head.push("DIGEST".into());
    }
    head.extend(["IMAGE ID".into(), "SIZE".into()]);
    let mut rows = vec![head];
    for i in &imgs {
        let digest = i
            .repo_digests
            .first()
            .and_then(|d| d.split_once('@'))
            .map(|(_, d)| trunc_id(d, a.no_trunc))
            .unwrap_or_else(|| "<none>".into());
        let names: Vec<(String, String)> = if i.repo_tags.is_empty() {
            let repo = i
                .repo_digests
                .first()
                .and_then(|d| d.split_once('@'))
                .map_or("<none>".to_owned(), |(r, _)| r.to_owned());
            vec![(repo, "<none>".into())]
        } else {
            i.repo_tags.iter().map(|t| split_tag(t)).collect()
        };
        for (repo, tag) in names {
            let mut r = vec![repo, tag];
            if a.digests {
                r.push(digest.clone());
            }
            r.push(trunc_id(&i.id, a.no_trunc));
            r.push(human_size(i.size));
            rows.push(r);
        }
    }
    print!("{}", table(&rows));
    Ok(0)
}

async fn image_status(c: &Cri, image: &str, verbose: bool) -> Result<cri::ImageStatusResponse> {
    Ok(c.images
        .clone()
        .image_status(c.req(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose,
        }))
        .await
        .map_err(|e| c.img_err(&format!("image status of {image}"), e))?
        .into_inner())
}

async fn inspecti(c: &Cri, output: Format, images: &[String]) -> Result<i32> {
    for i in images {
        let r = image_status(c, i, true).await?;
        let Some(img) = r.image else {
            bail!("no such image {i:?}");
        };
        let mut m = serde_json::Map::new();
        m.insert("status".into(), to_json(&img, Kind::Other));
        m.insert("info".into(), Value::Object(info_json(&r.info)));
        print_value(&Value::Object(m), output)?;
    }
    Ok(0)
}

async fn rmi(c: &Cri, all: bool, prune: bool, images: &[String]) -> Result<i32> {
    let mut targets: Vec<(String, String)> = vec![];
    if all || prune {
        let used: std::collections::HashSet<String> = if prune {
            list_containers(c, cri::ContainerFilter::default())
                .await?
                .into_iter()
                .flat_map(|ct| [ct.image_ref, ct.image_id])
                .collect()
        } else {
            Default::default()
        };
        for i in list_images(c, None).await? {
            if prune && used.contains(&i.id) {
                continue;
            }
            let name = i.repo_tags.first().cloned().unwrap_or_else(|| i.id.clone());
            targets.push((i.id.clone(), name));
        }
    } else if images.is_empty() {
        bail!("rmi needs image IDs or names, -a or --prune");
    } else {
        for i in images {
            let r = image_status(c, i, false).await?;
            let Some(img) = r.image else {
                bail!("no such image {i:?}");
            };
            targets.push((img.id, i.clone()));
        }
    }
    let mut failed = false;
    for (id, name) in targets {
        let r = c
            .images
            .clone()
            .remove_image(c.req_long(
                cri::RemoveImageRequest {
                    image: Some(cri::ImageSpec {
                        image: id.clone(),
                        ..Default::default()
                    }),
                },
                Duration::ZERO,
            ))
            .await;
        match r {
            Ok(_) => println!("Deleted: {name}"),
            Err(e) => {
                eprintln!(
                    "rctl: {:#}",
                    c.img_err(&format!("removing image {name}"), e)
                );
                failed = true;
            }
        }
    }
    Ok(i32::from(failed))
}

async fn imagefsinfo(c: &Cri, output: Format) -> Result<i32> {
    let r = c
        .images
        .clone()
        .image_fs_info(c.req(cri::ImageFsInfoRequest {}))
        .await
        .map_err(|e| c.img_err("image filesystem info", e))?
        .into_inner();
    print_value(&json!({"status": to_json(&r, Kind::Other)}), output)?;
    Ok(0)
}

async fn runp(c: &Cri, runtime: Option<String>, path: &Path) -> Result<i32> {
    let cfg = read_file::<cri::PodSandboxConfig>(path, "pod")?;
    let id = run_pod(c, cfg, runtime).await?;
    println!("{id}");
    Ok(0)
}

async fn run_pod(c: &Cri, cfg: cri::PodSandboxConfig, runtime: Option<String>) -> Result<String> {
    Ok(c.runtime
        .clone()
        .run_pod_sandbox(c.req_long(
            cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: runtime.unwrap_or_default(),
            },
            Duration::ZERO,
        ))
        .await
        .map_err(|e| c.rt_err("running pod sandbox", e))?
        .into_inner()
        .pod_sandbox_id)
}

async fn stopp(c: &Cri, pods: &[String]) -> Result<i32> {
    for p in pods {
        c.runtime
            .clone()
            .stop_pod_sandbox(c.req_long(
                cri::StopPodSandboxRequest {
                    pod_sandbox_id: p.clone(),
                },
                Duration::ZERO,
            ))
            .await
            .map_err(|e| c.rt_err(&format!("stopping pod sandbox {p}"), e))?;
        println!("Stopped sandbox {p}");
    }
    Ok(0)
}

async fn list_pods(c: &Cri, filter: cri::PodSandboxFilter) -> Result<Vec<cri::PodSandbox>> {
    Ok(c.runtime
        .clone()
        .list_pod_sandbox(c.req(cri::ListPodSandboxRequest {
            filter: Some(filter),
        }))
        .await
        .map_err(|e| c.rt_err("listing pod sandboxes", e))?
        .into_inner()
        .items)
}

async fn rmp(c: &Cri, force: bool, all: bool, pods: &[String]) -> Result<i32> {
    let ids: Vec<String> = if all {
        list_pods(c, Default::default())
            .await?
            .into_iter()
            .map(|p| p.id)
            .collect()
    } else if pods.is_empty() {
        bail!("rmp needs pod IDs or -a");
    } else {
        pods.to_vec()
    };
    let mut failed = false;
    for id in ids {
        let r = async {
            let status = pod_status(c, &id, false).await?;
            let ready = status
                .status
                .as_ref()
                .is_some_and(|s| s.state == cri::PodSandboxState::SandboxReady as i32);
            if ready {
                if !force {
                    bail!("pod sandbox {id} is running: stop it first or use -f");
                }
                c.runtime
                    .clone()
                    .stop_pod_sandbox(c.req_long(
                        cri::StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        },
                        Duration::ZERO,
                    ))
                    .await
                    .map_err(|e| c.rt_err(&format!("stopping pod sandbox {id}"), e))?;
            }
            c.runtime
                .clone()
                .remove_pod_sandbox(c.req_long(
                    cri::RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    },
                    Duration::ZERO,
                ))
                .await
                .map_err(|e| c.rt_err(&format!("removing pod sandbox {id}"), e))?;
            println!("Removed sandbox {id}");
            Ok(())
        }
        .await;
        if let Err(e) = r {
            eprintln!("rctl: {e:#}");
            failed = true;
        }
    }
    Ok(i32::from(failed))
}

fn pod_state_name(s: i32) -> &'static str {
    match cri::PodSandboxState::try_from(s) {
        Ok(cri::PodSandboxState::SandboxReady) => "Ready",
        Ok(cri::PodSandboxState::SandboxNotready) => "NotReady",
        Err(_) => "Unknown",
    }
}

fn ctr_state_name(s: i32) -> &'static str {
    match cri::ContainerState::try_from(s) {
        Ok(cri::ContainerState::ContainerCreated) => "Created",
        Ok(cri::ContainerState::ContainerRunning) => "Running",
        Ok(cri::ContainerState::ContainerExited) => "Exited",
        _ => "Unknown",
    }
}

fn regex(s: &Option<String>, what: &str) -> Result<Option<regex::Regex>> {
    s.as_deref()
        .map(|r| {
            regex::Regex::new(r).with_context(|| format!("invalid {what} regular expression {r:?}"))
        })
        .transpose()
}

async fn pods(c: &Cri, a: &PodsArgs) -> Result<i32> {
    let state = match a.state.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("ready") => Some(cri::PodSandboxState::SandboxReady),
        Some("notready") => Some(cri::PodSandboxState::SandboxNotready),
        Some(s) => bail!("invalid pod state {s:?}: ready or notready"),
    };
    let filter = cri::PodSandboxFilter {
        id: a.id.clone().unwrap_or_default(),
        state: state.map(|s| cri::PodSandboxStateValue { state: s as i32 }),
        label_selector: parse_labels(&a.label)?,
    };
    let name = regex(&a.name, "name")?;
    let ns = regex(&a.namespace, "namespace")?;
    let mut items = list_pods(c, filter).await?;
    items.retain(|p| {
        let md = p.metadata.clone().unwrap_or_default();
        name.as_ref().is_none_or(|r| r.is_match(&md.name))
            && ns.as_ref().is_none_or(|r| r.is_match(&md.namespace))
    });
    items.sort_by_key(|i| std::cmp::Reverse(i.created_at));
    let keep = if a.latest { Some(1) } else { a.last };
    if let Some(n) = keep {
        items.truncate(n);
    }
    if a.quiet {
        for p in &items {
            println!("{}", p.id);
        }
        return Ok(0);
    }
    if a.out.output != Format::Table {
        print_value(&json!({"items": to_json(&items, Kind::Pod)}), a.out.output)?;
        return Ok(0);
    }
    if a.verbose {
        for p in &items {
            let md = p.metadata.clone().unwrap_or_default();
            println!("ID: {}", p.id);
            println!("Name: {}", md.name);
            println!("UID: {}", md.uid);
            println!("Namespace: {}", md.namespace);
            println!("Attempt: {}", md.attempt);
            println!("Status: {}", pod_state_name(p.state));
            println!("Created: {}", ago(p.created_at));
            print_map("Labels", &p.labels);
            print_map("Annotations", &p.annotations);
            println!();
        }
        return Ok(0);
    }
    let mut rows = vec![[
        "POD ID",
        "CREATED",
        "STATE",
        "NAME",
        "NAMESPACE",
        "ATTEMPT",
        "RUNTIME",
    ]
    .map(String::from)
    .to_vec()];
    for p in &items {
        let md = p.metadata.clone().unwrap_or_default();
        rows.push(vec![
            trunc_id(&p.id, a.no_trunc),
            ago(p.created_at),
            pod_state_name(p.state).into(),
            md.name,
            md.namespace,
            md.attempt.to_string(),
            if p.runtime_handler.is_empty() {
                "(default)".into()
            } else {
                p.runtime_handler.clone()
            },
        ]);
    }
    print!("{}", table(&rows));
    Ok(0)
}

fn print_map(what: &str, m: &HashMap<String, String>) {
    if m.is_empty() {
        return;
    }
    println!("{what}:");
    let mut keys: Vec<_> = m.keys().collect();
    keys.sort();
    for k in keys {
        println!("\t{k} -> {}", m[k]);
    }
}

async fn pod_status(c: &Cri, id: &str, verbose: bool) -> Result<cri::PodSandboxStatusResponse> {
    Ok(c.runtime
        .clone()
        .pod_sandbox_status(c.req(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose,
        }))
        .await
        .map_err(|e| c.rt_err(&format!("pod sandbox {id}"), e))?
        .into_inner())
}

async fn inspectp(c: &Cri, output: Format, pods: &[String]) -> Result<i32> {
    for p in pods {
        let r = pod_status(c, p, true).await?;
        let mut m = serde_json::Map::new();
        m.insert("status".into(), to_json(&r.status, Kind::Pod));
        m.insert("info".into(), Value::Object(info_json(&r.info)));
        if !r.containers_statuses.is_empty() {
            m.insert(
                "containersStatuses".into(),
                to_json(&r.containers_statuses, Kind::Container),
            );
        }
        print_value(&Value::Object(m), output)?;
    }
    Ok(0)
}

async fn create(
    c: &Cri,
    pod: &str,
    ctr_path: &Path,
    pod_path: &Path,
    pull: bool,
    auth: Option<cri::AuthConfig>,
) -> Result<String> {
    let ctr = read_file::<cri::ContainerConfig>(ctr_path, "container")?;
    let sandbox = read_file::<cri::PodSandboxConfig>(pod_path, "pod")?;
    let image = ctr
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    if image.is_empty() {
        bail!(
            "container config {} names no image (image.image)",
            ctr_path.display()
        );
    }
    if pull {
        pull_image(c, &image, auth, Some(sandbox.clone())).await?;
    }
    Ok(c.runtime
        .clone()
        .create_container(c.req_long(
            cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(ctr),
                sandbox_config: Some(sandbox),
            },
            Duration::ZERO,
        ))
        .await
        .map_err(|e| c.rt_err(&format!("creating container in pod {pod}"), e))?
        .into_inner()
        .container_id)
}

async fn run_cmd(c: &Cri, a: &RunArgs, pull: bool) -> Result<i32> {
    let sandbox = read_file::<cri::PodSandboxConfig>(&a.pod_config, "pod")?;
    // Check the container config before a pod exists to clean up.
    read_file::<cri::ContainerConfig>(&a.container_config, "container")?;
    let pod = run_pod(c, sandbox, a.runtime.clone()).await?;
    let auth = auth(a.creds.as_deref(), a.auth.as_deref())?;
    let id = create(c, &pod, &a.container_config, &a.pod_config, pull, auth).await?;
    start_one(c, &id).await?;
    println!("{id}");
    Ok(0)
}

async fn start_one(c: &Cri, id: &str) -> Result<()> {
    c.runtime
        .clone()
        .start_container(c.req_long(
            cri::StartContainerRequest {
                container_id: id.into(),
            },
            Duration::ZERO,
        ))
        .await
        .map_err(|e| c.rt_err(&format!("starting container {id}"), e))?;
    Ok(())
}

async fn start(c: &Cri, ids: &[String]) -> Result<i32> {
    for id in ids {
        start_one(c, id).await?;
        println!("{id}");
    }
    Ok(0)
}

async fn stop_one(c: &Cri, id: &str, timeout: i64) -> Result<()> {
    c.runtime
        .clone()
        .stop_container(c.req_long(
            cri::StopContainerRequest {
                container_id: id.into(),
                timeout,
            },
            Duration::from_secs(timeout.max(0) as u64),
        ))
        .await
        .map_err(|e| c.rt_err(&format!("stopping container {id}"), e))?;
    Ok(())
}

async fn stop(c: &Cri, timeout: i64, ids: &[String]) -> Result<i32> {
    for id in ids {
        stop_one(c, id, timeout).await?;
        println!("{id}");
    }
    Ok(0)
}

async fn list_containers(c: &Cri, filter: cri::ContainerFilter) -> Result<Vec<cri::Container>> {
    Ok(c.runtime
        .clone()
        .list_containers(c.req(cri::ListContainersRequest {
            filter: Some(filter),
        }))
        .await
        .map_err(|e| c.rt_err("listing containers", e))?
        .into_inner()
        .containers)
}

async fn container_status(
    c: &Cri,
    id: &str,
    verbose: bool,
) -> Result<cri::ContainerStatusResponse> {
    Ok(c.runtime
        .clone()
        .container_status(c.req(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose,
        }))
        .await
        .map_err(|e| c.rt_err(&format!("container {id}"), e))?
        .into_inner())
}

async fn rm(c: &Cri, force: bool, all: bool, ids: &[String]) -> Result<i32> {
    let ids: Vec<String> = if all {
        list_containers(c, Default::default())
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect()
    } else if ids.is_empty() {
        bail!("rm needs container IDs or -a");
    } else {
        ids.to_vec()
    };
    let mut failed = false;
    for id in ids {
        let r = async {
            let st = container_status(c, &id, false).await?;
            let running = st
                .status
                .as_ref()
                .is_some_and(|s| s.state == cri::ContainerState::ContainerRunning as i32);
            if running {
                if !force {
                    bail!("container {id} is running: stop it first or use -f");
                }
                stop_one(c, &id, 0).await?;
            }
            c.runtime
                .clone()
                .remove_container(c.req_long(
                    cri::RemoveContainerRequest {
                        container_id: id.clone(),
                    },
                    Duration::ZERO,
                ))
                .await
                .map_err(|e| c.rt_err(&format!("removing container {id}"), e))?;
            println!("{id}");
            Ok(())
        }
        .await;
        if let Err(e) = r {
            eprintln!("rctl: {e:#}");
            failed = true;
        }
    }
    Ok(i32::from(failed))
}

async fn ps(c: &Cri, a: &PsArgs) -> Result<i32> {
    let state = match a.state.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None if a.all || a.latest || a.last.is_some() => None,
        None => Some(cri::ContainerState::ContainerRunning),
        Some("created") => Some(cri::ContainerState::ContainerCreated),
        Some("running") => Some(cri::ContainerState::ContainerRunning),
        Some("exited") => Some(cri::ContainerState::ContainerExited),
        Some("unknown") => Some(cri::ContainerState::ContainerUnknown),
        Some(s) => bail!("invalid container state {s:?}: created, running, exited or unknown"),
    };
    let filter = cri::ContainerFilter {
        id: a.id.clone().unwrap_or_default(),
        state: state.map(|s| cri::ContainerStateValue { state: s as i32 }),
        pod_sandbox_id: a.pod.clone().unwrap_or_default(),
        label_selector: parse_labels(&a.label)?,
    };
    let name = regex(&a.name, "name")?;
    let mut items = list_containers(c, filter).await?;
    items.retain(|ct| {
        let md = ct.metadata.clone().unwrap_or_default();
        name.as_ref().is_none_or(|r| r.is_match(&md.name))
            && a.image.as_ref().is_none_or(|i| {
                ct.image
                    .as_ref()
                    .is_some_and(|s| s.image.contains(i.as_str()))
                    || ct.image_ref.contains(i.as_str())
            })
    });
    items.sort_by_key(|i| std::cmp::Reverse(i.created_at));
    let keep = if a.latest { Some(1) } else { a.last };
    if let Some(n) = keep {
        items.truncate(n);
    }
    if a.quiet {
        for ct in &items {
            println!("{}", ct.id);
        }
        return Ok(0);
    }
    if a.out.output != Format::Table {
        print_value(
            &json!({"containers": to_json(&items, Kind::Container)}),
            a.out.output,
        )?;
        return Ok(0);
    }
    if a.verbose {
        for ct in &items {
            let md = ct.metadata.clone().unwrap_or_default();
            println!("ID: {}", ct.id);
            println!("PodID: {}", ct.pod_sandbox_id);
            println!("Name: {}", md.name);
            println!("Attempt: {}", md.attempt);
            println!(
                "State: {}",
                cri::ContainerState::try_from(ct.state).map_or("", |s| s.as_str_name())
            );
            println!(
                "Image: {}",
                ct.image.as_ref().map_or("", |i| i.image.as_str())
            );
            println!("Created: {}", ago(ct.created_at));
            print_map("Labels", &ct.labels);
            print_map("Annotations", &ct.annotations);
            println!();
        }
        return Ok(0);
    }
    let pod_names: HashMap<String, String> = list_pods(c, Default::default())
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.id, p.metadata.map(|m| m.name).unwrap_or_default()))
        .collect();
    let mut rows = vec![[
        "CONTAINER",
        "IMAGE",
        "CREATED",
        "STATE",
        "NAME",
        "ATTEMPT",
        "POD ID",
        "POD",
    ]
    .map(String::from)
    .to_vec()];
    for ct in &items {
        let md = ct.metadata.clone().unwrap_or_default();
        let image = ct
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let image = if image.starts_with("sha256:") && !a.no_trunc {
            trunc_id(&image, false)
        } else {
            image
        };
        rows.push(vec![
            trunc_id(&ct.id, a.no_trunc),
            image,
            ago(ct.created_at),
            ctr_state_name(ct.state).into(),
            md.name,
            md.attempt.to_string(),
            trunc_id(&ct.pod_sandbox_id, a.no_trunc),
            pod_names
                .get(&ct.pod_sandbox_id)
                .cloned()
                .or_else(|| ct.labels.get("io.kubernetes.pod.name").cloned())
                .unwrap_or_default(),
        ]);
    }
    print!("{}", table(&rows));
    Ok(0)
}

async fn inspect(c: &Cri, output: Format, ids: &[String]) -> Result<i32> {
    for id in ids {
        let r = container_status(c, id, true).await?;
        let mut m = serde_json::Map::new();
        m.insert("status".into(), to_json(&r.status, Kind::Container));
        m.insert("info".into(), Value::Object(info_json(&r.info)));
        print_value(&Value::Object(m), output)?;
    }
    Ok(0)
}

/// kubelet names logs `<dir>/<name>/<attempt>.log`: the previous one is `<attempt-1>.log`.
fn previous_log(path: &str) -> Result<String> {
    let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
    let n: u32 = file
        .strip_suffix(".log")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("log path {path} is not <attempt>.log: no previous log"))?;
    if n == 0 {
        bail!("container is on its first attempt: no previous log");
    }
    Ok(format!("{dir}/{}.log", n - 1))
}

async fn logs_cmd(c: &Cri, a: &LogsArgs) -> Result<i32> {
    if a.reopen {
        c.runtime
            .clone()
            .reopen_container_log(c.req(cri::ReopenContainerLogRequest {
                container_id: a.container.clone(),
            }))
            .await
            .map_err(|e| c.rt_err(&format!("reopening the log of {}", a.container), e))?;
        return Ok(0);
    }
    let st = container_status(c, &a.container, false)
        .await?
        .status
        .with_context(|| format!("no status for container {}", a.container))?;
    if st.log_path.is_empty() {
        bail!(
            "container {} has no log path (no log_path in its config)",
            a.container
        );
    }
    let path = if a.previous {
        previous_log(&st.log_path)?
    } else {
        st.log_path.clone()
    };
    if let Some(s) = &a.stream {
        if s != "stdout" && s != "stderr" {
            bail!("invalid --stream {s:?}: stdout or stderr");
        }
    }
    let opts = logs::Options {
        tail: usize::try_from(a.tail).ok(),
        since: a.since.as_deref().map(logs::parse_since).transpose()?,
        timestamps: a.timestamps,
        stream: a.stream.clone(),
        limit_bytes: a.limit_bytes,
    };
    let id = st.id.clone();
    let running = st.state == cri::ContainerState::ContainerRunning as i32;
    let follow = a.follow && running && !a.previous;
    let cri2 = c.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let (out, err) = (std::io::stdout(), std::io::stderr());
        let (mut out, mut err) = (out.lock(), err.lock());
        logs::print_log(
            Path::new(&path),
            &opts,
            follow,
            || {
                handle.block_on(async {
                    container_status(&cri2, &id, false)
                        .await
                        .ok()
                        .and_then(|r| r.status)
                        .is_some_and(|s| s.state == cri::ContainerState::ContainerRunning as i32)
                })
            },
            &mut out,
            &mut err,
        )
    })
    .await??;
    Ok(0)
}

async fn exec(c: &Cri, a: &ExecArgs) -> Result<i32> {
    if a.sync {
        if a.interactive || a.tty {
            bail!("-s (sync) cannot be used with -i or -t");
        }
        let extra = Duration::from_secs(a.timeout.max(0) as u64);
        let r = c
            .runtime
            .clone()
            .exec_sync(c.req_long(
                cri::ExecSyncRequest {
                    container_id: a.container.clone(),
                    cmd: a.command.clone(),
                    timeout: a.timeout,
                },
                extra,
            ))
            .await
            .map_err(|e| c.rt_err(&format!("exec in container {}", a.container), e))?
            .into_inner();
        use std::io::Write;
        std::io::stdout().write_all(&r.stdout)?;
        std::io::stderr().write_all(&r.stderr)?;
        std::io::stdout().flush()?;
        return Ok(r.exit_code);
    }
    if let Some(url) = &a.url {
        let io = Io {
            stdin: a.interactive,
            tty: a.tty,
        };
        return stream_io(url, io, a.transport).await;
    }
    let url = c
        .runtime
        .clone()
        .exec(c.req(cri::ExecRequest {
            container_id: a.container.clone(),
            cmd: a.command.clone(),
            tty: a.tty,
            stdin: a.interactive,
            stdout: true,
            stderr: !a.tty,
        }))
        .await
        .map_err(|e| c.rt_err(&format!("exec in container {}", a.container), e))?
        .into_inner()
        .url;
    stream_io(
        &url,
        Io {
            stdin: a.interactive,
            tty: a.tty,
        },
        a.transport,
    )
    .await
}

async fn stream_io(url: &str, io: Io, transport: Transport) -> Result<i32> {
    tracing::debug!("streaming URL {url}");
    let _raw = (io.tty && io.stdin && stream::stdin_is_tty()).then(stream::RawMode::enter);
    match transport {
        Transport::Spdy => stream::remotecommand_spdy(url, io).await,
        Transport::Websocket => super::ws::remotecommand_ws(url, io).await,
    }
}

async fn attach(
    c: &Cri,
    stdin: bool,
    tty: bool,
    transport: Transport,
    url: Option<String>,
    id: &str,
) -> Result<i32> {
    if let Some(url) = url {
        return stream_io(&url, Io { stdin, tty }, transport).await;
    }
    let url = c
        .runtime
        .clone()
        .attach(c.req(cri::AttachRequest {
            container_id: id.into(),
            stdin,
            tty,
            stdout: true,
            stderr: !tty,
        }))
        .await
        .map_err(|e| c.rt_err(&format!("attaching to container {id}"), e))?
        .into_inner()
        .url;
    stream_io(&url, Io { stdin, tty }, transport).await
}

/// `[LOCAL:]REMOTE` → (local port, remote port); local 0 = any free port.
pub fn parse_port(s: &str) -> Result<(u16, u16)> {
    let bad = || anyhow::anyhow!("invalid port {s:?}: expected [LOCAL:]REMOTE (e.g. 8080:80)");
    let (l, r) = match s.split_once(':') {
        Some((l, r)) => (
            if l.is_empty() {
                0
            } else {
                l.parse().map_err(|_| bad())?
            },
            r,
        ),
        None => (0, s),
    };
    let r: u16 = r.parse().map_err(|_| bad())?;
    if r == 0 {
        return Err(bad());
    }
    // crictl forwards `80` from local 80; a free port is friendlier for unprivileged ones.
    let l = if l == 0 && !s.contains(':') { r } else { l };
    Ok((l, r))
}

async fn port_forward(
    c: &Cri,
    transport: Transport,
    url: Option<String>,
    pod: &str,
    ports: &[String],
) -> Result<i32> {
    let parsed: Vec<(u16, u16)> = ports.iter().map(|p| parse_port(p)).collect::<Result<_>>()?;
    if let Some(url) = url {
        return forward(&url, transport, parsed).await;
    }
    let url = c
        .runtime
        .clone()
        .port_forward(c.req(cri::PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: parsed.iter().map(|(_, r)| i32::from(*r)).collect(),
        }))
        .await
        .map_err(|e| c.rt_err(&format!("port-forward to pod {pod}"), e))?
        .into_inner()
        .url;
    forward(&url, transport, parsed).await
}

async fn forward(url: &str, transport: Transport, parsed: Vec<(u16, u16)>) -> Result<i32> {
    let mut listeners = vec![];
    for (l, r) in parsed {
        let lis = tokio::net::TcpListener::bind(("127.0.0.1", l))
            .await
            .with_context(|| format!("listening on 127.0.0.1:{l}"))?;
        println!(
            "Forwarding from 127.0.0.1:{} -> {r}",
            lis.local_addr()?.port()
        );
        listeners.push((lis, r));
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    stream::port_forward(url, transport, listeners).await?;
    Ok(0)
}

fn cpu_pct(first: Option<&cri::CpuUsage>, second: Option<&cri::CpuUsage>) -> String {
    if let Some(n) = second.and_then(|c| c.usage_nano_cores.as_ref()) {
        return format!("{:.2}", n.value as f64 / 1e7);
    }
    match (first, second) {
        (Some(a), Some(b)) => {
            let (Some(ua), Some(ub)) = (&a.usage_core_nano_seconds, &b.usage_core_nano_seconds)
            else {
                return "0.00".into();
            };
            let dt = (b.timestamp - a.timestamp) as f64;
            if dt <= 0.0 {
                return "0.00".into();
            }
            format!(
                "{:.2}",
                (ub.value.saturating_sub(ua.value)) as f64 / dt * 100.0
            )
        }
        _ => "0.00".into(),
    }
}

async fn list_stats(
    c: &Cri,
    filter: &cri::ContainerStatsFilter,
) -> Result<Vec<cri::ContainerStats>> {
    Ok(c.runtime
        .clone()
        .list_container_stats(c.req(cri::ListContainerStatsRequest {
            filter: Some(filter.clone()),
        }))
        .await
        .map_err(|e| c.rt_err("container stats", e))?
        .into_inner()
        .stats)
}

async fn stats(c: &Cri, a: &StatsArgs) -> Result<i32> {
    let filter = cri::ContainerStatsFilter {
        id: a
            .id
            .clone()
            .or_else(|| a.container.clone())
            .unwrap_or_default(),
        pod_sandbox_id: a.pod.clone().unwrap_or_default(),
        label_selector: parse_labels(&a.label)?,
    };
    let mut first = list_stats(c, &filter).await?;
    if !a.all {
        let running: std::collections::HashSet<String> = list_containers(
            c,
            cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            },
        )
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect();
        first.retain(|s| {
            s.attributes
                .as_ref()
                .is_some_and(|a| running.contains(&a.id))
        });
    }
    if a.out.output != Format::Table {
        print_value(
            &json!({"stats": to_json(&first, Kind::Other)}),
            a.out.output,
        )?;
        return Ok(0);
    }
    // CPU % needs two samples unless the runtime reports nano-cores itself.
    let needs_second = first
        .iter()
        .any(|s| s.cpu.as_ref().is_none_or(|c| c.usage_nano_cores.is_none()));
    let second: HashMap<String, cri::ContainerStats> = if needs_second && !first.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        list_stats(c, &filter)
            .await?
            .into_iter()
            .filter_map(|s| Some((s.attributes.as_ref()?.id.clone(), s)))
            .collect()
    } else {
        HashMap::new()
    };
    let mut rows = vec![["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"]
        .map(String::from)
        .to_vec()];
    for s in &first {
        let attr = s.attributes.clone().unwrap_or_default();
        let later = second.get(&attr.id).unwrap_or(s);
        let mem = later
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value);
        let disk = later.writable_layer.as_ref();
        rows.push(vec![
            trunc_id(&attr.id, false),
            attr.metadata.map(|m| m.name).unwrap_or_default(),
            cpu_pct(s.cpu.as_ref(), later.cpu.as_ref()),
            human_size(mem),
            human_size(
                disk.and_then(|d| d.used_bytes.as_ref())
                    .map_or(0, |v| v.value),
            ),
            disk.and_then(|d| d.inodes_used.as_ref())
                .map_or(0, |v| v.value)
                .to_string(),
        ]);
    }
    print!("{}", table(&rows));
    Ok(0)
}

async fn statsp(c: &Cri, a: &StatspArgs) -> Result<i32> {
    let r = c
        .runtime
        .clone()
        .list_pod_sandbox_stats(c.req(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: a.id.clone().or_else(|| a.pod.clone()).unwrap_or_default(),
                label_selector: parse_labels(&a.label)?,
            }),
        }))
        .await
        .map_err(|e| c.rt_err("pod stats", e))?
        .into_inner()
        .stats;
    if a.out.output != Format::Table {
        print_value(&json!({"stats": to_json(&r, Kind::Other)}), a.out.output)?;
        return Ok(0);
    }
    let mut rows = vec![["POD", "POD ID", "CPU %", "MEM"].map(String::from).to_vec()];
    for s in &r {
        let attr = s.attributes.clone().unwrap_or_default();
        let linux = s.linux.clone().unwrap_or_default();
        rows.push(vec![
            attr.metadata.map(|m| m.name).unwrap_or_default(),
            trunc_id(&attr.id, false),
            cpu_pct(None, linux.cpu.as_ref()),
            human_size(
                linux
                    .memory
                    .and_then(|m| m.working_set_bytes)
                    .map_or(0, |v| v.value),
            ),
        ]);
    }
    print!("{}", table(&rows));
    Ok(0)
}

async fn update(c: &Cri, a: &UpdateArgs) -> Result<i32> {
    let res = cri::LinuxContainerResources {
        cpu_period: a.cpu_period.unwrap_or(0),
        cpu_quota: a.cpu_quota.unwrap_or(0),
        cpu_shares: a.cpu_share.unwrap_or(0),
        memory_limit_in_bytes: a.memory.unwrap_or(0),
        cpuset_cpus: a.cpuset_cpus.clone().unwrap_or_default(),
        cpuset_mems: a.cpuset_mems.clone().unwrap_or_default(),
        ..Default::default()
    };
    for id in &a.containers {
        c.runtime
            .clone()
            .update_container_resources(c.req_long(
                cri::UpdateContainerResourcesRequest {
                    container_id: id.clone(),
                    linux: Some(res.clone()),
                    ..Default::default()
                },
                Duration::ZERO,
            ))
            .await
            .map_err(|e| c.rt_err(&format!("updating container {id}"), e))?;
        println!("{id}");
    }
    Ok(0)
}

async fn events(c: &Cri, output: Format) -> Result<i32> {
    let mut s = c
        .runtime
        .clone()
        .get_container_events(cri::GetEventsRequest {})
        .await
        .map_err(|e| c.rt_err("container events", e))?
        .into_inner();
    loop {
        match s.message().await {
            Ok(Some(ev)) => {
                let v = to_json(&ev, Kind::Container);
                match output {
                    Format::Yaml => print!("---\n{}", serde_norway::to_string(&v)?),
                    _ => println!("{}", serde_json::to_string(&v)?),
                }
            }
            Ok(None) => return Ok(0),
            Err(e) => return Err(c.rt_err("container events", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_sizes() {
        assert_eq!(parse_port("8080:80").unwrap(), (8080, 80));
        assert_eq!(parse_port(":80").unwrap(), (0, 80));
        assert_eq!(parse_port("80").unwrap(), (80, 80));
        assert!(parse_port("x:80").is_err());
        assert!(parse_port("0").is_err());
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("12q").is_err());
        assert_eq!(
            split_tag("reg:5000/a/b:v1"),
            ("reg:5000/a/b".into(), "v1".into())
        );
        assert_eq!(
            split_tag("reg:5000/a"),
            ("reg:5000/a".into(), "<none>".into())
        );
        assert_eq!(previous_log("/l/c/2.log").unwrap(), "/l/c/1.log");
        assert!(previous_log("/l/c/0.log").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "rctl",
            "-r",
            "unix:///x",
            "exec",
            "-it",
            "abc",
            "sh",
            "-c",
            "ls -l",
        ])
        .unwrap();
        match c.cmd {
            Cmd::Exec(a) => {
                assert!(a.interactive && a.tty);
                assert_eq!(a.command, ["sh", "-c", "ls -l"]);
            }
            _ => panic!(),
        }
    }
}
