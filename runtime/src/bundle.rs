//! Loading and checking a bundle before anything is created, so that a bad `config.json` is
//! reported by field and leaves nothing behind.

use oci_spec::runtime::Spec;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle directory {0} does not exist")]
    NoBundle(PathBuf),
    #[error("bundle {0} has no config.json")]
    NoConfig(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("invalid {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid {path}: field `{field}` is required")]
    Missing { path: PathBuf, field: &'static str },
    #[error("invalid {path}: ociVersion {version:?} is not supported (need 1.x)")]
    Version { path: PathBuf, version: String },
    #[error("rootfs {0} does not exist or is not a directory (config.json root.path)")]
    NoRootfs(PathBuf),
    #[error(
        "cannot set oom_score_adj to {requested}: it is lower than this process's own ({current}) \
         and lowering it needs CAP_SYS_RESOURCE, which this process lacks"
    )]
    OomScoreAdj { requested: i32, current: i32 },
}

/// Parses `config.json` of `bundle`, naming the offending field on error.
pub fn load_spec(bundle: &Path) -> Result<Spec, BundleError> {
    if !bundle.is_dir() {
        return Err(BundleError::NoBundle(bundle.to_path_buf()));
    }
    let path = bundle.join("config.json");
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleError::NoConfig(bundle.to_path_buf()))
        }
        Err(source) => return Err(BundleError::Read { path, source }),
    };
    let mut de = serde_json::Deserializer::from_reader(BufReader::new(file));
    let spec: Spec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if field == "." || inner.is_syntax() || inner.is_eof() {
            BundleError::Syntax {
                path: path.clone(),
                message: inner.to_string(),
            }
        } else {
            BundleError::Field {
                path: path.clone(),
                field,
                message: inner.to_string(),
            }
        }
    })?;
    check_spec(bundle, &path, &spec)?;
    Ok(spec)
}

fn check_spec(bundle: &Path, path: &Path, spec: &Spec) -> Result<(), BundleError> {
    if !spec.version().starts_with("1.") {
        return Err(BundleError::Version {
            path: path.to_path_buf(),
            version: spec.version().clone(),
        });
    }
    let missing = |field| BundleError::Missing {
        path: path.to_path_buf(),
        field,
    };
    let root = spec.root().as_ref().ok_or_else(|| missing("root"))?;
    let process = spec.process().as_ref().ok_or_else(|| missing("process"))?;
    if spec.linux().is_none() {
        return Err(missing("linux"));
    }
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    if !rootfs.is_dir() {
        return Err(BundleError::NoRootfs(rootfs));
    }
    if let Some(requested) = process.oom_score_adj() {
        check_oom_score_adj(requested)?;
    }
    Ok(())
}

/// The kernel refuses to lower oom_score_adj without CAP_SYS_RESOURCE; say so up front instead
/// of failing half-way through container setup.
pub fn check_oom_score_adj(requested: i32) -> Result<(), BundleError> {
    let current: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if requested < current && !has_cap_sys_resource() {
        return Err(BundleError::OomScoreAdj { requested, current });
    }
    Ok(())
}

fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        std::fs::write(d.path().join("config.json"), config).unwrap();
        d
    }

    fn valid() -> serde_json::Value {
        serde_json::to_value(crate::spec::default_spec().unwrap()).unwrap()
    }

    #[test]
    fn accepts_default_spec() {
        let d = bundle_with(&valid().to_string());
        load_spec(d.path()).unwrap();
    }

    #[test]
    fn names_the_bad_field() {
        let mut v = valid();
        v["process"]["user"]["uid"] = serde_json::json!("root");
        let d = bundle_with(&v.to_string());
        let e = load_spec(d.path()).unwrap_err().to_string();
        assert!(e.contains("process.user.uid"), "{e}");
    }

    #[test]
    fn reports_syntax_errors_missing_parts_and_rootfs() {
        let d = bundle_with("{ not json");
        assert!(matches!(
            load_spec(d.path()),
            Err(BundleError::Syntax { .. })
        ));
        let mut v = valid();
        v.as_object_mut().unwrap().remove("process");
        let d = bundle_with(&v.to_string());
        assert!(matches!(
            load_spec(d.path()),
            Err(BundleError::Missing {
                field: "process",
                ..
            })
        ));
        let mut v = valid();
        v["root"]["path"] = serde_json::json!("nope");
        let d = bundle_with(&v.to_string());
        assert!(matches!(load_spec(d.path()), Err(BundleError::NoRootfs(_))));
        let mut v = valid();
        v["ociVersion"] = serde_json::json!("2.0.0");
        let d = bundle_with(&v.to_string());
        assert!(matches!(
            load_spec(d.path()),
            Err(BundleError::Version { .. })
        ));
    }

    #[test]
    fn missing_bundle_and_config() {
        assert!(matches!(
            load_spec(Path::new("/nonexistent/bundle")),
            Err(BundleError::NoBundle(_))
        ));
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(load_spec(d.path()), Err(BundleError::NoConfig(_))));
    }
}
