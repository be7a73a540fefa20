//! `rnerd network`, `volume`, `system df|prune|events|info` and `events`.

use super::super::args::{NetworkCommand, SystemCommand, VolumeCommand};
use super::super::names::short_id;
use super::super::template::{render, Format};
use super::super::{Ctx, Reported};
use crate::format::{human_size, table};
use anyhow::{anyhow, bail, Result};
use rcd_proto::v1 as pb;
use serde_json::{json, Value};
use std::io::IsTerminal;

/// A failed Networks/Volumes call; an rcd without those services says so.
fn svc_error(ctx: &Ctx, what: &str, s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unimplemented => {
            anyhow!("this rcd has no {what} service: update rcd")
        }
        tonic::Code::NotFound => anyhow!("{}: `rnerd {what} ls` lists them", s.message()),
        _ => ctx.st()(s),
    }
}

fn labels_of(l: &[String]) -> Result<std::collections::HashMap<String, String>> {
    crate::cmd::parse_labels(l)
}

fn network_json(n: &pb::Network) -> Value {
    json!({
        "Name": n.name,
        "Id": n.id,
        "Created": n.created_at,
        "Driver": n.driver,
        "IPAM": { "Driver": "default", "Config": [{ "Subnet": n.subnet, "Gateway": n.gateway }] },
        "Containers": n.containers.iter().map(|(k, v)| (k.clone(), json!({ "IPv4Address": v }))).collect::<serde_json::Map<_, _>>(),
        "Labels": n.labels,
        "Options": { "com.docker.network.bridge.name": n.bridge },
    })
}

