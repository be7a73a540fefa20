//! `rnerd inspect`: containers (and images) as JSON shaped like docker's.

use super::super::args::InspectArgs;
use super::super::names::{self, name_of};
use super::super::template::{render, Format};
use super::super::{Ctx, Reported};
use super::container::ports_of;
use super::{get, list, state, State};
use anyhow::{bail, Result};
use rcd_proto::labels;
use rcd_proto::v1 as pb;
use serde_json::{json, Value};

/// docker's container JSON.
pub fn container_json(c: &pb::Container, s: &State) -> Value {
    let spec: Value = serde_json::from_slice(&c.spec).unwrap_or_default();
    let p = &spec["process"];
    let args: Vec<Value> = p["args"].as_array().cloned().unwrap_or_default();
    let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
    let restart = label(labels::RESTART);
    let (policy, max) = match restart.split_once(':') {
        Some((p, n)) => (p.to_owned(), n.parse::<u64>().unwrap_or(0)),
        None if restart.is_empty() => ("no".to_owned(), 0),
        None => (restart.clone(), 0),
    };
    let mut port_map = serde_json::Map::new();
    for pm in ports_of(c) {
        let proto = pm["protocol"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("tcp");
        let key = format!("{}/{proto}", pm["container_port"]);
        let entry = json!({
            "HostIp": pm["host_ip"].as_str().filter(|s| !s.is_empty()).unwrap_or("0.0.0.0"),
            "HostPort": pm["host_port"].to_string(),
        });
        match port_map.get_mut(&key) {
            Some(Value::Array(a)) => a.push(entry),
            _ => {
                port_map.insert(key, json!([entry]));
            }
        }
    }
    let volumes: Vec<Value> = c
        .labels
        .get(labels::VOLUMES)
        .and_then(|s| serde_json::from_str::<Vec<Value>>(s).ok())
        .unwrap_or_default();
    let mounts: Vec<Value> = volumes
        .iter()
        .map(|v| {
            let kind = v["kind"].as_str().unwrap_or("bind");
            json!({
                "Type": if kind == "bind" { "bind" } else { "volume" },
                "Name": if kind == "bind" { Value::Null } else { v["source"].clone() },
                "Source": v["source"],
                "Destination": v["destination"],
                "RW": !v["readonly"].as_bool().unwrap_or(false),
            })
        })
        .collect();
    let network = c
        .labels
        .get(labels::NETWORK)
        .cloned()
        .unwrap_or_else(|| "bridge".into());
    let ip = label(labels::IP);
    let mut user_labels = serde_json::Map::new();
    for (k, v) in &c.labels {
        if !k.starts_with("rcd.io/") && !k.starts_with("rnerd/") {
            user_labels.insert(k.clone(), Value::String(v.clone()));
        }
    }
    let linux = &spec["linux"]["resources"];
    let zero_time = "0001-01-01T00:00:00Z";
    json!({
        "Id": c.id,
        "Created": c.created_at,
        "Path": args.first().cloned().unwrap_or(Value::String(String::new())),
        "Args": args.iter().skip(1).cloned().collect::<Vec<_>>(),
        "State": {
            "Status": s.status,
            "Running": s.status == "running",
            "Paused": s.status == "paused",
            "Restarting": false,
            "Pid": s.pid,
            "ExitCode": s.exit_code.unwrap_or(0),
            "StartedAt": s.started_at.clone().unwrap_or(zero_time.into()),
            "FinishedAt": s.finished_at.clone().unwrap_or(zero_time.into()),
        },
        "Image": c.image,
        "Name": format!("/{}", name_of(c)),
        "RestartCount": label(labels::RESTART_COUNT).parse::<u64>().unwrap_or(0),
        "Driver": "overlayfs",
        "Platform": "linux",
        "Config": {
            "Hostname": spec["hostname"],
            "User": format!("{}:{}", p["user"]["uid"], p["user"]["gid"]),
            "Tty": p["terminal"].as_bool().unwrap_or(false),
            "Env": p["env"],
            "Cmd": args,
            "Image": c.image,
            "WorkingDir": p["cwd"],
            "Labels": user_labels,
            "StopSignal": c.labels.get(labels::STOP_SIGNAL).cloned().unwrap_or("SIGTERM".into()),
        },
        "HostConfig": {
            "NetworkMode": network,
            "PortBindings": port_map,
            "RestartPolicy": {"Name": policy, "MaximumRetryCount": max},
            "Binds": volumes.iter().map(|v| format!("{}:{}", v["source"].as_str().unwrap_or(""), v["destination"].as_str().unwrap_or(""))).collect::<Vec<_>>(),
            "Memory": linux["memory"]["limit"].as_u64().unwrap_or(0),
            "NanoCpus": match (linux["cpu"]["quota"].as_i64(), linux["cpu"]["period"].as_u64()) {
                (Some(q), Some(per)) if q > 0 && per > 0 => (q as u64) * 1_000_000_000 / per,
                _ => 0,
            },
            "PidsLimit": linux["pids"]["limit"].as_i64().unwrap_or(0),
            "ReadonlyRootfs": spec["root"]["readonly"].as_bool().unwrap_or(false),
            "Privileged": false,
        },
        "Mounts": mounts,
        "NetworkSettings": {
            "IPAddress": ip,
            "Ports": port_map,
            "Networks": { network.clone(): { "IPAddress": ip } },
        },
    })
}

pub async fn image_json(ctx: &Ctx, name: &str) -> Result<Option<Value>> {
    let r = match ctx
        .client
        .images()
        .get(pb::GetImageRequest {
            name: name.to_owned(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
        Err(s) => return Err(ctx.st()(s)),
    };
    let i = r.image.unwrap_or_default();
    let cfg: Value = serde_json::from_slice(&r.config).unwrap_or_default();
    let repo = super::images::split_name(&i.name).0;
    Ok(Some(json!({
        "Id": i.config.clone().unwrap_or_default().digest,
        "RepoTags": [i.name],
        "RepoDigests": [format!("{repo}@{}", i.target.clone().unwrap_or_default().digest)],
        "Created": cfg["created"],
        "Author": cfg["author"],
        "Config": cfg["config"],
        "Architecture": cfg["architecture"],
        "Os": cfg["os"],
        "Size": i.unpacked_size,
        "RootFS": cfg["rootfs"],
    })))
}

pub async fn inspect(ctx: &Ctx, a: InspectArgs) -> Result<()> {
    let kind = a.kind.as_deref().unwrap_or("");
    if !matches!(kind, "" | "container" | "image") {
        bail!("invalid --type {kind:?}: container or image");
    }
    let format = Format::parse(a.format.as_deref());
    let all = list(ctx).await?;
    let mut out = Vec::new();
    let mut failed = false;
    for n in &a.names {
        let found = if kind != "image" {
            match names::find(&all, n) {
                Ok(c) => {
                    let c = get(ctx, &c.id).await?;
                    let s = state(ctx, &c).await?;
                    Some(container_json(&c, &s))
                }
                Err(_) => None,
            }
        } else {
            None
        };
        let found = match found {
            Some(v) => Some(v),
            None if kind != "container" => image_json(ctx, n).await?,
            None => None,
        };
        match found {
            Some(v) => out.push(v),
            None => {
                let what = match kind {
                    "container" => "container",
                    "image" => "image",
                    _ => "container or image",
                };
                eprintln!(
                    "rnerd: no such {what} {n:?}: `rnerd ps -a` and `rnerd images` list them"
                );
                failed = true;
            }
        }
    }
    match format {
        Format::Table | Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        Format::Template(t) => {
            for v in &out {
                println!("{}", render(&t, v)?);
            }
        }
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}
