//! Output as crictl prints it: the CRI messages as camelCase JSON (protobuf's JSON names, enum
//! values by name, verbose `info` strings parsed), YAML of the same, tables padded like Go's
//! tabwriter, human durations ("2 minutes ago") and decimal sizes ("4.26MB").

use anyhow::{bail, Result};
use k8s_cri::v1 as cri;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Which enum a `state` field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Pod,
    Container,
    Other,
}

/// `snake_case` → `camelCase` (protobuf's JSON names).
pub fn camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut up = false;
    for c in s.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `camelCase` → `snake_case` (prost's field names).
pub fn snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn enum_name(key: &str, kind: Kind, v: i32) -> Option<&'static str> {
    Some(match key {
        "state" => match kind {
            Kind::Pod => cri::PodSandboxState::try_from(v).ok()?.as_str_name(),
            Kind::Container => cri::ContainerState::try_from(v).ok()?.as_str_name(),
            Kind::Other => return None,
        },
        "network" | "pid" | "ipc" => cri::NamespaceMode::try_from(v).ok()?.as_str_name(),
        "protocol" => cri::Protocol::try_from(v).ok()?.as_str_name(),
        "propagation" => cri::MountPropagation::try_from(v).ok()?.as_str_name(),
        "container_event_type" => cri::ContainerEventType::try_from(v).ok()?.as_str_name(),
        _ => return None,
    })
}

fn convert(v: Value, kind: Kind) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let v = match (&v, v.as_i64()) {
                    (Value::Number(_), Some(n)) => match enum_name(&k, kind, n as i32) {
                        Some(name) => Value::String(name.to_owned()),
                        None => v,
                    },
                    _ => convert(v, kind),
                };
                // Map keys (labels, annotations, info) are data, not field names: only
                // rename keys that look like prost field names.
                let key = if k.contains(['.', '/', '-']) || k.chars().any(|c| c.is_uppercase()) {
                    k
                } else {
                    camel(&k)
                };
                out.insert(key, v);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(|v| convert(v, kind)).collect()),
        v => v,
    }
}

/// A CRI message as crictl's JSON: camelCase fields, named enums.
pub fn to_json<T: Serialize>(msg: &T, kind: Kind) -> Value {
    convert(
        serde_json::to_value(msg).expect("CRI messages serialize"),
        kind,
    )
}

/// A verbose `info` map with each value parsed as JSON where it is JSON.
pub fn info_json(info: &HashMap<String, String>) -> Map<String, Value> {
    let mut keys: Vec<&String> = info.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let v = &info[k];
            (
                k.clone(),
                serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone())),
            )
        })
        .collect()
}

/// Prints `v` as indented JSON or YAML.
pub fn print_value(v: &Value, format: Format) -> Result<()> {
    match format {
        Format::Json | Format::Table => println!("{}", serde_json::to_string_pretty(v)?),
        Format::Yaml => print!("{}", serde_norway::to_string(v)?),
    }
    Ok(())
}

/// Rows padded like crictl's tabwriter (min width 20, padding 3).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count() + 3).max(20);
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.extend(std::iter::repeat_n(' ', widths[i] - c.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Go's `units.HumanDuration`.
pub fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if s < 1 {
        "Less than a second".into()
    } else if s == 1 {
        "1 second".into()
    } else if s < 60 {
        plural(s, "second")
    } else if s / 60 == 1 {
        "About a minute".into()
    } else if s < 3600 {
        plural(s / 60, "minute")
    } else if (s as f64 / 3600.0).round() == 1.0 {
        "About an hour".into()
    } else if s < 48 * 3600 {
        plural(s / 3600, "hour")
    } else if s < 14 * 86400 {
        plural(s / 86400, "day")
    } else if s < 90 * 86400 {
        plural(s / (7 * 86400), "week")
    } else if s < 2 * 365 * 86400 {
        plural(s / (30 * 86400), "month")
    } else {
        plural(s / (365 * 86400), "year")
    }
}

/// "2 minutes ago" for a CRI timestamp in nanoseconds since the epoch.
pub fn ago(nanos: i64) -> String {
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let d = std::time::Duration::from_nanos(now.saturating_sub(nanos).max(0) as u64);
    format!("{} ago", human_duration(d))
}

/// `%.3g` with a decimal unit, as Go's `units.HumanSizeWithPrecision(n, 3)`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{}{}", sig3(v), UNITS[i])
}

fn sig3(v: f64) -> String {
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// The first 13 characters of an ID (crictl's truncation), without a `sha256:` prefix.
pub fn trunc_id(id: &str, no_trunc: bool) -> String {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    if no_trunc {
        id.to_owned()
    } else {
        id.chars().take(13).collect()
    }
}

/// `k=v` label selectors.
pub fn parse_labels(labels: &[String]) -> Result<HashMap<String, String>> {
    let mut m = HashMap::new();
    for l in labels {
        match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                m.insert(k.to_owned(), v.to_owned());
            }
            _ => bail!("invalid label {l:?}: expected key=value"),
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(camel("log_directory"), "logDirectory");
        assert_eq!(snake("logDirectory"), "log_directory");
        assert_eq!(snake("log_directory"), "log_directory");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(human_size(4_260_000), "4.26MB");
        assert_eq!(human_size(500), "500B");
        assert_eq!(human_size(1_500), "1.5kB");
        assert_eq!(human_size(123_456_789), "123MB");
        use std::time::Duration as D;
        assert_eq!(human_duration(D::from_secs(0)), "Less than a second");
        assert_eq!(human_duration(D::from_secs(30)), "30 seconds");
        assert_eq!(human_duration(D::from_secs(90)), "About a minute");
        assert_eq!(human_duration(D::from_secs(600)), "10 minutes");
        assert_eq!(human_duration(D::from_secs(3 * 3600)), "3 hours");
    }

    #[test]
    fn json_shape() {
        let p = cri::PodSandbox {
            id: "abc".into(),
            state: cri::PodSandboxState::SandboxReady as i32,
            labels: [("app.kubernetes.io/name".to_owned(), "x".to_owned())].into(),
            ..Default::default()
        };
        let v = to_json(&p, Kind::Pod);
        assert_eq!(v["state"], "SANDBOX_READY");
        assert_eq!(v["labels"]["app.kubernetes.io/name"], "x");
        assert!(v.get("createdAt").is_some());
        assert!(v.get("runtimeHandler").is_some());
    }

    #[test]
    fn tables_pad_like_tabwriter() {
        let t = table(&[
            vec!["A".into(), "B".into()],
            vec!["long-enough-value-here".into(), "x".into()],
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], format!("A{}B", " ".repeat(24)));
    }
}
