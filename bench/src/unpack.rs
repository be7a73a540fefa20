//! `rbench unpack`: rcd's confined layer unpacker against GNU tar on the same tree, as a plain
//! tar and gzip-compressed, into the same filesystem.

use anyhow::{bail, Context, Result};
use rcd::unpack::{apply_layer, remove_dir_all, Compression, UnpackOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct UnpackArgs {
    /// Directory whose tree becomes the layer
    #[arg(long, default_value = "/usr/lib/x86_64-linux-gnu")]
    source: PathBuf,
    /// Where to write the layer and unpack it (its filesystem is what is measured)
    #[arg(long, default_value = "/tmp")]
    workdir: PathBuf,
    /// Repetitions per tool and format; the median is reported
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_runs(runs: usize, work: &Path, mut f: impl FnMut(&Path) -> Result<()>) -> Result<Duration> {
    let mut times = Vec::new();
    for i in 0..runs {
        let dest = work.join(format!("out-{i}"));
        std::fs::create_dir(&dest)?;
        let t = Instant::now();
        f(&dest)?;
        times.push(t.elapsed());
        remove_dir_all(&dest).with_context(|| format!("removing {}", dest.display()))?;
    }
    Ok(median(times))
}

pub fn main(a: UnpackArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let work = tempfile::Builder::new()
        .prefix("rbench-unpack-")
        .tempdir_in(&a.workdir)
        .context("creating work dir")?;
    let tar = work.path().join("layer.tar");
    let gz = work.path().join("layer.tar.gz");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&a.source)
        .args(["-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .context("running tar (Debian package tar)")?;
    if !st.success() {
        bail!("tar -cf of {} failed", a.source.display());
    }
    {
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz)?,
            flate2::Compression::default(),
        );
        std::io::copy(&mut std::fs::File::open(&tar)?, &mut enc)?;
        enc.finish()?.flush()?;
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "layer: {} ({} MiB tar, {} MiB gzip), unpacked into {}",
        a.source.display(),
        size(&tar) >> 20,
        size(&gz) >> 20,
        a.workdir.display()
    );
    println!(
        "{:<10} {:>12} {:>12} {:>8}",
        "format", "rcd ms", "GNU tar ms", "ratio"
    );
    for (name, file, tar_flag) in [("tar", &tar, "-xpf"), ("tar.gz", &gz, "-xzpf")] {
        let ours = time_runs(a.runs, work.path(), |dest| {
            let r = BufReader::with_capacity(1 << 20, std::fs::File::open(file)?);
            apply_layer(r, Compression::Auto, dest, &UnpackOptions::default())?;
            Ok(())
        })?;
        let gnu = time_runs(a.runs, work.path(), |dest| {
            let st = Command::new("tar")
                .arg(tar_flag)
                .arg(file)
                .arg("-C")
                .arg(dest)
                .status()?;
            if !st.success() {
                bail!("GNU tar {tar_flag} failed");
            }
            Ok(())
        })?;
        println!(
            "{:<10} {:>12.1} {:>12.1} {:>8.2}",
            name,
            ours.as_secs_f64() * 1e3,
            gnu.as_secs_f64() * 1e3,
            ours.as_secs_f64() / gnu.as_secs_f64()
        );
    }
    Ok(())
}
