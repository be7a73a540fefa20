//! rnerd's command line, as docker's and nerdctl's: flag parsing only (clap derive); the
//! commands' logic is in `cmd/`.

use clap::{ArgAction, Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "rnerd",
    version,
    about = "rnerd: run containers with rcd, the docker way",
    after_help = "Examples:
  rnerd run --rm busybox echo hello
  rnerd run -d --name web -p 8080:80 busybox httpd -f -p 80
  rnerd ps -a
  rnerd logs -f web
  rnerd exec -it web sh
  rnerd rm -f web"
)]
pub struct Cli {
    /// rcd's socket
    #[arg(long, env = "RCD_ADDRESS", default_value = rcd_proto::DEFAULT_ADDRESS, global = true)]
    pub address: PathBuf,
    /// Namespace of containers and images
    #[arg(short, long, env = "RCD_NAMESPACE", default_value = rcd_proto::DEFAULT_NAMESPACE, global = true)]
    pub namespace: String,
    /// Registries reached over plain HTTP (repeatable; HOST[:PORT])
    #[arg(long = "insecure-registry", value_name = "HOST", global = true)]
    pub insecure_registry: Vec<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
// each subcommand's arguments are built only when it runs: the whole tree costs ~1 ms
#[command(defer = true)]
pub enum Command {
    /// Create and run a container
    #[command(after_help = "Examples:
  rnerd run --rm busybox echo hello
  rnerd run -it --rm busybox sh
  rnerd run -d --name web -p 8080:80 -v data:/www busybox httpd -f -p 80 -h /www
  rnerd run --rm -e A=1 -w /tmp -u 1000 busybox env")]
    Run(Box<RunArgs>),
    /// Create a container (not started: `rnerd start` runs it)
    Create(Box<RunArgs>),
    /// Start stopped containers
    Start(StartArgs),
    /// Stop running containers (the stop signal, then SIGKILL after the timeout)
    Stop(StopArgs),
    /// Restart containers
    Restart(StopArgs),
    /// Send a signal to running containers
    Kill(KillArgs),
    /// Remove containers
    Rm(RmArgs),
    /// List containers
    #[command(alias = "ls")]
    Ps(PsArgs),
    /// Print a container's log (needs rcd's json-file log: detached containers)
    Logs(LogsArgs),
    /// Run a command in a running container
    #[command(after_help = "Examples:
  rnerd exec web ls /
  rnerd exec -it web sh")]
    Exec(ExecArgs),
    /// Show containers (or images) as JSON
    Inspect(InspectArgs),
    /// Wait for containers to stop; prints their exit codes
    Wait(NamesArgs),
    /// Rename a container
    Rename { container: String, new_name: String },
    /// Freeze every process of containers
    Pause(NamesArgs),
    /// Thaw paused containers
    Unpause(NamesArgs),
    /// Show a container's published ports
    Port {
        container: String,
        /// PORT[/PROTO]: only that one's host address
        port: Option<String>,
    },
    /// Show a container's processes
    Top { container: String },
    /// Live resource usage of containers
    Stats(StatsArgs),
    /// Attach to a running container's output (and input, with -i at run)
    Attach { container: String },
    /// Copy files between a running container and the host
    #[command(after_help = "Examples:
  rnerd cp web:/etc/hostname .
  rnerd cp ./site web:/www")]
    Cp {
        /// CONTAINER:PATH or a host path
        src: String,
        /// CONTAINER:PATH or a host path
        dst: String,
    },
    /// Make an image from a container's changes
    #[command(after_help = "Examples:
  rnerd commit web myweb:v2
  rnerd commit -m 'add index' -a me web")]
    Commit {
        /// Commit message (the new history entry's comment)
        #[arg(short, long)]
        message: Option<String>,
        /// Author
        #[arg(short, long)]
        author: Option<String>,
        /// Pause the container while committing (default true)
        #[arg(short, long, default_value_t = true, action = ArgAction::Set)]
        pause: bool,
        container: String,
        /// REPOSITORY[:TAG]
        image: String,
    },
    /// Pull an image from a registry
    Pull(PullArgs),
    /// List images
    Images(ImagesArgs),
    /// Remove images
    Rmi(RmiArgs),
    /// Push an image to a registry
    Push(PushArgs),
    /// Give an image another name
    Tag { source: String, target: String },
    /// Write images to a tar archive (docker's and OCI's layout at once)
    #[command(after_help = "Examples:
  rnerd save -o busybox.tar busybox
  rnerd save busybox | gzip > busybox.tar.gz")]
    Save(SaveArgs),
    /// Read images from a tar archive (docker save's or an OCI layout; plain, gzip or zstd)
    Load(LoadArgs),
    /// Manage images
    #[command(subcommand)]
    Image(ImageCommand),
    /// Store a registry's credentials (in docker's ~/.docker/config.json)
    Login(LoginArgs),
    /// Forget a registry's credentials
    Logout { server: Option<String> },
    /// Manage containers (docker's `container ls|rm|prune|...`)
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Manage networks
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage volumes
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Disk usage and clean-up
    #[command(subcommand)]
    System(SystemCommand),
    /// Print rcd's events as they happen
    Events {
        /// Filter: type=container|image|..., event=start|exit|...
        #[arg(short, long)]
        filter: Vec<String>,
        /// Output: plain (default) or json
        #[arg(long)]
        format: Option<String>,
    },
    /// Print rnerd's and rcd's versions
    Version,
    /// Show what rcd holds and runs
    Info,
    /// Run a multi-container project from a compose file
    Compose(Box<crate::compose::ComposeArgs>),
    /// Print a shell's completion script (bash, zsh, fish, elvish, powershell)
    Completion { shell: clap_complete::Shell },
}

// `run` and `create`. `-h` is the hostname, as docker's: help is `--help` only. (A plain
// comment: a doc comment would become the subcommands' about text, their own being set first.)
#[derive(Args, Debug, Default)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
    /// Run in the background and print the container's id
    #[arg(short, long)]
    pub detach: bool,
    /// Keep stdin open
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal
    #[arg(short, long)]
    pub tty: bool,
    /// Remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// The container's name (default: a random adjective_surname)
    #[arg(long)]
    pub name: Option<String>,
    /// Publish a port: [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp] (repeatable)
    #[arg(short = 'p', long = "publish", value_name = "PORT")]
    pub publish: Vec<String>,
    /// Publish every port the image exposes to a free host port
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Bind mount or volume: HOST_PATH:CTR_PATH[:ro], NAME:CTR_PATH[:ro] or CTR_PATH (repeatable)
    #[arg(short = 'v', long = "volume", value_name = "SPEC")]
    pub volumes: Vec<String>,
    /// Mount: type=bind|volume|tmpfs,source=...,target=...[,readonly] (repeatable)
    #[arg(long = "mount", value_name = "SPEC")]
    pub mounts: Vec<String>,
    /// Environment variable KEY=VALUE, or KEY to take it from here (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines)
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User: name|uid[:group|gid]
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Replace the image's entrypoint
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// The container's hostname
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Restart policy: no, always, on-failure[:N], unless-stopped
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// Network: bridge, host, none, container:NAME or a network's name
    #[arg(long = "network", alias = "net", default_value = "bridge")]
    pub network: String,
    /// Other names on the network (repeatable)
    #[arg(long = "network-alias", value_name = "NAME")]
    pub network_alias: Vec<String>,
    /// CPU limit (0.5, 2)
    #[arg(long)]
    pub cpus: Option<String>,
    /// Memory limit: bytes or with a unit (512m, 1g)
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Most processes at once (0: no limit)
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<i64>,
    /// Pull the image: always, missing, never
    #[arg(long, default_value = "missing")]
    pub pull: String,
    /// Every capability, every device, no seccomp filter
    #[arg(long)]
    pub privileged: bool,
    /// Add a capability (NET_ADMIN, ALL) (repeatable)
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability (repeatable)
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Read-only root filesystem
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Container label KEY=VALUE (repeatable)
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Extra /etc/hosts entry NAME:IP (repeatable)
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    /// DNS server (repeatable)
    #[arg(long)]
    pub dns: Vec<String>,
    /// The signal that stops the container
    #[arg(long = "stop-signal")]
    pub stop_signal: Option<String>,
    /// Image
    pub image: String,
    /// Command and arguments (default: the image's)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Attach to the output and return the container's exit code
    #[arg(short, long)]
    pub attach: bool,
    /// Attach stdin as well
    #[arg(short, long)]
    pub interactive: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait before killing
    #[arg(short = 't', long = "time", alias = "timeout", default_value_t = 10)]
    pub time: u64,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal name or number
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Kill running containers first
    #[arg(short, long)]
    pub force: bool,
    /// Remove their anonymous volumes too
    #[arg(short, long)]
    pub volumes: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Every container (default: running ones)
    #[arg(short, long)]
    pub all: bool,
    /// Only the ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate ids and commands
    #[arg(long)]
    pub no_trunc: bool,
    /// Filter: name=, id=, label=KEY[=VALUE], status=created|running|paused|exited, ancestor=IMAGE
    #[arg(short, long)]
    pub filter: Vec<String>,
    /// Output: table (default), json, or a template such as '{{.ID}} {{.Names}}'
    #[arg(long)]
    pub format: Option<String>,
    /// Only the latest created container
    #[arg(short, long)]
    pub latest: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Keep printing new output
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines ("all": everything)
    #[arg(long, default_value = "all")]
    pub tail: String,
    /// Only lines since a time (RFC 3339, Unix seconds or a duration such as 10m)
    #[arg(long)]
    pub since: Option<String>,
    /// Only lines before a time
    #[arg(long)]
    pub until: Option<String>,
    /// Prefix each line with its time
    #[arg(short, long)]
    pub timestamps: bool,
    pub container: String,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Run in the background
    #[arg(short, long)]
    pub detach: bool,
    /// Keep stdin open
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal
    #[arg(short, long)]
    pub tty: bool,
    /// Environment variable KEY=VALUE (repeatable)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User: name|uid[:group|gid]
    #[arg(short, long)]
    pub user: Option<String>,
    pub container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Output: json (default) or a template such as '{{.State.Status}}'
    #[arg(short, long)]
    pub format: Option<String>,
    /// What the names are: container, image (default: whichever matches)
    #[arg(long = "type")]
    pub kind: Option<String>,
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct NamesArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Print once and exit
    #[arg(long)]
    pub no_stream: bool,
    /// Every container (default: running ones)
    #[arg(short, long)]
    pub all: bool,
    /// Output: table (default), json, or a template
    #[arg(long)]
    pub format: Option<String>,
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Only the final line
    #[arg(short, long)]
    pub quiet: bool,
    /// Platform, e.g. linux/amd64
    #[arg(long)]
    pub platform: Option<String>,
    pub image: String,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Only the ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Show digests
    #[arg(long)]
    pub digests: bool,
    /// Don't truncate ids
    #[arg(long)]
    pub no_trunc: bool,
    /// Output: table (default), json, or a template such as '{{.Repository}}:{{.Tag}}'
    #[arg(long)]
    pub format: Option<String>,
    /// Only images whose name matches REPOSITORY[:TAG]
    pub repository: Option<String>,
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum ImageCommand {
    /// List images
    #[command(alias = "list")]
    Ls(ImagesArgs),
    /// Show images as JSON
    Inspect {
        /// Output: json (default) or a template
        #[arg(short, long)]
        format: Option<String>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Show an image's layers and the steps that made them
    History {
        /// Don't truncate
        #[arg(long)]
        no_trunc: bool,
        /// Only the layer ids
        #[arg(short, long)]
        quiet: bool,
        image: String,
    },
    /// Remove unused images' data (-a: every image no container uses)
    Prune {
        /// Every image no container uses, not only unreferenced data
        #[arg(short, long)]
        all: bool,
        /// Don't ask
        #[arg(short, long)]
        force: bool,
    },
    /// Remove images
    Rm(RmiArgs),
    /// Pull an image
    Pull(PullArgs),
    /// Push an image
    Push(PushArgs),
    /// Give an image another name
    Tag { source: String, target: String },
    /// Write images to a tar archive
    Save(SaveArgs),
    /// Read images from a tar archive
    Load(LoadArgs),
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Only the final line
    #[arg(short, long)]
    pub quiet: bool,
    /// Platform, e.g. linux/amd64
    #[arg(long)]
    pub platform: Option<String>,
    pub image: String,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Write to this file (default: stdout, which must not be a terminal)
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Platform, e.g. linux/amd64
    #[arg(long)]
    pub platform: Option<String>,
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Read from this file (default: stdin)
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Only the loaded names
    #[arg(short, long)]
    pub quiet: bool,
    /// Platform, e.g. linux/amd64
    #[arg(long)]
    pub platform: Option<String>,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    #[arg(short, long)]
    pub username: Option<String>,
    /// The password (prefer --password-stdin)
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from stdin
    #[arg(long)]
    pub password_stdin: bool,
    /// Registry host (default: docker.io)
    pub server: Option<String>,
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Remove even if a container uses it
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum NetworkCommand {
    /// Create a bridge network with its own subnet
    #[command(after_help = "Examples:
  rnerd network create app
  rnerd network create --subnet 10.9.0.0/24 app2")]
    Create {
        /// Driver (only bridge)
        #[arg(short, long, default_value = "bridge")]
        driver: String,
        /// Subnet in CIDR form (default: the next free /24)
        #[arg(long)]
        subnet: Option<String>,
        /// Gateway address (default: the subnet's first)
        #[arg(long)]
        gateway: Option<String>,
        /// Label KEY=VALUE (repeatable)
        #[arg(long)]
        label: Vec<String>,
        name: String,
    },
    /// List networks
    #[command(alias = "list")]
    Ls {
        /// Only the names
        #[arg(short, long)]
        quiet: bool,
        /// Output: table (default), json, or a template
        #[arg(long)]
        format: Option<String>,
    },
    /// Show networks as JSON
    Inspect {
        #[arg(short, long)]
        format: Option<String>,
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum VolumeCommand {
    /// Create a volume (default name: random)
    Create {
        /// Label KEY=VALUE (repeatable)
        #[arg(long)]
        label: Vec<String>,
        name: Option<String>,
    },
    /// List volumes
    #[command(alias = "list")]
    Ls {
        /// Only the names
        #[arg(short, long)]
        quiet: bool,
        /// Output: table (default), json, or a template
        #[arg(long)]
        format: Option<String>,
    },
    /// Show volumes as JSON
    Inspect {
        #[arg(short, long)]
        format: Option<String>,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove volumes
    #[command(alias = "remove")]
    Rm {
        /// Accepted for docker's sake
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove volumes no container uses (anonymous ones; -a: all)
    Prune {
        #[arg(short, long)]
        all: bool,
        /// Don't ask
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum SystemCommand {
    /// Disk usage of images, containers and volumes
    Df,
    /// Remove stopped containers, unused networks, dangling image data (-a: unused images; --volumes)
    Prune {
        #[arg(short, long)]
        all: bool,
        /// Don't ask
        #[arg(short, long)]
        force: bool,
        /// Unused anonymous volumes too
        #[arg(long)]
        volumes: bool,
    },
    /// Print rcd's events
    Events {
        #[arg(short, long)]
        filter: Vec<String>,
        #[arg(long)]
        format: Option<String>,
    },
    /// Show what rcd holds and runs
    Info,
}

#[derive(Subcommand, Debug)]
#[command(defer = true)]
pub enum ContainerCommand {
    /// List containers
    #[command(alias = "list", alias = "ps")]
    Ls(PsArgs),
    /// Create and run a container
    Run(Box<RunArgs>),
    /// Create a container
    Create(Box<RunArgs>),
    /// Start containers
    Start(StartArgs),
    /// Stop containers
    Stop(StopArgs),
    /// Restart containers
    Restart(StopArgs),
    /// Signal containers
    Kill(KillArgs),
    /// Remove containers
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Print a container's log
    Logs(LogsArgs),
    /// Run a command in a running container
    Exec(ExecArgs),
    /// Show containers as JSON
    Inspect(InspectArgs),
    /// Remove every stopped container
    Prune {
        /// Don't ask
        #[arg(short, long)]
        force: bool,
    },
}
