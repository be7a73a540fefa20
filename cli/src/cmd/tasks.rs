//! `rctr tasks start|ls|kill|exec|ps|metrics|pause|resume|attach|delete`, and the attached
//! process loop `run` shares.

use super::stdio::{
    copy_stdin, remove_fifo_dir_of, terminal_size, Copier, Fifos, RawTerminal, Readers,
};
use super::{parse_signal, st, ExitStatus, Reported};
use crate::client::{status_message, Client};
use crate::format::{human_size, table};
use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use rcd_proto::v1 as pb;
use std::time::Duration;

#[derive(Subcommand, Debug)]
// each subcommand's arguments are built only when it runs: the whole tree costs ~1 ms
#[command(defer = true)]
pub enum TasksCommand {
    /// Start a container's task; attached to it unless -d
    Start {
        /// Return once started
        #[arg(short, long)]
        detach: bool,
        /// Send the output to /dev/null
        #[arg(long)]
        null_io: bool,
        id: String,
    },
    /// List tasks
    #[command(alias = "ls")]
    List {
        /// Print only the IDs
        #[arg(short, long)]
        quiet: bool,
    },
    /// Signal a task (or one of its execs)
    Kill {
        /// Signal name or number
        #[arg(short, long, default_value = "SIGTERM")]
        signal: String,
        /// Every process of the container
        #[arg(long)]
        all: bool,
        /// The exec to signal
        #[arg(long)]
        exec_id: Option<String>,
        id: String,
    },
    /// Run another process in a running task
    Exec {
        /// The exec's ID (unique within the task)
        #[arg(long, required = true)]
        exec_id: String,
        /// Allocate a terminal
        #[arg(short = 't', long)]
        tty: bool,
        /// Return once started
        #[arg(short, long)]
        detach: bool,
        /// Working directory
        #[arg(long)]
        cwd: Option<String>,
        /// User: name|uid[:group|gid]
        #[arg(short = 'u', long)]
        user: Option<String>,
        /// Environment variable KEY=VALUE (repeatable)
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        id: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List a task's processes
    Ps { id: String },
    /// Resource usage of a task
    #[command(alias = "metric")]
    Metrics { id: String },
    /// Freeze a task
    Pause { id: String },
    /// Thaw a paused task
    Resume { id: String },
    /// Attach to a task's stdio (its FIFOs from a detached start)
    Attach { id: String },
    /// Delete stopped tasks (-f: kill running ones first)
    #[command(alias = "rm", alias = "del", alias = "remove")]
    Delete {
        /// Kill the task first if it runs
        #[arg(short, long)]
        force: bool,
        /// Delete this exec instead of the task
        #[arg(long)]
        exec_id: Option<String>,
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub fn status_name(s: i32) -> &'static str {
    match pb::TaskStatus::try_from(s).unwrap_or(pb::TaskStatus::Unknown) {
        pb::TaskStatus::Unknown => "UNKNOWN",
        pb::TaskStatus::Created => "CREATED",
        pb::TaskStatus::Running => "RUNNING",
        pb::TaskStatus::Stopped => "STOPPED",
        pb::TaskStatus::Paused => "PAUSED",
        pb::TaskStatus::Pausing => "PAUSING",
    }
}

/// Whether a container's spec gives its process a terminal.
async fn container_tty(client: &Client, id: &str) -> Result<bool> {
    let c = client
        .containers()
        .get(pb::GetContainerRequest { id: id.to_owned() })
        .await
        .map_err(st(client))?
        .into_inner()
        .container
        .ok_or_else(|| anyhow!("unknown container {id}"))?;
    let spec: serde_json::Value = serde_json::from_slice(&c.spec).unwrap_or_default();
    Ok(spec["process"]["terminal"].as_bool().unwrap_or(false))
}

/// A process's stdio set up by rctr before the task or exec is created.
pub struct Io {
    pub fifos: Option<Fifos>,
    readers: Option<Readers>,
}

impl Io {
    /// FIFOs for the process; for an attached one its output ends are open already.
    pub fn new(id: &str, tty: bool, detach: bool, null: bool) -> Result<Io> {
        if null {
            return Ok(Io {
                fifos: None,
                readers: None,
            });
        }
        let mut fifos = Fifos::create(id, true, tty)?;
        if detach {
            fifos.keep();
        }
        // Open for a detached process too, until it has started: containerd's Go shim
        // waits for a reader before it creates the task.
        let readers = Some(Readers::open(Some(&fifos.stdout), fifos.stderr.as_deref())?);
        Ok(Io {
            fifos: Some(fifos),
            readers,
        })
    }

    /// The output ends, for the copier.
    pub fn readers_take(&mut self) -> Option<Readers> {
        self.readers.take()
    }

    pub fn stdio(&self) -> pb::Stdio {
        self.fifos.as_ref().map(Fifos::stdio).unwrap_or_default()
    }
}

/// Runs an attached process to its end: starts it (unless `start` is false: attach), copies
/// stdio, forwards terminal size changes (with a tty) or signals (without), closes its stdin
/// at rctr's end of input, and returns its exit status.
pub async fn attached(
    client: &Client,
    id: &str,
    exec_id: &str,
    tty: bool,
    start: bool,
    stdin_path: Option<&std::path::Path>,
    readers: Readers,
) -> Result<u32> {
    use tokio::signal::unix::{signal, SignalKind};
    let st = st(client);
    let raw = if tty { RawTerminal::enter() } else { None };
    let resize = || async {
        if let Some((w, h)) = terminal_size() {
            let _ = client
                .tasks()
                .resize_pty(pb::ResizePtyRequest {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                    width: w,
                    height: h,
                })
                .await;
        }
    };
    if tty {
        resize().await;
    }
    let copier = Copier::start(readers);
    let wait_client = client.clone();
    let (wid, wexec) = (id.to_owned(), exec_id.to_owned());
    let mut wait = tokio::spawn(async move {
        wait_client
            .tasks()
            .wait(pb::WaitTaskRequest {
                container_id: wid,
                exec_id: wexec,
            })
            .await
    });
    if start {
        if let Err(s) = client
            .tasks()
            .start(pb::StartTaskRequest {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            })
            .await
        {
            wait.abort();
            drop(raw);
            return Err(st(s));
        }
    }
    let mut stdin_eof = match stdin_path {
        Some(p) => Some(copy_stdin(p)?),
        None => None,
    };
    let mut winch = signal(SignalKind::window_change())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let forward = |sig: i32| {
        let client = client.clone();
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        async move {
            let _ = client
                .tasks()
                .kill(pb::KillTaskRequest {
                    container_id: id,
                    exec_id,
                    signal: sig as u32,
                    all: false,
                })
                .await;
        }
    };
    let status = loop {
        tokio::select! {
            r = &mut wait => {
                let r = r.map_err(|e| anyhow!("waiting: {e}"))?.map_err(&st)?.into_inner();
                break r.exit_status;
            }
            Some(r) = async { match stdin_eof.as_mut() { Some(rx) => Some(rx.await), None => None } } => {
                stdin_eof = None;
                if r.is_ok() {
                    let _ = client
                        .tasks()
                        .close_io(pb::CloseIoRequest {
                            container_id: id.to_owned(),
                            exec_id: exec_id.to_owned(),
                        })
                        .await;
                }
            }
            _ = winch.recv() => if tty { resize().await },
            _ = int.recv() => forward(libc::SIGINT).await,
            _ = term.recv() => forward(libc::SIGTERM).await,
            _ = hup.recv() => forward(libc::SIGHUP).await,
        }
    };
    copier.wait(Duration::from_secs(2));
    drop(raw);
    Ok(status)
}

fn ok_or_exit(status: u32) -> Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(ExitStatus(status).into())
    }
}

