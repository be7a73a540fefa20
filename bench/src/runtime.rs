//! `rbench runtime`: container start-to-exit cost of runr against runc and crun.
//!
//! Each runtime runs `<rt> --root <own temp dir> run --bundle <B> <fresh id>` on one shared
//! busybox bundle whose process is `/bin/true`: create + start + wait + delete in one command.
//! Iterations are interleaved (runr, runc, crun, runr, …) so that noise from the rest of the
//! machine hits every runtime alike. See [`crate::driver`] for how a run is measured.

use crate::driver::{Sample, UNIFIED_CONTROLLERS};
use crate::stats::{round3, Summary};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

#[derive(clap::Args, Debug)]
pub struct RuntimeArgs {
    /// Timed runs per runtime.
    #[arg(long, default_value_t = 21)]
    pub runs: usize,
    /// Untimed warm-up runs per runtime before the timed ones.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// runr binary [default: runr next to rbench, else the debug build's].
    #[arg(long)]
    pub runr: Option<PathBuf>,
    /// runc binary (Debian package `runc`).
    #[arg(long, default_value = "runc")]
    pub runc: PathBuf,
    /// crun binary (Debian package `crun`).
    #[arg(long, default_value = "crun")]
    pub crun: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Leave out runtimes whose binary is missing instead of failing.
    #[arg(long)]
    pub skip_missing: bool,
    /// Also print every sample (table mode).
    #[arg(long)]
    pub verbose: bool,
}

/// A measuring driver process (`rbench __driver`).
pub(crate) struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    capture: PathBuf,
}

impl Driver {
    pub(crate) fn start(capture: PathBuf, hide_controllers: Option<&Path>) -> Result<Driver> {
        let exe = std::env::current_exe().context("locating rbench")?;
        let mut cmd = Command::new(exe);
        cmd.arg("__driver").arg("--capture").arg(&capture);
        if let Some(empty) = hide_controllers {
            cmd.arg("--hide-cgroup2-controllers").arg(empty);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the rbench driver")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut d = Driver {
            child,
            stdin,
            stdout,
            capture,
        };
        let hello = d.read_reply().context("driver did not start")?;
        if hello.get("ready") != Some(&Value::Bool(true)) {
            bail!("driver said {hello}");
        }
        Ok(d)
    }

    fn read_reply(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("driver exited unexpectedly (see its stderr above)");
        }
        serde_json::from_str(&line).with_context(|| format!("driver said {line:?}"))
    }

    pub(crate) fn run(&mut self, argv: &[String]) -> Result<Sample> {
        let stdin = self.stdin.as_mut().expect("driver stdin open");
        writeln!(stdin, "{}", json!({ "argv": argv }))?;
        stdin.flush()?;
        let reply = self.read_reply()?;
        Sample::from_json(&reply)
    }

    /// What the last command printed on stdout and stderr.
    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.capture).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// One runtime under test.
struct Runtime {
    name: &'static str,
    path: PathBuf,
    version: String,
    debug_build: bool,
    root: PathBuf,
    driver: Driver,
    samples: Vec<Sample>,
}

impl Runtime {
    fn argv(&self, bundle: &Path, id: &str) -> Vec<String> {
        vec![
            self.path.display().to_string(),
            "--root".into(),
            self.root.display().to_string(),
            "run".into(),
            "--bundle".into(),
            bundle.display().to_string(),
            id.into(),
        ]
    }

