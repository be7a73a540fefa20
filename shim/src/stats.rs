//! Task metrics from the container's cgroup v1 hierarchies, in containerd's cgroups v1
//! `Metrics` message (what `ctr tasks metrics` decodes).

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::Error;

pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

/// controller → cgroup path, from `/proc/<pid>/cgroup` (v1 lines only).
pub fn cgroup_paths(pid: i32) -> Result<HashMap<String, String>, Error> {
    let file = format!("/proc/{pid}/cgroup");
    let text =
        std::fs::read_to_string(&file).map_err(|e| Error::Io(format!("reading {file}"), e))?;
    Ok(parse_proc_cgroup(&text))
}

pub fn parse_proc_cgroup(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        for c in ctrls.split(',').filter(|c| !c.is_empty()) {
            out.insert(c.to_owned(), path.to_owned());
        }
    }
    out
}

pub fn dir(paths: &HashMap<String, String>, ctrl: &str) -> Option<PathBuf> {
    let p = paths.get(ctrl)?;
    // cpu and cpuacct are usually co-mounted as "cpu,cpuacct".
    let root = Path::new("/sys/fs/cgroup");
    [ctrl.to_owned(), "cpu,cpuacct".to_owned()]
        .iter()
        .map(|m| root.join(m).join(p.trim_start_matches('/')))
        .find(|d| d.is_dir())
}

fn read_u64(d: &Path, file: &str) -> u64 {
    std::fs::read_to_string(d.join(file))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn read_kv(d: &Path, file: &str) -> HashMap<String, u64> {
    std::fs::read_to_string(d.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn entry(d: &Path, prefix: &str) -> MemoryEntry {
    let mut e = MemoryEntry::new();
    e.usage = read_u64(d, &format!("{prefix}.usage_in_bytes"));
    e.max = read_u64(d, &format!("{prefix}.max_usage_in_bytes"));
    e.limit = read_u64(d, &format!("{prefix}.limit_in_bytes"));
    e.failcnt = read_u64(d, &format!("{prefix}.failcnt"));
    e
}

pub fn metrics(paths: &HashMap<String, String>) -> Metrics {
    let mut m = Metrics::new();
    if let Some(d) = dir(paths, "pids") {
        let mut p = PidsStat::new();
        p.current = read_u64(&d, "pids.current");
        p.limit = read_u64(&d, "pids.max"); // "max" reads as 0: no limit
        m.pids = Some(p).into();
    }
    if let Some(d) = dir(paths, "cpuacct") {
        let mut u = CPUUsage::new();
        u.total = read_u64(&d, "cpuacct.usage");
        u.per_cpu = std::fs::read_to_string(d.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let st = read_kv(&d, "cpuacct.stat");
        // USER_HZ ticks to nanoseconds.
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        u.user = st.get("user").copied().unwrap_or(0) * (1_000_000_000 / hz);
        u.kernel = st.get("system").copied().unwrap_or(0) * (1_000_000_000 / hz);
        let mut c = CPUStat::new();
        c.usage = Some(u).into();
        if let Some(d) = dir(paths, "cpu") {
            let s = read_kv(&d, "cpu.stat");
            let mut t = Throttle::new();
            t.periods = s.get("nr_periods").copied().unwrap_or(0);
            t.throttled_periods = s.get("nr_throttled").copied().unwrap_or(0);
            t.throttled_time = s.get("throttled_time").copied().unwrap_or(0);
            c.throttling = Some(t).into();
        }
        m.cpu = Some(c).into();
    }
    if let Some(d) = dir(paths, "memory") {
        let s = read_kv(&d, "memory.stat");
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        let mut ms = MemoryStat::new();
        ms.cache = g("cache");
        ms.rss = g("rss");
        ms.rss_huge = g("rss_huge");
        ms.mapped_file = g("mapped_file");
        ms.dirty = g("dirty");
        ms.writeback = g("writeback");
        ms.pg_pg_in = g("pgpgin");
        ms.pg_pg_out = g("pgpgout");
        ms.pg_fault = g("pgfault");
        ms.pg_maj_fault = g("pgmajfault");
        ms.inactive_anon = g("inactive_anon");
        ms.active_anon = g("active_anon");
        ms.inactive_file = g("inactive_file");
        ms.active_file = g("active_file");
        ms.unevictable = g("unevictable");
        ms.hierarchical_memory_limit = g("hierarchical_memory_limit");
        ms.hierarchical_swap_limit = g("hierarchical_memsw_limit");
        ms.total_cache = g("total_cache");
        ms.total_rss = g("total_rss");
        ms.total_rss_huge = g("total_rss_huge");
        ms.total_mapped_file = g("total_mapped_file");
        ms.total_dirty = g("total_dirty");
        ms.total_writeback = g("total_writeback");
        ms.total_pg_pg_in = g("total_pgpgin");
        ms.total_pg_pg_out = g("total_pgpgout");
        ms.total_pg_fault = g("total_pgfault");
        ms.total_pg_maj_fault = g("total_pgmajfault");
        ms.total_inactive_anon = g("total_inactive_anon");
        ms.total_active_anon = g("total_active_anon");
        ms.total_inactive_file = g("total_inactive_file");
        ms.total_active_file = g("total_active_file");
        ms.total_unevictable = g("total_unevictable");
        ms.usage = Some(entry(&d, "memory")).into();
        ms.swap = Some(entry(&d, "memory.memsw")).into();
        ms.kernel = Some(entry(&d, "memory.kmem")).into();
        ms.kernel_tcp = Some(entry(&d, "memory.kmem.tcp")).into();
        m.memory = Some(ms).into();
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_cgroup() {
        let p = parse_proc_cgroup(
            "12:pids:/c1\n5:cpu,cpuacct:/c1\n3:memory:/c1\n1:name=systemd:/x\n0::/u\n",
        );
        assert_eq!(p["pids"], "/c1");
        assert_eq!(p["cpu"], "/c1");
        assert_eq!(p["cpuacct"], "/c1");
        assert_eq!(p["memory"], "/c1");
        assert_eq!(p["name=systemd"], "/x");
        assert!(!p.contains_key(""));
    }
}
