use super::Global;
use crate::cli::Exec;
use crate::executor::RunrExecutor;
use crate::foreground;
use anyhow::{bail, Context, Result};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::ContainerStatus;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::Process;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub fn exec(g: &Global, a: &Exec) -> Result<i32> {
    if a.pidfd_socket.is_some() {
        bail!("--pidfd-socket is not supported by runr");
    }
    let c = g.load(&a.id)?;
    match c.status() {
        ContainerStatus::Running => {}
        ContainerStatus::Paused if a.ignore_paused => {}
        ContainerStatus::Paused => bail!(
            "cannot exec in paused container \"{}\": resume it first",
            a.id
        ),
        s => bail!(
            "cannot exec in container \"{}\": it is {}, not running",
            a.id,
            super::state::status_str(s)
        ),
    }
    // As runc does: the exec'd process starts from the container's own process (user, cwd,
    // env, capabilities, rlimits) with the flags applied on top; --process replaces it whole.
    let spec = oci_spec::runtime::Spec::load(c.bundle().join("config.json"))
        .with_context(|| format!("failed to read config of container \"{}\"", a.id))?;
    let mut process = match &a.process {
        Some(p) => read_process(p)?,
        None => {
            if a.command.is_empty() {
                bail!("exec needs a command or --process FILE");
            }
            process_from_flags(spec.process().clone().unwrap_or_default(), a)?
        }
    };
    let nnp = a.no_new_privs || process.no_new_privileges() == Some(true);
    let filter = runr::seccomp::plan(&spec, Some(&process), nnp, &g.root)?;
    if let Some((_, runr::seccomp::Privilege::Borrow { added: true })) = &filter {
        runr::seccomp::lend_sys_admin(&mut process);
    }
    let exec_seccomp = match filter {
        Some(_) => None,
        None => runr::bundle::libcontainer_compat(&spec, c.bundle(), None)
            .as_ref()
            .unwrap_or(&spec)
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().clone()),
    };
    let terminal = process.terminal().unwrap_or(false);
    if terminal && a.console_socket.is_none() && a.detach {
        bail!("a pseudo-TTY for a detached exec needs --console-socket");
    }
    let (own_console, console_path) =
        foreground::console_for(terminal, a.console_socket.as_deref(), &g.root, &a.id)?;
    let process_file = tempfile_in(&g.root, &a.id)?;
    std::fs::write(&process_file.0, serde_json::to_vec(&process)?)
        .with_context(|| format!("failed to write {}", process_file.0.display()))?;
    if !a.detach {
        foreground::become_subreaper();
    }
    let mut b = ContainerBuilder::new(a.id.clone(), SyscallType::default())
        .with_executor(RunrExecutor {
            filter,
            exec_seccomp,
        })
        .with_root_path(&g.root)?
        .with_console_socket(console_path.as_ref())
        .with_pid_file(a.pid_file.as_ref())?
        .with_preserved_fds(a.preserve_fds)
        .validate_id()?
        .as_tenant()
        .with_detach(console_path.is_some() || a.detach)
        .with_process(Some(&process_file.0))
        .with_ignore_paused(a.ignore_paused)
        .with_sub_cgroup(a.cgroup.clone());
    if a.no_new_privs {
        b = b.with_no_new_privs(true);
    }
    let pid = b
        .build()
        .with_context(|| format!("failed to exec in container \"{}\"", a.id))?;
    drop(process_file);
    if a.detach {
        return Ok(0);
    }
    let master = match &own_console {
        Some(c) => Some(c.receive_master(Duration::from_secs(10))?),
        None => None,
    };
    drop(own_console);
    let sfd = foreground::block_signals()?;
    foreground::wait(pid, sfd, master)
}

fn read_process(path: &Path) -> Result<Process> {
    let data = std::fs::read(path)
        .with_context(|| format!("failed to read process file {}", path.display()))?;
    let de = &mut serde_json::Deserializer::from_slice(&data);
    serde_path_to_error::deserialize(de).map_err(|e| {
        anyhow::anyhow!(
            "invalid process file {}: field `{}`: {}",
            path.display(),
            e.path(),
            e.inner()
        )
    })
}

/// The container's process with exec's flags applied.
fn process_from_flags(mut p: Process, a: &Exec) -> Result<Process> {
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    let mut env = p.env().clone().unwrap_or_default();
    for e in &a.env {
        let (k, _) = e
            .split_once('=')
            .with_context(|| format!("invalid --env {e:?}: expected KEY=VALUE"))?;
        env.retain(|x| x.split_once('=').map(|(xk, _)| xk) != Some(k));
        env.push(e.clone());
    }
    p.set_env(Some(env));
    if let Some(cwd) = &a.cwd {
        if !cwd.is_absolute() {
            bail!("invalid --cwd {}: must be an absolute path", cwd.display());
        }
        p.set_cwd(cwd.clone());
    }
    if let Some(u) = &a.user {
        let (uid, gid) = parse_user(u)?;
        let mut user = p.user().clone();
        user.set_uid(uid);
        if let Some(gid) = gid {
            user.set_gid(gid);
        }
        // the image's supplementary groups belong to the image's user, not to this one
        user.set_additional_gids(None);
        p.set_user(user);
    }
    if !a.additional_gids.is_empty() {
        let mut user = p.user().clone();
        let mut gids = user.additional_gids().clone().unwrap_or_default();
        gids.extend(&a.additional_gids);
        user.set_additional_gids(Some(gids));
        p.set_user(user);
    }
    if !a.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        let mut add = std::collections::HashSet::new();
        for name in &a.cap {
            let cap: oci_spec::runtime::Capability = name.parse().map_err(|_| {
                anyhow::anyhow!(
                    "invalid --cap {name:?}: not a capability name (e.g. CAP_NET_ADMIN)"
                )
            })?;
            add.insert(cap);
        }
        let merge = |s: &Option<oci_spec::runtime::Capabilities>| {
            let mut s = s.clone().unwrap_or_default();
            s.extend(add.iter().copied());
            Some(s)
        };
        caps.set_bounding(merge(caps.bounding()));
        caps.set_effective(merge(caps.effective()));
        caps.set_permitted(merge(caps.permitted()));
        caps.set_inheritable(merge(caps.inheritable()));
        caps.set_ambient(merge(caps.ambient()));
        p.set_capabilities(Some(caps));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(profile) = &a.apparmor {
        p.set_apparmor_profile(Some(profile.clone()));
    }
    Ok(p)
}

/// A file path removed on drop.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tempfile_in(dir: &Path, id: &str) -> Result<TempPath> {
    Ok(TempPath(
        dir.join(format!(".exec-{id}-{}.json", std::process::id())),
    ))
}

/// `UID[:GID]`, numeric as runc takes it.
fn parse_user(s: &str) -> Result<(u32, Option<u32>)> {
    let bad = || anyhow::anyhow!("invalid --user {s:?}: expected UID or UID:GID (numbers)");
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid = u.parse().map_err(|_| bad())?;
    let gid = g.map(|g| g.parse().map_err(|_| bad())).transpose()?;
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    #[test]
    fn users() {
        assert_eq!(super::parse_user("1000").unwrap(), (1000, None));
        assert_eq!(super::parse_user("1000:50").unwrap(), (1000, Some(50)));
        assert!(super::parse_user("app").is_err());
        assert!(super::parse_user("1:x").is_err());
    }
}
