//! `rnerd push`, `tag`, `save`, `load`, `image inspect|history|prune|...`, `login`,
//! `logout`.

use super::super::args::{ImageCommand, LoadArgs, LoginArgs, PushArgs, SaveArgs};
use super::super::template::{render, Format};
use super::super::{Ctx, Reported};
use super::{human_duration, images, since};
use crate::format::{human_size, table};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use rcd_proto::v1 as pb;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

/// docker's credentials file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> PathBuf {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".docker/config.json"),
    }
}

/// The key docker files a registry's credentials under.
fn auth_key(server: &str) -> String {
    let s = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    match s {
        "" | "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "https://index.docker.io/v1/".into()
        }
        s => s.split('/').next().unwrap_or(s).to_owned(),
    }
}

/// The registry host of an image reference (docker.io for short names).
pub fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((h, _)) if h.contains('.') || h.contains(':') || h == "localhost" => h.to_owned(),
        _ => "docker.io".into(),
    }
}

fn read_config() -> Result<Value> {
    let p = docker_config_path();
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn write_config(v: &Value) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = docker_config_path();
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let tmp = p.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(v)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

/// The stored (username, password) for `reference`'s registry, or empty strings.
pub fn credentials_for(reference: &str) -> (String, String) {
    let Ok(cfg) = read_config() else {
        return Default::default();
    };
    let key = auth_key(&registry_of(reference));
    let Some(auth) = cfg["auths"][&key]["auth"].as_str() else {
        return Default::default();
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(auth) else {
        return Default::default();
    };
    let s = String::from_utf8_lossy(&raw).into_owned();
    match s.split_once(':') {
        Some((u, p)) => (u.to_owned(), p.to_owned()),
        None => Default::default(),
    }
}

pub fn login(a: LoginArgs) -> Result<()> {
    let server = a.server.clone().unwrap_or_else(|| "docker.io".into());
    let Some(user) = a.username else {
        bail!("login needs -u USERNAME (and --password-stdin or -p)");
    };
    let password = match (a.password, a.password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin exclude each other"),
        (Some(p), false) => p,
        (None, true) => {
            let mut p = String::new();
            std::io::stdin()
                .read_line(&mut p)
                .context("reading the password from stdin")?;
            p.trim_end_matches(['\r', '\n']).to_owned()
        }
        (None, false) => bail!("login needs a password: --password-stdin (or -p)"),
    };
    if password.is_empty() {
        bail!("empty password");
    }
    let mut cfg = read_config()?;
    if !cfg["auths"].is_object() {
        cfg["auths"] = json!({});
    }
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    cfg["auths"][auth_key(&server)] = json!({ "auth": auth });
    write_config(&cfg)?;
    println!("Login Succeeded");
    Ok(())
}

pub fn logout(server: Option<String>) -> Result<()> {
    let server = server.unwrap_or_else(|| "docker.io".into());
    let key = auth_key(&server);
    let mut cfg = read_config()?;
    let removed = cfg["auths"]
        .as_object_mut()
        .and_then(|m| m.remove(&key))
        .is_some();
    if !removed {
        println!("Not logged in to {server}");
        return Ok(());
    }
    write_config(&cfg)?;
    println!("Removing login credentials for {key}");
    Ok(())
}

pub async fn push(ctx: &Ctx, a: PushArgs) -> Result<()> {
    let (username, password) = credentials_for(&a.image);
    let mut stream = ctx
        .client
        .images()
        .push(pb::PushImageRequest {
            remote: a.image.clone(),
            local: String::new(),
            platform: a.platform.unwrap_or_default(),
            plain_http: ctx.plain_http(&a.image),
            username,
            password,
        })
        .await
        .map_err(|s| images::not_found_hint(ctx, s, &a.image))?
        .into_inner();
    let mut states: std::collections::HashMap<String, String> = Default::default();
    loop {
        let Some(m) = stream.message().await.map_err(|s| {
            anyhow!(
                "pushing {}: {}",
                a.image,
                crate::client::status_message(ctx.client.address(), &s)
            )
        })?
        else {
            bail!("rcd ended the push of {} without a result", a.image);
        };
        match m.event {
            Some(pb::push_image_response::Event::Progress(p)) => {
                if a.quiet || p.kind != "layer" || states.get(&p.digest) == Some(&p.state) {
                    continue;
                }
                states.insert(p.digest.clone(), p.state.clone());
                let short = p.digest.strip_prefix("sha256:").unwrap_or(&p.digest);
                let what = match p.state.as_str() {
                    "exists" => "Layer already exists",
                    "uploading" => "Pushing",
                    "done" => "Pushed",
                    s => s,
                };
                println!("{}: {what}", &short[..short.len().min(12)]);
            }
            Some(pb::push_image_response::Event::Result(r)) => {
                println!("{}: digest: {}", r.name, r.digest);
                return Ok(());
            }
            None => {}
        }
    }
}

pub async fn tag(ctx: &Ctx, source: &str, target: &str) -> Result<()> {
    ctx.client
        .images()
        .tag(pb::TagImageRequest {
            source: source.to_owned(),
            target: target.to_owned(),
            force: true,
        })
        .await
        .map_err(|s| images::not_found_hint(ctx, s, source))?;
    Ok(())
}

pub async fn save(ctx: &Ctx, a: SaveArgs) -> Result<()> {
    if a.output.is_none() && std::io::stdout().is_terminal() {
        bail!("refusing to write an archive to a terminal: use -o FILE or a redirect");
    }
    let mut stream = ctx
        .client
        .images()
        .export(pb::ExportImagesRequest {
            names: a.images.clone(),
            platform: a.platform.unwrap_or_default(),
        })
        .await
        .map_err(ctx.st())?
        .into_inner();
    let names = a.images.join(", ");
    let err = |s: tonic::Status| {
        if s.code() == tonic::Code::NotFound {
            anyhow!("saving {names}: {}: pull it or check the name", s.message())
        } else {
            anyhow!(
                "saving {names}: {}",
                crate::client::status_message(ctx.client.address(), &s)
            )
        }
    };
    // the first message comes before the file: a refused save leaves no file
    let first = stream.message().await.map_err(err)?;
    let mut sink: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let r = async {
        if let Some(m) = first {
            sink.write_all(&m.data)?;
        }
        while let Some(m) = stream.message().await.map_err(err)? {
            sink.write_all(&m.data)?;
        }
        sink.flush()?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if r.is_err() {
        drop(sink);
        if let Some(p) = &a.output {
            let _ = std::fs::remove_file(p);
        }
    }
    r
}

pub async fn load(ctx: &Ctx, a: LoadArgs) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let mut input: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match &a.input {
        Some(p) => Box::new(
            tokio::fs::File::open(p)
                .await
                .with_context(|| format!("opening {}", p.display()))?,
        ),
        None => {
            if std::io::stdin().is_terminal() {
                bail!("no archive on stdin: use -i FILE or a redirect");
            }
            Box::new(tokio::io::stdin())
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let platform = a.platform.clone().unwrap_or_default();
    let reader = tokio::spawn(async move {
        let mut first = true;
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let n = input.read(&mut buf).await.context("reading the archive")?;
            buf.truncate(n);
            let msg = pb::ImportImagesRequest {
                data: buf,
                base_name: String::new(),
                no_unpack: false,
                platform: if first {
                    platform.clone()
                } else {
                    String::new()
                },
            };
            if n == 0 && !first {
                break;
            }
            if tx.send(msg).await.is_err() || n == 0 {
                break;
            }
            first = false;
        }
        Ok::<_, anyhow::Error>(())
    });
    let r = ctx
        .client
        .images()
        .import(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reader.await.context("reading the archive")??;
    let r = r
        .map_err(|s| {
            anyhow!(
                "loading: {}",
                crate::client::status_message(ctx.client.address(), &s)
            )
        })?
        .into_inner();
    for i in &r.images {
        if a.quiet {
            println!("{}", i.name);
        } else {
            println!("Loaded image: {}", i.name);
        }
    }
    if r.unnamed > 0 {
        eprintln!(
            "rnerd: {} image(s) without a name in the archive were skipped",
            r.unnamed
        );
    }
    Ok(())
}

async fn get(ctx: &Ctx, name: &str) -> Result<pb::GetImageResponse> {
    Ok(ctx
        .client
        .images()
        .get(pb::GetImageRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(|s| images::not_found_hint(ctx, s, name))?
        .into_inner())
}

async fn history(ctx: &Ctx, name: &str, no_trunc: bool, quiet: bool) -> Result<()> {
    let r = get(ctx, name).await?;
    let cfg: Value = serde_json::from_slice(&r.config).unwrap_or_default();
    let layers = r.image.clone().unwrap_or_default().layers;
    let hist = cfg["history"].as_array().cloned().unwrap_or_default();
    let mut li = layers.len();
    let mut rows = vec![vec![
        "IMAGE".to_owned(),
        "CREATED".into(),
        "CREATED BY".into(),
        "SIZE".into(),
        "COMMENT".into(),
    ]];
    // newest first; each step that is not empty_layer owns a layer, from the top down
    for h in hist.iter().rev() {
        let empty = h["empty_layer"].as_bool().unwrap_or(false);
        let (id, size) = if empty || li == 0 {
            ("<missing>".to_owned(), 0)
        } else {
            li -= 1;
            let d = &layers[li].digest;
            let hex = d.strip_prefix("sha256:").unwrap_or(d);
            (
                if no_trunc {
                    d.clone()
                } else {
                    hex[..12.min(hex.len())].to_owned()
                },
                layers[li].size.max(0) as u64,
            )
        };
        if quiet {
            println!("{id}");
            continue;
        }
        let by = h["created_by"].as_str().unwrap_or("").to_owned();
        let by = if no_trunc || by.chars().count() <= 45 {
            by
        } else {
            format!("{}…", by.chars().take(44).collect::<String>())
        };
        let created = h["created"]
            .as_str()
            .and_then(since)
            .map(|d| format!("{} ago", human_duration(d)))
            .unwrap_or_default();
        rows.push(vec![
            id,
            created,
            by,
            human_size(size),
            h["comment"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    if !quiet {
        print!("{}", table(&rows));
    }
    Ok(())
}

pub async fn image(ctx: &Ctx, c: ImageCommand) -> Result<()> {
    match c {
        ImageCommand::Ls(a) => images::images(ctx, a).await,
        ImageCommand::Rm(a) => images::rmi(ctx, a).await,
        ImageCommand::Pull(a) => images::pull_cmd(ctx, a).await,
        ImageCommand::Push(a) => push(ctx, a).await,
        ImageCommand::Tag { source, target } => tag(ctx, &source, &target).await,
        ImageCommand::Save(a) => save(ctx, a).await,
        ImageCommand::Load(a) => load(ctx, a).await,
        ImageCommand::History {
            no_trunc,
            quiet,
            image,
        } => history(ctx, &image, no_trunc, quiet).await,
        ImageCommand::Inspect { format, images } => {
            let format = Format::parse(format.as_deref());
            let mut out = Vec::new();
            let mut failed = false;
            for n in &images {
                match get(ctx, n).await {
                    Ok(_) => out.extend(super::inspect::image_json(ctx, n).await?),
                    Err(e) => {
                        eprintln!("rnerd: {e:#}");
                        failed = true;
                    }
                }
            }
            match format {
                Format::Template(t) => {
                    for v in &out {
                        println!("{}", render(&t, v)?);
                    }
                }
                _ => println!("{}", serde_json::to_string_pretty(&out)?),
            }
            if failed {
                return Err(Reported.into());
            }
            Ok(())
        }
        ImageCommand::Prune { all, force } => {
            if !force && std::io::stdin().is_terminal() {
                eprint!(
                    "This removes {}. Continue? [y/N] ",
                    if all {
                        "every image no container uses"
                    } else {
                        "unreferenced image data"
                    }
                );
                let mut l = String::new();
                std::io::stdin().read_line(&mut l)?;
                if !matches!(l.trim(), "y" | "Y" | "yes") {
                    return Ok(());
                }
            }
            let mut removed = Vec::new();
            if all {
                // images a container uses stay
                let used: std::collections::HashSet<String> = super::list(ctx)
                    .await?
                    .into_iter()
                    .map(|c| c.image)
                    .collect();
                let list = ctx
                    .client
                    .images()
                    .list(pb::ListImagesRequest {})
                    .await
                    .map_err(ctx.st())?
                    .into_inner()
                    .images;
                for i in list.into_iter().filter(|i| !used.contains(&i.name)) {
                    ctx.client
                        .images()
                        .delete(pb::DeleteImageRequest {
                            name: i.name.clone(),
                            sync: false,
                        })
                        .await
                        .map_err(ctx.st())?;
                    removed.push(i.name);
                }
            }
            let r = ctx
                .client
                .images()
                .prune(pb::PruneImagesRequest { all: false })
                .await
                .map_err(ctx.st())?
                .into_inner();
            for n in removed.iter().chain(r.images.iter()) {
                println!("Untagged: {n}");
            }
            println!("Total reclaimed space: {}", human_size(r.bytes));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_keys() {
        assert_eq!(auth_key("docker.io"), "https://index.docker.io/v1/");
        assert_eq!(auth_key("https://quay.io/"), "quay.io");
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("me/x"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/x"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/x"), "localhost");
    }
}
