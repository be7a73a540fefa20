use super::{validate_id, Global};
use crate::cli::Create;
use crate::executor::RunrExecutor;
use crate::foreground;
use anyhow::{bail, Context, Result};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::state::State;
use libcontainer::syscall::syscall::SyscallType;
use std::time::Duration;

pub enum Mode {
    Create,
    Run { detach: bool, keep: bool },
}

/// `create`, and `run` (= create + start + wait + delete). Returns the exit code for `run`.
pub fn create(g: &Global, a: &Create, mode: Mode) -> Result<i32> {
    validate_id(&a.id)?;
    if a.pidfd_socket.is_some() {
        bail!("--pidfd-socket is not supported by runr");
    }
    let root = g.ensure_root()?;
    if State::file_path(&root.join(&a.id)).exists() || root.join(&a.id).exists() {
        bail!("container \"{}\" already exists", a.id);
    }
    let bundle = std::fs::canonicalize(&a.bundle)
        .with_context(|| format!("bundle directory {} does not exist", a.bundle.display()))?;
    let spec = runr::bundle::load_spec(&bundle)?;
    if g.systemd_cgroup {
        runr::bundle::check_systemd_cgroup(&spec)?;
    }
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let foreground = matches!(mode, Mode::Run { detach: false, .. });
    if terminal && a.console_socket.is_none() && !foreground {
        bail!("process.terminal is true but there is no --console-socket to send the pty to: give one, or run in the foreground");
    }
    let (own_console, console_path) =
        foreground::console_for(terminal, a.console_socket.as_deref(), &root, &a.id)?;
    if foreground {
        foreground::become_subreaper();
    }
    let mut container = ContainerBuilder::new(a.id.clone(), SyscallType::default())
        .with_executor(RunrExecutor)
        .with_pid_file(a.pid_file.as_ref())?
        .with_console_socket(console_path.as_ref())
        .with_root_path(&root)?
        .with_preserved_fds(a.preserve_fds)
        .validate_id()?
        .as_init(&bundle)
        .with_systemd(g.systemd_cgroup)
        .with_detach(true)
        .with_no_pivot(a.no_pivot)
        .build()
        .map_err(|e| {
            let e = anyhow::Error::new(e).context(format!("failed to create container \"{}\"", a.id));
            match runr::bundle::low_memory_limit(&spec) {
                Some(limit) => e.context(format!(
                    "the memory limit of {limit} bytes is probably too low for the container to start"
                )),
                None => e,
            }
        })?;
    let Mode::Run { detach, keep } = mode else {
        return Ok(0);
    };
    let run = || -> Result<i32> {
        let master = match &own_console {
            Some(c) => Some(c.receive_master(Duration::from_secs(10))?),
            None => None,
        };
        drop(own_console);
        container
            .start()
            .with_context(|| format!("failed to start container \"{}\"", a.id))?;
        if detach {
            return Ok(0);
        }
        let pid = container.pid().context("container has no init pid")?;
        let sfd = foreground::block_signals()?;
        foreground::wait(pid, sfd, master)
    };
    let result = run();
    if !detach {
        // the container's other processes are reparented to us when its init dies: reap them
        // so that its cgroup can be removed
        foreground::reap_all();
    }
    if !keep && (!detach || result.is_err()) {
        let _ = container.refresh_state();
        if let Err(e) = container.delete(true) {
            tracing::warn!("failed to delete container {}: {e:#}", a.id);
        }
    }
    result
}
