//! Network configuration files, read as libcni does: `*.conflist` (a list of plugins),
//! `*.conf` and `*.json` (one plugin, wrapped into a list of one), ordered by file name.

use super::CniError;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The CNI versions whose results rcd reads (0.3.0 onwards share the `ips`/`interfaces` shape).
const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// One network: a named list of plugin configurations run in order.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    pub plugins: Vec<PluginConfig>,
    /// The file it came from (none for built-in and generated networks).
    pub source: Option<PathBuf>,
    /// The list as read, kept for the results cache so a DEL runs exactly what was ADDed.
    pub raw: Value,
}

/// One plugin of a list: its `type` (the binary's name) and the whole object as given.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub plugin_type: String,
    pub config: Map<String, Value>,
}

impl PluginConfig {
    /// Whether the plugin declares `capabilities.<name>: true` (only then does it receive
    /// `runtimeConfig.<name>`).
    pub fn has_capability(&self, name: &str) -> bool {
        self.config
            .get("capabilities")
            .and_then(|c| c.get(name))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

impl NetworkConfigList {
    /// Parses a conflist document (`{"name", "cniVersion", "plugins": [...]}`).
    pub fn from_conflist(bytes: &[u8], source: Option<&Path>) -> Result<Self, CniError> {
        let raw: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(source, e.to_string()))?;
        Self::from_value(raw, source)
    }

    /// Parses a single-plugin conf (`{"name", "cniVersion", "type", ...}`) into a list of one.
    pub fn from_conf(bytes: &[u8], source: Option<&Path>) -> Result<Self, CniError> {
        let conf: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(source, e.to_string()))?;
        let obj = conf
            .as_object()
            .ok_or_else(|| invalid(source, "not a JSON object".into()))?;
        if obj.contains_key("plugins") {
            return Err(invalid(
                source,
                "has \"plugins\": a list of plugins belongs in a .conflist file".into(),
            ));
        }
        let mut list = Map::new();
        for key in ["name", "cniVersion"] {
            if let Some(v) = obj.get(key) {
                list.insert(key.into(), v.clone());
            }
        }
        list.insert("plugins".into(), Value::Array(vec![conf.clone()]));
        Self::from_value(Value::Object(list), source)
    }

    /// Parses a conflist already held as JSON.
    pub fn from_value(raw: Value, source: Option<&Path>) -> Result<Self, CniError> {
        let obj = raw
            .as_object()
            .ok_or_else(|| invalid(source, "not a JSON object".into()))?;
        let name = match obj.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None => {
                return Err(invalid(source, "missing network \"name\"".into()))
            }
            Some(_) => return Err(invalid(source, "\"name\" is not a string".into())),
        };
        let cni_version = match obj.get("cniVersion") {
            Some(Value::String(s)) => s.clone(),
            None => return Err(invalid(source, "missing \"cniVersion\"".into())),
            Some(_) => return Err(invalid(source, "\"cniVersion\" is not a string".into())),
        };
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(invalid(
                source,
                format!(
                    "cniVersion {cni_version:?} is not supported (rcd reads {})",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let disable_check = match obj.get("disableCheck") {
            None => false,
            Some(Value::Bool(b)) => *b,
            // libcni accepts the string spelling too
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            Some(_) => return Err(invalid(source, "\"disableCheck\" is not a boolean".into())),
        };
        let plugins = match obj.get("plugins") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(Value::Array(_)) => return Err(invalid(source, "\"plugins\" is empty".into())),
            None => return Err(invalid(source, "missing \"plugins\"".into())),
            Some(_) => return Err(invalid(source, "\"plugins\" is not a list".into())),
        };
        let mut out = Vec::with_capacity(plugins.len());
        for (i, p) in plugins.iter().enumerate() {
            let config = p
                .as_object()
                .ok_or_else(|| invalid(source, format!("plugin {i} is not a JSON object")))?;
            let plugin_type = match config.get("type") {
                Some(Value::String(t)) if valid_plugin_type(t) => t.clone(),
                Some(Value::String(t)) => {
                    return Err(invalid(
                        source,
                        format!("plugin {i} has an invalid \"type\" {t:?}"),
                    ))
                }
                _ => return Err(invalid(source, format!("plugin {i} has no \"type\""))),
            };
            out.push(PluginConfig {
                plugin_type,
                config: config.clone(),
            });
        }
        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check,
            plugins: out,
            source: source.map(Path::to_path_buf),
            raw,
        })
    }

    /// Reads one file, by its extension: `.conflist`, or `.conf`/`.json`.
    pub fn from_file(path: &Path) -> Result<Self, CniError> {
        let bytes = std::fs::read(path).map_err(|source| CniError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("conflist") => Self::from_conflist(&bytes, Some(path)),
            Some("conf") | Some("json") => Self::from_conf(&bytes, Some(path)),
            _ => Err(invalid(
                Some(path),
                "not a .conflist, .conf or .json file".into(),
            )),
        }
    }

    /// The CNI version as (major, minor, patch), for version-dependent behaviour.
    pub(crate) fn version(&self) -> (u32, u32, u32) {
        parse_version(&self.cni_version)
    }

    /// The conflist shape of this network (what is cached and re-read for DEL).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.raw).expect("a JSON value serializes")
    }
}

