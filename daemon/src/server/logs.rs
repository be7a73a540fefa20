//! docker's json-file logs for containers made with `ContainerOptions.log` (label
//! `rcd.io/log=json-file`): the logger process, the task stdio that starts it, and
//! `Containers.Logs`.
//!
//! ```text
//! <root>/logs/<ns>/<id>/json.log    one JSON object per line, appended across restarts
//! <root>/logs/<ns>/<id>/json.log.1  the rotated one before it
//! <state>/logs/<ns>/<id>/logger.pid  the running logger's pid (gone once it has finished)
//! ```
//!
//! The shim runs `rcd json-logger <control dir>,<log path>,<max bytes>,<files>` through
//! containerd's `binary://` protocol (stdout on fd 3, stderr on fd 4, a ready pipe on fd 5),
//! so lines keep being written while rcd is down. Each line becomes
//! `{"log":"text\n","stream":"stdout","time":"2026-…Z"}`; a line longer than [`MAX_LINE`]
//! is cut into pieces without the newline, as docker does. The file is rotated at
//! [`MAX_SIZE`] (`json.log.1`, … [`MAX_FILES`] files in all). The logger also serves the
//! output live on `<control dir>/attach.sock` (`crate::cri::attach::Hub`, the CRI logger's
//! attach); Tasks.Create returns that path (`attach_socket`) for rnerd's attached runs.

use super::containers::{get_container, Runtime};
use super::service::blocking;
use crate::cri::attach::{self, Hub};
use crate::task::{IoConfig, Stdio};
use chrono::{DateTime, SecondsFormat, Utc};
use rcd_proto::labels;
use rcd_proto::v1 as pb;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Status;

/// The value of [`labels::LOG`] for a json-file log.
pub const JSON_FILE: &str = "json-file";
/// docker's cut for long lines.
pub const MAX_LINE: usize = 16 * 1024;
/// The logger's pid, in its control dir.
pub const PID_FILE: &str = "logger.pid";
/// The log's file name in its directory.
pub const LOG_FILE: &str = "json.log";
/// The size at which the log is rotated (docker's `max-size`), and how many files are kept
/// (`max-file`: `json.log`, `json.log.1`, ...).
pub const MAX_SIZE: u64 = 64 << 20;
pub const MAX_FILES: u32 = 2;
/// How often a follower looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Lines per streamed message.
const BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    #[error(
        "invalid json-logger spec {0:?}: expected <control dir>,<log path>,<max bytes>,<files>"
    )]
    InvalidSpec(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("fd {0} is not open: run by a shim with the binary:// logging protocol")]
    MissingFd(i32),
}

pub fn log_path(root: &Path, ns: &str, id: &str) -> PathBuf {
    root.join("logs").join(ns).join(id).join(LOG_FILE)
}

pub fn control_dir(state: &Path, ns: &str, id: &str) -> PathBuf {
    state.join("logs").join(ns).join(id)
}

/// Whether the container keeps a json-file log.
pub fn has_log(c: &crate::metadata::ContainerRecord) -> bool {
    c.labels.get(labels::LOG).map(String::as_str) == Some(JSON_FILE)
}

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

/// The `binary://` URI that makes a shim run the json logger of `log` (the query's key and
/// value become its two arguments).
pub fn binary_uri(rcd: &Path, control: &Path, log: &Path) -> String {
    format!(
        "binary://{}?json-logger={}",
        esc(&rcd.display().to_string()),
        esc(&format!(
            "{},{},{MAX_SIZE},{MAX_FILES}",
            control.display(),
            log.display()
        ))
    )
}

