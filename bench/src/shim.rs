//! Memory per shim: N detached `sleep` containers under one private containerd 1.6, once
//! with containerd's Go shim (`io.containerd.runc.v2`) and once with rshim
//! (`io.containerd.runr.v2`); RSS and PSS of every shim from `/proc/<pid>/smaps_rollup`.

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use rtest::containerd::{path_with_rshim, shims_of, Containerd};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ShimArgs {
    /// Containers running at once per shim kind
    #[arg(long, default_value_t = 10)]
    containers: usize,
    /// Directory holding containerd-shim-runr-v2 (default: next to rbench, else the debug build)
    #[arg(long)]
    shim_dir: Option<PathBuf>,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Keep the containers this many seconds after measuring (to inspect the shims by hand)
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Mem {
    rss_kib: u64,
    pss_kib: u64,
    threads: u64,
}

fn mem_of(pid: i32) -> Result<Mem> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    Ok(Mem {
        rss_kib: field(&rollup, "Rss:"),
        pss_kib: field(&rollup, "Pss:"),
        threads: field(&status, "Threads:"),
    })
}

fn measure(ctd: &Containerd, runtime: &str, n: usize, hold: u64) -> Result<Vec<Mem>> {
    let mut ids = vec![];
    let result = (|| {
        for i in 0..n {
            let id = ctd.container_id(&format!("bench-shim-{i}"));
            let cg = ctd.cgroup_for(&id);
            ids.push(id.clone());
            ctd.ctr_ok(&[
                "run",
                "-d",
                "--runtime",
                runtime,
                "--cgroup",
                &cg,
                rtest::BUSYBOX_NAME,
                &id,
                "sleep",
                "600",
            ])?;
        }
        // Let every shim settle after its last request.
        std::thread::sleep(Duration::from_secs(1));
        let mut mems = vec![];
        for id in &ids {
            let shims = shims_of(id);
            let [(pid, _)] = shims.as_slice() else {
                bail!("expected one shim for {id}, found {shims:?}");
            };
            mems.push(mem_of(*pid)?);
        }
        std::thread::sleep(Duration::from_secs(hold));
        Ok(mems)
    })();
    for id in &ids {
        let _ = ctd.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        let _ = ctd.wait_task_status(id, "STOPPED", Duration::from_secs(20));
        let _ = ctd.ctr(&["tasks", "delete", id]);
        let _ = ctd.ctr(&["containers", "rm", id]);
    }
    result
}

pub fn main(a: ShimArgs) -> Result<()> {
    ensure!(a.containers > 0, "--containers must be at least 1");
    let path = match &a.shim_dir {
        Some(d) => {
            ensure!(
                d.join("containerd-shim-runr-v2").is_file(),
                "no containerd-shim-runr-v2 in {}",
                d.display()
            );
            format!(
                "{}:{}",
                d.display(),
                std::env::var("PATH").unwrap_or_default()
            )
        }
        None => path_with_rshim(),
    };
    // The shim finds runr next to itself; a --shim-dir of its own may have none.
    let runr = rtest::runtime::runtime_binary().display().to_string();
    let ctd = Containerd::start("", &[("PATH", &path), ("RSHIM_RUNTIME", &runr)])?;
    ctd.import(rtest::busybox_oci_archive(), None)?;
    let mut rows = vec![];
    for (name, runtime) in [
        ("containerd-shim-runc-v2 (Go)", "io.containerd.runc.v2"),
        ("containerd-shim-runr-v2 (rshim)", "io.containerd.runr.v2"),
    ] {
        let mems = measure(&ctd, runtime, a.containers, a.hold_secs)?;
        let avg = |f: fn(&Mem) -> u64| mems.iter().map(f).sum::<u64>() as f64 / mems.len() as f64;
        rows.push((
            name,
            avg(|m| m.rss_kib) / 1024.0,
            avg(|m| m.pss_kib) / 1024.0,
            avg(|m| m.threads),
        ));
    }
    ctd.stop()?;
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, rss, pss, th)| {
                json!({"shim": n, "containers": a.containers, "rss_mib": crate::stats::round3(*rss),
                       "pss_mib": crate::stats::round3(*pss), "threads": th})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "per shim, {} detached busybox `sleep` containers each, one containerd 1.6",
            a.containers
        );
        println!(
            "{:<34} {:>9} {:>9} {:>8}",
            "shim", "RSS MiB", "PSS MiB", "threads"
        );
        for (n, rss, pss, th) in rows {
            println!("{n:<34} {rss:>9.2} {pss:>9.2} {th:>8.1}");
        }
    }
    Ok(())
}
