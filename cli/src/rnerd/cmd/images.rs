//! `rnerd pull`, `images`, `rmi`, and the `--pull` policy of run/create.

use super::super::args::{ImagesArgs, PullArgs, RmiArgs};
use super::super::template::{render, Format};
use super::super::{Ctx, Reported};
use super::human_duration;
use crate::client::status_message;
use crate::format::{human_size, table};
use anyhow::{anyhow, bail, Result};
use rcd_proto::v1 as pb;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// rcd's refusal of a container create whose image the namespace lacks.
pub fn is_image_not_found(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::NotFound && s.message().starts_with("image ")
}

/// A failed call about image `name`: NotFound says what to do.
pub fn not_found_hint(ctx: &Ctx, s: tonic::Status, name: &str) -> anyhow::Error {
    if s.code() == tonic::Code::NotFound && s.message().contains("image") {
        return anyhow!(
            "image {name:?} not found: pull it (`rnerd pull {name}`) or check the name"
        );
    }
    ctx.st()(s)
}

/// The image's record, if the namespace has it.
async fn lookup(ctx: &Ctx, name: &str) -> Result<Option<pb::Image>> {
    match ctx
        .client
        .images()
        .get(pb::GetImageRequest {
            name: name.to_owned(),
        })
        .await
    {
        Ok(r) => Ok(r.into_inner().image),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(ctx.st()(s)),
    }
}

/// The image run/create use, pulled as `policy` (always, missing, never) says; its name.
pub async fn ensure(ctx: &Ctx, name: &str, policy: &str) -> Result<String> {
    let have = if policy == "always" {
        None
    } else {
        lookup(ctx, name).await?
    };
    match have {
        Some(i) => Ok(i.name),
        None if policy == "never" => {
            bail!("image {name:?} not found and --pull never: pull it (`rnerd pull {name}`) or check the name")
        }
        None => {
            // docker prints the pull on stderr for run: stdout is the container's
            let img = pull(ctx, name, None, false, true).await?;
            Ok(img.name)
        }
    }
}

struct Line {
    digest: String,
    state: String,
    offset: u64,
    total: u64,
}

impl Line {
    fn render(&self) -> String {
        let short = self.digest.strip_prefix("sha256:").unwrap_or(&self.digest);
        let short = &short[..short.len().min(12)];
        match self.state.as_str() {
            "downloading" if self.total > 0 => {
                let width = 30usize;
                let filled = (self.offset.min(self.total) * width as u64 / self.total) as usize;
                format!(
                    "{short}: Downloading [{}>{}] {}/{}",
                    "=".repeat(filled.saturating_sub(1)),
                    " ".repeat(width - filled.max(1)),
                    human_size(self.offset),
                    human_size(self.total)
                )
            }
            "downloading" => format!("{short}: Downloading {}", human_size(self.offset)),
            "waiting" => format!("{short}: Waiting"),
            "exists" => format!("{short}: Already exists"),
            "done" => format!("{short}: Pull complete"),
            s => format!("{short}: {s}"),
        }
    }
}

