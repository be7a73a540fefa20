use super::{cgroup_manager, Global};
use anyhow::{bail, Context, Result};
use libcgroups::common::CgroupManager;
use libcontainer::container::ContainerStatus;
use runr::units::parse_duration;
use std::io::Write;

/// runc's event stream: one `{"type":"stats","id":…,"data":…}` object per line, once with
/// `--stats`, else every interval until the container stops.
pub fn events(g: &Global, id: &str, interval: &str, stats: bool) -> Result<()> {
    let every = parse_duration(interval)?;
    if every.is_zero() {
        bail!("invalid interval {interval:?}: must be greater than 0");
    }
    let c = g.load(id)?;
    if c.status() == ContainerStatus::Stopped {
        bail!("container \"{id}\" is not running");
    }
    let cg = cgroup_manager(&c)?;
    let mut out = std::io::stdout().lock();
    loop {
        let data = cg
            .stats()
            .with_context(|| format!("failed to read stats of container \"{id}\""))?;
        let ev = serde_json::json!({"type": "stats", "id": id, "data": data});
        writeln!(out, "{ev}")?;
        out.flush()?;
        if stats {
            return Ok(());
        }
        std::thread::sleep(every);
        if g.load(id)
            .map(|c| c.status() == ContainerStatus::Stopped)
            .unwrap_or(true)
        {
            return Ok(());
        }
    }
}
