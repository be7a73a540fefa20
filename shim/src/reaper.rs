//! One place reaps every child: the shim is a child subreaper, so container inits and exec'd
//! processes are reparented to it when the runtime that forked them exits. A `waitpid(-1)`
//! loop would otherwise steal the exit codes of the runtime commands the shim itself waits
//! for, so those wait here too.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long an exit nobody claimed is kept: long enough for the shim to read a pid file of a
/// process that exited at once, short enough that a reused pid is never mistaken for it.
const UNCLAIMED_TTL: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
pub struct Exit {
    pub pid: i32,
    /// Exit code, or 128 + signal when killed.
    pub status: u32,
    pub at: SystemTime,
    seen: Instant,
}

#[derive(Default)]
pub struct Reaper {
    exits: Mutex<HashMap<i32, Exit>>,
    cv: Condvar,
    /// No reaping thread: `wait` waits for its pid itself (one-shot actions).
    direct: bool,
}

impl Reaper {
    pub fn direct() -> Reaper {
        Reaper {
            direct: true,
            ..Default::default()
        }
    }

    /// Spawns `cmd` so that its exit is kept for [`Reaper::wait`] (never call `Child::wait`).
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<Child> {
        let mut exits = self.exits.lock().unwrap();
        let child = cmd.spawn()?;
        // An old, unclaimed exit of the same pid is not this child's.
        exits.remove(&(child.id() as i32));
        Ok(child)
    }

    /// Blocks until `pid` (spawned through [`Reaper::spawn`]) has exited.
    pub fn wait(&self, pid: i32) -> Exit {
        if self.direct {
            let status = loop {
                match waitpid(Pid::from_raw(pid), None) {
                    Ok(WaitStatus::Exited(_, code)) => break code as u32,
                    Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as u32,
                    Ok(_) | Err(nix::Error::EINTR) => continue,
                    Err(_) => break 255,
                }
            };
            return Exit {
                pid,
                status,
                at: SystemTime::now(),
                seen: Instant::now(),
            };
        }
        let mut exits = self.exits.lock().unwrap();
        loop {
            if let Some(e) = exits.remove(&pid) {
                return e;
            }
            exits = self.cv.wait(exits).unwrap();
        }
    }

    /// The exit of `pid` if it was reaped and nobody claimed it yet. A pid that is still
    /// running has no exit, whatever an old entry says.
    pub fn take(&self, pid: i32) -> Option<Exit> {
        let mut exits = self.exits.lock().unwrap();
        let e = exits.remove(&pid)?;
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return None;
        }
        Some(e)
    }

    /// Reaps every exited child; returns their exits (also kept for `wait`/`take`).
    pub fn reap(&self) -> Vec<Exit> {
        let mut out = vec![];
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => out.push((pid, code as u32)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => out.push((pid, 128 + sig as u32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        if out.is_empty() {
            return vec![];
        }
        let now = Instant::now();
        let at = SystemTime::now();
        let mut exits = self.exits.lock().unwrap();
        exits.retain(|_, e| now.duration_since(e.seen) < UNCLAIMED_TTL);
        let out: Vec<Exit> = out
            .into_iter()
            .map(|(pid, status)| Exit {
                pid: pid.as_raw(),
                status,
                at,
                seen: now,
            })
            .collect();
        for e in &out {
            exits.insert(e.pid, *e);
        }
        self.cv.notify_all();
        out
    }
}
