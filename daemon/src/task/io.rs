//! A process's stdio as the Task API carries it: paths of FIFOs the shim opens, `file://`
//! URIs of log files the shim writes itself (they keep being written while rcd is down),
//! or nothing (`/dev/null`).

use super::error::{Result, TaskError};
use std::path::{Path, PathBuf};
use tokio::net::unix::pipe;

/// Where one stream of a process goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Stdio {
    /// `/dev/null`.
    #[default]
    Null,
    /// A FIFO rcd creates in the bundle; the caller gets rcd's end in [`ProcessIo`].
    Pipe,
    /// A log file the shim appends to (`file://PATH`), for stdout; containerd's shims write
    /// stderr into the same file, so stderr must name the same file or be null.
    File(PathBuf),
    /// Passed to the shim as it is (a FIFO the caller made, a `binary://` URI).
    Raw(String),
}

/// The stdio of a process: each stream, and whether it runs on a terminal (then stderr is
/// merged into stdout and must be [`Stdio::Null`]). A null output beside a pipe becomes a
/// FIFO rcd drains (the shims copy both outputs or neither).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoConfig {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    pub terminal: bool,
}

impl IoConfig {
    /// stdout and stderr appended to one log file, no stdin.
    pub fn log_file(path: impl Into<PathBuf>) -> IoConfig {
        let p = path.into();
        IoConfig {
            stdout: Stdio::File(p.clone()),
            stderr: Stdio::File(p),
            ..Default::default()
        }
    }
}

/// rcd's ends of the [`Stdio::Pipe`] streams. Read stdout/stderr only after the process
/// started: a FIFO no writer has opened yet reads as end-of-file. To end the process's
/// input, drop `stdin` and call [`super::TaskManager::close_stdin`]: the process reads
/// end-of-file once neither rcd nor the shim holds a writer (containerd's contract).
#[derive(Debug, Default)]
pub struct ProcessIo {
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

/// The strings of a process's stdio in a Task API request, and rcd's open ends.
pub(crate) struct Prepared {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub io: ProcessIo,
}

fn mkfifo(path: &Path) -> Result<()> {
    match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) => Ok(()),
        Err(e) => Err(TaskError::io("creating fifo", path, e.into())),
    }
}

/// Creates the FIFOs of `process` (the task id or an exec id) in `dir` and opens rcd's ends,
/// before the shim opens the others (it waits for a reader on stdout/stderr).
pub(crate) fn prepare(id: &str, process: &str, dir: &Path, cfg: &IoConfig) -> Result<Prepared> {
    let invalid = |reason: String| TaskError::InvalidRequest {
        id: id.to_owned(),
        what: "stdio",
        reason,
    };
    if cfg.terminal && cfg.stderr != Stdio::Null {
        return Err(invalid(
            "a terminal merges stderr into stdout: stderr must be null".into(),
        ));
    }
    if matches!(cfg.stdin, Stdio::File(_)) {
        return Err(invalid("stdin cannot be a file, use a pipe".into()));
    }
    match (&cfg.stdout, &cfg.stderr) {
        (Stdio::File(a), Stdio::File(b)) if a != b => {
            return Err(invalid(
                "stdout and stderr go to one log file: name the same file for both".into(),
            ))
        }
        (Stdio::File(_), Stdio::File(_)) | (Stdio::File(_), Stdio::Null) => {}
        (_, Stdio::File(_)) | (Stdio::File(_), _) => return Err(invalid(
            "a log file takes stdout and stderr: the other stream must be the same file or null"
                .into(),
        )),
        _ => {}
    }
    let mut cfg = cfg.clone();
    let piped = |s: &Stdio| matches!(s, Stdio::Pipe | Stdio::Raw(_));
    let mut drain = (false, false);
    if !cfg.terminal && (piped(&cfg.stdout) || piped(&cfg.stderr)) {
        if cfg.stdout == Stdio::Null {
            cfg.stdout = Stdio::Pipe;
            drain.0 = true;
        }
        if cfg.stderr == Stdio::Null {
            cfg.stderr = Stdio::Pipe;
            drain.1 = true;
        }
    }
    if let (Stdio::File(_), Stdio::Null) = (&cfg.stdout, &cfg.stderr) {
        cfg.stderr = cfg.stdout.clone();
    }
    let cfg = &cfg;
    let mut io = ProcessIo::default();
    let stdin = match &cfg.stdin {
        Stdio::Pipe => {
            let p = dir.join(format!("{process}.stdin"));
            mkfifo(&p)?;
            // read-write: opening never waits for the shim, and the shim's reads never see
            // end-of-file until it is told to close stdin
            io.stdin = Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(&p)
                    .map_err(|e| TaskError::io("opening fifo", &p, e))?,
            );
            p.display().to_string()
        }
        other => target(other, &invalid)?,
    };
    let out = |name: &str, s: &Stdio, slot: &mut Option<pipe::Receiver>| -> Result<String> {
        match s {
            Stdio::Pipe => {
                let p = dir.join(format!("{process}.{name}"));
                mkfifo(&p)?;
                *slot = Some(
                    pipe::OpenOptions::new()
                        .open_receiver(&p)
                        .map_err(|e| TaskError::io("opening fifo", &p, e))?,
                );
                Ok(p.display().to_string())
            }
            other => target(other, &invalid),
        }
    };
    let stdout = out("stdout", &cfg.stdout, &mut io.stdout)?;
    let stderr = out("stderr", &cfg.stderr, &mut io.stderr)?;
    if drain.0 {
        discard(io.stdout.take());
    }
    if drain.1 {
        discard(io.stderr.take());
    }
    Ok(Prepared {
        stdin,
        stdout,
        stderr,
        io,
    })
}

