//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: CPU and memory
//! read from the cgroup files of the container (or of the pod's parent cgroup), v1 first,
//! then the v2 unified tree.

use super::store::{ContainerRecord, ContainerState};
use super::{labels_match, now_ns, Cri};
use crate::spec;
use k8s_cri::v1 as cri;
use std::collections::HashMap;
use tonic::Status;

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_field(path: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn usage(cgroup: &str) -> (Option<cri::CpuUsage>, Option<cri::MemoryUsage>) {
    let ts = now_ns();
    let v2 = format!("/sys/fs/cgroup/unified{cgroup}");
    let cpu = read_u64(&format!("/sys/fs/cgroup/cpuacct{cgroup}/cpuacct.usage"))
        .or_else(|| stat_field(&format!("{v2}/cpu.stat"), "usage_usec").map(|u| u * 1000))
        .map(|n| cri::CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: Some(cri::UInt64Value { value: n }),
            usage_nano_cores: None,
        });
    let mem_dir = format!("/sys/fs/cgroup/memory{cgroup}");
    let mem = match read_u64(&format!("{mem_dir}/memory.usage_in_bytes")) {
        Some(u) => {
            let stat = format!("{mem_dir}/memory.stat");
            let inactive = stat_field(&stat, "total_inactive_file").unwrap_or(0);
            Some(cri::MemoryUsage {
                timestamp: ts,
                working_set_bytes: Some(cri::UInt64Value {
                    value: u.saturating_sub(inactive),
                }),
                usage_bytes: Some(cri::UInt64Value { value: u }),
                rss_bytes: stat_field(&stat, "total_rss").map(|v| cri::UInt64Value { value: v }),
                page_faults: stat_field(&stat, "total_pgfault")
                    .map(|v| cri::UInt64Value { value: v }),
                major_page_faults: stat_field(&stat, "total_pgmajfault")
                    .map(|v| cri::UInt64Value { value: v }),
                available_bytes: None,
            })
        }
        None => read_u64(&format!("{v2}/memory.current")).map(|u| cri::MemoryUsage {
            timestamp: ts,
            working_set_bytes: Some(cri::UInt64Value { value: u }),
            usage_bytes: Some(cri::UInt64Value { value: u }),
            ..Default::default()
        }),
    };
    (cpu, mem)
}

fn cgroup_of(cri: &Cri, rec: &ContainerRecord) -> Option<String> {
    let sb = cri.store.sandbox(&rec.sandbox_id)?;
    let parent = sb.lock().unwrap().cgroup_parent.clone();
    Some(spec::cgroups_path_under(&parent, &rec.id))
}

fn container_stats(cri: &Cri, rec: &ContainerRecord) -> cri::ContainerStats {
    let (cpu, memory) = if rec.state == ContainerState::Running {
        cgroup_of(cri, rec).map(|c| usage(&c)).unwrap_or_default()
    } else {
        (None, None)
    };
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: rec.id.clone(),
            metadata: rec.config.metadata.clone(),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
        }),
        cpu,
        memory,
        writable_layer: None,
        swap: None,
    }
}

pub fn container(cri: &Cri, id: &str) -> Result<cri::ContainerStats, Status> {
    let e = super::container::get(cri, id)?;
    let rec = e.lock().unwrap().clone();
    Ok(container_stats(cri, &rec))
}

pub fn list_containers(
    cri: &Cri,
    f: Option<cri::ContainerStatsFilter>,
) -> Vec<cri::ContainerStats> {
    let f = f.unwrap_or_default();
    let empty = HashMap::new();
    cri.store
        .containers()
        .into_iter()
        .map(|e| e.lock().unwrap().clone())
        .filter(|r| r.state == ContainerState::Running)
        .filter(|r| f.id.is_empty() || r.id.starts_with(&f.id))
        .filter(|r| f.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&f.pod_sandbox_id))
        .filter(|r| {
            labels_match(
                &r.config.labels,
                if f.label_selector.is_empty() {
                    &empty
                } else {
                    &f.label_selector
                },
            )
        })
        .map(|r| container_stats(cri, &r))
        .collect()
}

fn pod_stats(cri: &Cri, rec: &super::store::SandboxRecord) -> cri::PodSandboxStats {
    let (cpu, memory) = usage(&rec.cgroup_parent);
    let containers = cri
        .store
        .containers()
        .into_iter()
        .map(|e| e.lock().unwrap().clone())
        .filter(|c| c.sandbox_id == rec.id && c.state == ContainerState::Running)
        .map(|c| container_stats(cri, &c))
        .collect();
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: rec.id.clone(),
            metadata: rec.config.metadata.clone(),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu,
            memory,
            network: None,
            process: None,
            containers,
        }),
        windows: None,
    }
}

pub fn pod(cri: &Cri, id: &str) -> Result<cri::PodSandboxStats, Status> {
    let e = super::sandbox::get(cri, id)?;
    let rec = e.lock().unwrap().clone();
    Ok(pod_stats(cri, &rec))
}

pub fn list_pods(cri: &Cri, f: Option<cri::PodSandboxStatsFilter>) -> Vec<cri::PodSandboxStats> {
    let f = f.unwrap_or_default();
    cri.store
        .sandboxes()
        .into_iter()
        .map(|e| e.lock().unwrap().clone())
        .filter(|r| r.state == super::store::SandboxState::Ready)
        .filter(|r| f.id.is_empty() || r.id.starts_with(&f.id))
        .filter(|r| labels_match(&r.config.labels, &f.label_selector))
        .map(|r| pod_stats(cri, &r))
        .collect()
}
