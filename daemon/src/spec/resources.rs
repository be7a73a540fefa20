//! Resource limits: `--cpus`, shares, cpusets, memory, swap, pids, and oom_score_adj.

use super::SpecError;
use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};

/// The CFS period rcd uses for `cpus` (Docker's: 100 ms).
pub const CPU_PERIOD: u64 = 100_000;
/// Below this a container cannot even start its runtime's init (Docker's floor: 6 MiB).
pub const MIN_MEMORY: i64 = 6 << 20;

/// What the request limits; every field optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// CPUs as a fraction (`1.5`): quota = cpus × [`CPU_PERIOD`].
    pub cpus: Option<f64>,
    /// Explicit CFS quota/period (µs); `cpus` wins when both are set.
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// cgroup v1 `cpu.shares` (2..=262144).
    pub cpu_shares: Option<u64>,
    /// e.g. `0-2,4`.
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// Bytes.
    pub memory_limit: Option<i64>,
    pub memory_reservation: Option<i64>,
    /// Memory plus swap, bytes (Docker's `--memory-swap`); -1: unlimited swap.
    pub memory_swap: Option<i64>,
    /// 0..=100.
    pub memory_swappiness: Option<u64>,
    /// Maximum number of tasks; 0 or negative: unlimited.
    pub pids_limit: Option<i64>,
}

/// Parses `--cpus` (`0.5`, `2`).
pub fn parse_cpus(s: &str) -> Result<f64, SpecError> {
    let bad = |reason: &str| SpecError::InvalidCpus {
        value: s.to_owned(),
        reason: reason.to_owned(),
    };
    let v: f64 = s.trim().parse().map_err(|_| bad("not a number"))?;
    check_cpus(v).map_err(|r| bad(&r))?;
    Ok(v)
}

fn check_cpus(v: f64) -> Result<(), String> {
    if !v.is_finite() || v <= 0.0 {
        return Err("must be a positive number".into());
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // cgroups accept more, but asking for CPUs the machine lacks is a mistake
    let host = std::fs::read_to_string("/sys/fs/cgroup/cpuset/cpuset.effective_cpus")
        .ok()
        .map(|s| count_cpus(s.trim()) as f64)
        .filter(|c| *c > 0.0)
        .unwrap_or(n);
    if v > host.max(n) {
        return Err(format!("this machine has {} cpus", host.max(n)));
    }
    if (v * CPU_PERIOD as f64) < 1000.0 {
        return Err("below the 0.01 cpu minimum".into());
    }
    Ok(())
}

fn count_cpus(list: &str) -> usize {
    list.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => 1,
        })
        .sum()
}

/// A cpuset list: `0`, `0-3`, `0,2-4`.
pub fn check_cpuset(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    for part in s.split(',') {
        let ok = match part.split_once('-') {
            Some((a, b)) => {
                matches!((a.parse::<u32>(), b.parse::<u32>()), (Ok(a), Ok(b)) if a <= b)
            }
            None => part.parse::<u32>().is_ok(),
        };
        if !ok {
            return Err(format!("{part:?} is not a number or a range a-b"));
        }
    }
    Ok(())
}

/// A byte size: `1024`, `64k`, `512m`, `2g`, `1.5g`, `64MiB`, `64mb` (1024-based, as
/// Docker's).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512m, 2g)"))?;
    let mult: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("{s:?} has an unknown unit (use b, k, m, g or t)")),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > i64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(v as u64)
}

