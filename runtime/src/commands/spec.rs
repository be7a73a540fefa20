use anyhow::{bail, Context, Result};
use std::path::Path;

pub fn spec(bundle: &Path, rootless: bool) -> Result<()> {
    if rootless {
        bail!("rootless specs are not supported yet: run as root");
    }
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("{} already exists: remove it first", path.display());
    }
    let spec = crate_spec()?;
    let json = serde_json::to_string_pretty(&spec)?;
    std::fs::write(&path, json + "\n")
        .with_context(|| format!("failed to write {}", path.display()))
}

fn crate_spec() -> Result<oci_spec::runtime::Spec> {
    runr::spec::default_spec().context("failed to build the default spec")
}