/// `<control dir>,<log path>,<max bytes>,<files>` (paths hold no ',': rcd's root and state
/// are checked when the URI is made).
fn parse_spec(spec: &str) -> Result<(PathBuf, PathBuf, u64, u32), LoggerError> {
    let bad = || LoggerError::InvalidSpec(spec.to_owned());
    let parts: Vec<&str> = spec.split(',').collect();
    let [dir, path, max, files] = parts[..] else {
        return Err(bad());
    };
    if !dir.starts_with('/') || !path.starts_with('/') {
        return Err(bad());
    }
    let max: u64 = max.parse().map_err(|_| bad())?;
    let files: u32 = files.parse().map_err(|_| bad())?;
    if files < 2 {
        return Err(bad());
    }
    Ok((dir.into(), path.into(), max, files))
}

/// `json.log.N`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

/// The log file being written, rotated once it would pass `max` bytes (0: never).
pub struct Sink {
    file: File,
    path: PathBuf,
    size: u64,
    max: u64,
    files: u32,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl Sink {
    pub fn open(path: &Path, max: u64, files: u32) -> std::io::Result<Sink> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(Sink {
            file,
            path: path.to_owned(),
            size,
            max,
            files,
        })
    }

    pub fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.max > 0 && self.size > 0 && self.size + buf.len() as u64 > self.max {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        for n in (1..self.files - 1).rev() {
            let _ = std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1));
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// The stdio of a task of `c` created with `io`: the json logger when the container keeps a
/// log and the caller brought no stdio of its own (a detached run, a restart); else `io`.
/// With the logger, also the path of its attach socket (see [`crate::cri::attach`]).
pub(crate) fn task_io(
    rt: &Runtime,
    ns: &str,
    c: &crate::metadata::ContainerRecord,
    io: IoConfig,
) -> Result<(IoConfig, Option<PathBuf>), Status> {
    let bare = [&io.stdin, &io.stdout, &io.stderr]
        .iter()
        .all(|s| matches!(s, Stdio::Null));
    if !has_log(c) || !bare {
        return Ok((io, None));
    }
    let s = &rt.d.settings;
    let log = log_path(&s.root, ns, &c.id);
    let control = control_dir(&s.state, ns, &c.id);
    for dir in [log.parent().unwrap_or(&s.root), control.as_path()] {
        std::fs::create_dir_all(dir)
            .map_err(|e| Status::internal(format!("creating {}: {e}", dir.display())))?;
    }
    if [&log, &control]
        .iter()
        .any(|p| p.to_string_lossy().contains(','))
    {
        return Err(Status::failed_precondition(format!(
            "container {:?}: its log {} cannot be kept: rcd's root and state paths must hold no ','",
            c.id,
            log.display()
        )));
    }
    let uri = binary_uri(&crate::logger_exe(), &control, &log);
    // a terminal merges stderr into stdout: one stream, logged as stdout
    let terminal = io.terminal || spec_terminal(&c.spec);
    let io = IoConfig {
        stdin: Stdio::Null,
        stdout: Stdio::Raw(uri.clone()),
        stderr: if terminal {
            Stdio::Null
        } else {
            Stdio::Raw(uri)
        },
        terminal,
    };
    Ok((io, Some(control.join(attach::SOCKET))))
}

/// Whether the container's spec asks for a terminal.
pub fn spec_terminal(spec: &serde_json::Value) -> bool {
    spec["process"]["terminal"].as_bool().unwrap_or(false)
}

/// Removes a container's log and control dir (with the container).
pub(crate) fn remove(rt: &Runtime, ns: &str, id: &str) {
    let s = &rt.d.settings;
    if let Some(dir) = log_path(&s.root, ns, id).parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    let _ = std::fs::remove_dir_all(control_dir(&s.state, ns, id));
}

/// Whether the logger of the container's last task is still running.
fn logger_running(control: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(control.join(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // a pid file left by a killed logger names a dead (or reused, rare) pid
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Cuts `buf` into docker log pieces: `(text, ends with newline)`; complete lines keep their
/// newline, longer ones are cut at `max` bytes; with `eof` the rest is one last piece.
/// Returns the pieces and how many bytes of `buf` they used.
pub fn split_pieces(buf: &[u8], max: usize, eof: bool) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        let window = &rest[..rest.len().min(max)];
        if let Some(i) = window.iter().position(|&b| b == b'\n') {
            out.push(&rest[..=i]);
            at += i + 1;
        } else if rest.len() >= max {
            out.push(&rest[..max]);
            at += max;
        } else if eof {
            out.push(rest);
            at += rest.len();
        } else {
            break;
        }
    }
    (out, at)
}

/// One line of the log file.
pub fn format_entry(stream: &str, text: &[u8], time: DateTime<Utc>) -> Vec<u8> {
    let mut line = serde_json::to_vec(&serde_json::json!({
        "log": String::from_utf8_lossy(text),
        "stream": stream,
        "time": time.to_rfc3339_opts(SecondsFormat::Nanos, true),
    }))
    .expect("json of strings");
    line.push(b'\n');
    line
}

/// A parsed line of the log file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub stream: String,
    pub log: String,
    pub time: DateTime<Utc>,
}

pub fn parse_entry(line: &[u8]) -> Option<Entry> {
    #[derive(serde::Deserialize)]
    struct Raw {
        log: String,
        stream: String,
        time: DateTime<Utc>,
    }
    let r: Raw = serde_json::from_slice(line).ok()?;
    Some(Entry {
        stream: r.stream,
        log: r.log,
        time: r.time,
    })
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> LoggerError + 'a {
    move |source| LoggerError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn take_fd(fd: i32) -> Result<File, LoggerError> {
    if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return Err(LoggerError::MissingFd(fd));
    }
    // SAFETY: the fd is open (checked above) and owned by nothing else in this process.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn pump(mut input: File, stream: &'static str, out: Arc<Mutex<Sink>>, hub: Option<Arc<Hub>>) {
    let kind = if stream == "stderr" {
        attach::STDERR
    } else {
        attach::STDOUT
    };
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_LINE + 4096);
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
        let (pieces, used) = split_pieces(&buf, MAX_LINE, eof);
        if !pieces.is_empty() {
            let now = Utc::now();
            let mut text = Vec::new();
            for p in pieces {
                text.extend(format_entry(stream, p, now));
            }
            // one write per batch on an O_APPEND file: lines of both streams never interleave
            if let Err(e) = out.lock().unwrap().write(&text) {
                eprintln!("rcd json-logger: writing the log: {e}");
            }
        }
        buf.drain(..used);
        if eof {
            return;
        }
    }
}

