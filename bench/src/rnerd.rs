//! `rnerd run --rm busybox true` next to `ctr run --rm` on Debian's containerd 1.6 and
//! `runr run` of a busybox bundle (the floor: the runtime alone, no daemon, no image), in one
//! interleaved run. rnerd is timed twice: on its default `bridge` network (a CNI ADD and DEL
//! per run, as docker's default) and with `--network none` (as ctr's and runr's private
//! network namespace). runr also runs the very spec rcd generates for rnerd's container
//! (seccomp profile, capabilities, masked paths): the same container without the stack.

use crate::stats::{round3, Summary};
use crate::tasks::{bin_dir_with, timed, Rcd};
use anyhow::{ensure, Context, Result};
use clap::Args;
use rtest::containerd::Containerd;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Args)]
pub struct RnerdArgs {
    /// Timed runs per tool (after 2 warm-up runs each)
    #[arg(long, default_value_t = 11)]
    runs: usize,
    /// Directory of rcd, rnerd, containerd-shim-runr-v2 and runr (default: the release
    /// profile dir next to rbench, else the debug one with a warning)
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub fn main(a: RnerdArgs) -> Result<()> {
    ensure!(a.runs > 0, "--runs must be at least 1");
    let bin = bin_dir_with(
        a.bin_dir.as_deref(),
        &["rcd", "rnerd", "containerd-shim-runr-v2", "runr"],
    )?;
    let rcd = Rcd::start(&bin)?;
    let ctd = Containerd::start("", &[])?;
    ctd.import(rtest::busybox_oci_archive(), None)?;
    let bundle_id = rtest::unique_id("rbench-rnerd");
    let bundle = rtest::Bundle::busybox(&bundle_id, &["/bin/true"])?;
    let same = same_spec_bundle(&bin, &rcd, &bundle_id)?;
    let runr_root = tempfile::Builder::new().prefix("rbench-runr-").tempdir()?;

    let rnerd = |extra: &[&str]| {
        let mut cmd = Command::new(bin.join("rnerd"));
        cmd.arg("--address")
            .arg(rcd.address())
            .arg("run")
            .arg("--rm")
            .args(extra)
            .arg(&rcd.image)
            .arg("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let runr_run = |bundle: &Path, id: String| {
        let mut cmd = Command::new(bin.join("runr"));
        cmd.arg("--root")
            .arg(runr_root.path())
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let (mut bridge, mut none, mut ctr, mut runr, mut runr_same) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..a.runs + 2 {
        let b = timed(rnerd(&[]))?;
        let n = timed(rnerd(&["--network", "none"]))?;
        let cid = ctd.container_id("rn");
        let cg = ctd.cgroup_for(&cid);
        let (_, ctr_bin) = Containerd::binaries()?;
        let mut c = Command::new(ctr_bin);
        c.arg("--address")
            .arg(ctd.address())
            .arg("--namespace")
            .arg(ctd.namespace())
            .args([
                "run",
                "--rm",
                "--cgroup",
                &cg,
                rtest::BUSYBOX_NAME,
                &cid,
                "/bin/true",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let c = timed(c)?;
        let r = timed(runr_run(bundle.path(), format!("{bundle_id}-{i}")))?;
        let r2 = timed(runr_run(same.path(), format!("{bundle_id}-same-{i}")))?;
        if i >= 2 {
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            bridge.push(ms(b));
            none.push(ms(n));
            ctr.push(ms(c));
            runr.push(ms(r));
            runr_same.push(ms(r2));
        }
    }
    let left = ctd.stop()?;
    ensure!(left.is_empty(), "containerd left {left:?}");
    let s = |v: &[f64]| Summary::of(v.iter().copied());
    let (b, n, c, r, rs) = (s(&bridge), s(&none), s(&ctr), s(&runr), s(&runr_same));
    if a.json {
        let v = json!({
            "binaries": bin.display().to_string(),
            "runs": a.runs,
            "rnerd_bridge_ms": b.to_json(),
            "rnerd_none_ms": n.to_json(),
            "ctr_ms": c.to_json(),
            "runr_ms": r.to_json(),
            "runr_rnerd_spec_ms": rs.to_json(),
            "ratios": {
                "rnerd_bridge/runr": round3(b.median / r.median),
                "rnerd_none/runr": round3(n.median / r.median),
                "rnerd_bridge/ctr": round3(b.median / c.median),
                "rnerd_none/ctr": round3(n.median / c.median),
                "rnerd_none/runr_rnerd_spec": round3(n.median / rs.median),
            }
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "rbench rnerd: `run --rm busybox /bin/true`, {} timed runs each, interleaved ({})",
        a.runs,
        bin.display()
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "", "median", "p10", "p90", "/runr", "/ctr"
    );
    let row = |name: &str, x: &Summary| {
        println!(
            "{name:<34} {:>9.1} {:>9.1} {:>9.1} {:>10.2} {:>10.2}",
            x.median,
            x.p10,
            x.p90,
            x.median / r.median,
            x.median / c.median
        );
    };
    row("rnerd run --rm (bridge network)", &b);
    row("rnerd run --rm --network none", &n);
    row("ctr run --rm (containerd 1.6)", &c);
    row("runr run (bundle; the floor)", &r);
    row("runr run (rnerd's own spec)", &rs);
    println!(
        "rnerd run --rm --network none / runr run of the same spec: {:.2}",
        n.median / rs.median
    );
    println!("targets: rnerd within 2x of runr, under 1/3 of ctr");
    Ok(())
}

/// A bundle holding the spec rcd generates for `rnerd run --network none IMAGE /bin/true`
/// (Docker's seccomp profile, capabilities, masked and read-only paths, /dev, /etc files), on
/// the busybox root filesystem of the floor's bundle: the same container as rnerd's, for the
/// runtime alone. The rootfs, cgroup and namespaces are the runtime's own per run.
fn same_spec_bundle(bin: &Path, rcd: &Rcd, id: &str) -> Result<rtest::Bundle> {
    let out = |mut cmd: Command| -> Result<String> {
        let o = cmd.stdin(Stdio::null()).output()?;
        ensure!(
            o.status.success(),
            "{cmd:?}: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let mut create = Command::new(bin.join("rnerd"));
    create
        .arg("--address")
        .arg(rcd.address())
        .args(["create", "--network", "none"])
        .arg(&rcd.image)
        .arg("/bin/true");
    let cid = out(create)?;
    let mut info = Command::new(bin.join("rctr"));
    info.arg("--address")
        .arg(rcd.address())
        .args(["containers", "info", "--spec", &cid]);
    let spec = out(info);
    let mut b = rtest::Bundle::busybox(id, &["/bin/true"])?;
    // files rcd keeps for the container (hosts, resolv.conf, hostname) are copied into the
    // bundle before the container goes
    let copied = spec.and_then(|s| {
        let mut spec: Value = serde_json::from_str(&s)?;
        let state = rcd.dir();
        if let Some(mounts) = spec["mounts"].as_array_mut() {
            for (i, m) in mounts.iter_mut().enumerate() {
                let Some(src) = m["source"].as_str().map(PathBuf::from) else {
                    continue;
                };
                if src.starts_with(state) && src.is_file() {
                    let to = b.path().join(format!("mount-{i}"));
                    std::fs::copy(&src, &to)
                        .with_context(|| format!("copying {}", src.display()))?;
                    m["source"] = json!(to);
                }
            }
        }
        Ok(spec)
    });
    let mut rm = Command::new(bin.join("rnerd"));
    rm.arg("--address").arg(rcd.address()).args(["rm", &cid]);
    out(rm)?;
    let mut spec = copied?;
    spec["root"] =
        json!({"path": "rootfs", "readonly": spec["root"]["readonly"].as_bool().unwrap_or(false)});
    let linux = spec["linux"]
        .as_object_mut()
        .context("rcd's spec has no linux section")?;
    linux.insert("cgroupsPath".into(), json!(format!("/rbench-same-{id}")));
    if let Some(ns) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
        for n in ns {
            if let Some(n) = n.as_object_mut() {
                n.remove("path");
            }
        }
    }
    if let Some(o) = spec.as_object_mut() {
        o.remove("hooks");
        o.remove("annotations");
    }
    b.config = spec;
    b.save()?;
    Ok(b)
}