/// Pulls `reference`, with a bar per layer on a terminal and a line per state change
/// otherwise (to stderr with `to_stderr`).
pub async fn pull(
    ctx: &Ctx,
    reference: &str,
    platform: Option<String>,
    quiet: bool,
    to_stderr: bool,
) -> Result<pb::Image> {
    let creds = super::images2::credentials_for(reference);
    let mut stream = ctx
        .client
        .images()
        .pull(pb::PullRequest {
            reference: reference.to_owned(),
            platform: platform.unwrap_or_default(),
            plain_http: ctx.plain_http(reference),
            username: creds.0,
            password: creds.1,
            no_unpack: false,
        })
        .await
        .map_err(|s| pull_error(ctx, s, reference))?
        .into_inner();
    let tty = if to_stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let mut out: Box<dyn Write> = if to_stderr {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    if !quiet {
        writeln!(out, "pulling {reference}")?;
    }
    let mut lines: Vec<Line> = Vec::new();
    let mut drawn = 0usize;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let img = loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => bail!("{reference}: rcd ended the pull without a result"),
            Err(s) => return Err(pull_error(ctx, s, reference)),
        };
        match msg.event {
            Some(pb::pull_response::Event::Progress(p)) if p.kind == "layer" => {
                let i = match lines.iter().position(|l| l.digest == p.digest) {
                    Some(i) => i,
                    None => {
                        lines.push(Line {
                            digest: p.digest.clone(),
                            state: String::new(),
                            offset: 0,
                            total: 0,
                        });
                        lines.len() - 1
                    }
                };
                let changed = lines[i].state != p.state;
                lines[i].state = p.state;
                lines[i].offset = p.offset;
                lines[i].total = p.total;
                if quiet {
                    continue;
                }
                if tty {
                    if changed || last_draw.elapsed() >= Duration::from_millis(100) {
                        if drawn > 0 {
                            write!(out, "\x1b[{drawn}A")?;
                        }
                        for l in &lines {
                            writeln!(out, "\x1b[2K{}", l.render())?;
                        }
                        drawn = lines.len();
                        last_draw = Instant::now();
                    }
                } else if changed {
                    writeln!(out, "{}", lines[i].render())?;
                }
            }
            Some(pb::pull_response::Event::Progress(_)) => {}
            Some(pb::pull_response::Event::Image(img)) => break img,
            None => {}
        }
    };
    if tty && !quiet && drawn > 0 {
        write!(out, "\x1b[{drawn}A")?;
        for l in &lines {
            writeln!(out, "\x1b[2K{}", l.render())?;
        }
    }
    let digest = img.target.clone().unwrap_or_default().digest;
    if !quiet {
        writeln!(out, "Digest: {digest}")?;
        writeln!(out, "Status: Downloaded newer image for {}", img.name)?;
    }
    if quiet && !to_stderr {
        writeln!(out, "{}", img.name)?;
    }
    Ok(img)
}

fn pull_error(ctx: &Ctx, s: tonic::Status, reference: &str) -> anyhow::Error {
    let msg = status_message(ctx.client.address(), &s);
    if s.code() == tonic::Code::NotFound {
        return anyhow!("pulling {reference}: {msg}: check the name and tag");
    }
    if msg.contains("http") && msg.contains("https") || msg.to_lowercase().contains("tls") {
        return anyhow!(
            "pulling {reference}: {msg} (a plain-HTTP registry needs --insecure-registry HOST)"
        );
    }
    anyhow!("pulling {reference}: {msg}")
}

pub async fn pull_cmd(ctx: &Ctx, a: PullArgs) -> Result<()> {
    pull(ctx, &a.image, a.platform, a.quiet, false).await?;
    Ok(())
}

/// (repository, tag) of a stored name; digests-only names have tag `<none>`.
pub fn split_name(name: &str) -> (String, String) {
    let (repo, rest) = match name.split_once('@') {
        Some((r, _)) => (r, None),
        None => (name, Some(())),
    };
    let slash = repo.rfind('/').map(|i| i + 1).unwrap_or(0);
    match (rest, repo[slash..].rfind(':')) {
        (Some(()), Some(i)) => (
            repo[..slash + i].to_owned(),
            repo[slash + i + 1..].to_owned(),
        ),
        _ => (repo.to_owned(), "<none>".into()),
    }
}

/// docker shows `docker.io/library/busybox` as `busybox`.
pub fn short_repo(repo: &str) -> String {
    repo.strip_prefix("docker.io/library/")
        .or_else(|| repo.strip_prefix("docker.io/"))
        .unwrap_or(repo)
        .to_owned()
}

fn image_id(i: &pb::Image) -> String {
    i.config.clone().unwrap_or_default().digest
}

