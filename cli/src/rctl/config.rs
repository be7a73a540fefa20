//! crictl's config file (`/etc/crictl.yaml`, `$CRI_CONFIG_FILE`, `-c`): a flat YAML map with
//! the keys below. Unknown keys are kept when the file is rewritten.

use anyhow::{bail, Context, Result};
use serde_norway::{Mapping, Value};
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/crictl.yaml";

/// The keys crictl knows, with the kind of value each takes.
pub const KEYS: &[(&str, Kind)] = &[
    ("runtime-endpoint", Kind::Str),
    ("image-endpoint", Kind::Str),
    ("timeout", Kind::Int),
    ("debug", Kind::Bool),
    ("pull-image-on-create", Kind::Bool),
    ("disable-pull-on-run", Kind::Bool),
];

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Str,
    Int,
    Bool,
}

/// The parsed file. Missing file = empty config (only when it is the default path).
#[derive(Debug, Default, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub map: Mapping,
}

fn kind_of(key: &str) -> Result<Kind> {
    KEYS.iter()
        .find(|(k, _)| *k == key)
        .map(|(_, kind)| *kind)
        .with_context(|| {
            format!(
                "unknown config key {key:?} (known: {})",
                KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
            )
        })
}

impl ConfigFile {
    /// Loads `path`; a missing file is an empty config when `must_exist` is false.
    pub fn load(path: &Path, must_exist: bool) -> Result<ConfigFile> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(ConfigFile {
                    path: path.to_owned(),
                    map: Mapping::new(),
                })
            }
            Err(e) => bail!("reading config file {}: {e}", path.display()),
        };
        let map = if text.trim().is_empty() {
            Mapping::new()
        } else {
            match serde_norway::from_str::<Value>(&text)
                .with_context(|| format!("config file {} is not valid YAML", path.display()))?
            {
                Value::Mapping(m) => m,
                Value::Null => Mapping::new(),
                _ => bail!(
                    "config file {} is not a YAML map of key: value",
                    path.display()
                ),
            }
        };
        let cfg = ConfigFile {
            path: path.to_owned(),
            map,
        };
        for (k, _) in KEYS {
            cfg.check(k)
                .with_context(|| format!("config file {}", path.display()))?;
        }
        Ok(cfg)
    }

    fn check(&self, key: &str) -> Result<()> {
        let Some(v) = self.map.get(key) else {
            return Ok(());
        };
        let ok = match kind_of(key)? {
            Kind::Str => v.is_string(),
            Kind::Int => v.as_i64().is_some(),
            Kind::Bool => v.is_bool(),
        };
        if !ok {
            bail!("value of {key} must be a {:?}, not {v:?}", kind_of(key)?);
        }
        Ok(())
    }

    pub fn str(&self, key: &str) -> Option<String> {
        self.map
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        self.map.get(key).and_then(Value::as_i64)
    }

    pub fn bool(&self, key: &str) -> bool {
        self.map.get(key).and_then(Value::as_bool).unwrap_or(false)
    }

    /// The value of `key` as crictl prints it (`--get`): empty when unset.
    pub fn get(&self, key: &str) -> Result<String> {
        kind_of(key)?;
        Ok(match self.map.get(key) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            Some(v) => serde_norway::to_string(v)?.trim().to_owned(),
        })
    }

    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let v = match kind_of(key)? {
            Kind::Str => Value::String(value.to_owned()),
            Kind::Int => Value::Number(
                value
                    .parse::<i64>()
                    .map_err(|_| anyhow::anyhow!("{key} takes whole seconds, not {value:?}"))?
                    .into(),
            ),
            Kind::Bool => Value::Bool(
                value
                    .parse::<bool>()
                    .map_err(|_| anyhow::anyhow!("{key} takes true or false, not {value:?}"))?,
            ),
        };
        self.map.insert(Value::String(key.to_owned()), v);
        Ok(())
    }

    /// `KEY VALUE` lines for every known key, as `crictl config --list` prints.
    pub fn list(&self) -> Vec<(String, String)> {
        KEYS.iter()
            .map(|(k, _)| ((*k).to_owned(), self.get(k).unwrap_or_default()))
            .collect()
    }

    /// Writes the file (creating its directory), atomically by rename.
    pub fn save(&self) -> Result<()> {
        let text = serde_norway::to_string(&Value::Mapping(self.map.clone()))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating directory {}", dir.display()))?;
        }
        let tmp = self.path.with_extension("tmp-rctl");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing config file {}", self.path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_list_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "runtime-endpoint: unix:///a.sock\nextra: kept\n").unwrap();
        let mut c = ConfigFile::load(&p, true).unwrap();
        assert_eq!(c.get("runtime-endpoint").unwrap(), "unix:///a.sock");
        c.set("timeout", "5").unwrap();
        c.set("debug", "true").unwrap();
        assert!(c.set("timeout", "x").is_err());
        assert!(c.set("nope", "1").is_err());
        c.save().unwrap();
        let c = ConfigFile::load(&p, true).unwrap();
        assert_eq!(c.int("timeout"), Some(5));
        assert!(c.bool("debug"));
        assert!(c.map.contains_key("extra"));
        assert_eq!(c.list().len(), KEYS.len());
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "timeout: soon\n").unwrap();
        let e = format!("{:#}", ConfigFile::load(&p, true).unwrap_err());
        assert!(e.contains("timeout") && e.contains("c.yaml"), "{e}");
        std::fs::write(&p, "[1, 2").unwrap();
        let e = format!("{:#}", ConfigFile::load(&p, true).unwrap_err());
        assert!(e.contains("not valid YAML"), "{e}");
        assert!(ConfigFile::load(&dir.path().join("none"), false).is_ok());
        assert!(ConfigFile::load(&dir.path().join("none"), true).is_err());
    }
}
