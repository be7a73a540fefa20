use super::{cgroup_manager, Global};
use crate::cli::Update;
use anyhow::{bail, Context, Result};
use libcgroups::common::{CgroupManager, ControllerOpt};
use libcontainer::container::ContainerStatus;
use oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder,
};
use runr::units::parse_size;
use std::io::Read;

pub fn update(g: &Global, args: &Update) -> Result<()> {
    let resources = match &args.resources {
        Some(path) => read_resources(path)?,
        None => resources_from_flags(args)?,
    };
    let c = g.load(&args.id)?;
    if c.status() == ContainerStatus::Stopped {
        bail!("cannot update container \"{}\": it is stopped", args.id);
    }
    cgroup_manager(&c)?
        .apply(&ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .with_context(|| format!("failed to update resources of container \"{}\"", args.id))
}

fn read_resources(path: &std::path::Path) -> Result<LinuxResources> {
    let mut data = Vec::new();
    let name = if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut data)
            .context("failed to read resources from stdin")?;
        "stdin".to_string()
    } else {
        data = std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
        path.display().to_string()
    };
    let de = &mut serde_json::Deserializer::from_slice(&data);
    serde_path_to_error::deserialize(de).map_err(|e| {
        anyhow::anyhow!(
            "invalid resources in {name}: field `{}`: {}",
            e.path(),
            e.inner()
        )
    })
}

pub fn resources_from_flags(a: &Update) -> Result<LinuxResources> {
    let mut r = LinuxResourcesBuilder::default();
    let mut any = false;
    if a.memory.is_some() || a.memory_reservation.is_some() || a.memory_swap.is_some() {
        let mut m = LinuxMemoryBuilder::default();
        if let Some(v) = &a.memory {
            m = m.limit(parse_size(v)?);
        }
        if let Some(v) = &a.memory_reservation {
            m = m.reservation(parse_size(v)?);
        }
        if let Some(v) = &a.memory_swap {
            m = m.swap(parse_size(v)?);
        }
        r = r.memory(m.build()?);
        any = true;
    }
    let cpu_set = a.cpu_period.is_some()
        || a.cpu_quota.is_some()
        || a.cpu_share.is_some()
        || a.cpu_rt_period.is_some()
        || a.cpu_rt_runtime.is_some()
        || a.cpuset_cpus.is_some()
        || a.cpuset_mems.is_some();
    if cpu_set {
        let mut c = LinuxCpuBuilder::default();
        if let Some(v) = a.cpu_period {
            c = c.period(v);
        }
        if let Some(v) = a.cpu_quota {
            c = c.quota(v);
        }
        if let Some(v) = a.cpu_share {
            c = c.shares(v);
        }
        if let Some(v) = a.cpu_rt_period {
            c = c.realtime_period(v);
        }
        if let Some(v) = a.cpu_rt_runtime {
            c = c.realtime_runtime(v);
        }
        if let Some(v) = &a.cpuset_cpus {
            c = c.cpus(v.clone());
        }
        if let Some(v) = &a.cpuset_mems {
            c = c.mems(v.clone());
        }
        r = r.cpu(c.build()?);
        any = true;
    }
    if let Some(v) = a.pids_limit {
        r = r.pids(LinuxPidsBuilder::default().limit(v).build()?);
        any = true;
    }
    if let Some(v) = a.blkio_weight {
        r = r.block_io(LinuxBlockIoBuilder::default().weight(v).build()?);
        any = true;
    }
    if !any && a.kernel_memory.is_none() {
        bail!("nothing to update: give --resources or at least one limit flag (see --help)");
    }
    Ok(r.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_resources() {
        let a = Update {
            memory: Some("64m".into()),
            cpu_quota: Some(50000),
            pids_limit: Some(10),
            id: "x".into(),
            ..Default::default()
        };
        let r = resources_from_flags(&a).unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50000));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 10);
    }

    #[test]
    fn no_flags_is_an_error() {
        let a = Update {
            id: "x".into(),
            ..Default::default()
        };
        assert!(resources_from_flags(&a).is_err());
        let a = Update {
            memory: Some("lots".into()),
            id: "x".into(),
            ..Default::default()
        };
        assert!(resources_from_flags(&a)
            .unwrap_err()
            .to_string()
            .contains("invalid size"));
    }
}
