//! Logs in runc's formats, so callers that parse runc's log file (containerd's shim reads the
//! last `"level":"error"` line of `log.json`) read ours the same way.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{filter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

struct RuncLayer {
    out: Mutex<Box<dyn Write + Send>>,
    format: LogFormat,
}

#[derive(Default)]
struct Fields {
    msg: String,
    extra: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg.push_str(value);
        } else {
            let _ = write!(self.extra, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.msg, "{value:?}");
        } else {
            let _ = write!(self.extra, " {}={value:?}", field.name());
        }
    }
}

fn level_name(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// One log line in runc's `text` (logrus) or `json` form.
pub fn format_line(format: LogFormat, level: &str, msg: &str) -> String {
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    match format {
        LogFormat::Json => {
            let v = serde_json::json!({"level": level, "msg": msg, "time": time});
            format!("{v}\n")
        }
        LogFormat::Text => format!("time={time:?} level={level} msg={msg:?}\n"),
    }
}

impl<S: Subscriber> Layer<S> for RuncLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let msg = format!("{}{}", f.msg, f.extra);
        let line = format_line(self.format, level_name(event.metadata().level()), &msg);
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(line.as_bytes());
        }
    }
}

/// Where runr's own log lines go, and in which form.
pub struct LogSink {
    pub format: LogFormat,
    pub to_file: bool,
}

/// Sets up logging: to `log` (appended) or stderr. Without `--debug`, stderr carries only the
/// final error (printed by `main`), while a log file also gets libcontainer's warnings and errors,
/// which is where a calling shim looks for the cause of a failure.
pub fn init(log: Option<&Path>, format: LogFormat, debug: bool) -> std::io::Result<LogSink> {
    let (out, to_file): (Box<dyn Write + Send>, bool) = match log {
        Some(p) if p != Path::new("/dev/stderr") => (
            Box::new(OpenOptions::new().create(true).append(true).open(p)?),
            true,
        ),
        _ => (Box::new(std::io::stderr()), false),
    };
    let level = if debug {
        filter::LevelFilter::DEBUG
    } else if to_file {
        filter::LevelFilter::WARN
    } else {
        filter::LevelFilter::OFF
    };
    let layer = RuncLayer {
        out: Mutex::new(out),
        format,
    }
    .with_filter(level);
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
    Ok(LogSink { format, to_file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_is_what_containerd_parses() {
        let line = format_line(LogFormat::Json, "error", "container \"x\" does not exist");
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container \"x\" does not exist");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn text_line_is_logrus_shaped() {
        let line = format_line(LogFormat::Text, "error", "boom");
        assert!(line.contains(" level=error msg=\"boom\""), "{line}");
    }
}