    /// Runs the bundle once as container `id` and checks that it exited 0 and left no state.
    fn run_checked(&mut self, bundle: &Path, id: &str, cgroup: &str) -> Result<Sample> {
        let argv = self.argv(bundle, id);
        let s = self.driver.run(&argv)?;
        // `run` deletes the container: its --root must be as empty as before.
        let leftover: Vec<String> = std::fs::read_dir(&self.root)
            .with_context(|| format!("reading {}", self.root.display()))?
            .flatten()
            .map(|e| e.path().display().to_string())
            .collect();
        let cgroups = leftover_cgroups(cgroup);
        if s.status != 0 || !leftover.is_empty() || !cgroups.is_empty() {
            let out = self.driver.output();
            self.force_cleanup(id, cgroup);
            if s.status != 0 {
                bail!(
                    "{} ({}) failed: `{}` exited with {}; its output:\n{out}",
                    self.name,
                    self.path.display(),
                    argv.join(" "),
                    s.status
                );
            }
            if !leftover.is_empty() {
                bail!(
                    "{} left state behind after `run`: {}",
                    self.name,
                    leftover.join(", ")
                );
            }
            bail!(
                "{} left cgroups behind after `run`: {}",
                self.name,
                cgroups.join(", ")
            );
        }
        Ok(s)
    }

    fn force_cleanup(&self, id: &str, cgroup: &str) {
        let _ = Command::new(&self.path)
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for dir in leftover_cgroups(cgroup) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// cgroup directories named `path` under every mounted hierarchy.
fn leftover_cgroups(path: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return vec![];
    };
    let rel = path.trim_start_matches('/');
    let mut found: Vec<String> = entries
        .flatten()
        .map(|e| e.path().join(rel))
        .filter(|p| p.is_dir())
        .map(|p| p.display().to_string())
        .collect();
    if Path::new("/sys/fs/cgroup").join(rel).is_dir() {
        found.push(format!("/sys/fs/cgroup/{rel}"));
    }
    found
}

/// Looks a bare name up in PATH and the sbin directories (runc lives in /usr/sbin).
fn which(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(p))
        .find(|c| c.is_file());
    found
}

/// The workspace's runr: release build, else debug build (flagged).
fn default_runr() -> Option<(PathBuf, bool)> {
    rtest::runtime::built_binary_candidates("runr")
        .into_iter()
        .find(|p| p.is_file())
        .map(|p| {
            let debug = p.parent().and_then(Path::file_name) == Some("debug".as_ref());
            (p, debug)
        })
}

fn version_of(path: &Path) -> Result<String> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", path.display()))?;
    if !out.status.success() {
        bail!(
            "{} --version failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned())
}

/// Whether this host needs crun's cgroup2 controllers hidden (hybrid layout with controllers
/// in the unified hierarchy).
fn hybrid_with_v2_controllers() -> bool {
    std::fs::read_to_string(UNIFIED_CONTROLLERS)
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false)
}

