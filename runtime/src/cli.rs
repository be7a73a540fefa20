//! runc's command line, flag for flag. Parsing only: the commands live in `commands/`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use runr::logging::LogFormat;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "runr",
    about = "Open Container Initiative runtime, compatible with runc's command line",
    disable_version_flag = true,
    after_help = "Examples:\n  runr spec && runr run mycontainer\n  runr --root /run/runr list\n  runr exec -t mycontainer sh"
)]
pub struct Cli {
    /// Enable debug logging
    #[arg(long)]
    pub debug: bool,
    /// Log file (default: stderr)
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Log format
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Root directory for container state (tmpfs recommended)
    #[arg(long, default_value = "/run/runr", value_name = "DIR")]
    pub root: PathBuf,
    /// Path to criu (accepted for compatibility; checkpointing is not supported)
    #[arg(long, hide = true)]
    pub criu: Option<String>,
    /// Manage cgroups through systemd (cgroupsPath as slice:prefix:name)
    #[arg(long)]
    pub systemd_cgroup: bool,
    /// Rootless mode: true, false or auto (accepted for compatibility)
    #[arg(long, hide = true)]
    pub rootless: Option<String>,
    /// Print the version
    #[arg(short = 'v', long)]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a container (its init waits for `start`)
    Create(Create),
    /// Start a created container
    Start(Id),
    /// Create and start a container, wait for it and delete it (unless --detach)
    Run(Run),
    /// Print the state of a container as OCI state JSON
    State(Id),
    /// Send a signal (default SIGTERM) to a container's init, or to all its processes
    Kill(Kill),
    /// Delete a container and everything it holds
    Delete(Delete),
    /// Run a new process inside a running container
    Exec(Exec),
    /// List the processes of a container
    Ps(Ps),
    /// List containers under --root
    List(List),
    /// Freeze all processes of a container
    Pause(Id),
    /// Thaw a paused container
    Resume(Id),
    /// Change the resource limits of a running container
    Update(Update),
    /// Print container events and statistics
    Events(Events),
    /// Print the features this runtime supports, as JSON
    Features,
    /// Write a default config.json into a bundle
    Spec(SpecCmd),
    /// Print a shell completion script
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
pub struct Id {
    /// Container ID
    pub id: String,
}

#[derive(Args, Debug, Clone)]
pub struct Create {
    /// Bundle directory (default: current directory)
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket that receives the master end of the container's pty
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Pidfd socket (not supported; accepted and refused with a clear error)
    #[arg(long, hide = true)]
    pub pidfd_socket: Option<PathBuf>,
    /// File to write the init's pid to
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Do not use pivot_root (for a rootfs on ramfs)
    #[arg(long)]
    pub no_pivot: bool,
    /// Do not create a new session keyring
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass N extra file descriptors (from fd 3) to the container
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub preserve_fds: i32,
    /// Container ID
    pub id: String,
}

#[derive(Args, Debug)]
pub struct Run {
    #[command(flatten)]
    pub create: Create,
    /// Return after start, leaving the container running
    #[arg(short, long)]
    pub detach: bool,
    /// Do not delete the container after it exits
    #[arg(long)]
    pub keep: bool,
}

#[derive(Args, Debug)]
pub struct Kill {
    /// Send the signal to every process of the container
    #[arg(short, long)]
    pub all: bool,
    /// Container ID
    pub id: String,
    /// Signal name or number
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

#[derive(Args, Debug)]
pub struct Delete {
    /// Kill a running container first; succeed if it does not exist
    #[arg(short, long)]
    pub force: bool,
    /// Container ID
    pub id: String,
}

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct Exec {
    /// Unix socket that receives the master end of the process's pty
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Pidfd socket (not supported)
    #[arg(long, hide = true)]
    pub pidfd_socket: Option<PathBuf>,
    /// Working directory
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Environment variable (KEY=VALUE), repeatable
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    pub tty: bool,
    /// UID[:GID] to run as
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional group ID, repeatable
    #[arg(short = 'g', long)]
    pub additional_gids: Vec<u32>,
    /// process.json describing the process (overrides the command line)
    #[arg(short, long, value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// Return at once, leaving the process running
    #[arg(short, long)]
    pub detach: bool,
    /// File to write the process's pid to
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// SELinux label (not supported on this host)
    #[arg(long)]
    pub process_label: Option<String>,
    /// AppArmor profile
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Set no_new_privs for the process
    #[arg(long)]
    pub no_new_privs: bool,
    /// Add a capability, repeatable
    #[arg(short, long)]
    pub cap: Vec<String>,
    /// Pass N extra file descriptors (from fd 3)
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    /// Run in this sub-cgroup of the container
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Allow exec into a paused container
    #[arg(long)]
    pub ignore_paused: bool,
    /// Container ID
    pub id: String,
    /// Command and arguments
    #[arg(allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct Ps {
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: Format,
    /// Container ID
    pub id: String,
    /// Options for ps(1) (default -ef)
    #[arg(allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct List {
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: Format,
    /// Print only container IDs
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Default)]
pub struct Update {
    /// LinuxResources JSON file, `-` for stdin; the flags below are ignored when given
    #[arg(short, long, value_name = "FILE")]
    pub resources: Option<PathBuf>,
    /// Block IO weight (10-1000)
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// CPU CFS period (microseconds)
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota (microseconds)
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight)
    #[arg(long)]
    pub cpu_share: Option<u64>,
    /// CPU realtime period (microseconds)
    #[arg(long)]
    pub cpu_rt_period: Option<u64>,
    /// CPU realtime runtime (microseconds)
    #[arg(long)]
    pub cpu_rt_runtime: Option<i64>,
    /// CPUs allowed (0-3, 0,1)
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes allowed (0-3, 0,1)
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Memory limit (e.g. 64m, 1g; -1 = unlimited)
    #[arg(long)]
    pub memory: Option<String>,
    /// Memory soft limit
    #[arg(long)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit
    #[arg(long)]
    pub memory_swap: Option<String>,
    /// Kernel memory limit (ignored, as by runc)
    #[arg(long, hide = true)]
    pub kernel_memory: Option<String>,
    /// Maximum number of pids (-1 = unlimited)
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Container ID
    pub id: String,
}