/// `rcd json-logger <control dir>,<log path>,<max bytes>,<files>`: the logger's main (see
/// the module docs).
/// Returns once both streams are closed.
pub fn run_logger(spec: &str) -> Result<(), LoggerError> {
    let (dir, path, max, files) = parse_spec(spec)?;
    let stdout = take_fd(3)?;
    let stderr = take_fd(4)?;
    let ready = take_fd(5)?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io_err("creating", d))?;
    }
    let file = Sink::open(&path, max, files).map_err(io_err("opening log", &path))?;
    std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    let pid_file = dir.join(PID_FILE);
    let me = std::process::id().to_string();
    std::fs::write(&pid_file, &me).map_err(io_err("writing", &pid_file))?;
    // before ready: the shim's Create returns after ready, and a client (rnerd's attached
    // run) connects right then, before the task starts, to miss nothing
    let hub = Hub::start_or_warn(&dir, "rcd json-logger");
    drop(ready);
    let file = Arc::new(Mutex::new(file));
    let threads: Vec<_> = [(stdout, "stdout"), (stderr, "stderr")]
        .into_iter()
        .map(|(input, name)| {
            let (out, hub) = (file.clone(), hub.clone());
            std::thread::spawn(move || pump(input, name, out, hub))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    if let Some(h) = &hub {
        h.close(crate::cri::logger::CLOSE_GRACE);
    }
    // the next task's logger may have taken the file and the socket over already
    if std::fs::read_to_string(&pid_file).is_ok_and(|s| s == me) {
        let _ = std::fs::remove_file(dir.join(attach::SOCKET));
        let _ = std::fs::remove_file(&pid_file);
    }
    Ok(())
}

/// A bound of `since`/`until`: RFC 3339 or Unix seconds with an optional fraction.
pub fn parse_time(what: &str, s: &str) -> Result<Option<DateTime<Utc>>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    let bad = || format!("invalid {what} {s:?}: expected RFC 3339 or Unix seconds");
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
    {
        return Err(bad());
    }
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    DateTime::from_timestamp(secs, nanos)
        .map(Some)
        .ok_or_else(bad)
}

