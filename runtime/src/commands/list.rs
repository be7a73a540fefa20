use super::state::{status_str, StateJson};
use super::Global;
use crate::cli::Format;
use anyhow::{Context, Result};
use libcontainer::container::state::State;
use libcontainer::container::Container;
use std::io::Write;

pub fn list(g: &Global, format: Format, quiet: bool) -> Result<()> {
    let mut containers = Vec::new();
    if g.root.is_dir() {
        for entry in std::fs::read_dir(&g.root)
            .with_context(|| format!("failed to read root directory {}", g.root.display()))?
        {
            let dir = entry?.path();
            if !State::file_path(&dir).exists() {
                continue;
            }
            // a container deleted while we list is simply not listed
            if let Ok(c) = Container::load(dir) {
                containers.push(c);
            }
        }
    }
    containers.sort_by(|a, b| a.id().cmp(b.id()));
    let mut out = std::io::stdout().lock();
    if quiet {
        for c in &containers {
            writeln!(out, "{}", c.id())?;
        }
        return Ok(());
    }
    match format {
        Format::Json => {
            let v: Vec<StateJson> = containers.iter().map(StateJson::of).collect();
            writeln!(out, "{}", serde_json::to_string(&v)?)?;
        }
        Format::Table => {
            let rows: Vec<[String; 6]> = containers
                .iter()
                .map(|c| {
                    let s = StateJson::of(c);
                    [
                        s.id,
                        s.pid.to_string(),
                        status_str(c.status()).into(),
                        s.bundle.display().to_string(),
                        s.created,
                        s.owner,
                    ]
                })
                .collect();
            let header = ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"].map(String::from);
            let mut widths = [0usize; 6];
            for r in std::iter::once(&header).chain(rows.iter()) {
                for (w, cell) in widths.iter_mut().zip(r) {
                    *w = (*w).max(cell.len());
                }
            }
            for r in std::iter::once(&header).chain(rows.iter()) {
                let line: Vec<String> = r
                    .iter()
                    .zip(widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect();
                writeln!(out, "{}", line.join("   ").trim_end())?;
            }
        }
    }
    Ok(())
}