pub async fn images(ctx: &Ctx, a: ImagesArgs) -> Result<()> {
    let mut list = ctx
        .client
        .images()
        .list(pb::ListImagesRequest {})
        .await
        .map_err(ctx.st())?
        .into_inner()
        .images;
    if let Some(r) = &a.repository {
        list.retain(|i| {
            let (repo, tag) = split_name(&i.name);
            let short = short_repo(&repo);
            [&repo, &short]
                .iter()
                .any(|n| *n == r || format!("{n}:{tag}") == *r)
        });
    }
    list.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    let format = Format::parse(a.format.as_deref());
    if a.quiet {
        let mut seen = std::collections::HashSet::new();
        for i in &list {
            let id = image_id(i);
            let id = id.strip_prefix("sha256:").unwrap_or(&id).to_owned();
            let short = if a.no_trunc {
                id.clone()
            } else {
                id[..id.len().min(12)].to_owned()
            };
            if seen.insert(short.clone()) {
                println!("{short}");
            }
        }
        return Ok(());
    }
    let mut rows = vec![];
    let mut header = vec!["REPOSITORY", "TAG"];
    if a.digests {
        header.push("DIGEST");
    }
    header.extend(["IMAGE ID", "CREATED", "PLATFORM", "SIZE"]);
    rows.push(header.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    for i in &list {
        let (repo, tag) = split_name(&i.name);
        let id = image_id(i);
        let id_hex = id.strip_prefix("sha256:").unwrap_or(&id);
        let digest = i.target.clone().unwrap_or_default().digest;
        let created = super::since(&i.created_at)
            .map(|d| format!("{} ago", human_duration(d)))
            .unwrap_or_default();
        let platform = i
            .platform
            .clone()
            .map(|p| {
                if p.variant.is_empty() {
                    format!("{}/{}", p.os, p.architecture)
                } else {
                    format!("{}/{}/{}", p.os, p.architecture, p.variant)
                }
            })
            .unwrap_or_default();
        let size = human_size(i.unpacked_size.max(i.size).max(0) as u64);
        let v = serde_json::json!({
            "Repository": short_repo(&repo),
            "Tag": tag,
            "Digest": digest,
            "ID": if a.no_trunc { id.clone() } else { id_hex[..id_hex.len().min(12)].to_owned() },
            "CreatedSince": created,
            "CreatedAt": i.created_at,
            "Platform": platform,
            "Size": size,
            "Name": i.name,
        });
        match &format {
            Format::Json => println!("{v}"),
            Format::Template(t) => println!("{}", render(t, &v)?),
            Format::Table => {
                let mut r = vec![short_repo(&repo), tag];
                if a.digests {
                    r.push(digest);
                }
                r.extend([
                    v["ID"].as_str().unwrap_or("").to_owned(),
                    created,
                    platform,
                    size,
                ]);
                rows.push(r);
            }
        }
    }
    if matches!(format, Format::Table) {
        print!("{}", table(&rows));
    }
    Ok(())
}

pub async fn rmi(ctx: &Ctx, a: RmiArgs) -> Result<()> {
    let mut failed = false;
    // images used by containers are refused unless -f (docker's conflict)
    let used: HashMap<String, String> = if a.force {
        HashMap::new()
    } else {
        super::list(ctx)
            .await?
            .into_iter()
            .map(|c| (c.image.clone(), super::super::names::name_of(&c)))
            .collect()
    };
    for name in &a.images {
        let img = match lookup(ctx, name).await {
            Ok(Some(i)) => i,
            Ok(None) => {
                eprintln!("rnerd: no such image {name:?}: `rnerd images` lists them");
                failed = true;
                continue;
            }
            Err(e) => {
                eprintln!("rnerd: {e:#}");
                failed = true;
                continue;
            }
        };
        if let Some(c) = used.get(&img.name) {
            eprintln!(
                "rnerd: image {name:?} is used by container {c}: remove the container first, or rmi -f"
            );
            failed = true;
            continue;
        }
        match ctx
            .client
            .images()
            .delete(pb::DeleteImageRequest {
                name: name.clone(),
                sync: false,
            })
            .await
        {
            Ok(r) => {
                for n in r.into_inner().names {
                    println!("Untagged: {n}");
                }
            }
            Err(s) => {
                eprintln!("rnerd: {}", status_message(ctx.client.address(), &s));
                failed = true;
            }
        }
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            split_name("docker.io/library/busybox:latest"),
            ("docker.io/library/busybox".into(), "latest".into())
        );
        assert_eq!(
            split_name("127.0.0.1:5000/a/b:v1"),
            ("127.0.0.1:5000/a/b".into(), "v1".into())
        );
        assert_eq!(
            split_name("127.0.0.1:5000/a@sha256:00"),
            ("127.0.0.1:5000/a".into(), "<none>".into())
        );
        assert_eq!(short_repo("docker.io/library/busybox"), "busybox");
        assert_eq!(short_repo("docker.io/me/x"), "me/x");
        assert_eq!(short_repo("quay.io/x"), "quay.io/x");
    }
}