/// What a Logs call keeps.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// `None`: every line.
    pub tail: Option<usize>,
}

impl Filter {
    fn keeps(&self, e: &Entry) -> bool {
        self.since.is_none_or(|s| e.time >= s) && self.until.is_none_or(|u| e.time <= u)
    }
}

fn to_line(e: Entry) -> pb::LogLine {
    pb::LogLine {
        stream: e.stream,
        line: e.log.into_bytes(),
        time: e.time.to_rfc3339_opts(SecondsFormat::Nanos, true),
    }
}

/// The complete lines of `data` (a trailing piece without newline, still being written, is
/// left), as entries the filter keeps; and how many bytes were used.
fn entries(data: &[u8], f: &Filter) -> (Vec<Entry>, usize) {
    let end = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let out = data[..end]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse_entry)
        .filter(|e| f.keeps(e))
        .collect();
    (out, end)
}

/// Where a reader is in the log: the file (by inode) and the offset after its last whole
/// line.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    ino: u64,
    offset: u64,
}

/// Every kept entry of the rotated files (oldest first) and of the current one; the cursor
/// at the current one's end.
fn read_all(path: &Path, f: &Filter) -> std::io::Result<(Vec<Entry>, Cursor)> {
    let mut out = Vec::new();
    let mut n = 1;
    while n < 1000 && rotated(path, n).exists() {
        n += 1;
    }
    for k in (1..n).rev() {
        if let Ok(mut file) = File::open(rotated(path, k)) {
            out.extend(read_from_file(&mut file, 0, f)?.0);
        }
    }
    let (es, cur) = read_new(path, Cursor::default(), f)?;
    out.extend(es);
    Ok((out, cur))
}

/// What was written since `cur`: the rest of a file rotated meanwhile (now `json.log.1`),
/// then the current one.
fn read_new(path: &Path, cur: Cursor, f: &Filter) -> std::io::Result<(Vec<Entry>, Cursor)> {
    use std::os::unix::fs::MetadataExt;
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), cur)),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let mut out = Vec::new();
    let mut offset = cur.offset;
    if meta.ino() != cur.ino {
        if cur.ino != 0 {
            if let Ok(mut old) = File::open(rotated(path, 1)) {
                if old.metadata()?.ino() == cur.ino {
                    out.extend(read_from_file(&mut old, cur.offset, f)?.0);
                }
            }
        }
        offset = 0;
    } else if meta.len() < offset {
        // truncated: start over
        offset = 0;
    }
    let (es, next) = read_from_file(&mut file, offset, f)?;
    out.extend(es);
    Ok((
        out,
        Cursor {
            ino: meta.ino(),
            offset: next,
        },
    ))
}

fn read_from_file(file: &mut File, offset: u64, f: &Filter) -> std::io::Result<(Vec<Entry>, u64)> {
    file.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    let (es, used) = entries(&data, f);
    Ok((es, offset + used as u64))
}

