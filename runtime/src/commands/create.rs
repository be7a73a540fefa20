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
    let nnp = spec.process().as_ref().and_then(|p| p.no_new_privileges()) == Some(true);
    let filter = runr::seccomp::plan(&spec, spec.process().as_ref(), nnp, &root)?;
    let compat = runr::bundle::compat_bundle_dir(&root, &a.id);
    let given_bundle =
        match runr::bundle::libcontainer_compat(&spec, &bundle, filter.as_ref().map(|f| f.1)) {
            Some(fixed) => {
                write_compat_bundle(&compat, &fixed)?;
                compat.clone()
            }
            None => bundle.clone(),
        };
    let built = ContainerBuilder::new(a.id.clone(), SyscallType::default())
        .with_executor(RunrExecutor {
            filter,
            exec_seccomp: None,
        })
        .with_pid_file(a.pid_file.as_ref())?
        .with_console_socket(console_path.as_ref())
        .with_root_path(&root)?
        .with_preserved_fds(a.preserve_fds)
        .validate_id()?
        .as_init(&given_bundle)
        .with_systemd(g.systemd_cgroup)
        .with_detach(true)
        .with_no_pivot(a.no_pivot)
        .build();
    let mut container = built.map_err(|e| {
        let _ = std::fs::remove_dir_all(&compat);
        let e = anyhow::Error::new(e).context(format!("failed to create container \"{}\"", a.id));
        match runr::bundle::low_memory_limit(&spec) {
            Some(limit) => e.context(format!(
                "the memory limit of {limit} bytes is probably too low for the container to start"
            )),
            None => e,
        }
    })?;
    if given_bundle != bundle {
        // state.json (and so `state`, and hooks run from now on) names the real bundle
        container.state.bundle = bundle.clone();
        container
            .save()
            .with_context(|| format!("failed to save the state of container \"{}\"", a.id))?;
    }
    if let Some(pid) = container.pid() {
        if new_network_namespace(&spec) {
            // runc brings loopback up in a new network namespace; libcontainer leaves it down
            if let Err(e) = loopback_up(pid) {
                tracing::warn!("failed to bring up lo in container {}: {e:#}", a.id);
            }
        }
    }
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
        let _ = std::fs::remove_dir_all(&compat);
    }
    result
}

fn write_compat_bundle(dir: &std::path::Path, spec: &oci_spec::runtime::Spec) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        // left by a create that was killed; the container itself does not exist (checked above)
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("failed to remove stale {}", dir.display()))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create {}", dir.display()))?;
    let path = dir.join("config.json");
    let json = serde_json::to_vec(spec).context("failed to serialize the adjusted spec")?;
    std::fs::write(&path, json).with_context(|| format!("failed to write {}", path.display()))
}

fn new_network_namespace(spec: &oci_spec::runtime::Spec) -> bool {
    use oci_spec::runtime::LinuxNamespaceType;
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|nss| {
            nss.iter()
                .any(|ns| ns.typ() == LinuxNamespaceType::Network && ns.path().is_none())
        })
}

/// Sets IFF_UP on `lo` inside the network namespace of `pid`. setns applies to the calling
/// thread only, so a short-lived thread does it and runr itself stays in its own namespace.
fn loopback_up(pid: nix::unistd::Pid) -> Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("failed to open the network namespace of pid {pid}"))?;
    std::thread::spawn(move || -> Result<()> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("failed to enter the container's network namespace")?;
        // SAFETY: plain socket/ioctl calls on a zeroed ifreq that names "lo"
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("socket");
            }
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
                *d = *s as libc::c_char;
            }
            let r = if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
                Err(std::io::Error::last_os_error()).context("SIOCGIFFLAGS lo")
            } else {
                ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                if libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) < 0 {
                    Err(std::io::Error::last_os_error()).context("SIOCSIFFLAGS lo")
                } else {
                    Ok(())
                }
            };
            libc::close(fd);
            r
        }
    })
    .join()
    .map_err(|_| anyhow::anyhow!("loopback thread panicked"))?
}
