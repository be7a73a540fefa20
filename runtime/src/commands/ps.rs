use super::{cgroup_manager, Global};
use crate::cli::Format;
use anyhow::{bail, Context, Result};
use libcgroups::common::CgroupManager;
use std::io::Write;

pub fn ps(g: &Global, id: &str, format: Format, ps_args: &[String]) -> Result<()> {
    let c = g.load(id)?;
    let mut pids: Vec<i32> = cgroup_manager(&c)?
        .get_all_pids()
        .with_context(|| format!("failed to list processes of container \"{id}\""))?
        .into_iter()
        .map(|p| p.as_raw())
        .collect();
    pids.sort_unstable();
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        writeln!(out, "{}", serde_json::to_string(&pids)?)?;
        return Ok(());
    }
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let res = std::process::Command::new("ps")
        .args(&args)
        .output()
        .context("failed to run ps(1)")?;
    if !res.status.success() {
        bail!(
            "ps {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&res.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&res.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let pid_col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .context("ps output has no PID column")?;
    writeln!(out, "{header}")?;
    for line in lines {
        let pid = line
            .split_whitespace()
            .nth(pid_col)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.binary_search(&p).is_ok()) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}
