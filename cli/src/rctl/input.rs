//! crictl's pod and container config files: JSON or YAML, fields spelled as in the proto
//! (`log_directory`) or in protobuf JSON (`logDirectory`), enums by number or by name
//! (`"network": "NODE"`), any field left out meaning its zero value.
//!
//! k8s-cri derives serde on the prost types without `#[serde(default)]`, so a field left out
//! is an error to serde; [`parse`] fills each one in with the zero value of the matching JSON
//! type, found by trying them in turn against the error serde reports for that path.

use super::output::snake;
use anyhow::{bail, Context, Result};
use k8s_cri::v1 as cri;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::path::Path;

/// Keys whose object values are user data (label names etc.), not proto fields.
const DATA_MAPS: &[&str] = &["labels", "annotations", "sysctls", "unified", "extra"];

fn normalize(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let k = snake(&k);
                let v = if DATA_MAPS.contains(&k.as_str()) {
                    v
                } else {
                    match (&*k, v) {
                        ("network" | "pid" | "ipc", Value::String(s)) => {
                            enum_num(&k, &s, cri::NamespaceMode::from_str_name(&s))
                        }
                        ("protocol", Value::String(s)) => {
                            enum_num(&k, &s, cri::Protocol::from_str_name(&s))
                        }
                        ("propagation", Value::String(s)) => {
                            enum_num(&k, &s, cri::MountPropagation::from_str_name(&s))
                        }
                        (_, v) => normalize(v),
                    }
                };
                out.insert(k, v);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        v => v,
    }
}

fn enum_num<E: Into<i32>>(_key: &str, name: &str, e: Option<E>) -> Value {
    match e {
        Some(e) => Value::from(e.into()),
        // Left as a string: serde then reports the field and its bad value.
        None => Value::String(name.to_owned()),
    }
}

fn at_path<'a>(
    v: &'a mut Value,
    path: &serde_path_to_error::Path,
) -> Option<&'a mut Map<String, Value>> {
    let mut cur = v;
    for seg in path.iter() {
        cur = match seg {
            serde_path_to_error::Segment::Seq { index } => cur.get_mut(*index)?,
            serde_path_to_error::Segment::Map { key } => cur.get_mut(key.as_str())?,
            _ => return None,
        };
    }
    cur.as_object_mut()
}

fn missing_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("missing field `")?.split('`').next()
}

/// Deserializes a prost message from crictl-style JSON.
pub fn from_value<T: DeserializeOwned>(v: Value) -> Result<T> {
    let candidates = [
        Value::String(String::new()),
        Value::from(0),
        Value::Bool(false),
        Value::Array(vec![]),
        Value::Object(Map::new()),
    ];
    let mut v = normalize(v);
    // (path of the filled-in field, candidate index being tried)
    let mut trying: Option<(String, usize)> = None;
    for _ in 0..2000 {
        let err = match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        let path = err.path().clone();
        let inner = err.inner().to_string();
        if let Some(field) = missing_field(&inner) {
            let field = field.to_owned();
            let obj = at_path(&mut v, &path).context("config shape")?;
            obj.insert(field.clone(), candidates[0].clone());
            let p = if path.to_string() == "." {
                field
            } else {
                format!("{path}.{field}")
            };
            trying = Some((p, 0));
            continue;
        }
        if let Some((p, i)) = &trying {
            if *p == path.to_string() && i + 1 < candidates.len() {
                let i = i + 1;
                let (parent, field) = p.rsplit_once('.').unwrap_or((".", p));
                let parent_path = parent.to_owned();
                let field = field.to_owned();
                // Re-find the parent through the error's path minus its last segment.
                let segs: Vec<_> = path.iter().cloned().collect();
                let mut cur = &mut v;
                for seg in &segs[..segs.len() - 1] {
                    cur = match seg {
                        serde_path_to_error::Segment::Seq { index } => &mut cur[*index],
                        serde_path_to_error::Segment::Map { key } => &mut cur[key.as_str()],
                        _ => bail!("config shape at {parent_path}"),
                    };
                }
                cur[field.as_str()] = candidates[i].clone();
                trying = Some((p.clone(), i));
                continue;
            }
        }
        bail!("{path}: {inner}");
    }
    bail!("config too deeply nested")
}

/// Reads a JSON or YAML file into a prost message.
pub fn read_file<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} config {}", path.display()))?;
    let v: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(je) => serde_norway::from_str(&text).map_err(|ye| {
            anyhow::anyhow!(
                "{what} config {} is neither JSON ({je}) nor YAML ({ye})",
                path.display()
            )
        })?,
    };
    if !v.is_object() {
        bail!("{what} config {} is not an object", path.display());
    }
    from_value(v).with_context(|| format!("{what} config {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crictl_pod_config() {
        let v = serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "attempt": 1},
            "log_directory": "/tmp/logs",
            "labels": {"camelKey": "v"},
            "linux": {"securityContext": {"namespaceOptions": {"network": "NODE"}}},
            "port_mappings": [{"container_port": 80, "protocol": "TCP"}]
        });
        let c: cri::PodSandboxConfig = from_value(v).unwrap();
        assert_eq!(c.metadata.as_ref().unwrap().name, "p");
        assert_eq!(c.metadata.as_ref().unwrap().attempt, 1);
        assert_eq!(c.log_directory, "/tmp/logs");
        assert_eq!(c.labels["camelKey"], "v");
        let ns = c
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
        assert_eq!(c.port_mappings[0].container_port, 80);
    }

    #[test]
    fn container_config_and_errors() {
        let v = serde_json::json!({
            "metadata": {"name": "c"},
            "image": {"image": "busybox"},
            "command": ["sh", "-c", "echo hi"],
            "envs": [{"key": "A", "value": "1"}],
            "linux": {"resources": {"memoryLimitInBytes": 1048576}}
        });
        let c: cri::ContainerConfig = from_value(v).unwrap();
        assert_eq!(c.command, ["sh", "-c", "echo hi"]);
        assert_eq!(c.envs[0].key, "A");
        assert_eq!(
            c.linux.unwrap().resources.unwrap().memory_limit_in_bytes,
            1048576
        );
        let bad = serde_json::json!({"metadata": {"name": 5}});
        let e = format!("{:#}", from_value::<cri::ContainerConfig>(bad).unwrap_err());
        assert!(e.contains("metadata.name"), "{e}");
        let bad = serde_json::json!({"linux": {"security_context": {"namespace_options": {"network": "SIDEWAYS"}}}});
        assert!(from_value::<cri::PodSandboxConfig>(bad).is_err());
    }
}