#[derive(Args, Debug)]
pub struct Events {
    /// Interval between stats reports
    #[arg(long, default_value = "5s")]
    pub interval: String,
    /// Print stats once and exit
    #[arg(long)]
    pub stats: bool,
    /// Container ID
    pub id: String,
}

#[derive(Args, Debug)]
pub struct SpecCmd {
    /// Bundle directory to write config.json into
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Write a spec for a rootless container
    #[arg(long)]
    pub rootless: bool,
}

/// The flags of the command line, from clap's own definition: (long names, names of flags that
/// take a value — long and short). Derived rather than listed so the two cannot drift apart.
fn flag_names() -> (Vec<String>, Vec<String>) {
    fn walk(cmd: &clap::Command, long: &mut Vec<String>, valued: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let takes = a.get_action().takes_values();
            if let Some(l) = a.get_long() {
                long.push(l.to_string());
                if takes {
                    valued.push(l.to_string());
                }
            }
            if let (Some(c), true) = (a.get_short(), takes) {
                valued.push(c.to_string());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, long, valued);
        }
    }
    let (mut long, mut valued) = (vec!["help".to_string(), "version".to_string()], Vec::new());
    walk(
        &<Cli as clap::CommandFactory>::command(),
        &mut long,
        &mut valued,
    );
    (long, valued)
}

/// Rewrites runc-style `-flag` into `--flag` up to the container ID, leaving the command of
/// `exec` and the options of `ps` untouched.
pub fn normalize_args(args: Vec<String>) -> Vec<String> {
    // only runc-style single-dash long flags need the flag table: skip building it otherwise
    if !args
        .iter()
        .skip(1)
        .any(|a| a.len() > 2 && a.starts_with('-') && !a.starts_with("--"))
    {
        return args;
    }
    let (long_flags, value_flags) = flag_names();
    let is_long = |n: &str| long_flags.iter().any(|f| f == n);
    let takes_value = |n: &str| value_flags.iter().any(|f| f == n);
    let mut out = Vec::with_capacity(args.len());
    let mut positionals = 0;
    let mut expect_value = false;
    let mut iter = args.into_iter();
    if let Some(a0) = iter.next() {
        out.push(a0);
    }
    for arg in iter.by_ref() {
        if expect_value {
            expect_value = false;
            out.push(arg);
            continue;
        }
        if arg == "--" {
            out.push(arg);
            break;
        }
        let flag = if let Some(rest) = arg.strip_prefix("--") {
            Some(rest.to_string())
        } else if let Some(rest) = arg.strip_prefix('-') {
            let name = rest.split('=').next().unwrap_or("");
            if name.len() > 1 && is_long(name) {
                out.push(format!("-{arg}"));
                expect_value = !rest.contains('=') && takes_value(name);
                continue;
            }
            if rest.len() == 1 {
                Some(rest.to_string())
            } else {
                None
            }
        } else {
            None
        };
        match flag {
            Some(name) => {
                expect_value = !name.contains('=') && takes_value(&name);
                out.push(arg);
            }
            None => {
                out.push(arg.clone());
                if !arg.starts_with('-') {
                    positionals += 1;
                    // the subcommand, then the container ID: what follows belongs to the
                    // container's command (exec) or to ps(1)
                    if positionals >= 2 {
                        break;
                    }
                }
            }
        }
    }
    out.extend(iter);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        normalize_args(s.split(' ').map(String::from).collect()).join(" ")
    }

    #[test]
    fn single_dash_long_flags_become_double() {
        assert_eq!(
            norm("runr -root /r -log-format json state x"),
            "runr --root /r --log-format json state x"
        );
        assert_eq!(
            norm("runr create -bundle /b -pid-file=/p x"),
            "runr create --bundle /b --pid-file=/p x"
        );
    }

    #[test]
    fn command_of_exec_is_untouched() {
        assert_eq!(
            norm("runr exec -e A=1 x ls -all -root"),
            "runr exec -e A=1 x ls -all -root"
        );
        assert_eq!(norm("runr ps x -eo pid"), "runr ps x -eo pid");
    }

    #[test]
    fn parses_runc_invocations_from_containerd() {
        let cli = Cli::try_parse_from(normalize_args(
            "runr --root /run/containerd/runc/default --log /tmp/log.json --log-format json create --bundle /b --pid-file /b/init.pid --console-socket /tmp/c.sock --no-new-keyring c1"
                .split(' ').map(String::from).collect(),
        ))
        .unwrap();
        match cli.command {
            Some(Command::Create(c)) => {
                assert_eq!(c.id, "c1");
                assert!(c.no_new_keyring);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["runr", "kill", "--all", "c1", "9"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Kill(Kill { all: true, .. }))
        ));
        let cli =
            Cli::try_parse_from(["runr", "exec", "-t", "c1", "sh", "-c", "echo -n hi"]).unwrap();
        match cli.command {
            Some(Command::Exec(e)) => assert_eq!(e.command, ["sh", "-c", "echo -n hi"]),
            other => panic!("{other:?}"),
        }
    }
}
