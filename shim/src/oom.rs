//! OOM events: a task whose memory cgroup hits its limit is reported as `/tasks/oom`, as
//! containerd's shims do (rcd's CRI reads the reason `OOMKilled` from it).
//!
//! cgroup v1: an eventfd registered on the cgroup's `memory.oom_control` through
//! `cgroup.event_control`; the kernel also signals it when the cgroup is removed, which ends
//! the watcher. cgroup v2: `memory.events` watched with inotify, an event per rise of its
//! `oom_kill` count. One small thread per task; none when the task has no memory cgroup.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::events::Publisher;

/// Starts watching the memory cgroup of `pid` (the task's init) for OOMs of task `id`.
pub fn watch(pid: i32, id: &str, events: Arc<Publisher>) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let v1 = crate::stats::dir(&crate::stats::parse_proc_cgroup(&text), "memory");
    let (id, what) = (id.to_owned(), v1.clone());
    let run: Box<dyn FnOnce() + Send> = match v1 {
        Some(dir) => match register_v1(&dir) {
            Ok((efd, ctl)) => Box::new(move || watch_v1(efd, ctl, &dir, &id, &events)),
            Err(e) => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "no OOM events");
                return;
            }
        },
        None => match v2_events(&text) {
            Some(file) => Box::new(move || watch_v2(&file, &id, &events)),
            None => return,
        },
    };
    let spawned = std::thread::Builder::new()
        .name("oom".into())
        .stack_size(64 * 1024)
        .spawn(run);
    if let Err(e) = spawned {
        tracing::warn!(cgroup = ?what, error = %e, "no OOM events");
    }
}

fn publish(events: &Publisher, id: &str) {
    let mut m = containerd_shim_protos::events::task::TaskOOM::new();
    m.container_id = id.to_owned();
    events.publish(
        containerd_shim_protos::topics::TASK_OOM_EVENT_TOPIC,
        crate::service::any("TaskOOM", &m),
    );
}

fn register_v1(dir: &Path) -> std::io::Result<(File, File)> {
    // SAFETY: eventfd returns a new descriptor this function owns, or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor owned by nothing else.
    let efd = unsafe { File::from_raw_fd(fd) };
    let ctl = File::open(dir.join("memory.oom_control"))?;
    std::fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", efd.as_raw_fd(), ctl.as_raw_fd()),
    )?;
    Ok((efd, ctl))
}

fn watch_v1(mut efd: File, _ctl: File, dir: &Path, id: &str, events: &Publisher) {
    let mut n = [0u8; 8];
    while efd.read_exact(&mut n).is_ok() {
        // the same eventfd says the cgroup is gone
        if !dir.join("memory.oom_control").exists() {
            return;
        }
        publish(events, id);
    }
}

/// The v2 `memory.events` of the process's unified cgroup, when it has the memory controller.
fn v2_events(proc_cgroup: &str) -> Option<PathBuf> {
    let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let f = Path::new("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .join("memory.events");
    f.exists().then_some(f)
}

fn oom_kills(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.lines().find_map(|l| {
        l.strip_prefix("oom_kill ")
            .and_then(|v| v.trim().parse().ok())
    })
}

fn watch_v2(file: &Path, id: &str, events: &Publisher) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let Ok(ino) = Inotify::init(InitFlags::IN_CLOEXEC) else {
        return;
    };
    if ino
        .add_watch(
            file,
            AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_DELETE_SELF,
        )
        .is_err()
    {
        return;
    }
    let mut seen = oom_kills(file).unwrap_or(0);
    while let Ok(evs) = ino.read_events() {
        if evs.iter().any(|e| {
            e.mask
                .intersects(AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF)
        }) {
            return;
        }
        let Some(now) = oom_kills(file) else {
            return;
        };
        if now > seen {
            publish(events, id);
        }
        seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_memory_events_only_when_present() {
        assert_eq!(v2_events("3:memory:/x\n"), None);
        // the unified root of this process: memory.events only where the controller is on
        let found = v2_events("0::/\n");
        assert_eq!(
            found.is_some(),
            Path::new("/sys/fs/cgroup/memory.events").exists()
        );
    }

    #[test]
    fn reads_the_oom_kill_count() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("memory.events");
        std::fs::write(&f, "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n").unwrap();
        assert_eq!(oom_kills(&f), Some(2));
        std::fs::write(&f, "low 0\n").unwrap();
        assert_eq!(oom_kills(&f), None);
    }
}
