//! Running the OCI runtime binary (runr, runc, ...) with runc's command line, as containerd's
//! runc shim does: `--root R --log <bundle>/log.json --log-format json <command> ...`.

use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::reaper::Reaper;
use crate::stdio::ForChild;
use crate::Error;

/// Which runtime a container uses and where its state lives; saved in the bundle so the
/// `delete` action can clean up after a dead shim.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Runtime {
    pub binary: PathBuf,
    pub root: PathBuf,
    #[serde(default)]
    pub systemd_cgroup: bool,
}

pub const SAVED: &str = "rshim.json";
const LOG: &str = "log.json";

/// The runtime named `name`: a path as is, else next to this executable, else from PATH.
pub fn find_binary(name: &str) -> Result<PathBuf, Error> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        if !p.is_file() {
            return Err(Error::Invalid(format!(
                "runtime binary {name} does not exist"
            )));
        }
        return Ok(p);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)));
    let path = std::env::var_os("PATH").unwrap_or_default();
    beside
        .into_iter()
        .chain(std::env::split_paths(&path).map(|d| d.join(name)))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "runtime binary {name} not found next to the shim or in PATH"
            ))
        })
}

impl Runtime {
    /// From containerd's runc options (`BinaryName`, `Root`, `SystemdCgroup`), else
    /// `$RSHIM_RUNTIME`, else `runr`; state under `/run/containerd/<binary name>/<namespace>`.
    pub fn resolve(opts: &crate::options::RuncOptions, namespace: &str) -> Result<Runtime, Error> {
        let name = if !opts.binary_name.is_empty() {
            opts.binary_name.clone()
        } else {
            std::env::var("RSHIM_RUNTIME")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "runr".into())
        };
        let binary = find_binary(&name)?;
        let base = if opts.root.is_empty() {
            let stem = binary
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "runr".into());
            Path::new("/run/containerd").join(stem)
        } else {
            PathBuf::from(&opts.root)
        };
        Ok(Runtime {
            binary,
            root: base.join(namespace),
            systemd_cgroup: opts.systemd_cgroup,
        })
    }

    pub fn save(&self, bundle: &Path) -> Result<(), Error> {
        let p = bundle.join(SAVED);
        let json = serde_json::to_vec(self).expect("serializable");
        std::fs::write(&p, json).map_err(|e| Error::Io(format!("writing {}", p.display()), e))
    }

    pub fn load(bundle: &Path) -> Option<Runtime> {
        serde_json::from_slice(&std::fs::read(bundle.join(SAVED)).ok()?).ok()
    }

    /// Runs one runtime command; returns its stdout when `capture`. A failure carries the
    /// runtime's own last error message from its JSON log.
    pub fn run(
        &self,
        reaper: &Reaper,
        bundle: &Path,
        args: &[&str],
        stdio: ForChild,
        capture: bool,
    ) -> Result<Vec<u8>, Error> {
        let log = bundle.join(LOG);
        let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&log)
            .arg("--log-format")
            .arg("json");
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(args);
        // A shim of its own already runs in the bundle. Setting a working directory makes
        // std fork the shim instead of using posix_spawn (in a static binary it cannot find
        // posix_spawn_file_actions_addchdir_np): 0.4 ms more on each runtime command.
        if std::env::current_dir().ok().as_deref() != Some(bundle) {
            cmd.current_dir(bundle);
        }
        let null = || Stdio::null();
        cmd.stdin(stdio.stdin.map(Stdio::from).unwrap_or_else(null));
        if capture {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(stdio.stdout.map(Stdio::from).unwrap_or_else(null));
        }
        cmd.stderr(stdio.stderr.map(Stdio::from).unwrap_or_else(null));
        let what = format!("{} {}", self.binary.display(), args.join(" "));
        let mut child = reaper
            .spawn(&mut cmd)
            .map_err(|e| Error::Io(format!("running {what}"), e))?;
        // The fds given to the child are closed in here once spawn returns (moved into cmd).
        drop(cmd);
        let mut out = vec![];
        if let Some(mut so) = child.stdout.take() {
            let _ = so.read_to_end(&mut out);
        }
        let exit = reaper.wait(child.id() as i32);
        if exit.status != 0 {
            let msg =
                last_error(&log, offset).unwrap_or_else(|| format!("exit status {}", exit.status));
            return Err(Error::Runtime(format!("{what}: {msg}")));
        }
        Ok(out)
    }
}

/// The `msg` of the last error-level line the runtime logged after `offset`.
fn last_error(log: &Path, offset: u64) -> Option<String> {
    let mut f = std::fs::File::open(log).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut text = String::new();
    f.read_to_string(&mut text).ok()?;
    parse_last_error(&text)
}

fn parse_last_error(text: &str) -> Option<String> {
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let level = v.get("level")?.as_str()?;
        matches!(level, "error" | "fatal").then(|| v.get("msg")?.as_str().map(str::to_owned))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_error() {
        let log = concat!(
            "{\"level\":\"info\",\"msg\":\"starting\"}\n",
            "{\"level\":\"error\",\"msg\":\"first\"}\n",
            "not json\n",
            "{\"level\":\"error\",\"msg\":\"container \\\"x\\\" does not exist\"}\n",
            "{\"level\":\"warning\",\"msg\":\"late\"}\n"
        );
        assert_eq!(
            parse_last_error(log).as_deref(),
            Some("container \"x\" does not exist")
        );
        assert_eq!(parse_last_error("{\"level\":\"info\",\"msg\":\"x\"}"), None);
    }

    #[test]
    fn missing_runtime_is_named() {
        let e = find_binary("/nonexistent/runr").unwrap_err();
        assert_eq!(
            e.to_string(),
            "runtime binary /nonexistent/runr does not exist"
        );
        let e = find_binary("no-such-runtime-xyz").unwrap_err();
        assert!(
            e.to_string().contains("no-such-runtime-xyz not found"),
            "{e}"
        );
    }
}