/// The OCI resources for `r`, checked.
pub fn to_oci(r: &Resources) -> Result<LinuxResources, SpecError> {
    let bad = |what: &str, reason: String| SpecError::InvalidResource {
        what: what.to_owned(),
        reason,
    };
    let mut out = LinuxResources::default();
    let mut cpu = LinuxCpu::default();
    let mut any_cpu = false;
    if let Some(c) = r.cpus {
        check_cpus(c).map_err(|e| SpecError::InvalidCpus {
            value: c.to_string(),
            reason: e,
        })?;
        cpu.set_period(Some(CPU_PERIOD));
        cpu.set_quota(Some((c * CPU_PERIOD as f64).round() as i64));
        any_cpu = true;
    } else {
        if let Some(p) = r.cpu_period {
            if !(1000..=1_000_000).contains(&p) {
                return Err(bad(
                    "cpu period",
                    format!("{p} is outside 1000..=1000000 µs"),
                ));
            }
            cpu.set_period(Some(p));
            any_cpu = true;
        }
        if let Some(q) = r.cpu_quota {
            if q != -1 && q < 1000 {
                return Err(bad(
                    "cpu quota",
                    format!("{q} is below 1000 µs (or -1 for none)"),
                ));
            }
            cpu.set_quota(Some(q));
            any_cpu = true;
        }
    }
    if let Some(s) = r.cpu_shares {
        if !(2..=262_144).contains(&s) {
            return Err(bad("cpu shares", format!("{s} is outside 2..=262144")));
        }
        cpu.set_shares(Some(s));
        any_cpu = true;
    }
    if let Some(c) = &r.cpuset_cpus {
        check_cpuset(c).map_err(|e| bad("cpuset cpus", format!("{c:?}: {e}")))?;
        cpu.set_cpus(Some(c.clone()));
        any_cpu = true;
    }
    if let Some(m) = &r.cpuset_mems {
        check_cpuset(m).map_err(|e| bad("cpuset mems", format!("{m:?}: {e}")))?;
        cpu.set_mems(Some(m.clone()));
        any_cpu = true;
    }
    if any_cpu {
        out.set_cpu(Some(cpu));
    }

    let mut mem = LinuxMemory::default();
    let mut any_mem = false;
    if let Some(l) = r.memory_limit {
        if l < MIN_MEMORY {
            return Err(bad(
                "memory limit",
                format!("{l} bytes is below the 6 MiB minimum"),
            ));
        }
        mem.set_limit(Some(l));
        any_mem = true;
    }
    if let Some(res) = r.memory_reservation {
        if res < 0 {
            return Err(bad("memory reservation", format!("{res} is negative")));
        }
        if r.memory_limit.is_some_and(|l| res > l) {
            return Err(bad(
                "memory reservation",
                format!(
                    "{res} is above the memory limit {}",
                    r.memory_limit.unwrap()
                ),
            ));
        }
        mem.set_reservation(Some(res));
        any_mem = true;
    }
    if let Some(s) = r.memory_swap {
        match r.memory_limit {
            None => {
                return Err(bad("memory swap", "needs a memory limit as well".into()));
            }
            Some(l) if s != -1 && s < l => {
                return Err(bad(
                    "memory swap",
                    format!("{s} (memory plus swap) is below the memory limit {l}"),
                ));
            }
            _ => {}
        }
        mem.set_swap(Some(s));
        any_mem = true;
    }
    if let Some(sw) = r.memory_swappiness {
        if sw > 100 {
            return Err(bad("memory swappiness", format!("{sw} is above 100")));
        }
        mem.set_swappiness(Some(sw));
        any_mem = true;
    }
    if any_mem {
        out.set_memory(Some(mem));
    }
    if let Some(p) = r.pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(if p <= 0 { -1 } else { p });
        out.set_pids(Some(pids));
    }
    Ok(out)
}

