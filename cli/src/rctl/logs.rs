//! CRI log files (`<RFC3339Nano> <stdout|stderr> <P|F> <text>`), read as crictl reads them:
//! partial lines joined, `--tail`, `--since`, timestamps, one stream only, and `-f` following
//! the file across kubelet-style rotation (rename + reopen) until the container stops.

use anyhow::{Context, Result};
use chrono::{DateTime, FixedOffset};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub time: DateTime<FixedOffset>,
    pub stream: String,
    pub partial: bool,
    pub text: Vec<u8>,
}

/// One line of a CRI log file (without its newline).
pub fn parse_line(line: &[u8]) -> Option<Entry> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let time = DateTime::parse_from_rfc3339(time).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default().to_vec();
    Some(Entry {
        time,
        stream,
        partial: tag.first() == Some(&b'P'),
        text,
    })
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub tail: Option<usize>,
    pub since: Option<DateTime<FixedOffset>>,
    pub timestamps: bool,
    pub stream: Option<String>,
    pub limit_bytes: Option<u64>,
}

/// Writes entries as crictl does: full lines end with a newline, partial ones are joined;
/// stdout entries to `out`, stderr to `err`.
pub struct Printer<'a> {
    pub opts: &'a Options,
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    written: u64,
    /// Whether the previous entry on each stream was partial (no timestamp repeat).
    mid_line: bool,
}

impl<'a> Printer<'a> {
    pub fn new(opts: &'a Options, out: &'a mut dyn Write, err: &'a mut dyn Write) -> Self {
        Printer {
            opts,
            out,
            err,
            written: 0,
            mid_line: false,
        }
    }

    fn wanted(&self, e: &Entry) -> bool {
        self.opts.stream.as_ref().is_none_or(|s| *s == e.stream)
            && self.opts.since.is_none_or(|t| e.time >= t)
    }

    /// False once `--limit-bytes` is reached.
    pub fn print(&mut self, e: &Entry) -> Result<bool> {
        if !self.wanted(e) {
            return Ok(true);
        }
        let mut buf = Vec::with_capacity(e.text.len() + 40);
        if self.opts.timestamps && !self.mid_line {
            buf.extend_from_slice(
                e.time
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                    .as_bytes(),
            );
            buf.push(b' ');
        }
        buf.extend_from_slice(&e.text);
        if !e.partial {
            buf.push(b'\n');
        }
        self.mid_line = e.partial;
        let mut more = true;
        if let Some(limit) = self.opts.limit_bytes {
            let left = limit.saturating_sub(self.written) as usize;
            if buf.len() >= left {
                buf.truncate(left);
                more = false;
            }
        }
        self.written += buf.len() as u64;
        let w: &mut dyn Write = if e.stream == "stderr" {
            &mut *self.err
        } else {
            &mut *self.out
        };
        w.write_all(&buf)?;
        w.flush()?;
        Ok(more)
    }
}

/// Reads the whole file's entries (the last `tail` whole lines of them when asked).
fn initial_entries(data: &[u8], tail: Option<usize>) -> Vec<Entry> {
    let entries: Vec<Entry> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse_line)
        .collect();
    match tail {
        None => entries,
        Some(n) => {
            // Count whole lines from the end: a line is its partials plus the final F.
            let mut lines = 0;
            let mut start = entries.len();
            for (i, e) in entries.iter().enumerate().rev() {
                if !e.partial {
                    if lines == n {
                        break;
                    }
                    lines += 1;
                }
                start = i;
            }
            if n == 0 {
                start = entries.len();
            }
            entries[start..].to_vec()
        }
    }
}

