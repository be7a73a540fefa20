//! Removal of directory trees off the callers' paths.
//!
//! On this kind of host, removing a container's bundle and its snapshot costs more than the
//! rest of its deletion: each `rmdir` on ext4 costs milliseconds, and unmounting a writable
//! overlay syncs the whole upper filesystem first (tens of milliseconds, more while anything
//! else writes). containerd leaves snapshot directories to its garbage collector for the
//! same reason. Here the caller renames the tree out of the way (one cheap, atomic `rename`,
//! after which its name is free for reuse) and hands it to one worker thread that unmounts
//! whatever is still mounted below it and removes it.
//!
//! One thread, first in first out: a bundle handed over before its snapshot is unmounted
//! before the snapshot's directories go, so nothing is deleted under a live overlay. A tree
//! that still has a mount below it after the unmounts is left where it is, with a warning:
//! the next start of the daemon tries again (`clean`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

struct Queue {
    jobs: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<PathBuf>,
    /// Jobs taken but not finished (0 or 1).
    running: usize,
}

static Q: OnceLock<&'static Queue> = OnceLock::new();

fn queue() -> &'static Queue {
    Q.get_or_init(|| {
        let q: &'static Queue = Box::leak(Box::new(Queue {
            jobs: Mutex::new(State::default()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("trash".into())
            .spawn(move || work(q))
            .expect("spawning the trash thread");
        q
    })
}

fn work(q: &'static Queue) {
    loop {
        let path = {
            let mut st = q.jobs.lock().unwrap();
            loop {
                if let Some(p) = st.waiting.pop_front() {
                    st.running += 1;
                    break p;
                }
                st = q.changed.wait(st).unwrap();
            }
        };
        remove(&path);
        q.jobs.lock().unwrap().running -= 1;
        q.changed.notify_all();
    }
}

/// Hands `path` (already renamed to a name nobody else uses) to the worker.
pub fn discard(path: PathBuf) {
    let q = queue();
    q.jobs.lock().unwrap().waiting.push_back(path);
    q.changed.notify_all();
}

/// Moves `path` into `trash_dir` under a fresh name and hands it to the worker; `path` is
/// free as soon as this returns. A missing `path` is fine. If the rename fails (another
/// filesystem, a mount point), the tree is removed here and now.
pub fn discard_renamed(path: &Path, trash_dir: &Path) {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if let Err(e) = std::fs::create_dir_all(trash_dir) {
        warn!(path = %trash_dir.display(), "creating the trash directory: {e}");
    }
    let name = format!(
        "{}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let to = trash_dir.join(name);
    match std::fs::rename(path, &to) {
        Ok(()) => discard(to),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            debug!(path = %path.display(), "renaming into the trash failed ({e}): removing in place");
            remove(path);
        }
    }
}

/// Waits until every tree handed over so far is gone, at most `limit`. Whether it got there.
pub fn flush(limit: Duration) -> bool {
    let Some(q) = Q.get() else {
        return true;
    };
    let end = Instant::now() + limit;
    let mut st = q.jobs.lock().unwrap();
    while !st.waiting.is_empty() || st.running > 0 {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        st = q.changed.wait_timeout(st, left).unwrap().0;
    }
    true
}

/// At start-up: everything in `trash_dir` (what a killed daemon had not removed yet) goes.
pub fn clean(trash_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(trash_dir) else {
        return;
    };
    for e in rd.flatten() {
        remove(&e.path());
    }
}

/// Unmounts everything mounted at or below `path`, deepest first, then removes the tree,
/// unless a mount is still there.
fn remove(path: &Path) {
    let under = mounts_under(path);
    for m in under.iter().rev() {
        if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
            if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
                warn!(path = %m.display(), "unmounting in the trash: {e}");
            }
        }
    }
    if !under.is_empty() && !mounts_under(path).is_empty() {
        warn!(path = %path.display(), "still mounted after unmounting: left in place");
        return;
    }
    match std::fs::remove_dir_all(path) {
        Ok(()) => debug!(path = %path.display(), "removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(path = %path.display(), "removing: {e}"),
    }
}

/// Mount points at or below `path`, in mount order (parents before children).
fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mount_points_under(&text, path)
}

fn mount_points_under(mountinfo: &str, path: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(path))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mount_points_below_a_path_only() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
30 22 0:50 / /s/trash/1-0-a/rootfs rw - overlay overlay rw,lowerdir=/x
31 30 0:51 / /s/trash/1-0-a/rootfs/proc rw - proc proc rw
32 22 0:52 / /s/trash/1-0-ab rw - tmpfs tmpfs rw
33 22 0:53 / /s/trash/with\\040space rw - tmpfs tmpfs rw
";
        assert_eq!(
            mount_points_under(info, Path::new("/s/trash/1-0-a")),
            vec![
                PathBuf::from("/s/trash/1-0-a/rootfs"),
                PathBuf::from("/s/trash/1-0-a/rootfs/proc")
            ]
        );
        assert_eq!(
            mount_points_under(info, Path::new("/s/trash/with space")),
            vec![PathBuf::from("/s/trash/with space")]
        );
        assert!(mount_points_under(info, Path::new("/s/other")).is_empty());
    }

    #[test]
    fn a_discarded_tree_is_gone_after_flush_and_its_name_free_at_once() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("bundle");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), "x").unwrap();
        let trash = d.path().join("trash");
        discard_renamed(&tree, &trash);
        assert!(!tree.exists());
        std::fs::create_dir(&tree).unwrap();
        assert!(flush(Duration::from_secs(10)));
        assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0);
        // a missing tree is fine
        discard_renamed(&d.path().join("nothing"), &trash);
        assert!(flush(Duration::from_secs(10)));
    }

    #[test]
    fn a_mount_below_a_discarded_tree_is_unmounted_before_removal() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("bundle");
        let rootfs = tree.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &rootfs,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::fs::write(rootfs.join("f"), "x").unwrap();
        let trash = d.path().join("trash");
        discard_renamed(&tree, &trash);
        assert!(flush(Duration::from_secs(10)));
        assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0);
        assert!(mounts_under(d.path()).is_empty());
    }

    #[test]
    fn clean_removes_what_a_killed_daemon_left() {
        let d = tempfile::tempdir().unwrap();
        let trash = d.path().join("trash");
        std::fs::create_dir_all(trash.join("1-0-x/rootfs/etc")).unwrap();
        std::fs::write(trash.join("1-0-x/rootfs/etc/passwd"), "root").unwrap();
        clean(&trash);
        assert_eq!(std::fs::read_dir(&trash).unwrap().count(), 0);
        clean(&d.path().join("absent"));
    }
}