pub async fn run(client: &Client, cmd: TasksCommand) -> Result<()> {
    let st = st(client);
    match cmd {
        TasksCommand::Start {
            detach,
            null_io,
            id,
        } => {
            let tty = container_tty(client, &id).await?;
            let mut io = Io::new(&id, tty, detach, null_io)?;
            client
                .tasks()
                .create(pb::CreateTaskRequest {
                    container_id: id.clone(),
                    stdio: Some(io.stdio()),
                })
                .await
                .map_err(&st)?;
            if detach {
                client
                    .tasks()
                    .start(pb::StartTaskRequest {
                        container_id: id.clone(),
                        exec_id: String::new(),
                    })
                    .await
                    .map_err(&st)?;
                return Ok(());
            }
            let readers = io.readers_take().unwrap_or(Readers::none());
            let stdin = io.fifos.as_ref().and_then(|f| f.stdin.clone());
            let status = attached(client, &id, "", tty, true, stdin.as_deref(), readers).await?;
            client
                .tasks()
                .delete(pb::DeleteTaskRequest {
                    container_id: id.clone(),
                    force: false,
                })
                .await
                .map_err(&st)?;
            ok_or_exit(status)?;
        }
        TasksCommand::List { quiet } => {
            let list = client
                .tasks()
                .list(pb::ListTasksRequest {})
                .await
                .map_err(&st)?
                .into_inner()
                .tasks;
            if quiet {
                for t in list {
                    println!("{}", t.id);
                }
                return Ok(());
            }
            let mut rows = vec![vec!["TASK".to_owned(), "PID".into(), "STATUS".into()]];
            for t in list {
                // a stopped task without an exit time: rcd is still cleaning up after a
                // dead shim and does not know the exit status yet
                let status =
                    if t.status == pb::TaskStatus::Stopped as i32 && !t.exited_at.is_empty() {
                        format!("STOPPED (exit {})", t.exit_status)
                    } else {
                        status_name(t.status).to_owned()
                    };
                rows.push(vec![t.id, t.pid.to_string(), status]);
            }
            print!("{}", table(&rows));
        }
        TasksCommand::Kill {
            signal,
            all,
            exec_id,
            id,
        } => {
            let signal = parse_signal(&signal)?;
            if all && exec_id.is_some() {
                bail!("--all and --exec-id exclude each other");
            }
            client
                .tasks()
                .kill(pb::KillTaskRequest {
                    container_id: id,
                    exec_id: exec_id.unwrap_or_default(),
                    signal,
                    all,
                })
                .await
                .map_err(&st)?;
        }
        TasksCommand::Exec {
            exec_id,
            tty,
            detach,
            cwd,
            user,
            env,
            id,
            args,
        } => {
            let mut io = Io::new(&format!("{id}-{exec_id}"), tty, detach, false)?;
            client
                .tasks()
                .exec(pb::ExecTaskRequest {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                    args,
                    env,
                    cwd: cwd.unwrap_or_default(),
                    user: user.unwrap_or_default(),
                    stdio: Some(io.stdio()),
                })
                .await
                .map_err(&st)?;
            if detach {
                client
                    .tasks()
                    .start(pb::StartTaskRequest {
                        container_id: id,
                        exec_id,
                    })
                    .await
                    .map_err(&st)?;
                return Ok(());
            }
            let readers = io.readers_take().unwrap_or(Readers::none());
            let stdin = io.fifos.as_ref().and_then(|f| f.stdin.clone());
            let status =
                attached(client, &id, &exec_id, tty, true, stdin.as_deref(), readers).await;
            let _ = client
                .tasks()
                .delete_process(pb::DeleteProcessRequest {
                    container_id: id,
                    exec_id,
                })
                .await;
            ok_or_exit(status?)?;
        }
        TasksCommand::Ps { id } => {
            let pids = client
                .tasks()
                .list_pids(pb::ListPidsRequest { container_id: id })
                .await
                .map_err(&st)?
                .into_inner()
                .pids;
            let mut rows = vec![vec!["PID".to_owned(), "INFO".into()]];
            for p in pids {
                rows.push(vec![p.to_string(), "-".into()]);
            }
            print!("{}", table(&rows));
        }
        TasksCommand::Metrics { id } => {
            let m = client
                .tasks()
                .metrics(pb::TaskMetricsRequest {
                    container_id: id.clone(),
                })
                .await
                .map_err(&st)?
                .into_inner();
            println!("ID    TIMESTAMP");
            println!("{id}    {}\n", chrono_now());
            let limit = if m.memory_limit == 0 || m.memory_limit >= (1 << 62) {
                "unlimited".to_owned()
            } else {
                human_size(m.memory_limit)
            };
            let rows = vec![
                vec!["METRIC".to_owned(), "VALUE".into()],
                vec!["memory.usage_in_bytes".into(), m.memory_usage.to_string()],
                vec!["memory.limit".into(), limit],
                vec![
                    "memory.max_usage_in_bytes".into(),
                    m.memory_max_usage.to_string(),
                ],
                vec!["cpuacct.usage".into(), m.cpu_usage_total_ns.to_string()],
                vec!["cpuacct.usage_user".into(), m.cpu_usage_user_ns.to_string()],
                vec![
                    "cpuacct.usage_sys".into(),
                    m.cpu_usage_kernel_ns.to_string(),
                ],
                vec!["pids.current".into(), m.pids_current.to_string()],
                vec!["pids.limit".into(), m.pids_limit.to_string()],
            ];
            print!("{}", table(&rows));
        }
        TasksCommand::Pause { id } => {
            client
                .tasks()
                .pause(pb::PauseTaskRequest { container_id: id })
                .await
                .map_err(&st)?;
        }
        TasksCommand::Resume { id } => {
            client
                .tasks()
                .resume(pb::ResumeTaskRequest { container_id: id })
                .await
                .map_err(&st)?;
        }
        TasksCommand::Attach { id } => {
            let p = client
                .tasks()
                .get(pb::GetTaskRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                })
                .await
                .map_err(&st)?
                .into_inner()
                .process
                .unwrap_or_default();
            if p.stdout.is_empty() && p.stdin.is_empty() {
                bail!("task {id} has no stdio to attach to (started with --null-io?)");
            }
            let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
            let (stdin, stdout, stderr) = (path(&p.stdin), path(&p.stdout), path(&p.stderr));
            for p in [&stdin, &stdout, &stderr].into_iter().flatten() {
                if !p.exists() {
                    bail!(
                        "task {id}: its stdio {} is gone (not started by rctr on this host?)",
                        p.display()
                    );
                }
            }
            let readers = Readers::open(stdout.as_deref(), stderr.as_deref())?;
            let status = attached(
                client,
                &id,
                "",
                p.terminal,
                false,
                stdin.as_deref(),
                readers,
            )
            .await?;
            ok_or_exit(status)?;
        }
        TasksCommand::Delete {
            force,
            exec_id,
            ids,
        } => {
            let mut failed = false;
            for id in ids {
                let r = match &exec_id {
                    Some(e) => {
                        client
                            .tasks()
                            .delete_process(pb::DeleteProcessRequest {
                                container_id: id.clone(),
                                exec_id: e.clone(),
                            })
                            .await
                    }
                    None => {
                        // its FIFOs, if rctr made them, go with it
                        let stdio = client
                            .tasks()
                            .get(pb::GetTaskRequest {
                                container_id: id.clone(),
                                exec_id: String::new(),
                            })
                            .await
                            .ok()
                            .and_then(|r| r.into_inner().process);
                        let r = client
                            .tasks()
                            .delete(pb::DeleteTaskRequest {
                                container_id: id.clone(),
                                force,
                            })
                            .await;
                        if r.is_ok() {
                            if let Some(p) = stdio {
                                remove_fifo_dir_of(&p.stdout);
                            }
                        }
                        r
                    }
                };
                match r {
                    Ok(_) => {}
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

fn chrono_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// `--rm` / foreground cleanup helpers for `run`.
pub(crate) async fn delete_task(client: &Client, id: &str) -> Result<()> {
    client
        .tasks()
        .delete(pb::DeleteTaskRequest {
            container_id: id.to_owned(),
            force: false,
        })
        .await
        .map_err(st(client))?;
    Ok(())
}