/// Reads and drops what a process writes to a stream nobody asked for, until it closes.
fn discard(rx: Option<pipe::Receiver>) {
    if let Some(mut rx) = rx {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut rx, &mut tokio::io::sink()).await;
        });
    }
}

fn target(s: &Stdio, invalid: &dyn Fn(String) -> TaskError) -> Result<String> {
    Ok(match s {
        Stdio::Null => String::new(),
        Stdio::File(p) => {
            if !p.is_absolute() {
                return Err(invalid(format!(
                    "log file {} is not an absolute path",
                    p.display()
                )));
            }
            format!("file://{}", p.display())
        }
        Stdio::Raw(s) => s.clone(),
        Stdio::Pipe => unreachable!("pipes are made by the caller"),
    })
}

/// Removes the FIFOs `prepare` made for `process`.
pub(crate) fn remove(dir: &Path, process: &str) {
    for s in ["stdin", "stdout", "stderr"] {
        let _ = std::fs::remove_file(dir.join(format!("{process}.{s}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refusals() {
        let dir = tempfile::tempdir().unwrap();
        let tty = IoConfig {
            terminal: true,
            stderr: Stdio::Pipe,
            ..Default::default()
        };
        let e = prepare("t", "t", dir.path(), &tty)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("stderr must be null"), "{e}");
        let rel = IoConfig {
            stdout: Stdio::File("log".into()),
            ..Default::default()
        };
        let e = prepare("t", "t", dir.path(), &rel)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not an absolute path"), "{e}");
        let inf = IoConfig {
            stdin: Stdio::File("/x".into()),
            ..Default::default()
        };
        assert!(prepare("t", "t", dir.path(), &inf).is_err());
        let ok = IoConfig {
            stdin: Stdio::Pipe,
            ..IoConfig::log_file("/tmp/x.log")
        };
        let p = prepare("t", "e1", dir.path(), &ok).unwrap();
        assert_eq!(
            (p.stdout.as_str(), p.stderr.as_str()),
            ("file:///tmp/x.log", "file:///tmp/x.log")
        );
        assert!(p.stdin.ends_with("e1.stdin") && p.io.stdin.is_some());
        let half = IoConfig {
            stdout: Stdio::Pipe,
            ..Default::default()
        };
        let p = prepare("t", "e2", dir.path(), &half).unwrap();
        assert!(p.stderr.ends_with("e2.stderr") && p.io.stderr.is_none() && p.io.stdout.is_some());
        remove(dir.path(), "e2");
        remove(dir.path(), "e1");
        assert!(!dir.path().join("e1.stdin").exists());
    }
}
