//! `rnerd stats`: CPU, memory and pids of containers, live or once (`--no-stream`).

use super::super::args::StatsArgs;
use super::super::names::{self, name_of, short_id};
use super::super::template::{render, Format};
use super::super::Ctx;
use super::{list, state_of};
use crate::format::{human_size, table};
use anyhow::Result;
use rcd_proto::v1 as pb;
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

struct Sample {
    at: Instant,
    cpu_ns: u64,
}

pub async fn stats(ctx: &Ctx, a: StatsArgs) -> Result<()> {
    let format = Format::parse(a.format.as_deref());
    let mut prev: HashMap<String, Sample> = HashMap::new();
    let mut first = true;
    loop {
        let all = list(ctx).await?;
        let tasks: HashMap<String, pb::Process> = ctx
            .client
            .tasks()
            .list(pb::ListTasksRequest {})
            .await
            .map_err(ctx.st())?
            .into_inner()
            .tasks
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        let chosen: Vec<pb::Container> = if a.containers.is_empty() {
            all.iter()
                .filter(|c| a.all || state_of(c, tasks.get(&c.id)).running())
                .cloned()
                .collect()
        } else {
            a.containers
                .iter()
                .map(|n| names::find(&all, n).cloned())
                .collect::<Result<_>>()?
        };
        // the first CPU figure needs two samples: take one, wait a moment
        if first {
            for c in &chosen {
                if let Ok(m) = metrics(ctx, &c.id).await {
                    prev.insert(
                        c.id.clone(),
                        Sample {
                            at: Instant::now(),
                            cpu_ns: m.cpu_usage_total_ns,
                        },
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut rows = vec![vec![
            "CONTAINER ID".to_owned(),
            "NAME".into(),
            "CPU %".into(),
            "MEM USAGE / LIMIT".into(),
            "MEM %".into(),
            "PIDS".into(),
        ]];
        let mut lines = Vec::new();
        for c in &chosen {
            let m = metrics(ctx, &c.id).await.unwrap_or_default();
            let now = Instant::now();
            let cpu = match prev.get(&c.id) {
                Some(p) if now > p.at => {
                    let used = m.cpu_usage_total_ns.saturating_sub(p.cpu_ns) as f64;
                    used / now.duration_since(p.at).as_nanos() as f64 * 100.0
                }
                _ => 0.0,
            };
            prev.insert(
                c.id.clone(),
                Sample {
                    at: now,
                    cpu_ns: m.cpu_usage_total_ns,
                },
            );
            let limit = if m.memory_limit == 0 || m.memory_limit >= 1 << 62 {
                host_memory()
            } else {
                m.memory_limit
            };
            let mem_pct = if limit > 0 {
                m.memory_usage as f64 / limit as f64 * 100.0
            } else {
                0.0
            };
            let v = serde_json::json!({
                "ID": short_id(&c.id),
                "Name": name_of(c),
                "CPUPerc": format!("{cpu:.2}%"),
                "MemUsage": format!("{} / {}", human_size(m.memory_usage), human_size(limit)),
                "MemPerc": format!("{mem_pct:.2}%"),
                "PIDs": m.pids_current.to_string(),
            });
            match &format {
                Format::Json => lines.push(v.to_string()),
                Format::Template(t) => lines.push(render(t, &v)?),
                Format::Table => rows.push(
                    ["ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "PIDs"]
                        .iter()
                        .map(|k| v[*k].as_str().unwrap_or("").to_owned())
                        .collect(),
                ),
            }
        }
        let text = match format {
            Format::Table => table(&rows),
            _ => lines.iter().map(|l| format!("{l}\n")).collect(),
        };
        let mut out = std::io::stdout();
        if !a.no_stream {
            // clear the screen and draw again, as docker's live view
            write!(out, "\x1b[2J\x1b[H")?;
        }
        write!(out, "{text}")?;
        out.flush()?;
        if a.no_stream {
            return Ok(());
        }
        first = false;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn metrics(ctx: &Ctx, id: &str) -> Result<pb::TaskMetricsResponse> {
    Ok(ctx
        .client
        .tasks()
        .metrics(pb::TaskMetricsRequest {
            container_id: id.to_owned(),
        })
        .await
        .map_err(ctx.st())?
        .into_inner())
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|k| k * 1024)
        .unwrap_or(0)
}