/// Resolved runtimes: (name, path, debug build).
fn resolve(args: &RuntimeArgs) -> Result<Vec<(&'static str, PathBuf, bool)>> {
    let mut out = vec![];
    let mut missing = vec![];
    let runr = match &args.runr {
        Some(p) => which(p).map(|p| (p, false)).ok_or_else(|| {
            format!(
                "runr: {} not found (build it with `cargo build --release -p runr`)",
                p.display()
            )
        }),
        None => default_runr().ok_or_else(|| {
            format!(
                "runr: not found next to rbench ({}); \
                 build it with `cargo build --release -p runr` or pass --runr PATH",
                rtest::runtime::built_binary_candidates("runr")
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }),
    };
    match runr {
        Ok((p, debug)) => {
            if debug {
                eprintln!(
                    "warning: using the DEBUG build {}; its numbers are meaningless, \
                     build the release one with `cargo build --release -p runr`",
                    p.display()
                );
            }
            out.push(("runr", p, debug));
        }
        Err(e) => missing.push(e),
    }
    for (name, p) in [("runc", &args.runc), ("crun", &args.crun)] {
        match which(p) {
            Some(p) => out.push((name, p, false)),
            None => missing.push(format!(
                "{name}: {} not found; install the Debian package `{name}` (apt-get install {name})",
                p.display()
            )),
        }
    }
    if !missing.is_empty() {
        if args.skip_missing {
            for m in &missing {
                eprintln!("warning: skipping {m}");
            }
        } else {
            bail!(
                "missing runtime(s) (use --skip-missing to leave them out):\n  {}",
                missing.join("\n  ")
            );
        }
    }
    if out.is_empty() {
        bail!("no runtime left to benchmark");
    }
    Ok(out)
}

pub fn main(args: RuntimeArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("rbench runtime runs containers and needs root");
    }
    let resolved = resolve(&args)?;

    let state_parent = if Path::new("/run").is_dir() {
        PathBuf::from("/run")
    } else {
        std::env::temp_dir()
    };
    let work = tempfile::Builder::new()
        .prefix("rbench-")
        .tempdir_in(&state_parent)
        .context("creating work dir")?;
    let empty = work.path().join("empty");
    std::fs::write(&empty, "")?;

    let bundle_id = rtest::unique_id("rbench");
    let mut bundle = rtest::Bundle::busybox(&bundle_id, &["sh", "-c", "echo ok"])?;
    let cgroup = bundle.config["linux"]["cgroupsPath"]
        .as_str()
        .context("bundle has no cgroupsPath")?
        .to_owned();
    if !leftover_cgroups(&cgroup).is_empty() {
        bail!("cgroup {cgroup} exists before the benchmark");
    }

    let hide = hybrid_with_v2_controllers();
    let mut rts = vec![];
    for (name, path, debug_build) in resolved {
        let version = version_of(&path)?;
        let root = work.path().join(format!("{name}-root"));
        std::fs::create_dir(&root)?;
        let driver = Driver::start(
            work.path().join(format!("{name}.out")),
            (name == "crun" && hide).then_some(empty.as_path()),
        )?;
        rts.push(Runtime {
            name,
            path,
            version,
            debug_build,
            root,
            driver,
            samples: vec![],
        });
    }

    // The measurement floor: fork + exec + wait of a static busybox `true` in a driver; and
    // the RSS a child has from the fork alone (an exec that fails), which any measured RSS
    // includes.
    let (floor, fork_floor_kib) = {
        let mut d = Driver::start(work.path().join("floor.out"), None)?;
        let fork_only = d.run(&["/nonexistent/rbench-fork-floor".to_owned()])?;
        if fork_only.status != 127 {
            bail!("exec of a missing file exited {}", fork_only.status);
        }
        let bb = rtest::rootfs::busybox_path()?.display().to_string();
        let argv = [bb, "true".to_owned()];
        let mut v = vec![];
        for _ in 0..args.runs.max(5) {
            let s = d.run(&argv)?;
            if s.status != 0 {
                bail!("busybox true exited {}", s.status);
            }
            v.push(s);
        }
        (v, fork_only.child_maxrss_kib)
    };

    // Every runtime must really run a container before it is timed.
    for rt in &mut rts {
        let id = format!("rbench-verify-{}-{}", rt.name, std::process::id());
        rt.run_checked(bundle.path(), &id, &cgroup)
            .with_context(|| format!("verifying {} with `sh -c 'echo ok'`", rt.name))?;
        let out = rt.driver.output();
        if out.trim() != "ok" {
            bail!(
                "{} ({}) ran but the container printed {out:?} instead of \"ok\"",
                rt.name,
                rt.path.display()
            );
        }
    }

    bundle.process()["args"] = json!(["/bin/true"]);
    bundle.save()?;

    let total = args.warmup + args.runs;
    let progress = !args.json && std::io::stderr().is_terminal();
    for i in 0..total {
        for rt in &mut rts {
            let id = format!("rbench-{}-{}-{i}", rt.name, std::process::id());
            let s = rt.run_checked(bundle.path(), &id, &cgroup)?;
            if i >= args.warmup {
                rt.samples.push(s);
            }
        }
        if progress {
            eprint!("\rrun {}/{total}", i + 1);
        }
    }
    if progress {
        eprintln!();
    }

    let report = Report {
        args: &args,
        rts: &rts,
        floor: &floor,
        fork_floor_kib,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Stats {
    wall: Summary,
    child_cpu: Summary,
    tree_cpu: Summary,
    child_rss: Summary,
    tree_rss: Summary,
    orphans: u32,
}

fn stats(samples: &[Sample]) -> Stats {
    Stats {
        wall: Summary::of(samples.iter().map(|s| ms(s.wall))),
        child_cpu: Summary::of(samples.iter().map(|s| ms(s.child_cpu))),
        tree_cpu: Summary::of(samples.iter().map(|s| ms(s.tree_cpu))),
        child_rss: Summary::of(samples.iter().map(|s| s.child_maxrss_kib as f64)),
        tree_rss: Summary::of(samples.iter().map(|s| s.tree_maxrss_kib as f64)),
        orphans: samples.iter().map(|s| s.orphans).sum(),
    }
}

struct Report<'a> {
    args: &'a RuntimeArgs,
    rts: &'a [Runtime],
    floor: &'a [Sample],
    fork_floor_kib: u64,
}

/// (label, json key, value) of each compared quantity.
type Compared = [(&'static str, &'static str, f64); 5];

fn compared(s: &Stats) -> Compared {
    [
        ("wall time, median", "wall_median", s.wall.median),
        (
            "CPU user+sys (child), median",
            "child_cpu_median",
            s.child_cpu.median,
        ),
        (
            "CPU user+sys (tree), median",
            "tree_cpu_median",
            s.tree_cpu.median,
        ),
        (
            "peak RSS (child), median",
            "child_maxrss_median",
            s.child_rss.median,
        ),
        (
            "peak RSS (tree), median",
            "tree_maxrss_median",
            s.tree_rss.median,
        ),
    ]
}

impl Report<'_> {
    fn ratios(&self) -> Vec<(String, Compared)> {
        let Some(runr) = self.rts.iter().find(|r| r.name == "runr") else {
            return vec![];
        };
        let a = compared(&stats(&runr.samples));
        self.rts
            .iter()
            .filter(|r| r.name != "runr")
            .map(|peer| {
                let b = compared(&stats(&peer.samples));
                let mut r = a;
                for (x, y) in r.iter_mut().zip(b) {
                    x.2 /= y.2;
                }
                (format!("runr/{}", peer.name), r)
            })
            .collect()
    }

    fn json(&self) -> Value {
        let floor = stats(self.floor);
        let mut runtimes = serde_json::Map::new();
        for rt in self.rts {
            let s = stats(&rt.samples);
            runtimes.insert(
                rt.name.to_owned(),
                json!({
                    "path": rt.path,
                    "version": rt.version,
                    "debug_build": rt.debug_build,
                    "wall_ms": s.wall.to_json(),
                    "child_cpu_ms": s.child_cpu.to_json(),
                    "tree_cpu_ms": s.tree_cpu.to_json(),
                    "child_maxrss_kib": s.child_rss.to_json(),
                    "tree_maxrss_kib": s.tree_rss.to_json(),
                    "orphans_reaped_by_driver": s.orphans,
                    "samples": {
                        "wall_ms": rt.samples.iter().map(|x| round3(ms(x.wall))).collect::<Vec<_>>(),
                        "child_cpu_ms": rt.samples.iter().map(|x| round3(ms(x.child_cpu))).collect::<Vec<_>>(),
                        "tree_cpu_ms": rt.samples.iter().map(|x| round3(ms(x.tree_cpu))).collect::<Vec<_>>(),
                        "child_maxrss_kib": rt.samples.iter().map(|x| x.child_maxrss_kib).collect::<Vec<_>>(),
                        "tree_maxrss_kib": rt.samples.iter().map(|x| x.tree_maxrss_kib).collect::<Vec<_>>(),
                    },
                }),
            );
        }
        let mut ratios = serde_json::Map::new();
        for (name, r) in self.ratios() {
            let m: serde_json::Map<String, Value> = r
                .iter()
                .map(|(_, k, v)| ((*k).to_owned(), json!(round3(*v))))
                .collect();
            ratios.insert(name, Value::Object(m));
        }
        json!({
            "benchmark": "runtime",
            "command": "<rt> --root <tmp> run --bundle <busybox bundle> <id>; process /bin/true",
            "runs": self.args.runs,
            "warmup": self.args.warmup,
            "interleaved": self.rts.iter().map(|r| r.name).collect::<Vec<_>>(),
            "floor": {
                "what": "fork+exec+wait of static busybox `true` in the driver",
                "wall_ms": floor.wall.to_json(),
                "child_maxrss_kib": floor.child_rss.to_json(),
                "fork_only_maxrss_kib": self.fork_floor_kib,
            },
            "runtimes": runtimes,
            "ratios": ratios,
            "definitions": {
                "wall_ms": "fork of the runtime to its reaping by wait4",
                "child_cpu_ms": "user+sys from wait4 of the runtime process: itself plus the descendants it waited for (as /usr/bin/time)",
                "tree_cpu_ms": "user+sys of every process of the run: getrusage(RUSAGE_CHILDREN) delta of the subreaper driver",
                "child_maxrss_kib": "ru_maxrss from wait4 of the runtime process, what /usr/bin/time -v reports: max of its own peak and that of the descendants it waited for",
                "tree_maxrss_kib": "max ru_maxrss over every process of the run, including orphans re-parented to the driver",
            },
        })
    }

    fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let floor = stats(self.floor);
        let _ = writeln!(
            o,
            "rbench runtime: `<rt> run` of a busybox bundle running /bin/true; {} timed runs \
             per runtime after {} warm-up, interleaved {}",
            self.args.runs,
            self.args.warmup,
            self.rts
                .iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            o,
            "floor: fork+exec+wait of static busybox true {:.2} ms, peak RSS {:.0} KiB; \
             RSS a child has from the fork alone {} KiB\n",
            floor.wall.median, floor.child_rss.median, self.fork_floor_kib
        );
        let _ = writeln!(
            o,
            "{:<6} {:>8} {:>8} {:>8}   {:>9} {:>9}   {:>9} {:>9}  version",
            "", "wall ms", "", "", "CPU ms", "", "RSS KiB", ""
        );
        let _ = writeln!(
            o,
            "{:<6} {:>8} {:>8} {:>8}   {:>9} {:>9}   {:>9} {:>9}",
            "", "median", "p10", "p90", "child", "tree", "child", "tree"
        );
        for rt in self.rts {
            let s = stats(&rt.samples);
            let _ = writeln!(
                o,
                "{:<6} {:>8.2} {:>8.2} {:>8.2}   {:>9.2} {:>9.2}   {:>9.0} {:>9.0}  {}{} ({})",
                rt.name,
                s.wall.median,
                s.wall.p10,
                s.wall.p90,
                s.child_cpu.median,
                s.tree_cpu.median,
                s.child_rss.median,
                s.tree_rss.median,
                rt.version,
                if rt.debug_build { " DEBUG BUILD" } else { "" },
                rt.path.display()
            );
        }
        let ratios = self.ratios();
        if !ratios.is_empty() {
            let _ = writeln!(o);
            let _ = write!(o, "{:<30}", "ratio (medians)");
            for (name, _) in &ratios {
                let _ = write!(o, " {name:>10}");
            }
            let _ = writeln!(o);
            for row in 0..5 {
                let _ = write!(o, "{:<30}", ratios[0].1[row].0);
                for (_, r) in &ratios {
                    let _ = write!(o, " {:>10.2}", r[row].2);
                }
                let _ = writeln!(o);
            }
        }
        let _ = writeln!(
            o,
            "\nchild = the runtime process as wait4 (and /usr/bin/time -v) reports it: its own \
             usage plus that of the descendants it waited for;\ntree = every process of the run \
             (the driver is a subreaper); CPU and RSS medians over runs, RSS is each run's peak."
        );
        if self.args.verbose {
            for rt in self.rts {
                let _ = writeln!(
                    o,
                    "\n{} samples (wall ms / child CPU ms / child RSS KiB / tree RSS KiB):",
                    rt.name
                );
                for s in &rt.samples {
                    let _ = writeln!(
                        o,
                        "  {:8.2} {:8.2} {:8} {:8}",
                        ms(s.wall),
                        ms(s.child_cpu),
                        s.child_maxrss_kib,
                        s.tree_maxrss_kib
                    );
                }
            }
        }
        o
    }
}
