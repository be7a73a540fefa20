use super::Global;
use anyhow::{bail, Context, Result};
use runr::units::parse_duration;

pub fn events(g: &Global, id: &str, interval: &str, stats: bool) -> Result<()> {
    let every = parse_duration(interval)?;
    let secs = u32::try_from(every.as_secs()).unwrap_or(u32::MAX);
    if secs == 0 && !stats {
        bail!("invalid interval {interval:?}: must be at least 1s");
    }
    let mut c = g.load(id)?;
    c.events(secs.max(1), stats)
        .with_context(|| format!("failed to read events of container \"{id}\""))
}