/// Whether a follower is done: the container is gone, or its task is stopped or deleted,
/// its logger has finished and no restart is pending.
async fn follow_done(rt: &Runtime, ns: &str, id: &str, control: &Path) -> bool {
    let c = match rt.d.md.container(ns, id) {
        Ok(Some(c)) => c,
        _ => return true,
    };
    let task = rt.tasks.list(Some(ns)).into_iter().find(|t| t.id == id);
    let exit_status = match &task {
        Some(t) if t.exit.is_none() && !t.shim_dead => match rt.tasks.state(ns, id, None).await {
            Ok(st) if st.status == crate::task::TaskStatus::Stopped => st.exit.map(|e| e.status),
            Ok(_) => return false,
            Err(_) => None,
        },
        Some(t) => Some(t.exit.map_or(137, |e| e.status)),
        None => None,
    };
    if logger_running(control) || rt.restarts.pending(ns, id) {
        return false;
    }
    // stopped, and the monitor may not have seen the exit yet
    !(task.is_some() && super::restart::should_restart(&c.labels, exit_status))
}

pub(crate) async fn logs(
    rt: Arc<Runtime>,
    ns: String,
    req: pb::LogsRequest,
) -> Result<tokio::sync::mpsc::Receiver<Result<pb::LogsResponse, Status>>, Status> {
    let c = get_container(&rt.d.md, &ns, &req.id)?;
    if !has_log(&c) {
        return Err(Status::failed_precondition(format!(
            "container {:?} keeps no log: create it with the json-file log (ContainerOptions.log)",
            c.id
        )));
    }
    let filter = Filter {
        since: parse_time("since", &req.since).map_err(Status::invalid_argument)?,
        until: parse_time("until", &req.until).map_err(Status::invalid_argument)?,
        // proto3 cannot tell 0 from unset: tail_all (or a negative tail) asks for every
        // line, a bare 0 for none (docker's --tail 0, to follow only what comes)
        tail: if req.tail_all || req.tail < 0 {
            None
        } else {
            Some(req.tail as usize)
        },
    };
    let path = log_path(&rt.d.settings.root, &ns, &c.id);
    let control = control_dir(&rt.d.settings.state, &ns, &c.id);
    let (mut first, cursor) = {
        let (path, f) = (path.clone(), filter.clone());
        blocking(move || {
            read_all(&path, &f)
                .map_err(|e| Status::internal(format!("reading {}: {e}", path.display())))
        })
        .await?
    };
    if let Some(n) = filter.tail {
        first.drain(..first.len().saturating_sub(n));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let id = c.id.clone();
    tokio::spawn(async move {
        let send = |es: Vec<Entry>| {
            let tx = tx.clone();
            async move {
                let mut es = es.into_iter().map(to_line).peekable();
                while es.peek().is_some() {
                    let lines: Vec<_> = es.by_ref().take(BATCH).collect();
                    if tx.send(Ok(pb::LogsResponse { lines })).await.is_err() {
                        return false;
                    }
                }
                true
            }
        };
        if !send(first).await || !req.follow {
            return;
        }
        let mut cursor = cursor;
        loop {
            // done is checked before reading, so the lines written up to the end are sent
            let done = follow_done(&rt, &ns, &id, &control).await;
            let (path_, f) = (path.clone(), filter.clone());
            let read = tokio::task::spawn_blocking(move || read_new(&path_, cursor, &f)).await;
            match read {
                Ok(Ok((es, next))) => {
                    cursor = next;
                    if !send(es).await {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    let _ = tx
                        .send(Err(Status::internal(format!(
                            "reading {}: {e}",
                            path.display()
                        ))))
                        .await;
                    return;
                }
                Err(_) => return,
            }
            if done || tx.is_closed() {
                return;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces() {
        let (p, used) = split_pieces(b"ab\ncdefgh\nij", 4, false);
        assert_eq!(p, vec![&b"ab\n"[..], &b"cdef"[..], &b"gh\n"[..]]);
        assert_eq!(used, 10);
        let (p, used) = split_pieces(b"ij", 4, true);
        assert_eq!(p, vec![&b"ij"[..]]);
        assert_eq!(used, 2);
        let (p, _) = split_pieces(b"abc\n", 4, false);
        assert_eq!(p, vec![&b"abc\n"[..]]);
    }

    #[test]
    fn entries_round_trip() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let l = format_entry("stderr", b"x \"y\"\n", t);
        assert_eq!(
            String::from_utf8(l.clone()).unwrap(),
            "{\"log\":\"x \\\"y\\\"\\n\",\"stream\":\"stderr\",\"time\":\"2026-01-02T03:04:05.123456789Z\"}\n"
        );
        let e = parse_entry(&l[..l.len() - 1]).unwrap();
        assert_eq!(
            (e.stream.as_str(), e.log.as_str(), e.time),
            ("stderr", "x \"y\"\n", t)
        );
        // a piece still being written is left for the next read
        let mut data = l.clone();
        data.extend_from_slice(b"{\"log\":");
        let (es, used) = entries(&data, &Filter::default());
        assert_eq!((es.len(), used), (1, l.len()));
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("since", "").unwrap(), None);
        let t = parse_time("since", "1700000000.5").unwrap().unwrap();
        assert_eq!(
            (t.timestamp(), t.timestamp_subsec_millis()),
            (1700000000, 500)
        );
        let t = parse_time("since", "2026-01-02T03:04:05+01:00")
            .unwrap()
            .unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-02T02:04:05+00:00");
        for bad in ["x", "1.2.3", "-5", "10m", ".5"] {
            let e = parse_time("since", bad).unwrap_err();
            assert!(e.starts_with("invalid since"), "{bad}: {e}");
        }
    }

    #[test]
    fn uri_and_spec() {
        let u = binary_uri(
            Path::new("/usr/bin/rcd"),
            Path::new("/run/rcd/logs/default/c 1"),
            Path::new("/var/lib/rcd/logs/default/c 1/json.log"),
        );
        assert_eq!(
            u,
            format!("binary:///usr/bin/rcd?json-logger=/run/rcd/logs/default/c%201%2C/var/lib/rcd/logs/default/c%201/json.log%2C{MAX_SIZE}%2C{MAX_FILES}")
        );
        let (d, p, m, n) = parse_spec("/a,/b/c,100,3").unwrap();
        assert_eq!(
            (d.as_path(), p.as_path(), m, n),
            (Path::new("/a"), Path::new("/b/c"), 100, 3)
        );
        for bad in [
            "rel,/b,1,2",
            "/a",
            "/a,/b",
            "/a,/b,x,2",
            "/a,/b,1,1",
            "/a,/b,1,2,3",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rotation_keeps_files_and_readers_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let t = Utc::now();
        let line = |i: usize| format_entry("stdout", format!("l{i}\n").as_bytes(), t);
        let len = line(10).len() as u64;
        // three lines per file, three files
        let mut sink = Sink::open(&path, 3 * len, 3).unwrap();
        let f = Filter::default();
        for i in 10..14 {
            sink.write(&line(i)).unwrap();
        }
        let (es, cur) = read_all(&path, &f).unwrap();
        assert_eq!(es.len(), 4);
        // a follower at the end sees the rest of the rotated file, then the new one
        for i in 14..17 {
            sink.write(&line(i)).unwrap();
        }
        assert!(rotated(&path, 1).exists());
        let (es, _) = read_new(&path, cur, &f).unwrap();
        let got: Vec<_> = es.iter().map(|e| e.log.as_str()).collect();
        assert_eq!(got, ["l14\n", "l15\n", "l16\n"]);
        for i in 17..40 {
            sink.write(&line(i)).unwrap();
        }
        assert!(rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
        let (es, _) = read_all(&path, &f).unwrap();
        let got: Vec<_> = es.iter().map(|e| e.log.clone()).collect();
        let want: Vec<_> = (31..40).map(|i| format!("l{i}\n")).collect();
        assert_eq!(got, want);
    }
}
