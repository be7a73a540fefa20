//! `rcd cri-logger`: a container's log writer in the CRI format, run by the shim through
//! containerd's `binary://` logging protocol, so it outlives rcd (a `kill -9` of rcd loses
//! no log line).
//!
//! The shim starts `rcd cri-logger <max>,<control dir>,<log path>` with the container's
//! stdout on fd 3, stderr on fd 4 and the write end of a ready pipe on fd 5 (closed once the
//! log file is open). Each line becomes `<RFC3339Nano> <stdout|stderr> <P|F> <text>\n`;
//! lines longer than `max` bytes are cut into `P` (partial) pieces. SIGUSR1 reopens the log
//! path (kubelet renames the file, then calls ReopenContainerLog). The logger's pid is in
//! `<control dir>/logger.pid`. It exits when both streams are closed. It also serves attach
//! clients and the container's stdin: see [`super::attach`].

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::attach::{self, Hub};

/// Where the logger's pid is kept, in its control dir.
pub const PID_FILE: &str = "logger.pid";
/// How long attach clients get, once the output has ended, to take what is queued for them.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    #[error("invalid logger spec {0:?}: expected <max line bytes>,<control dir>,<log path>")]
    InvalidSpec(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("fd {0} is not open: run by a shim with the binary:// logging protocol")]
    MissingFd(i32),
    #[error("blocking signals: {0}")]
    Signals(nix::Error),
}

/// The argument the shim passes: `<max>,<control dir>,<log path>`.
pub fn spec_arg(max_line: usize, control_dir: &Path, log_path: &Path) -> String {
    format!(
        "{max_line},{},{}",
        control_dir.display(),
        log_path.display()
    )
}

/// Parses [`spec_arg`]'s text.
pub fn parse_spec(spec: &str) -> Result<(usize, PathBuf, PathBuf), LoggerError> {
    let bad = || LoggerError::InvalidSpec(spec.to_owned());
    let (max, rest) = spec.split_once(',').ok_or_else(bad)?;
    let (dir, path) = rest.split_once(',').ok_or_else(bad)?;
    let max: usize = max.parse().map_err(|_| bad())?;
    if max == 0 || dir.is_empty() || !path.starts_with('/') {
        return Err(bad());
    }
    Ok((max, dir.into(), path.into()))
}

/// The `binary://` URI that makes a shim run this logger. Go's URL parsing gives the query's
/// one key as the first argument and its value as the second.
pub fn binary_uri(rcd: &Path, spec: &str) -> String {
    fn esc(s: &str) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-_./~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
    format!(
        "binary://{}?cri-logger={}",
        esc(&rcd.display().to_string()),
        esc(spec)
    )
}

/// Cuts `buf` into CRI log lines: complete lines (`F`) and, while a line is longer than
/// `max`, `max`-byte pieces (`P`). Returns the lines and how many bytes of `buf` they used;
/// with `eof`, what is left is one last full line.
pub fn split_lines(buf: &[u8], max: usize, eof: bool) -> (Vec<(bool, &[u8])>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        if rest.is_empty() {
            break;
        }
        let window = &rest[..rest.len().min(max + 1)];
        match window.iter().position(|&b| b == b'\n') {
            Some(i) if i <= max => {
                out.push((false, &rest[..i]));
                at += i + 1;
            }
            _ if rest.len() > max => {
                out.push((true, &rest[..max]));
                at += max;
            }
            _ if eof => {
                out.push((false, rest));
                at += rest.len();
            }
            _ => break,
        }
    }
    (out, at)
}

/// One formatted line.
pub fn format_line(stream: &str, partial: bool, text: &[u8]) -> Vec<u8> {
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut line = Vec::with_capacity(ts.len() + text.len() + 12);
    line.extend_from_slice(ts.as_bytes());
    line.push(b' ');
    line.extend_from_slice(stream.as_bytes());
    line.extend_from_slice(if partial { b" P " } else { b" F " });
    line.extend_from_slice(text);
    line.push(b'\n');
    line
}

fn open_log(path: &Path) -> Result<File, LoggerError> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| LoggerError::Io {
            what: "opening log",
            path: path.to_owned(),
            source,
        })
}

