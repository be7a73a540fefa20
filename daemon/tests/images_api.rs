//! Images, snapshots and leases through the daemon: a real `rcd` (temp root, state and socket)
//! and a real registry on loopback, driven with `rctr` (build it first: `cargo build -p
//! rcd-cli`). Pulls unpack into overlayfs snapshots; mounts are real and cleaned up.

mod common;

use common::{is_mounted, Rcd, Unmount};
use rtest::{busybox_image, busybox_layer, Image, ImageBuilder, Registry, TarBuilder};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A registry serving busybox as `library/busybox:latest`, and its reference.
fn registry_with_busybox() -> (Registry, String) {
    let reg = Registry::start().unwrap();
    reg.push(busybox_image(), "library/busybox", "latest")
        .unwrap();
    let name = reg.image_ref("library/busybox", "latest");
    (reg, name)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// The entries of a directory (none if it is missing).
fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// An image with one 32 MiB incompressible layer, so a download can be cut mid-way.
fn big_image() -> Image {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let data: Vec<u8> = (0..(32 << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let tar = TarBuilder::new().file("big", &data, 0o644).finish();
    ImageBuilder::new()
        .compression(rtest::Compression::None)
        .layer_tar(tar)
        .build()
        .unwrap()
}

/// busybox and many small layers, so that a kill lands mid-unpack.
fn many_layers_image() -> Image {
    let mut b = ImageBuilder::new().layer(busybox_layer().clone());
    for i in 0..16 {
        let mut t = TarBuilder::new();
        for j in 0..20 {
            t.file(&format!("l{i}/f{j}"), format!("{i}.{j}").as_bytes(), 0o644);
        }
        b = b.layer_tar(t.finish());
    }
    b.build().unwrap()
}

fn spawn_pull(rcd: &Rcd, name: &str) -> Child {
    let mut cmd = Command::new(common::rctr_bin());
    cmd.arg("--address")
        .arg(&rcd.address)
        .args(["images", "pull", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    rtest::spawn_tied(cmd).unwrap()
}

/// `kill -9` of rcd while it pulls `image` (once `ready` says the pull is far enough), then:
/// no image after the restart, the pull repeats fine, and after a collection the store
/// holds exactly the image: no ingests, no leftover snapshots.
/// Returns the second pull's output and the blobs kept by the lease through a collection.
fn kill_mid_pull(image: &Image, ready: impl Fn(&Rcd) -> bool, what: &str) -> (String, String) {
    let reg = Registry::start().unwrap();
    reg.push(image, "crash", "1").unwrap();
    let name = reg.image_ref("crash", "1");
    let tmp = tempfile::tempdir().unwrap();
    let mut rcd = Rcd::start(tmp.path());
    let mut client = spawn_pull(&rcd, &name);
    let t = Instant::now();
    while !ready(&rcd) {
        assert!(
            client.try_wait().unwrap().is_none(),
            "pull ended before {what}:\n{}",
            rcd.log_text()
        );
        assert!(t.elapsed() < Duration::from_secs(60), "no {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
    rcd.kill9();
    eprintln!("killed rcd {what}, {:?} into the pull", t.elapsed());
    let st = client.wait().unwrap();
    assert!(!st.success(), "the pull finished before the kill");

    rcd.spawn();
    assert_eq!(
        rcd.ok(&["images", "ls", "-q"]),
        "",
        "half-pulled image visible"
    );
    // the killed pull's lease is still there, with its expiry, and keeps what the pull
    // finished from a collection; a leftover extraction goes
    let leases = rcd.ok(&["leases", "ls"]);
    assert!(leases.contains("rcd.io/pull="), "{leases}");
    rcd.ok(&["images", "prune"]);
    let kept = rcd.ok(&["content", "ls", "-q"]);
    let snaps = rcd.ok(&["snapshots", "ls"]);
    assert!(
        !snaps.contains("extract-") && !snaps.contains("Active"),
        "{snaps}"
    );

    let out = rcd.ok(&["images", "pull", &name]);
    assert!(
        out.contains(&format!("{name}: {}", image.digest())),
        "{out}"
    );
    let ls = rcd.ok(&["images", "ls"]);
    assert!(ls.contains(&name) && ls.contains("unpacked"), "{ls}");
    assert!(!ls.contains("broken"), "{ls}");

    rcd.ok(&["images", "prune"]);
    let ingest = rcd.root.join("content/ingest");
    assert_eq!(entries(&ingest), Vec::<String>::new(), "ingests left");
    let mut blobs: Vec<String> = rcd
        .ok(&["content", "ls", "-q"])
        .lines()
        .map(str::to_owned)
        .collect();
    blobs.sort();
    let mut want: Vec<String> = image
        .layer_digests()
        .into_iter()
        .chain([image.digest(), image.config.digest.as_str()])
        .map(str::to_owned)
        .collect();
    want.sort();
    assert_eq!(blobs, want);
    // one committed snapshot per layer, a directory per snapshot, no extraction left
    let snaps = rcd.ok(&["snapshots", "ls"]);
    assert_eq!(snaps.lines().count(), 1 + image.layers.len(), "{snaps}");
    assert!(
        !snaps.contains("extract-") && !snaps.contains("Active"),
        "{snaps}"
    );
    assert_eq!(
        entries(&rcd.root.join("overlayfs/snapshots")).len(),
        image.layers.len()
    );
    // and the image works: its rootfs mounts
    let target = tmp.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let _guard = Unmount(vec![target.clone()]);
    rcd.ok(&["images", "mount", &name, target.to_str().unwrap()]);
    assert!(target
        .join(if image.layers.len() > 1 {
            "l15/f19"
        } else {
            "big"
        })
        .exists());
    rcd.ok(&["images", "unmount", target.to_str().unwrap()]);
    (out, kept)
}

/// How many blobs and snapshots the pull's lease holds (`leases ls`' RESOURCES).
fn lease_resources(rcd: &Rcd) -> usize {
    rcd.ok(&["leases", "ls"])
        .lines()
        .find(|l| l.contains("rcd.io/pull="))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn killed_mid_download_then_pull_again() {
    // once a layer's ingest holds over 1 MiB and the pull's lease holds a blob (the config)
    // (the slow lease check first: the ingest is checked just before the kill)
    let ready = |rcd: &Rcd| {
        let ingest = rcd.root.join("content/ingest");
        lease_resources(rcd) > 0
            && entries(&ingest).iter().any(|e| {
                std::fs::metadata(ingest.join(e).join("data")).is_ok_and(|m| m.len() > 1 << 20)
            })
    };
    let image = big_image();
    let (out, kept) = kill_mid_pull(&image, ready, "mid-download");
    // the config was in before the kill: leased, kept, not fetched again
    assert!(kept.contains(&image.config.digest), "{kept}");
    let short = &image.config.digest["sha256:".len()..][..12];
    assert!(
        out.lines()
            .any(|l| l.contains(short) && l.contains("exists")),
        "{out}"
    );
    // the second pull resumed the layer from its ingest: its first byte count is not 0
    let short = &image.layer_digests()[0]["sha256:".len()..][..12];
    let first = out
        .lines()
        .find(|l| l.contains(short) && l.contains("downloading"))
        .unwrap_or_else(|| panic!("no download of the layer:\n{out}"));
    assert!(!first.contains("downloading 0 B"), "not resumed: {first}");
}

#[test]
fn killed_mid_unpack_then_pull_again() {
    // once a few layers are extracted
    let ready = |rcd: &Rcd| entries(&rcd.root.join("overlayfs/snapshots")).len() >= 4;
    let image = many_layers_image();
    let (out, kept) = kill_mid_pull(&image, ready, "mid-unpack");
    // every blob was in and leased before the unpack: none fetched again
    assert_eq!(kept.lines().count(), image.layers.len() + 2, "{kept}");
    assert!(!out.contains("downloading"), "{out}");
}

/// pull → inspect → tag (and its refusals) → rm by name and by digest → prune.
#[test]
fn inspect_tag_rm_prune() {
    let (reg, name) = registry_with_busybox();
    let other_image = ImageBuilder::new()
        .layer(busybox_layer().clone())
        .cmd(&["/bin/true"])
        .build()
        .unwrap();
    reg.push(&other_image, "other", "1").unwrap();
    let other = reg.image_ref("other", "1");
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let rcd = Rcd::start(tmp.path());
    rcd.ok(&["images", "pull", &name]);
    rcd.ok(&["images", "pull", &other]);

    let doc = json(&rcd.ok(&["images", "inspect", &name]));
    assert_eq!(doc["name"], name.as_str());
    assert_eq!(doc["target"]["digest"], image.digest());
    assert_eq!(doc["platform"], "linux/amd64");
    assert_eq!(doc["status"], "unpacked");
    assert_eq!(doc["config"]["architecture"], "amd64");
    assert_eq!(
        doc["configDescriptor"]["digest"],
        image.config.digest.as_str()
    );
    assert!(doc["history"].is_array(), "{doc}");
    assert!(doc["size"].as_i64().unwrap() > 0);
    assert!(doc["unpackedSize"].as_i64().unwrap() > 0);
    // one layer: the chain ID is the diff ID
    assert_eq!(doc["snapshot"], image.diff_ids()[0]);
    assert_eq!(doc["layers"][0]["digest"], image.layer_digests()[0]);
    let err = rcd.fail(&["images", "inspect", "nothing:here"]);
    assert!(
        err.contains("not found") && err.contains("nothing:here"),
        "{err}"
    );

    // tag: a new name; an existing other name only with --force
    let mine = "localhost/mine:1";
    assert_eq!(rcd.ok(&["images", "tag", &name, mine]), format!("{mine}\n"));
    let ls = rcd.ok(&["images", "ls", "-q"]);
    assert!(ls.contains(mine) && ls.contains(&name), "{ls}");
    let err = rcd.fail(&["images", "tag", &name, &other]);
    assert!(
        err.contains("already exists") && err.contains("--force") && err.contains(&other),
        "{err}"
    );
    assert_eq!(
        json(&rcd.ok(&["images", "inspect", &other]))["target"]["digest"],
        other_image.digest()
    );
    let err = rcd.fail(&["images", "tag", "nothing:here", "localhost/x:1"]);
    assert!(err.contains("not found"), "{err}");
    let err = rcd.fail(&["images", "tag", &name, "Bad Ref!"]);
    assert!(err.contains("invalid image reference"), "{err}");
    rcd.ok(&["images", "tag", "--force", &name, &other]);
    assert_eq!(
        json(&rcd.ok(&["images", "inspect", &other]))["target"]["digest"],
        image.digest()
    );

    // an image ID (its config digest, or 12+ hex of it) names it too
    let id = &image.config.digest["sha256:".len()..];
    let doc = json(&rcd.ok(&["images", "inspect", &id[..12]]));
    assert_eq!(doc["target"]["digest"], image.digest());
    let doc = json(&rcd.ok(&["images", "inspect", &image.config.digest]));
    assert_eq!(doc["target"]["digest"], image.digest());
    let err = rcd.fail(&["images", "inspect", "0123456789ab"]);
    assert!(
        err.contains("no image with digest or ID 0123456789ab"),
        "{err}"
    );

    // rm by name removes that name only; the content stays for the others
    assert_eq!(
        rcd.ok(&["images", "rm", "--sync", mine]),
        format!("{mine}\n")
    );
    let content = rcd.ok(&["content", "ls", "-q"]);
    assert!(content.contains(image.digest()), "{content}");
    // other's own manifest and config went with its last name
    assert!(!content.contains(other_image.digest()), "{content}");
    // rm by digest removes every name of it
    let out = rcd.ok(&["images", "rm", "--sync", image.digest()]);
    assert!(out.contains(&name) && out.contains(&other), "{out}");
    assert_eq!(rcd.ok(&["images", "ls", "-q"]), "");
    assert_eq!(rcd.ok(&["content", "ls", "-q"]), "");
    assert_eq!(rcd.ok(&["snapshots", "ls", "-q"]), "");
    let err = rcd.fail(&["images", "rm", image.digest()]);
    assert!(err.contains("no image with digest"), "{err}");
    let err = rcd.fail(&["images", "rm", "sha256:zz"]);
    assert!(err.contains("invalid digest"), "{err}");

    // prune --all: every image goes, then what it used
    rcd.ok(&["images", "pull", &name]);
    let out = rcd.ok(&["images", "prune"]);
    assert!(out.contains("removed 0 image(s)"), "{out}");
    assert_eq!(rcd.ok(&["images", "ls", "-q"]), format!("{name}\n"));
    let out = rcd.ok(&["images", "prune", "--all"]);
    assert!(
        out.contains(&name) && out.contains("removed 1 image(s), 3 blob(s)"),
        "{out}"
    );
    assert_eq!(rcd.ok(&["content", "ls", "-q"]), "");
    assert_eq!(rcd.ok(&["snapshots", "ls", "-q"]), "");
}

/// mount (read-only, then --rw) and unmount; what a mount keeps from being removed.
#[test]
fn mount_and_unmount() {
    let (_reg, name) = registry_with_busybox();
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let rcd = Rcd::start(tmp.path());
    rcd.ok(&["images", "pull", &name]);
    let target = tmp.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let t = target.to_str().unwrap();
    let _guard = Unmount(vec![target.clone()]);

    assert_eq!(rcd.ok(&["images", "mount", &name, t]), format!("{t}\n"));
    assert!(is_mounted(&target));
    assert!(target.join("bin/busybox").is_file());
    let e = std::fs::write(target.join("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    // the mount's snapshot: a view on the image's chain, keyed by the target
    let snaps = rcd.ok(&["snapshots", "ls"]);
    let chain = image.diff_ids()[0];
    assert!(
        snaps
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [t, chain, "View"]),
        "{snaps}"
    );
    // what it keeps: the image, its view, its layers
    let err = rcd.fail(&["images", "rm", &name]);
    assert!(
        err.contains("mounted at") && err.contains(t) && err.contains("unmount"),
        "{err}"
    );
    let err = rcd.fail(&["snapshots", "rm", t]);
    assert!(err.contains("unmount it instead"), "{err}");
    let err = rcd.fail(&["images", "mount", &name, t]);
    assert!(err.contains("already has an image mounted"), "{err}");
    let out = rcd.ok(&["images", "prune", "--all"]);
    assert!(out.contains("removed 0 image(s)"), "{out}");

    assert_eq!(rcd.ok(&["images", "unmount", t]), format!("{t}\n"));
    assert!(!is_mounted(&target));
    assert!(!rcd.ok(&["snapshots", "ls", "-q"]).contains(t));
    let err = rcd.fail(&["images", "unmount", t]);
    assert!(err.contains("no image is mounted at"), "{err}");

    // --rw: writable, and the writes go with the mount
    rcd.ok(&["images", "mount", "--rw", &name, t]);
    std::fs::write(target.join("new"), b"x").unwrap();
    let kind = rcd.ok(&["snapshots", "ls"]);
    assert!(
        kind.lines()
            .any(|l| l.starts_with(t) && l.ends_with("Active")),
        "{kind}"
    );
    rcd.ok(&["images", "unmount", t]);
    rcd.ok(&["images", "mount", &name, t]);
    assert!(!target.join("new").exists());
    rcd.ok(&["images", "unmount", t]);

    // bad inputs
    let err = rcd.fail(&["images", "mount", "nothing:here", t]);
    assert!(err.contains("not found"), "{err}");
    let missing = tmp.path().join("missing");
    let err = rcd.fail(&["images", "mount", &name, missing.to_str().unwrap()]);
    assert!(
        err.contains("mount target") && err.contains("missing"),
        "{err}"
    );
    let file = tmp.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let err = rcd.fail(&["images", "mount", &name, file.to_str().unwrap()]);
    assert!(err.contains("not a directory"), "{err}");
    let err = rcd.fail(&["images", "mount", &name, "/"]);
    assert!(err.contains("refusing to mount over it"), "{err}");
    assert!(!is_mounted(&target));
    assert_eq!(rcd.ok(&["images", "ls", "-q"]), format!("{name}\n"));
}

/// `content rm` refuses an image's blobs; a blob lost anyway shows the image as broken, and
/// pulling again repairs it. `--no-unpack` images are listed as such and cannot be mounted.
#[test]
fn content_rm_and_broken_images() {
    let (_reg, name) = registry_with_busybox();
    let image = busybox_image();
    let layer = image.layer_digests()[0];
    let tmp = tempfile::tempdir().unwrap();
    let rcd = Rcd::start(tmp.path());
    rcd.ok(&["images", "pull", "--no-unpack", &name]);
    let ls = rcd.ok(&["images", "ls"]);
    assert!(ls.contains("not unpacked"), "{ls}");
    assert_eq!(rcd.ok(&["snapshots", "ls", "-q"]), "");
    let target = tmp.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let err = rcd.fail(&["images", "mount", &name, target.to_str().unwrap()]);
    assert!(err.contains("is not unpacked"), "{err}");
    rcd.ok(&["images", "pull", &name]);
    assert!(rcd.ok(&["images", "ls"]).contains(" unpacked"));

    let err = rcd.fail(&["content", "rm", layer]);
    assert!(
        err.contains("in use by image") && err.contains(&name) && err.contains(layer),
        "{err}"
    );
    assert!(rcd.ok(&["content", "ls", "-q"]).contains(layer));
    let err = rcd.fail(&["content", "rm", "sha256:nope"]);
    assert!(err.contains("invalid digest"), "{err}");

    // lost behind the daemon's back: reported, never silently
    let blob = rcd
        .root
        .join("content/blobs/sha256")
        .join(&layer["sha256:".len()..]);
    std::fs::remove_file(&blob).unwrap();
    let ls = rcd.ok(&["images", "ls"]);
    assert!(
        ls.contains(&format!(
            "broken: layer {layer} missing from the content store"
        )),
        "{ls}"
    );
    let doc = json(&rcd.ok(&["images", "inspect", &name]));
    assert!(
        doc["status"].as_str().unwrap().starts_with("broken: layer"),
        "{doc}"
    );
    rcd.ok(&["images", "pull", &name]);
    let ls = rcd.ok(&["images", "ls"]);
    assert!(!ls.contains("broken"), "{ls}");
}

/// Snapshots through the API: ls, tree, info, prepare/view/commit, mounts, rm and its
/// refusals; leases.
#[test]
fn snapshots_and_leases() {
    let (_reg, name) = registry_with_busybox();
    let chain = busybox_image().diff_ids()[0].to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let rcd = Rcd::start(tmp.path());
    rcd.ok(&["images", "pull", &name]);

    let ls = rcd.ok(&["snapshots", "ls"]);
    let rows: Vec<Vec<&str>> = ls.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        [vec!["KEY", "PARENT", "KIND"], vec![&chain, "Committed"]]
    );
    assert_eq!(rcd.ok(&["-n", "other", "snapshots", "ls", "-q"]), "");

    // an active snapshot on the layer: its mounts as a command line
    let out = rcd.ok(&["snapshots", "prepare", "work", &chain]);
    assert!(
        out.starts_with("mount -t overlay overlay /tmp -o "),
        "{out}"
    );
    let out = rcd.ok(&["snapshots", "mounts", "/mnt/x", "work"]);
    assert!(
        out.starts_with("mount -t overlay overlay /mnt/x -o ")
            && out.contains("upperdir=")
            && out.contains("lowerdir="),
        "{out}"
    );
    let info = json(&rcd.ok(&["snapshots", "info", "work"]));
    assert_eq!(info["Kind"], "Active");
    assert_eq!(info["Parent"], chain.as_str());
    assert!(info["Size"].as_i64().unwrap() >= 0);
    let tree = rcd.ok(&["snapshots", "tree"]);
    assert_eq!(tree, format!("{chain}\n  \\_ work\n"));

    // commit it, stack a view on it: a parent cannot go, the view can
    rcd.ok(&["snapshots", "commit", "layer2", "work"]);
    let out = rcd.ok(&["snapshots", "view", "v", "layer2"]);
    assert!(out.contains("overlay") && out.contains("ro"), "{out}");
    let err = rcd.fail(&["snapshots", "rm", "layer2"]);
    assert!(
        err.contains("has children") && err.contains("\"v\""),
        "{err}"
    );
    assert_eq!(
        rcd.ok(&["snapshots", "tree"]),
        format!("{chain}\n  \\_ layer2\n    \\_ v\n")
    );
    let err = rcd.fail(&["snapshots", "mounts", "/mnt", "layer2"]);
    assert!(err.contains("is committed"), "{err}");
    rcd.ok(&["snapshots", "rm", "v", "layer2"]);

    // the image's own layer cannot go
    let err = rcd.fail(&["snapshots", "rm", &chain]);
    assert!(
        err.contains("rootfs of image") && err.contains(&name),
        "{err}"
    );
    // unknown keys, taken keys, bad parents
    let err = rcd.fail(&["snapshots", "info", "nope"]);
    assert!(err.contains("\"nope\" not found"), "{err}");
    let err = rcd.fail(&["snapshots", "rm", "nope"]);
    assert!(err.contains("\"nope\" not found"), "{err}");
    let err = rcd.fail(&["snapshots", "prepare", "x", "nope"]);
    assert!(err.contains("\"nope\" not found"), "{err}");
    rcd.ok(&["snapshots", "prepare", "x", &chain]);
    let err = rcd.fail(&["snapshots", "prepare", "x", &chain]);
    assert!(err.contains("already exists"), "{err}");
    let err = rcd.fail(&["snapshots", "prepare", "y", "x"]);
    assert!(err.contains("not committed"), "{err}");
    // rm of several: the good ones go, the bad one is reported, exit 1
    let out = rcd.rctr(&["snapshots", "rm", "x", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x\n");
    assert_eq!(rcd.ok(&["snapshots", "ls", "-q"]), format!("{chain}\n"));

    // leases
    assert_eq!(rcd.ok(&["leases", "ls", "-q"]), "");
    assert_eq!(
        rcd.ok(&["leases", "create", "--id", "mine", "--expires-in", "1h"]),
        "mine\n"
    );
    let err = rcd.fail(&["leases", "create", "--id", "mine"]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(rcd.ok(&["leases", "ls", "-q"]), "mine\n");
    rcd.ok(&["leases", "rm", "--sync", "mine"]);
    let err = rcd.fail(&["leases", "rm", "mine"]);
    assert!(err.contains("lease \"mine\" not found"), "{err}");
}

/// Two pulls of one image at once through the daemon: both succeed, the layers are unpacked
/// once; the same image in another namespace has snapshots of its own and keeps the shared
/// blobs when the first namespace removes it.
#[test]
fn concurrent_pulls_and_namespaces() {
    let reg = Registry::start().unwrap();
    let image = many_layers_image();
    reg.push(&image, "many", "1").unwrap();
    let name = reg.image_ref("many", "1");
    let tmp = tempfile::tempdir().unwrap();
    let rcd = Rcd::start(tmp.path());
    let pulls: Vec<Child> = (0..2).map(|_| spawn_pull(&rcd, &name)).collect();
    for mut p in pulls {
        assert!(p.wait().unwrap().success(), "{}", rcd.log_text());
    }
    assert_eq!(rcd.ok(&["images", "ls", "-q"]), format!("{name}\n"));
    rcd.ok(&["images", "prune"]);
    let snaps = rcd.ok(&["snapshots", "ls", "-q"]);
    assert_eq!(snaps.lines().count(), image.layers.len(), "{snaps}");
    assert_eq!(rcd.ok(&["leases", "ls", "-q"]), "");

    rcd.ok(&["-n", "other", "images", "pull", &name]);
    let other = rcd.ok(&["-n", "other", "snapshots", "ls", "-q"]);
    assert_eq!(other, snaps);
    rcd.ok(&["images", "rm", "--sync", &name]);
    assert_eq!(rcd.ok(&["snapshots", "ls", "-q"]), "");
    let blobs = rcd.ok(&["content", "ls", "-q"]);
    assert_eq!(blobs.lines().count(), image.layers.len() + 2, "{blobs}");
    let ls = rcd.ok(&["-n", "other", "images", "ls"]);
    assert!(
        ls.contains(&name) && ls.contains("unpacked") && !ls.contains("broken"),
        "{ls}"
    );
    // an image of another namespace keeps its blobs from `content rm` too
    let err = rcd.fail(&["content", "rm", image.config.digest.as_str()]);
    assert!(err.contains("namespace \"other\""), "{err}");
}

/// Layers the daemon must refuse: a diff ID that does not match the config, a path escaping
/// the rootfs. The pull fails naming the image and the layer; no image, and after a
/// collection nothing of it is left (blobs, snapshots, snapshot directories, ingests).
#[test]
fn hostile_images_leave_nothing() {
    let reg = Registry::start().unwrap();
    let lying = ImageBuilder::new()
        .layer(busybox_layer().clone())
        .edit_config(|c| {
            c["rootfs"]["diff_ids"][0] = serde_json::json!(format!("sha256:{}", "0".repeat(64)))
        })
        .build()
        .unwrap();
    reg.push(&lying, "lying", "1").unwrap();
    let escape = ImageBuilder::new()
        .layer(busybox_layer().clone())
        .layer_tar(
            TarBuilder::new()
                .raw(
                    tar::EntryType::Regular,
                    b"../../escaped",
                    None,
                    0o644,
                    b"x",
                    0,
                    0,
                )
                .finish(),
        )
        .build()
        .unwrap();
    reg.push(&escape, "escape", "1").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rcd = Rcd::start(tmp.path());

    let name = reg.image_ref("lying", "1");
    let err = rcd.fail(&["images", "pull", &name]);
    assert!(
        err.contains(&name) && err.contains("diff ID") && err.contains(lying.layer_digests()[0]),
        "{err}"
    );
    let name = reg.image_ref("escape", "1");
    let err = rcd.fail(&["images", "pull", &name]);
    assert!(
        err.contains(&name) && err.contains("escapes the destination"),
        "{err}"
    );
    // "../../escaped" from a snapshot's fs dir would be here
    assert!(!rcd.root.join("overlayfs/snapshots/escaped").exists());
    assert!(!rcd.root.join("overlayfs/snapshots/1/escaped").exists());
    assert_eq!(rcd.ok(&["images", "ls", "-q"]), "");
    assert_eq!(rcd.ok(&["leases", "ls", "-q"]), "");

    rcd.ok(&["images", "prune"]);
    assert_eq!(rcd.ok(&["content", "ls", "-q"]), "");
    assert_eq!(rcd.ok(&["snapshots", "ls", "-q"]), "");
    assert_eq!(
        entries(&rcd.root.join("overlayfs/snapshots")),
        Vec::<String>::new()
    );
    assert_eq!(
        entries(&rcd.root.join("content/ingest")),
        Vec::<String>::new()
    );
}

/// `kill -9` at many points of a pull (from before the first byte to after the record):
/// after each restart the image is either whole or absent, never broken, and the snapshot
/// directories match the records once collected; the last pull completes.
#[test]
fn kill_at_any_point_of_a_pull() {
    let reg = Registry::start().unwrap();
    let image = many_layers_image();
    reg.push(&image, "any", "1").unwrap();
    let name = reg.image_ref("any", "1");
    let tmp = tempfile::tempdir().unwrap();
    let mut rcd = Rcd::start(tmp.path());
    let mut whole = 0;
    for delay_ms in [0u64, 50, 200, 500, 900, 1400, 2500] {
        let mut client = spawn_pull(&rcd, &name);
        std::thread::sleep(Duration::from_millis(delay_ms));
        rcd.kill9();
        let _ = client.wait();
        rcd.spawn();
        let ls = rcd.ok(&["images", "ls"]);
        assert!(
            !ls.contains("broken"),
            "after a kill at {delay_ms} ms: {ls}"
        );
        if ls.contains(&name) {
            assert!(ls.contains("unpacked"), "{ls}");
            whole += 1;
            rcd.ok(&["images", "rm", "--sync", &name]);
        }
        // the killed pulls' leases keep their work; released, a collection takes it all
        for id in rcd.ok(&["leases", "ls", "-q"]).lines() {
            rcd.ok(&["leases", "rm", id]);
        }
        rcd.ok(&["images", "prune"]);
        assert_eq!(rcd.ok(&["snapshots", "ls", "-q"]), "", "at {delay_ms} ms");
        assert_eq!(rcd.ok(&["content", "ls", "-q"]), "", "at {delay_ms} ms");
        assert_eq!(
            entries(&rcd.root.join("overlayfs/snapshots")),
            Vec::<String>::new(),
            "at {delay_ms} ms"
        );
    }
    eprintln!("{whole} of 7 kills came after the image was recorded");
    let out = rcd.ok(&["images", "pull", &name]);
    assert!(
        out.contains(&format!("{name}: {}", image.digest())),
        "{out}"
    );
    rcd.ok(&["images", "prune"]);
    assert_eq!(
        entries(&rcd.root.join("content/ingest")),
        Vec::<String>::new()
    );
}

/// export writes an OCI layout tar with Docker's manifest.json; push sends an image to a
/// registry under another name, and it pulls back whole; bad inputs leave nothing.
#[test]
fn export_and_push() {
    let (reg, name) = registry_with_busybox();
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let rcd = Rcd::start(tmp.path());
    rcd.ok(&["images", "pull", &name]);

    let out = tmp.path().join("busybox.tar");
    rcd.ok(&["images", "export", out.to_str().unwrap(), &name]);
    let list = Command::new("tar").arg("-tf").arg(&out).output().unwrap();
    assert!(list.status.success());
    let list = String::from_utf8_lossy(&list.stdout);
    for f in ["oci-layout", "index.json", "manifest.json"] {
        assert!(list.lines().any(|l| l == f), "{f} missing:\n{list}");
    }
    for d in image
        .layer_digests()
        .into_iter()
        .chain([image.digest(), image.config.digest.as_str()])
    {
        let blob = format!("blobs/sha256/{}", &d["sha256:".len()..]);
        assert!(list.lines().any(|l| l == blob), "{blob} missing:\n{list}");
    }
    // to stdout, byte for byte the same archive
    let piped = rcd.rctr(&["images", "export", "-", &name]);
    assert!(piped.status.success());
    assert_eq!(piped.stdout, std::fs::read(&out).unwrap());
    let missing = tmp.path().join("missing.tar");
    let err = rcd.fail(&[
        "images",
        "export",
        missing.to_str().unwrap(),
        "nothing:here",
    ]);
    assert!(
        err.contains("not found") && err.contains("nothing:here"),
        "{err}"
    );
    assert!(!missing.exists());

    let remote = reg.image_ref("pushed/busybox", "copy");
    let out = rcd.ok(&["images", "push", "--plain-http", &remote, &name]);
    assert!(
        out.contains(&format!("{remote}: {}", image.digest())),
        "{out}"
    );
    assert_eq!(
        reg.manifest_digest("pushed/busybox", "copy")
            .unwrap()
            .as_deref(),
        Some(image.digest())
    );
    // pushed again: the registry has every blob
    let out = rcd.ok(&["images", "push", "--plain-http", &remote, &name]);
    assert!(out.contains("uploaded: 0"), "{out}");
    rcd.ok(&["-n", "other", "images", "pull", &remote]);
    let ls = rcd.ok(&["-n", "other", "images", "ls"]);
    assert!(ls.contains(&remote) && ls.contains(" unpacked"), "{ls}");

    let err = rcd.fail(&["images", "push", &remote, "nothing:here"]);
    assert!(err.contains("not found"), "{err}");
    let err = rcd.fail(&["images", "push", "Bad Ref!", &name]);
    assert!(err.contains("invalid image reference"), "{err}");
}

/// import of a Docker `save` archive and of rcd's own export (round trip): recorded,
/// unpacked, mountable content; a bad archive is refused and leaves nothing.
#[test]
fn import_archives() {
    let (_reg, name) = registry_with_busybox();
    let image = busybox_image();
    let tmp = tempfile::tempdir().unwrap();
    let rcd = Rcd::start(tmp.path());

    // docker save shape
    let docker = tmp.path().join("docker.tar");
    image
        .write_docker_archive(&docker, "example.com/saved:1")
        .unwrap();
    let out = rcd.ok(&["-n", "imp", "images", "import", docker.to_str().unwrap()]);
    assert!(out.starts_with("example.com/saved:1: sha256:"), "{out}");
    let ls = rcd.ok(&["-n", "imp", "images", "ls"]);
    assert!(
        ls.contains("example.com/saved:1") && ls.contains(" unpacked"),
        "{ls}"
    );
    let doc = json(&rcd.ok(&["-n", "imp", "images", "inspect", "example.com/saved:1"]));
    assert_eq!(
        doc["configDescriptor"]["digest"],
        image.config.digest.as_str()
    );

    // round trip: rcd's export imports back as the same image
    rcd.ok(&["images", "pull", &name]);
    let tar = tmp.path().join("export.tar");
    rcd.ok(&["images", "export", tar.to_str().unwrap(), &name]);
    let out = rcd.ok(&[
        "-n",
        "round",
        "images",
        "import",
        "--no-unpack",
        tar.to_str().unwrap(),
    ]);
    assert_eq!(out, format!("{name}: {}\n", image.digest()));
    let ls = rcd.ok(&["-n", "round", "images", "ls"]);
    assert!(
        ls.contains("not unpacked") && !ls.contains("broken"),
        "{ls}"
    );

    // garbage: refused, nothing new in the store, no ingests
    let before = rcd.ok(&["content", "ls", "-q"]);
    let bad = tmp.path().join("bad.tar");
    std::fs::write(&bad, b"not an archive at all").unwrap();
    let err = rcd.fail(&["-n", "bad", "images", "import", bad.to_str().unwrap()]);
    assert!(err.contains("import"), "{err}");
    assert_eq!(rcd.ok(&["-n", "bad", "images", "ls", "-q"]), "");
    assert_eq!(rcd.ok(&["content", "ls", "-q"]), before);
    assert_eq!(
        entries(&rcd.root.join("content/ingest")),
        Vec::<String>::new()
    );
    let err = rcd.fail(&[
        "images",
        "import",
        tmp.path().join("nope.tar").to_str().unwrap(),
    ]);
    assert!(err.contains("opening") && err.contains("nope.tar"), "{err}");
}
