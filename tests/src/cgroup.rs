//! Finding a process's cgroups (v1, v2 or hybrid) from `/proc/<pid>/cgroup` and the cgroup
//! mounts in `/proc/self/mountinfo`, and reading the limits a runtime wrote there.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone)]
pub struct CgroupMount {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory`.
    pub mountpoint: PathBuf,
    /// The cgroup that is the root of this mount (`/` unless inside a cgroup namespace).
    pub root: String,
    /// cgroup2 rather than a v1 hierarchy.
    pub v2: bool,
    /// For v1: the controllers (and `name=...`) of the hierarchy.
    pub controllers: Vec<String>,
}

/// Every cgroup hierarchy mounted in this mount namespace.
pub fn mounts() -> Vec<CgroupMount> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let (root, mountpoint, fstype, superopts) = (pre[3], pre[4], post[0], post[2]);
        let v2 = match fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let controllers = if v2 {
            Vec::new()
        } else {
            superopts
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("release_agent"))
                .map(str::to_owned)
                .collect()
        };
        out.push(CgroupMount {
            mountpoint: PathBuf::from(mountpoint),
            root: root.to_owned(),
            v2,
            controllers,
        });
    }
    out
}

fn under_mount(m: &CgroupMount, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(m.root.trim_end_matches('/'))
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .unwrap_or(path);
    m.mountpoint.join(rel.trim_start_matches('/'))
}

/// The cgroup directories of one process.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub pid: i32,
    /// v1: controller (or `name=...`) to directory.
    pub v1: HashMap<String, PathBuf>,
    /// The unified (cgroup2) directory, if a cgroup2 hierarchy is mounted.
    pub v2: Option<PathBuf>,
}

impl Cgroup {
    /// The cgroups `pid` is in, as seen from the test's namespaces.
    pub fn of(pid: i32) -> Result<Cgroup> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .with_context(|| format!("reading /proc/{pid}/cgroup"))?;
        let mounts = mounts();
        let mut v1 = HashMap::new();
        let mut v2 = None;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if ctrls.is_empty() {
                if let Some(m) = mounts.iter().find(|m| m.v2) {
                    v2 = Some(under_mount(m, path));
                }
                continue;
            }
            let names: Vec<&str> = ctrls.split(',').collect();
            let Some(m) = mounts
                .iter()
                .find(|m| !m.v2 && names.iter().all(|n| m.controllers.iter().any(|c| c == n)))
            else {
                continue;
            };
            for n in names {
                v1.insert(n.to_owned(), under_mount(m, path));
            }
        }
        if v1.is_empty() && v2.is_none() {
            bail!("no cgroup of pid {pid} found in /proc/{pid}/cgroup:\n{text}");
        }
        Ok(Cgroup { pid, v1, v2 })
    }

    /// True when `controller` is handled by cgroup v2 for this process.
    pub fn is_v2(&self, controller: &str) -> bool {
        !self.v1.contains_key(controller)
    }

    /// The directory holding `controller`'s files.
    pub fn dir(&self, controller: &str) -> PathBuf {
        match self.v1.get(controller) {
            Some(d) => d.clone(),
            None => self
                .v2
                .clone()
                .unwrap_or_else(|| panic!("no cgroup for controller {controller}: {self:?}")),
        }
    }

    /// Reads `file` of `controller`, trimmed.
    pub fn read(&self, controller: &str, file: &str) -> String {
        let p = self.dir(controller).join(file);
        fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
            .trim()
            .to_owned()
    }

    /// Reads the v1 or the v2 file of `controller`, whichever this process uses.
    pub fn read_either(&self, controller: &str, v1_file: &str, v2_file: &str) -> String {
        if self.is_v2(controller) {
            self.read(controller, v2_file)
        } else {
            self.read(controller, v1_file)
        }
    }

    /// The memory limit in bytes, `None` when unlimited.
    pub fn memory_limit(&self) -> Option<u64> {
        let s = self.read_either("memory", "memory.limit_in_bytes", "memory.max");
        match s.as_str() {
            "max" => None,
            // v1 "unlimited" is PAGE_COUNTER_MAX pages, a value near i64::MAX
            n => n.parse::<u64>().ok().filter(|v| *v < (1 << 62)),
        }
    }

    /// CFS `(quota, period)`; quota `-1` when unlimited.
    pub fn cpu_quota_period(&self) -> (i64, u64) {
        if self.is_v2("cpu") {
            let s = self.read("cpu", "cpu.max");
            let mut it = s.split_whitespace();
            let q = it.next().unwrap_or("max");
            let p = it.next().unwrap_or("100000").parse().unwrap();
            (if q == "max" { -1 } else { q.parse().unwrap() }, p)
        } else {
            (
                self.read("cpu", "cpu.cfs_quota_us").parse().unwrap(),
                self.read("cpu", "cpu.cfs_period_us").parse().unwrap(),
            )
        }
    }

    /// `pids.max`, `None` when unlimited.
    pub fn pids_max(&self) -> Option<u64> {
        self.read("pids", "pids.max").parse().ok()
    }

    /// Whether the freezer says the cgroup is frozen.
    pub fn frozen(&self) -> bool {
        if self.is_v2("freezer") {
            self.read("freezer", "cgroup.freeze") == "1"
        } else {
            self.read("freezer", "freezer.state") == "FROZEN"
        }
    }
}

/// Directories named `name` directly under any mounted cgroup hierarchy's root
/// (where a runtime puts `cgroupsPath: "/<name>"`).
pub fn leftover_dirs(name: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mounts()
        .iter()
        .map(|m| m.mountpoint.join(name))
        .filter(|p| p.exists())
        .collect();
    // also catch hierarchies that are present under /sys/fs/cgroup but not in our mountinfo
    if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let p = e.path().join(name);
            if p.exists() && !out.contains(&p) {
                out.push(p);
            }
        }
    }
    let p = Path::new("/sys/fs/cgroup").join(name);
    if p.join("cgroup.procs").exists() && !out.contains(&p) {
        out.push(p);
    }
    out
}

/// Processes whose cgroup path (in any hierarchy) is `/<name>` or below it.
pub fn pids_in(name: &str) -> Vec<i32> {
    let needle = format!("/{name}");
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(text) = fs::read_to_string(e.path().join("cgroup")) else {
            continue;
        };
        let hit = text.lines().any(|l| {
            l.splitn(3, ':').nth(2).is_some_and(|p| {
                p == needle
                    || p.starts_with(&format!("{needle}/"))
                    || p.ends_with(&needle)
                    || p.contains(&format!("{needle}/"))
            })
        });
        if hit {
            out.push(pid);
        }
    }
    out
}
