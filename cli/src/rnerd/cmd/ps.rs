//! `rnerd ps`: docker's columns (CONTAINER ID, IMAGE, COMMAND, CREATED, STATUS, PORTS,
//! NAMES), `-a`, `-q`, `--filter`, `--format`.

use super::super::args::PsArgs;
use super::super::names::{name_of, short_id};
use super::super::template::{render, Format};
use super::super::Ctx;
use super::container::ports_column;
use super::images::{short_repo, split_name};
use super::{human_duration, list, since, state_of, status_text, try_get, State};
use crate::format::table;
use anyhow::{bail, Result};
use rcd_proto::v1 as pb;
use std::collections::HashMap;

/// The command as docker shows it: the spec's args, quoted.
pub fn command_of(c: &pb::Container) -> String {
    let spec: serde_json::Value = serde_json::from_slice(&c.spec).unwrap_or_default();
    spec["process"]["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The image as docker shows it (`busybox`, not `docker.io/library/busybox:latest`).
pub fn image_short(name: &str) -> String {
    let (repo, tag) = split_name(name);
    let r = short_repo(&repo);
    if tag == "latest" || tag == "<none>" {
        r
    } else {
        format!("{r}:{tag}")
    }
}

/// One `--filter KEY=VALUE`.
fn matches(f: &str, c: &pb::Container, s: &State) -> Result<bool> {
    let (k, v) = f.split_once('=').ok_or_else(|| {
        anyhow::anyhow!("invalid filter {f:?}: KEY=VALUE (name=web, status=exited, label=a=b)")
    })?;
    Ok(match k {
        "name" => name_of(c).contains(v),
        "id" => c.id.starts_with(v),
        "status" => {
            if !matches!(v, "created" | "running" | "paused" | "exited") {
                bail!("invalid filter {f:?}: status is created, running, paused or exited");
            }
            s.status == v
        }
        "label" => match v.split_once('=') {
            Some((lk, lv)) => c.labels.get(lk).map(String::as_str) == Some(lv),
            None => c.labels.contains_key(v),
        },
        "ancestor" => c.image == v || image_short(&c.image) == v || split_name(&c.image).0 == v,
        "exited" => {
            s.status == "exited" && s.exit_code.map(|c| c.to_string()).as_deref() == Some(v)
        }
        _ => bail!("invalid filter {f:?}: name, id, label, status, ancestor or exited"),
    })
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

pub async fn ps(ctx: &Ctx, a: PsArgs) -> Result<()> {
    let format = Format::parse(a.format.as_deref());
    for f in &a.filter {
        // bad filters fail before any listing
        matches(f, &pb::Container::default(), &State::default())?;
    }
    let mut containers = list(ctx).await?;
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
    containers.sort_by(|x, y| y.created_at.cmp(&x.created_at));
    let mut rows = vec![vec![
        "CONTAINER ID".to_owned(),
        "IMAGE".into(),
        "COMMAND".into(),
        "CREATED".into(),
        "STATUS".into(),
        "PORTS".into(),
        "NAMES".into(),
    ]];
    let mut shown = 0;
    for c in containers {
        let s = state_of(&c, tasks.get(&c.id));
        if !a.all && !a.latest && !s.running() {
            continue;
        }
        let mut ok = true;
        for f in &a.filter {
            ok &= matches(f, &c, &s)?;
        }
        if !ok {
            continue;
        }
        if a.latest && shown == 1 {
            break;
        }
        // fetched before the row is counted, so a container removed since the listing
        // neither fails the command nor takes --latest's one row
        let Some(c) = (if a.quiet {
            Some(c)
        } else {
            try_get(ctx, &c.id).await?
        }) else {
            continue;
        };
        shown += 1;
        let id = if a.no_trunc {
            c.id.clone()
        } else {
            short_id(&c.id).to_owned()
        };
        if a.quiet {
            println!("{id}");
            continue;
        }
        let cmd = command_of(&c);
        let created = since(&c.created_at)
            .map(|d| format!("{} ago", human_duration(d)))
            .unwrap_or_default();
        let v = serde_json::json!({
            "ID": id,
            "Image": image_short(&c.image),
            "Command": format!("\"{cmd}\""),
            "CreatedAt": c.created_at,
            "RunningFor": created,
            "Status": status_text(&s),
            "State": s.status,
            "Ports": ports_column(&c),
            "Names": name_of(&c),
            "Labels": c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
        });
        match &format {
            Format::Json => println!("{v}"),
            Format::Template(t) => println!("{}", render(t, &v)?),
            Format::Table => rows.push(vec![
                id,
                image_short(&c.image),
                if a.no_trunc {
                    format!("\"{cmd}\"")
                } else {
                    format!("\"{}\"", truncate(&cmd, 20))
                },
                created,
                status_text(&s),
                ports_column(&c),
                name_of(&c),
            ]),
        }
    }
    if !a.quiet && matches!(format, Format::Table) {
        print!("{}", table(&rows));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let c = pb::Container {
            id: "abc".into(),
            image: "docker.io/library/busybox:latest".into(),
            labels: [
                ("rcd.io/name".to_owned(), "web".to_owned()),
                ("a".to_owned(), "b".to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        let s = State {
            status: "running",
            ..Default::default()
        };
        assert!(matches("name=we", &c, &s).unwrap());
        assert!(matches("label=a=b", &c, &s).unwrap());
        assert!(matches("label=a", &c, &s).unwrap());
        assert!(!matches("label=a=c", &c, &s).unwrap());
        assert!(matches("status=running", &c, &s).unwrap());
        assert!(matches("ancestor=busybox", &c, &s).unwrap());
        assert!(matches("status=bogus", &c, &s).is_err());
        assert!(matches("nope=1", &c, &s).is_err());
        assert!(matches("name", &c, &s).is_err());
        assert_eq!(
            image_short("127.0.0.1:5000/library/busybox:v1"),
            "127.0.0.1:5000/library/busybox:v1"
        );
        assert_eq!(truncate("abcdefghij", 5), "abcd…");
    }
}