/// Prints the log at `path`; with `follow`, keeps printing new lines until `running` says the
/// container stopped (checked about once a second) and the file has nothing more.
pub fn print_log(
    path: &Path,
    opts: &Options,
    follow: bool,
    mut running: impl FnMut() -> bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<()> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("opening log file {}", path.display()))?;
    let mut data = vec![];
    file.read_to_end(&mut data)
        .with_context(|| format!("reading log file {}", path.display()))?;
    // A last line without its newline is still being written: keep it for later.
    let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut p = Printer::new(opts, out, err);
    for e in initial_entries(&data[..complete], opts.tail) {
        if !p.print(&e)? {
            return Ok(());
        }
    }
    if !follow {
        return Ok(());
    }
    let mut pos = complete as u64;
    let mut ino = file.metadata()?.ino();
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(pos))?;
    let mut pending: Vec<u8> = vec![];
    let mut last_check = std::time::Instant::now();
    let mut stopped = false;
    loop {
        let mut line = vec![];
        let n = reader.read_until(b'\n', &mut line)?;
        if n > 0 {
            pos += n as u64;
            pending.extend_from_slice(&line);
            if pending.last() == Some(&b'\n') {
                pending.pop();
                if let Some(e) = parse_line(&pending) {
                    if !p.print(&e)? {
                        return Ok(());
                    }
                }
                pending.clear();
            }
            continue;
        }
        // At the end: rotated (new inode at the path) or truncated?
        match std::fs::metadata(path) {
            Ok(m) if m.ino() != ino || m.len() < pos => {
                if let Ok(f) = std::fs::File::open(path) {
                    ino = f.metadata()?.ino();
                    reader = BufReader::new(f);
                    pos = 0;
                    pending.clear();
                    continue;
                }
            }
            _ => {}
        }
        if stopped {
            return Ok(());
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = std::time::Instant::now();
            // One more pass over the file after the container is seen stopped.
            stopped = !running();
            continue;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `--since`: RFC 3339 or a relative duration (`10s`, `5m`).
pub fn parse_since(s: &str) -> Result<DateTime<FixedOffset>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t);
    }
    let d = crate::client::parse_duration(s).map_err(|_| {
        anyhow::anyhow!("invalid --since {s:?}: give an RFC 3339 time or a duration like 10s")
    })?;
    Ok((chrono::Utc::now() - chrono::Duration::from_std(d)?).fixed_offset())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2024-01-01T00:00:00.000000001Z stdout F one\n\
2024-01-01T00:00:01Z stderr F two\n\
2024-01-01T00:00:02Z stdout P thr\n\
2024-01-01T00:00:02Z stdout F ee\n";

    fn render(opts: &Options) -> (String, String) {
        let (mut o, mut e) = (vec![], vec![]);
        {
            let mut p = Printer::new(opts, &mut o, &mut e);
            for en in initial_entries(LOG.as_bytes(), opts.tail) {
                p.print(&en).unwrap();
            }
        }
        (String::from_utf8(o).unwrap(), String::from_utf8(e).unwrap())
    }

    #[test]
    fn parses_and_joins() {
        assert_eq!(
            render(&Options::default()),
            ("one\nthree\n".into(), "two\n".into())
        );
        let tail = Options {
            tail: Some(1),
            ..Default::default()
        };
        assert_eq!(render(&tail).0, "three\n");
        let only_err = Options {
            stream: Some("stderr".into()),
            ..Default::default()
        };
        assert_eq!(render(&only_err), (String::new(), "two\n".into()));
        let ts = Options {
            timestamps: true,
            tail: Some(1),
            ..Default::default()
        };
        assert_eq!(render(&ts).0, "2024-01-01T00:00:02.000000000Z three\n");
        let since = Options {
            since: Some(DateTime::parse_from_rfc3339("2024-01-01T00:00:01Z").unwrap()),
            ..Default::default()
        };
        assert_eq!(render(&since), ("three\n".into(), "two\n".into()));
        assert!(parse_line(b"garbage").is_none());
    }

    #[test]
    fn follows_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, "2024-01-01T00:00:00Z stdout F before\n").unwrap();
        let p2 = path.clone();
        let writer = std::thread::spawn(move || {
            let append = |line: &str| {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(&p2).unwrap();
                f.write_all(line.as_bytes()).unwrap();
            };
            std::thread::sleep(Duration::from_millis(200));
            // A line written in two pieces is printed once whole.
            append("2024-01-01T00:00:01Z stdout F gro");
            std::thread::sleep(Duration::from_millis(150));
            append("wing\n");
            std::thread::sleep(Duration::from_millis(200));
            // kubelet's rotation: rename, then the runtime reopens a fresh file.
            std::fs::rename(&p2, p2.with_extension("log.1")).unwrap();
            std::fs::write(&p2, "2024-01-01T00:00:02Z stderr F after\n").unwrap();
        });
        let start = std::time::Instant::now();
        let (mut o, mut e) = (vec![], vec![]);
        print_log(
            &path,
            &Options::default(),
            true,
            || start.elapsed() < Duration::from_millis(1500),
            &mut o,
            &mut e,
        )
        .unwrap();
        writer.join().unwrap();
        assert_eq!(String::from_utf8(o).unwrap(), "before\ngrowing\n");
        assert_eq!(String::from_utf8(e).unwrap(), "after\n");
    }
}
