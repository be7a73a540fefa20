//! `rnerd commit`: a container's changes as a new image. The changes are its rootfs
//! snapshot's overlay upperdir, written as an OCI layer (overlay whiteouts turned into
//! `.wh.` entries); the base image's blobs (Content.Read) plus the new layer, config and
//! manifest go to rcd as an OCI layout through Images.Import, which records the image.

use super::super::names::name_of;
use super::super::Ctx;
use super::{resolve, state};
use anyhow::{anyhow, bail, Context, Result};
use rcd_proto::v1 as pb;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Whether the overlay marked directory `p` opaque (its lower contents hidden).
fn opaque(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 4];
    for name in [c"trusted.overlay.opaque", c"user.overlay.opaque"] {
        // SAFETY: valid C strings and a buffer of the size given.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n == 1 && buf[0] == b'y' {
            return true;
        }
    }
    false
}

fn empty_file(b: &mut tar::Builder<Vec<u8>>, path: &str) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_mtime(0);
    b.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

/// Adds the overlay upperdir `dir` (at `rel` in the layer) to the tar, depth first.
fn add_dir(b: &mut tar::Builder<Vec<u8>>, dir: &Path, rel: &str) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let md = std::fs::symlink_metadata(&path)?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            // overlay's whiteout: the file was removed
            let w = match r.rsplit_once('/') {
                Some((p, n)) => format!("{p}/.wh.{n}"),
                None => format!(".wh.{r}"),
            };
            empty_file(b, &w)?;
            continue;
        }
        b.append_path_with_name(&path, &r)
            .with_context(|| format!("adding {r}"))?;
        if ft.is_dir() {
            if opaque(&path) {
                empty_file(b, &format!("{r}/.wh..wh..opq"))?;
            }
            add_dir(b, &path, &r)?;
        }
    }
    Ok(())
}

/// The upperdir of an overlay mount's options.
fn upperdir(mounts: &[pb::Mount]) -> Option<String> {
    mounts.iter().find_map(|m| {
        m.options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir=").map(str::to_owned))
    })
}

async fn read_blob(ctx: &Ctx, digest: &str) -> Result<Vec<u8>> {
    let mut s = ctx
        .client
        .content()
        .read(pb::ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        })
        .await
        .map_err(ctx.st())?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.map_err(ctx.st())? {
        out.extend_from_slice(&m.data);
    }
    if sha(&out) != digest {
        bail!("blob {digest} read back with another digest");
    }
    Ok(out)
}

fn tar_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data)?;
    Ok(())
}