fn print_each(format: &Format, out: &[Value]) -> Result<()> {
    match format {
        Format::Template(t) => {
            for v in out {
                println!("{}", render(t, v)?);
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(out)?),
    }
    Ok(())
}

fn confirm(what: &str, force: bool) -> Result<bool> {
    if force || !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    eprint!("This removes {what}. Continue? [y/N] ");
    let mut l = String::new();
    std::io::stdin().read_line(&mut l)?;
    Ok(matches!(l.trim(), "y" | "Y" | "yes"))
}

pub async fn network(ctx: &Ctx, c: NetworkCommand) -> Result<()> {
    let err = |s| svc_error(ctx, "network", s);
    match c {
        NetworkCommand::Create {
            driver,
            subnet,
            gateway,
            label,
            name,
        } => {
            if driver != "bridge" {
                bail!("invalid driver {driver:?}: only bridge");
            }
            if matches!(name.as_str(), "host" | "none") {
                bail!("{name:?} is a network mode, not a network: choose another name");
            }
            if let Some(s) = &subnet {
                let ok = s.split_once('/').is_some_and(|(ip, len)| {
                    ip.parse::<std::net::Ipv4Addr>().is_ok()
                        && len.parse::<u8>().is_ok_and(|l| l <= 30)
                });
                if !ok {
                    bail!("invalid subnet {s:?}: IPv4 CIDR such as 10.9.0.0/24");
                }
            }
            let n = ctx
                .client
                .networks()
                .create(pb::CreateNetworkRequest {
                    name,
                    subnet: subnet.unwrap_or_default(),
                    gateway: gateway.unwrap_or_default(),
                    labels: labels_of(&label)?,
                    driver,
                })
                .await
                .map_err(err)?
                .into_inner()
                .network
                .unwrap_or_default();
            println!("{}", n.id);
        }
        NetworkCommand::Ls { quiet, format } => {
            let list = ctx
                .client
                .networks()
                .list(pb::ListNetworksRequest {})
                .await
                .map_err(err)?
                .into_inner()
                .networks;
            let format = Format::parse(format.as_deref());
            let mut rows = vec![vec![
                "NETWORK ID".to_owned(),
                "NAME".into(),
                "DRIVER".into(),
                "SUBNET".into(),
            ]];
            for n in &list {
                if quiet {
                    println!("{}", n.name);
                    continue;
                }
                let v = json!({"ID": short_id(&n.id), "Name": n.name, "Driver": n.driver, "Subnet": n.subnet});
                match &format {
                    Format::Json => println!("{v}"),
                    Format::Template(t) => println!("{}", render(t, &v)?),
                    Format::Table => rows.push(vec![
                        short_id(&n.id).to_owned(),
                        n.name.clone(),
                        n.driver.clone(),
                        n.subnet.clone(),
                    ]),
                }
            }
            if !quiet && matches!(format, Format::Table) {
                print!("{}", table(&rows));
            }
        }
        NetworkCommand::Inspect { format, networks } => {
            let mut out = Vec::new();
            let mut failed = false;
            for n in networks {
                match ctx
                    .client
                    .networks()
                    .get(pb::GetNetworkRequest { name: n })
                    .await
                {
                    Ok(r) => out.push(network_json(&r.into_inner().network.unwrap_or_default())),
                    Err(s) => {
                        eprintln!("rnerd: {:#}", err(s));
                        failed = true;
                    }
                }
            }
            print_each(&Format::parse(format.as_deref()), &out)?;
            if failed {
                return Err(Reported.into());
            }
        }
        NetworkCommand::Rm { networks } => {
            let mut failed = false;
            for n in networks {
                match ctx
                    .client
                    .networks()
                    .delete(pb::DeleteNetworkRequest { name: n.clone() })
                    .await
                {
                    Ok(_) => println!("{n}"),
                    Err(s) => {
                        eprintln!("rnerd: {:#}", err(s));
                        failed = true;
                    }
                }
            }
            if failed {
                return Err(Reported.into());
            }
        }
    }
    Ok(())
}

fn volume_json(v: &pb::Volume) -> Value {
    json!({
        "Name": v.name,
        "Driver": v.driver,
        "Mountpoint": v.mountpoint,
        "CreatedAt": v.created_at,
        "Labels": v.labels,
        "Scope": "local",
        "UsageData": { "Size": v.size, "RefCount": v.used_by.len() },
    })
}

pub async fn volume(ctx: &Ctx, c: VolumeCommand) -> Result<()> {
    let err = |s| svc_error(ctx, "volume", s);
    match c {
        VolumeCommand::Create { label, name } => {
            if let Some(n) = &name {
                if !super::super::names::valid_name(n) {
                    bail!("invalid volume name {n:?}: letters, digits and _ . - (not first)");
                }
            }
            let v = ctx
                .client
                .volumes()
                .create(pb::CreateVolumeRequest {
                    name: name.unwrap_or_default(),
                    labels: labels_of(&label)?,
                    driver: String::new(),
                })
                .await
                .map_err(err)?
                .into_inner()
                .volume
                .unwrap_or_default();
            println!("{}", v.name);
        }
        VolumeCommand::Ls { quiet, format } => {
            let list = ctx
                .client
                .volumes()
                .list(pb::ListVolumesRequest { size: false })
                .await
                .map_err(err)?
                .into_inner()
                .volumes;
            let format = Format::parse(format.as_deref());
            let mut rows = vec![vec!["DRIVER".to_owned(), "VOLUME NAME".into()]];
            for v in &list {
                if quiet {
                    println!("{}", v.name);
                    continue;
                }
                let j = json!({"Name": v.name, "Driver": v.driver, "Mountpoint": v.mountpoint});
                match &format {
                    Format::Json => println!("{j}"),
                    Format::Template(t) => println!("{}", render(t, &j)?),
                    Format::Table => rows.push(vec![v.driver.clone(), v.name.clone()]),
                }
            }
            if !quiet && matches!(format, Format::Table) {
                print!("{}", table(&rows));
            }
        }
        VolumeCommand::Inspect { format, volumes } => {
            let mut out = Vec::new();
            let mut failed = false;
            for n in volumes {
                match ctx
                    .client
                    .volumes()
                    .get(pb::GetVolumeRequest {
                        name: n,
                        size: true,
                    })
                    .await
                {
                    Ok(r) => out.push(volume_json(&r.into_inner().volume.unwrap_or_default())),
                    Err(s) => {
                        eprintln!("rnerd: {:#}", err(s));
                        failed = true;
                    }
                }
            }
            print_each(&Format::parse(format.as_deref()), &out)?;
            if failed {
                return Err(Reported.into());
            }
        }
        VolumeCommand::Rm { force: _, volumes } => {
            let mut failed = false;
            for n in volumes {
                match ctx
                    .client
                    .volumes()
                    .delete(pb::DeleteVolumeRequest { name: n.clone() })
                    .await
                {
                    Ok(_) => println!("{n}"),
                    Err(s) => {
                        eprintln!("rnerd: {:#}", err(s));
                        failed = true;
                    }
                }
            }
            if failed {
                return Err(Reported.into());
            }
        }
        VolumeCommand::Prune { all, force } => {
            if !confirm("every volume no container uses", force)? {
                return Ok(());
            }
            let r = ctx
                .client
                .volumes()
                .prune(pb::PruneVolumesRequest { all })
                .await
                .map_err(err)?
                .into_inner();
            if !r.deleted.is_empty() {
                println!("Deleted Volumes:");
                for d in &r.deleted {
                    println!("{d}");
                }
            }
            println!("Total reclaimed space: {}", human_size(r.reclaimed_bytes));
        }
    }
    Ok(())
}

pub async fn system(ctx: &Ctx, c: SystemCommand) -> Result<()> {
    match c {
        SystemCommand::Info => super::info::info(ctx).await,
        SystemCommand::Events { filter, format } => events(ctx, filter, format).await,
        SystemCommand::Df => {
            let images = ctx
                .client
                .images()
                .list(pb::ListImagesRequest {})
                .await
                .map_err(ctx.st())?
                .into_inner()
                .images;
            let containers = super::list(ctx).await?;
            let used: std::collections::HashSet<&str> =
                containers.iter().map(|c| c.image.as_str()).collect();
            let img_size: u64 = images.iter().map(|i| i.unpacked_size.max(0) as u64).sum();
            let img_free: u64 = images
                .iter()
                .filter(|i| !used.contains(i.name.as_str()))
                .map(|i| i.unpacked_size.max(0) as u64)
                .sum();
            let tasks = ctx
                .client
                .tasks()
                .list(pb::ListTasksRequest {})
                .await
                .map_err(ctx.st())?
                .into_inner()
                .tasks;
            let running = tasks
                .iter()
                .filter(|t| t.status == pb::TaskStatus::Running as i32)
                .count();
            let vols = ctx
                .client
                .volumes()
                .list(pb::ListVolumesRequest { size: true })
                .await
                .map(|r| r.into_inner().volumes)
                .unwrap_or_default();
            let vol_size: u64 = vols.iter().map(|v| v.size).sum();
            let vol_free: u64 = vols
                .iter()
                .filter(|v| v.used_by.is_empty())
                .map(|v| v.size)
                .sum();
            let rows = vec![
                vec![
                    "TYPE".to_owned(),
                    "TOTAL".into(),
                    "ACTIVE".into(),
                    "SIZE".into(),
                    "RECLAIMABLE".into(),
                ],
                vec![
                    "Images".into(),
                    images.len().to_string(),
                    images
                        .iter()
                        .filter(|i| used.contains(i.name.as_str()))
                        .count()
                        .to_string(),
                    human_size(img_size),
                    human_size(img_free),
                ],
                vec![
                    "Containers".into(),
                    containers.len().to_string(),
                    running.to_string(),
                    "-".into(),
                    "-".into(),
                ],
                vec![
                    "Local Volumes".into(),
                    vols.len().to_string(),
                    vols.iter()
                        .filter(|v| !v.used_by.is_empty())
                        .count()
                        .to_string(),
                    human_size(vol_size),
                    human_size(vol_free),
                ],
            ];
            print!("{}", table(&rows));
            Ok(())
        }
        SystemCommand::Prune {
            all,
            force,
            volumes,
        } => {
            if !confirm("stopped containers, unused networks and image data", force)? {
                return Ok(());
            }
            container_prune(ctx, true).await?;
            // networks nothing is attached to (not "bridge")
            if let Ok(r) = ctx.client.networks().list(pb::ListNetworksRequest {}).await {
                for n in r.into_inner().networks {
                    if n.name != "bridge" && n.containers.is_empty() {
                        let in_use = super::list(ctx)
                            .await?
                            .iter()
                            .any(|c| c.labels.get(rcd_proto::labels::NETWORK) == Some(&n.name));
                        if !in_use
                            && ctx
                                .client
                                .networks()
                                .delete(pb::DeleteNetworkRequest {
                                    name: n.name.clone(),
                                })
                                .await
                                .is_ok()
                        {
                            println!("Deleted Network: {}", n.name);
                        }
                    }
                }
            }
            if volumes {
                if let Ok(r) = ctx
                    .client
                    .volumes()
                    .prune(pb::PruneVolumesRequest { all: false })
                    .await
                {
                    for d in r.into_inner().deleted {
                        println!("Deleted Volume: {d}");
                    }
                }
            }
            super::images2::image(
                ctx,
                super::super::args::ImageCommand::Prune { all, force: true },
            )
            .await
        }
    }
}

/// docker's (type, action) for an rcd topic.
fn kind_action(topic: &str) -> (&str, &str) {
    let t = topic.trim_start_matches('/');
    let (kind, action) = t.split_once('/').unwrap_or((t, ""));
    match kind {
        "tasks" => ("container", action),
        "containers" => ("container", action),
        "images" => ("image", action),
        k => (k, action),
    }
}

pub async fn events(ctx: &Ctx, filter: Vec<String>, format: Option<String>) -> Result<()> {
    let mut filters = Vec::new();
    for f in &filter {
        match f.split_once('=') {
            Some(("type", "container")) => {
                filters.push("topic~=/tasks/".to_owned());
                filters.push("topic~=/containers/".to_owned());
            }
            Some(("type", "image")) => filters.push("topic~=/images/".to_owned()),
            Some(("event", e)) => filters.push(format!("topic~=/tasks/{e}")),
            _ => bail!("invalid filter {f:?}: type=container|image or event=start|exit|..."),
        }
    }
    let json = matches!(format.as_deref(), Some("json") | Some("{{json .}}"));
    let mut s = ctx
        .client
        .events()
        .subscribe(pb::SubscribeEventsRequest { filters })
        .await
        .map_err(ctx.st())?
        .into_inner();
    while let Some(e) = s.message().await.map_err(ctx.st())? {
        let (kind, action) = kind_action(&e.topic);
        let id = e
            .attributes
            .get("container_id")
            .or_else(|| e.attributes.get("id"))
            .or_else(|| e.attributes.get("name"))
            .cloned()
            .unwrap_or_default();
        if json {
            println!(
                "{}",
                json!({"Time": e.timestamp, "Type": kind, "Action": action, "ID": id, "Namespace": e.namespace, "Attributes": e.attributes})
            );
        } else {
            let mut attrs: Vec<_> = e
                .attributes
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "container_id" | "id"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            attrs.sort();
            println!(
                "{} {kind} {action} {id} ({})",
                e.timestamp,
                attrs.join(", ")
            );
        }
    }
    Ok(())
}

/// Removes every container that is not running (`container prune`, `system prune`).
pub async fn container_prune(ctx: &Ctx, force: bool) -> Result<()> {
    if !confirm("every stopped container", force)? {
        return Ok(());
    }
    let tasks: std::collections::HashMap<String, pb::Process> = ctx
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
    let mut removed = Vec::new();
    for c in super::list(ctx).await? {
        if super::state_of(&c, tasks.get(&c.id)).running() {
            continue;
        }
        // one rcd's restart monitor will start again is restarting, not stopped
        let label = |k: &str| c.labels.get(k).map(String::as_str).unwrap_or("");
        if !matches!(label(rcd_proto::labels::RESTART), "" | "no")
            && label(rcd_proto::labels::EXPLICITLY_STOPPED) != "true"
        {
            continue;
        }
        super::delete_task(ctx, &c.id, true).await?;
        match ctx
            .client
            .containers()
            .delete(pb::DeleteContainerRequest {
                id: c.id.clone(),
                keep_snapshot: false,
                remove_volumes: false,
            })
            .await
        {
            Ok(_) => removed.push(c.id),
            // rcd removed it itself since the listing (--rm)
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(ctx.st()(s)),
        }
    }
    if !removed.is_empty() {
        println!("Deleted Containers:");
        for r in &removed {
            println!("{r}");
        }
    }
    Ok(())
}