/// The config files of `dir` in libcni's order (file name, byte order). A missing directory
/// holds none.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, CniError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CniError::ReadConfig {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CniError::ReadConfig {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let is_conf = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("conflist" | "conf" | "json")
        );
        // a dangling symlink or a directory named *.conf is not a config
        if is_conf && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Every network of `dir`, in order. An invalid file is an error naming it.
pub fn load_dir(dir: &Path) -> Result<Vec<NetworkConfigList>, CniError> {
    config_files(dir)?
        .iter()
        .map(|p| NetworkConfigList::from_file(p))
        .collect()
}

/// The network rcd attaches pods to: the first of `dir`, as containerd picks it.
pub fn default_network(dir: &Path) -> Result<Option<NetworkConfigList>, CniError> {
    config_files(dir)?
        .first()
        .map(|p| NetworkConfigList::from_file(p))
        .transpose()
}

/// The loopback network every pod gets on `lo` (containerd's built-in `cni-loopback`).
pub fn loopback_network() -> NetworkConfigList {
    let raw = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cni-loopback",
        "plugins": [{"type": "loopback"}],
    });
    NetworkConfigList::from_value(raw, None).expect("the built-in loopback network is valid")
}

pub(crate) fn parse_version(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// A plugin type names a binary in a plugin directory: no path separators, no dot names.
fn valid_plugin_type(t: &str) -> bool {
    !t.is_empty() && t != "." && t != ".." && !t.contains('/') && !t.contains('\0')
}

fn invalid(source: Option<&Path>, reason: String) -> CniError {
    CniError::InvalidConfig {
        path: source
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<built-in>".into()),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"n1","plugins":[
        {"type":"bridge","bridge":"b0"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn conflist_is_parsed() {
        let l = NetworkConfigList::from_conflist(LIST.as_bytes(), None).unwrap();
        assert_eq!(l.name, "n1");
        assert_eq!(l.plugins.len(), 2);
        assert_eq!(l.plugins[0].plugin_type, "bridge");
        assert!(l.plugins[1].has_capability("portMappings"));
        assert!(!l.plugins[0].has_capability("portMappings"));
        assert!(!l.disable_check);
    }

    #[test]
    fn conf_is_wrapped_into_a_list() {
        let conf = r#"{"cniVersion":"0.4.0","name":"single","type":"bridge","bridge":"b1"}"#;
        let l = NetworkConfigList::from_conf(conf.as_bytes(), None).unwrap();
        assert_eq!(l.name, "single");
        assert_eq!(l.cni_version, "0.4.0");
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0].config["bridge"], "b1");
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("[]", "not a JSON object"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "missing network \"name\"",
            ),
            (
                r#"{"name":"a","plugins":[{"type":"x"}]}"#,
                "missing \"cniVersion\"",
            ),
            (
                r#"{"name":"a","cniVersion":"0.2.0","plugins":[{"type":"x"}]}"#,
                "cniVersion \"0.2.0\" is not supported",
            ),
            (
                r#"{"name":"a","cniVersion":"1.0.0","plugins":[]}"#,
                "\"plugins\" is empty",
            ),
            (
                r#"{"name":"a","cniVersion":"1.0.0","plugins":[{}]}"#,
                "plugin 0 has no \"type\"",
            ),
            (
                r#"{"name":"a","cniVersion":"1.0.0","plugins":[{"type":"../sh"}]}"#,
                "plugin 0 has an invalid \"type\" \"../sh\"",
            ),
            ("{nope", "key must be a string"),
        ];
        for (doc, want) in cases {
            let err =
                NetworkConfigList::from_conflist(doc.as_bytes(), Some(Path::new("/x.conflist")))
                    .unwrap_err()
                    .to_string();
            assert!(err.contains(want), "{doc}: {err}");
            assert!(err.contains("/x.conflist"), "{err}");
        }
    }

    #[test]
    fn directory_order_and_extensions() {
        let dir = tempfile::tempdir().unwrap();
        let conf =
            |name: &str| format!(r#"{{"cniVersion":"1.0.0","name":"{name}","type":"bridge"}}"#);
        std::fs::write(dir.path().join("20-b.conf"), conf("b")).unwrap();
        std::fs::write(dir.path().join("10-a.json"), conf("a")).unwrap();
        std::fs::write(
            dir.path().join("15-l.conflist"),
            LIST.replace("\"n1\"", "\"l\""),
        )
        .unwrap();
        std::fs::write(dir.path().join("05-ignored.txt"), "junk").unwrap();
        std::fs::create_dir(dir.path().join("01-dir.conf")).unwrap();
        let names: Vec<_> = load_dir(dir.path())
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, ["a", "l", "b"]);
        assert_eq!(default_network(dir.path()).unwrap().unwrap().name, "a");
        assert!(default_network(&dir.path().join("missing"))
            .unwrap()
            .is_none());
    }
}