/// This process's oom_score_adj.
pub fn own_oom_score_adj() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Clamps a requested oom_score_adj to what this process may set: lowering it below one's
/// own needs CAP_SYS_RESOURCE, which this machine's root lacks (containerd's
/// `restrict_oom_score_adj`).
pub fn clamp_oom_score_adj(requested: i32, own: i32, has_sys_resource: bool) -> i32 {
    let v = requested.clamp(-1000, 1000);
    if has_sys_resource {
        v
    } else {
        v.max(own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_parse_and_become_quota() {
        assert_eq!(parse_cpus("0.5").unwrap(), 0.5);
        let r = to_oci(&Resources {
            cpus: Some(0.5),
            ..Default::default()
        })
        .unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(50_000), Some(100_000)));
    }

    #[test]
    fn bad_cpus_say_why() {
        for (v, why) in [
            ("abc", "not a number"),
            ("0", "positive"),
            ("-1", "positive"),
            ("NaN", "positive"),
            ("0.001", "0.01 cpu minimum"),
            ("100000", "this machine has"),
        ] {
            let e = parse_cpus(v).unwrap_err().to_string();
            assert!(e.contains(why), "{v}: {e}");
            assert!(e.contains(&format!("\"{v}\"")), "{v}: {e}");
        }
    }

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("64mb").unwrap(), 64 << 20);
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("5x").unwrap_err().contains("unknown unit"));
        assert!(parse_size("").is_err());
    }

    #[test]
    fn cpusets_are_checked() {
        assert!(check_cpuset("0").is_ok());
        assert!(check_cpuset("0-3,5").is_ok());
        assert!(check_cpuset("3-1").is_err());
        assert!(check_cpuset("a").is_err());
        assert!(check_cpuset("").is_err());
        let e = to_oci(&Resources {
            cpuset_cpus: Some("0-x".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("cpuset cpus"), "{e}");
        assert_eq!(count_cpus("0-3,5"), 5);
    }

    #[test]
    fn memory_limits_are_checked() {
        let r = to_oci(&Resources {
            memory_limit: Some(64 << 20),
            memory_reservation: Some(32 << 20),
            memory_swap: Some(128 << 20),
            ..Default::default()
        })
        .unwrap();
        let m = r.memory().as_ref().unwrap();
        assert_eq!(m.limit(), Some(64 << 20));
        assert_eq!(m.swap(), Some(128 << 20));
        for (res, why) in [
            (
                Resources {
                    memory_limit: Some(1024),
                    ..Default::default()
                },
                "6 MiB minimum",
            ),
            (
                Resources {
                    memory_limit: Some(64 << 20),
                    memory_reservation: Some(65 << 20),
                    ..Default::default()
                },
                "above the memory limit",
            ),
            (
                Resources {
                    memory_swap: Some(64 << 20),
                    ..Default::default()
                },
                "needs a memory limit",
            ),
            (
                Resources {
                    memory_limit: Some(64 << 20),
                    memory_swap: Some(32 << 20),
                    ..Default::default()
                },
                "below the memory limit",
            ),
            (
                Resources {
                    memory_swappiness: Some(101),
                    ..Default::default()
                },
                "above 100",
            ),
            (
                Resources {
                    cpu_shares: Some(1),
                    ..Default::default()
                },
                "2..=262144",
            ),
            (
                Resources {
                    cpu_quota: Some(10),
                    ..Default::default()
                },
                "below 1000",
            ),
            (
                Resources {
                    cpu_period: Some(10),
                    ..Default::default()
                },
                "1000..=1000000",
            ),
        ] {
            let e = to_oci(&res).unwrap_err().to_string();
            assert!(e.contains(why), "{res:?}: {e}");
        }
    }

    #[test]
    fn pids_limit_zero_means_unlimited() {
        let r = to_oci(&Resources {
            pids_limit: Some(0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.pids().as_ref().unwrap().limit(), -1);
        let r = to_oci(&Resources {
            pids_limit: Some(20),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.pids().as_ref().unwrap().limit(), 20);
        assert!(to_oci(&Resources::default()).unwrap().pids().is_none());
    }

    #[test]
    fn oom_score_adj_is_clamped_to_our_own_without_sys_resource() {
        assert_eq!(clamp_oom_score_adj(-998, 0, false), 0);
        assert_eq!(clamp_oom_score_adj(-998, -500, false), -500);
        assert_eq!(clamp_oom_score_adj(500, 0, false), 500);
        assert_eq!(clamp_oom_score_adj(-998, 0, true), -998);
        assert_eq!(clamp_oom_score_adj(5000, 0, false), 1000);
        assert_eq!(clamp_oom_score_adj(-5000, -2000, true), -1000);
    }
}