pub async fn commit(
    ctx: &Ctx,
    container: &str,
    image: &str,
    message: Option<String>,
    author: Option<String>,
    pause: bool,
) -> Result<()> {
    let c = resolve(ctx, container).await?;
    if c.snapshot_key.is_empty() {
        bail!("container {} has no rootfs snapshot to commit", name_of(&c));
    }
    let base = ctx
        .client
        .images()
        .get(pb::GetImageRequest {
            name: c.image.clone(),
        })
        .await
        .map_err(|s| {
            anyhow!(
                "the image {} of container {}: {}",
                c.image,
                name_of(&c),
                s.message()
            )
        })?
        .into_inner();
    let img = base.image.clone().unwrap_or_default();
    let mounts = ctx
        .client
        .snapshots()
        .mounts(pb::SnapshotMountsRequest {
            key: c.snapshot_key.clone(),
        })
        .await
        .map_err(ctx.st())?
        .into_inner()
        .mounts;
    let upper = upperdir(&mounts).ok_or_else(|| {
        anyhow!(
            "container {}'s rootfs is not an overlay: nothing to commit",
            name_of(&c)
        )
    })?;
    // docker pauses a running container so the layer is consistent
    let paused = pause && state(ctx, &c).await?.status == "running" && {
        ctx.client
            .tasks()
            .pause(pb::PauseTaskRequest {
                container_id: c.id.clone(),
            })
            .await
            .is_ok()
    };
    let layer = (|| {
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        add_dir(&mut b, Path::new(&upper), "")?;
        b.into_inner().map_err(anyhow::Error::from)
    })();
    if paused {
        let _ = ctx
            .client
            .tasks()
            .resume(pb::ResumeTaskRequest {
                container_id: c.id.clone(),
            })
            .await;
    }
    let layer = layer?;
    let diff_id = sha(&layer);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer)?;
    let layer_gz = gz.finish()?;
    let layer_digest = sha(&layer_gz);

    // the new config: the base's, with the container's command, the layer and a history entry
    let spec: Value = serde_json::from_slice(&c.spec).unwrap_or_default();
    let mut cfg: Value = serde_json::from_slice(&base.config).context("the base image's config")?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    cfg["created"] = json!(now);
    if let Some(a) = &author {
        cfg["author"] = json!(a);
    }
    if let Some(args) = spec["process"]["args"].as_array() {
        cfg["config"]["Cmd"] = json!(args);
        cfg["config"]["Entrypoint"] = Value::Null;
    }
    match cfg["rootfs"]["diff_ids"].as_array_mut() {
        Some(d) => d.push(json!(diff_id)),
        None => bail!("the base image's config has no rootfs.diff_ids"),
    }
    let entry = json!({
        "created": now,
        "created_by": format!("rnerd commit {}", name_of(&c)),
        "comment": message.unwrap_or_default(),
        "author": author.unwrap_or_default(),
    });
    match cfg["history"].as_array_mut() {
        Some(h) => h.push(entry),
        None => cfg["history"] = json!([entry]),
    }
    let cfg_bytes = serde_json::to_vec(&cfg)?;
    let cfg_digest = sha(&cfg_bytes);

    let mut manifest: Value =
        serde_json::from_slice(&base.manifest).context("the base image's manifest")?;
    let docker = manifest["mediaType"]
        .as_str()
        .is_some_and(|m| m.contains("docker"));
    let layer_type = if docker {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    };
    manifest["config"]["digest"] = json!(cfg_digest);
    manifest["config"]["size"] = json!(cfg_bytes.len());
    match manifest["layers"].as_array_mut() {
        Some(l) => {
            l.push(json!({"mediaType": layer_type, "digest": layer_digest, "size": layer_gz.len()}))
        }
        None => bail!("the base image's manifest has no layers"),
    }
    let man_bytes = serde_json::to_vec(&manifest)?;
    let man_digest = sha(&man_bytes);
    let man_type = manifest["mediaType"]
        .as_str()
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_owned();

    // an OCI layout for Import
    let mut b = tar::Builder::new(Vec::new());
    tar_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": man_type,
            "digest": man_digest,
            "size": man_bytes.len(),
            "annotations": { "io.containerd.image.name": image },
        }],
    });
    tar_file(&mut b, "index.json", &serde_json::to_vec(&index)?)?;
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    for l in &img.layers {
        let data = read_blob(ctx, &l.digest).await?;
        tar_file(&mut b, &blob(&l.digest), &data)?;
    }
    tar_file(&mut b, &blob(&layer_digest), &layer_gz)?;
    tar_file(&mut b, &blob(&cfg_digest), &cfg_bytes)?;
    tar_file(&mut b, &blob(&man_digest), &man_bytes)?;
    let archive = b.into_inner()?;

    let chunks: Vec<pb::ImportImagesRequest> = archive
        .chunks(1 << 20)
        .map(|d| pb::ImportImagesRequest {
            data: d.to_vec(),
            base_name: String::new(),
            no_unpack: false,
            platform: String::new(),
        })
        .collect();
    let r = ctx
        .client
        .images()
        .import(tokio_stream::iter(chunks))
        .await
        .map_err(|s| {
            anyhow!(
                "recording {image}: {}",
                crate::client::status_message(ctx.client.address(), &s)
            )
        })?
        .into_inner();
    if r.images.is_empty() {
        bail!("rcd recorded no image from the commit of {}", name_of(&c));
    }
    println!("{cfg_digest}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_with_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/new"), "x").unwrap();
        std::os::unix::fs::symlink("/nowhere", d.path().join("link")).unwrap();
        nix::sys::stat::mknod(
            &d.path().join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        add_dir(&mut b, d.path(), "").unwrap();
        let data = b.into_inner().unwrap();
        let mut a = tar::Archive::new(&data[..]);
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["etc", "etc/.wh.gone", "etc/new", "link"]);
        assert_eq!(
            upperdir(&[pb::Mount {
                options: vec!["lowerdir=/a".into(), "upperdir=/u".into()],
                ..Default::default()
            }]),
            Some("/u".into())
        );
    }
}