fn take_fd(fd: i32) -> Result<File, LoggerError> {
    if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return Err(LoggerError::MissingFd(fd));
    }
    // SAFETY: the fd is open (checked above) and owned by nothing else in this process.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn pump(
    mut input: File,
    stream: &'static str,
    max: usize,
    out: Arc<Mutex<File>>,
    hub: Option<Arc<Hub>>,
) {
    let kind = if stream == "stderr" {
        attach::STDERR
    } else {
        attach::STDOUT
    };
    let mut buf: Vec<u8> = Vec::with_capacity(max + 4096);
    let mut chunk = vec![0u8; 32 * 1024];
    loop {
        let n = match input.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let eof = n == 0;
        if let Some(h) = &hub {
            h.broadcast(kind, &chunk[..n]);
        }
        buf.extend_from_slice(&chunk[..n]);
        let (lines, used) = split_lines(&buf, max, eof);
        if !lines.is_empty() {
            let mut text = Vec::new();
            for (partial, l) in lines {
                text.extend(format_line(stream, partial, l));
            }
            // one write per batch on an O_APPEND file: lines of both streams never interleave
            let _ = out.lock().unwrap().write_all(&text);
        }
        buf.drain(..used);
        if eof {
            return;
        }
    }
}

/// The logger's main; see the module docs.
pub fn run(spec: &str) -> Result<(), LoggerError> {
    use nix::sys::signal::{SigSet, Signal};
    let (max, dir, path) = parse_spec(spec)?;
    let stdout = take_fd(3)?;
    let stderr = take_fd(4)?;
    let ready = take_fd(5)?;
    // SIGUSR1 is taken by sigwait below: blocked in every thread
    let mut set = SigSet::empty();
    set.add(Signal::SIGUSR1);
    set.thread_block().map_err(LoggerError::Signals)?;
    let file = Arc::new(Mutex::new(open_log(&path)?));
    std::fs::create_dir_all(&dir).map_err(|source| LoggerError::Io {
        what: "creating",
        path: dir.clone(),
        source,
    })?;
    let pid_file = dir.join(PID_FILE);
    std::fs::write(&pid_file, std::process::id().to_string()).map_err(|source| {
        LoggerError::Io {
            what: "writing",
            path: pid_file.clone(),
            source,
        }
    })?;
    // before ready: the shim opens the container's stdin FIFO after this, and attach
    // must not miss a line written right after the start
    let hub = Hub::start_or_warn(&dir, "rcd cri-logger");
    drop(ready);
    let hub_end = hub.clone();
    let mut threads = Vec::new();
    for (input, name) in [(stdout, "stdout"), (stderr, "stderr")] {
        let (out, hub) = (file.clone(), hub.clone());
        threads.push(std::thread::spawn(move || pump(input, name, max, out, hub)));
    }
    std::thread::spawn(move || {
        for t in threads {
            let _ = t.join();
        }
        if let Some(h) = &hub_end {
            h.close(CLOSE_GRACE);
        }
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(pid_file.with_file_name(attach::SOCKET));
        std::process::exit(0);
    });
    loop {
        if let Ok(Signal::SIGUSR1) = set.wait() {
            match open_log(&path) {
                Ok(f) => *file.lock().unwrap() = f,
                Err(e) => eprintln!("rcd cri-logger: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_full_and_partial_lines() {
        let (l, used) = split_lines(b"ab\ncdefgh\nij", 4, false);
        assert_eq!(
            l,
            vec![
                (false, &b"ab"[..]),
                (true, &b"cdef"[..]),
                (false, &b"gh"[..])
            ]
        );
        assert_eq!(used, 10);
        let (l, used) = split_lines(b"ij", 4, true);
        assert_eq!(l, vec![(false, &b"ij"[..])]);
        assert_eq!(used, 2);
        // exactly max bytes then a newline is one full line
        let (l, _) = split_lines(b"abcd\n", 4, false);
        assert_eq!(l, vec![(false, &b"abcd"[..])]);
        let (l, _) = split_lines(b"\n", 4, false);
        assert_eq!(l, vec![(false, &b""[..])]);
    }

    #[test]
    fn formats_cri_lines() {
        let l = String::from_utf8(format_line("stderr", true, b"x y")).unwrap();
        let (ts, rest) = l.split_once(' ').unwrap();
        assert_eq!(rest, "stderr P x y\n");
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
    }

    #[test]
    fn spec_round_trip_and_errors() {
        let s = spec_arg(16384, Path::new("/run/x"), Path::new("/var/log/p/c/0.log"));
        let (m, d, p) = parse_spec(&s).unwrap();
        assert_eq!(
            (m, d.as_path(), p.as_path()),
            (16384, Path::new("/run/x"), Path::new("/var/log/p/c/0.log"))
        );
        assert!(parse_spec("0,/a,/b").is_err());
        assert!(parse_spec("x,/a,/b").is_err());
        assert!(parse_spec("10,/a,rel").is_err());
        assert_eq!(
            binary_uri(Path::new("/usr/bin/rcd"), "1,/a b,/c"),
            "binary:///usr/bin/rcd?cri-logger=1%2C/a%20b%2C/c"
        );
    }
}
