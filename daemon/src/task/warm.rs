//! Keeps the kernel's cgroup migration lock "warm" while a runtime is starting processes.
//!
//! Why: every container and every exec that runr starts is moved into its cgroup by a
//! write to `cgroup.procs`. That write takes the kernel's global `cgroup_threadgroup_rwsem`
//! for writing, and a percpu rwsem's writer first waits for a full RCU grace period
//! (`rcu_sync_enter`) unless another writer came less than a grace period before. On this
//! host that wait is 5–25 ms: the largest single cost of a container start, and pure
//! waiting. runc pays it the same way.
//!
//! While a hold is taken (a task create, an exec start), a thread here writes rcd's own pid
//! into rcd's own cgroup about every millisecond: a migration that moves nothing but enters
//! the rwsem, so the grace period runs while the shim and runr start up, and runr's own
//! migration finds the lock already in its writer mode. The kernel's `favordynmods` cgroup
//! mount option keeps it in that mode permanently, for the whole host; this does it only for
//! the milliseconds a start needs. Forks and exits on the host take the rwsem's slower
//! reader path meanwhile. Nothing depends on it: where the write is refused (no writable
//! cgroupfs, a cgroup namespace), the warmer turns itself off and starts cost what they did.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Shorter than the shortest grace period seen here (about 2 ms), so the rwsem never falls
/// back to idle between two writes.
const INTERVAL: Duration = Duration::from_millis(1);
/// A hold stops warming after this long even if its guard lives on (a hung shim call).
const MAX_HOLD: Duration = Duration::from_secs(2);
/// Warming goes on this long after the last hold ends: starts in a row (a pod's containers,
/// a burst of `run -d`) then all find the lock warm.
const TAIL: Duration = Duration::from_millis(50);

const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

struct State {
    holders: usize,
    until: Instant,
    /// Warm without a guard until then (`for_a_while`).
    timed: Instant,
    disabled: bool,
    thread: bool,
}

struct Warmer {
    state: Mutex<State>,
    wake: Condvar,
}

fn warmer() -> &'static Warmer {
    static W: OnceLock<Warmer> = OnceLock::new();
    W.get_or_init(|| Warmer {
        state: Mutex::new(State {
            holders: 0,
            until: Instant::now(),
            timed: Instant::now(),
            disabled: std::env::var_os("RCD_NO_CGROUP_WARM").is_some(),
            thread: false,
        }),
        wake: Condvar::new(),
    })
}

/// Keeps the lock warm until dropped.
#[must_use = "warming stops when the guard is dropped"]
pub struct Hold(bool);

impl Drop for Hold {
    fn drop(&mut self) {
        if self.0 {
            let mut s = warmer().state.lock().unwrap();
            s.holders -= 1;
            s.timed = s.timed.max(Instant::now() + TAIL);
        }
    }
}

/// Starts warming (a no-op where the warmer is off).
pub fn hold() -> Hold {
    let w = warmer();
    let mut s = w.state.lock().unwrap();
    if !ensure_thread(&mut s) {
        return Hold(false);
    }
    s.holders += 1;
    s.until = Instant::now() + MAX_HOLD;
    w.wake.notify_one();
    Hold(true)
}

/// Warms for `d` with no guard: for a start announced by one call and made by the next
/// (an exec is registered, then started).
pub fn for_a_while(d: Duration) {
    let w = warmer();
    let mut s = w.state.lock().unwrap();
    if !ensure_thread(&mut s) {
        return;
    }
    s.timed = s.timed.max(Instant::now() + d.min(MAX_HOLD));
    w.wake.notify_one();
}

fn ensure_thread(s: &mut State) -> bool {
    if s.disabled {
        return false;
    }
    if s.thread {
        return true;
    }
    let Some(procs) = own_cgroup_procs() else {
        tracing::debug!("cgroup warmer off: no cgroup.procs of rcd's own cgroup found");
        s.disabled = true;
        return false;
    };
    let spawned = std::thread::Builder::new()
        .name("cgroup-warm".into())
        .stack_size(64 * 1024)
        .spawn(move || run(&procs));
    if let Err(e) = spawned {
        tracing::debug!("cgroup warmer off: {e}");
        s.disabled = true;
        return false;
    }
    s.thread = true;
    true
}

impl State {
    fn warming(&self) -> bool {
        let now = Instant::now();
        (self.holders > 0 && now < self.until) || now < self.timed
    }
}

fn run(procs: &Path) {
    let w = warmer();
    let pid = std::process::id().to_string();
    let mut file = None;
    loop {
        {
            let mut s = w.state.lock().unwrap();
            while !s.warming() {
                // the file is reopened per burst: rcd may have been moved to another
                // cgroup meanwhile, and an open cgroup.procs pins the old one
                file = None;
                s = w.wake.wait(s).unwrap();
            }
        }
        let f = match &mut file {
            Some(f) => f,
            None => match File::options().write(true).open(procs) {
                Ok(f) => file.insert(f),
                Err(e) => return disable(procs, e),
            },
        };
        if let Err(e) = f.write_all(pid.as_bytes()) {
            return disable(procs, e);
        }
        std::thread::sleep(INTERVAL);
    }
}

fn disable(procs: &Path, e: std::io::Error) {
    tracing::debug!("cgroup warmer off: writing to {}: {e}", procs.display());
    let mut s = warmer().state.lock().unwrap();
    s.disabled = true;
    s.thread = false;
}

/// The `cgroup.procs` of the cgroup this process is in, on the unified hierarchy if it is
/// mounted, else on the first v1 hierarchy found.
fn own_cgroup_procs() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    candidates(&own)
        .into_iter()
        .find(|(dir, magic)| fs_magic(dir) == Some(*magic) && dir.join("cgroup.procs").is_file())
        .map(|(dir, _)| dir.join("cgroup.procs"))
}

/// Directories that may hold this process's cgroup, with the filesystem magic each must
/// have, from the lines of `/proc/self/cgroup`.
fn candidates(own: &str) -> Vec<(PathBuf, i64)> {
    let root = Path::new("/sys/fs/cgroup");
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            continue;
        }
        if controllers.is_empty() {
            v2.push((root.join("unified").join(rel), CGROUP2_SUPER_MAGIC));
            v2.push((root.join(rel), CGROUP2_SUPER_MAGIC));
        } else {
            let mount = controllers.strip_prefix("name=").unwrap_or(controllers);
            v1.push((root.join(mount).join(rel), CGROUP_SUPER_MAGIC));
        }
    }
    v2.extend(v1);
    v2
}

// the field's width differs between architectures
#[allow(clippy::useless_conversion)]
fn fs_magic(dir: &Path) -> Option<i64> {
    nix::sys::statfs::statfs(dir)
        .ok()
        .map(|s| i64::from(s.filesystem_type().0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_prefer_the_unified_hierarchy() {
        let own = "12:pids:/rcd.service\n1:name=systemd:/x\n0::/rcd.service\n";
        let c = candidates(own);
        let dirs: Vec<_> = c.iter().map(|(d, _)| d.display().to_string()).collect();
        assert_eq!(
            dirs,
            [
                "/sys/fs/cgroup/unified/rcd.service",
                "/sys/fs/cgroup/rcd.service",
                "/sys/fs/cgroup/pids/rcd.service",
                "/sys/fs/cgroup/systemd/x",
            ]
        );
        assert_eq!(c[0].1, CGROUP2_SUPER_MAGIC);
        assert_eq!(c[2].1, CGROUP_SUPER_MAGIC);
    }

    #[test]
    fn candidates_skip_malformed_and_escaping_lines() {
        assert!(candidates("garbage\n3:cpu:/../../etc\n").is_empty());
        let root = candidates("0::/\n");
        assert_eq!(root[0].0, Path::new("/sys/fs/cgroup/unified/"));
    }

    #[test]
    fn this_process_finds_its_own_cgroup() {
        // every Linux host with cgroupfs mounted has one; a container without it has none
        if Path::new("/sys/fs/cgroup")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
        {
            let procs = own_cgroup_procs().expect("a cgroup.procs of our own cgroup");
            let pids = std::fs::read_to_string(&procs).unwrap();
            let me = std::process::id().to_string();
            assert!(
                pids.lines().any(|l| l == me),
                "{} lacks {me}",
                procs.display()
            );
        }
    }
}
