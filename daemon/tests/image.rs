//! Pull → unpack into overlay snapshots → record → garbage collect, against a real
//! `docker-registry` on loopback (rtest), with real overlay mounts (run as root).

use rcd::content::{ContentStore, Digest};
use rcd::gc;
use rcd::image::{
    record_image, unpack_image, unpack_image_with, ImageError, ImageLayers, Unpacked,
};
use rcd::metadata::{Labels, Metadata, SnapshotKind, LABEL_GC_ROOT};
use rcd::pull::{PullOptions, PulledImage, Puller, RegistryConfig};
use rcd::snapshot::{chain_ids, MountGuard, Snapshotter};
use rtest::{busybox_image, busybox_layer, Image, ImageBuilder, Registry, TarBuilder};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NS: &str = "default";

struct Env {
    root: PathBuf,
    store: ContentStore,
    snap: Snapshotter,
    puller: Puller,
}

impl Env {
    async fn open(root: &Path) -> Env {
        let store = ContentStore::open(root.join("content")).await.unwrap();
        let md = Metadata::open(root.join("meta.db")).unwrap();
        let snap = Snapshotter::open(root.join("overlayfs"), md).unwrap();
        let puller = Puller::new(store.clone(), RegistryConfig::default());
        Env {
            root: root.to_owned(),
            store,
            snap,
            puller,
        }
    }

    fn md(&self) -> &Metadata {
        self.snap.metadata()
    }

    async fn pull(&self, name: &str) -> PulledImage {
        self.puller
            .pull(name, &PullOptions::default())
            .await
            .unwrap()
    }

    async fn unpack(&self, pulled: &PulledImage) -> Result<Unpacked, ImageError> {
        unpack_image(
            NS,
            &ImageLayers::try_from(pulled).unwrap(),
            &self.store,
            &self.snap,
        )
        .await
    }

    /// Pull, unpack and record under a lease, as the daemon will.
    async fn pull_image(&self, name: &str) -> (PulledImage, Unpacked) {
        let _lease = self.md().lease().await;
        let pulled = self.pull(name).await;
        let unpacked = self.unpack(&pulled).await.unwrap();
        record_image(
            NS,
            name,
            &pulled,
            &unpacked,
            &self.store,
            &self.snap,
            Labels::new(),
        )
        .await
        .unwrap();
        (pulled, unpacked)
    }

    fn snapshot_keys(&self) -> Vec<String> {
        self.snap
            .list(NS)
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect()
    }

    /// The numeric dirs under snapshots/ match the records exactly.
    fn assert_dirs_match_records(&self) {
        let mut dirs: Vec<u64> = std::fs::read_dir(self.root.join("overlayfs/snapshots"))
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .file_name()
                    .into_string()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        dirs.sort();
        let mut ids: Vec<u64> = self.snap.list(NS).unwrap().iter().map(|r| r.id).collect();
        ids.sort();
        assert_eq!(dirs, ids, "snapshot dirs and records differ");
    }

    async fn blobs(&self) -> BTreeSet<String> {
        self.store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.digest.to_string())
            .collect()
    }
}

fn digests(v: &[&str]) -> Vec<Digest> {
    v.iter().map(|d| Digest::parse(d).unwrap()).collect()
}

/// busybox plus a layer of its own (with a whiteout of one busybox file).
fn derived_image() -> Image {
    let extra = TarBuilder::new()
        .file("etc/derived", b"derived\n", 0o644)
        .whiteout("bin/sh")
        .finish();
    ImageBuilder::new()
        .layer(busybox_layer().clone())
        .layer_tar(extra)
        .cmd(&["sh"])
        .build()
        .unwrap()
}

fn run_busybox(root: &Path) -> String {
    let out = Command::new(root.join("bin/busybox"))
        .args(["echo", "ok"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn pull_unpack_and_run_busybox() {
    let reg = Registry::start().unwrap();
    reg.push(busybox_image(), "library/busybox", "latest")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open(dir.path()).await;
    let name = reg.image_ref("library/busybox", "latest");

    let pulled = env.pull(&name).await;
    let t = Instant::now();
    let unpacked = env.unpack(&pulled).await.unwrap();
    eprintln!("unpacked busybox into a snapshot in {:?}", t.elapsed());
    assert_eq!(unpacked.applied, 1);
    assert_eq!(unpacked.diff_ids, digests(&busybox_image().diff_ids()));
    let top = unpacked.top().unwrap().clone();
    assert_eq!(
        top, unpacked.diff_ids[0],
        "chain ID of one layer is its diff ID"
    );
    assert_eq!(env.snapshot_keys(), [top.to_string()]);
    assert_eq!(
        env.snap.stat(NS, top.as_str()).unwrap().kind,
        SnapshotKind::Committed
    );
    assert!(env.md().image(NS, &name).unwrap().is_none());

    // recording refuses an image whose snapshot is not there, and records nothing
    let mut bogus = unpacked.clone();
    bogus.chain_ids = vec![Digest::of(b"not unpacked")];
    let err = record_image(
        NS,
        &name,
        &pulled,
        &bogus,
        &env.store,
        &env.snap,
        Labels::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImageError::SnapshotMissing(_)), "{err}");
    assert!(env.md().image(NS, &name).unwrap().is_none());
    assert!(env.md().read(|tx| tx.contents(NS)).unwrap().is_empty());

    let rec = record_image(
        NS,
        &name,
        &pulled,
        &unpacked,
        &env.store,
        &env.snap,
        Labels::from([("k".into(), "v".into())]),
    )
    .await
    .unwrap();
    assert_eq!(rec.target.digest.as_str(), busybox_image().digest());
    assert_eq!(rec.target.size, busybox_image().manifest.size());
    assert_eq!(env.md().image(NS, &name).unwrap().unwrap(), rec);
    let manifest = env
        .md()
        .read(|tx| tx.content(NS, &pulled.manifest_digest))
        .unwrap()
        .unwrap();
    assert_eq!(
        manifest.labels["containerd.io/gc.ref.content.config"],
        pulled.config_digest.as_str()
    );
    assert_eq!(
        manifest.labels["containerd.io/gc.ref.content.l.0"],
        busybox_image().layers[0].digest
    );
    let config = env
        .md()
        .read(|tx| tx.content(NS, &pulled.config_digest))
        .unwrap()
        .unwrap();
    assert_eq!(
        config.labels["containerd.io/gc.ref.snapshot.overlayfs"],
        top.as_str()
    );

    // a view shows the tree; busybox runs from it
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounts = env
        .snap
        .view(NS, "view", Some(top.as_str()), Labels::new())
        .unwrap();
    {
        let _g = MountGuard::new(&mounts, &mnt).unwrap();
        assert_eq!(run_busybox(&mnt), "ok\n");
    }
    // and a container-like active snapshot on it
    let mounts = env
        .snap
        .prepare(NS, "ctr", Some(top.as_str()), Labels::new())
        .unwrap();
    {
        let _g = MountGuard::new(&mounts, &mnt).unwrap();
        assert_eq!(run_busybox(&mnt), "ok\n");
        std::fs::write(mnt.join("written"), "x").unwrap();
    }
    assert!(env.snap.fs_dir(NS, "ctr").unwrap().join("written").exists());

    // unpacking again applies nothing
    let t = Instant::now();
    assert_eq!(env.unpack(&pulled).await.unwrap().applied, 0);
    eprintln!("second unpack (all layers present) in {:?}", t.elapsed());
    env.assert_dirs_match_records();
}

#[tokio::test]
async fn images_sharing_a_layer_share_its_snapshot_and_gc_keeps_it() {
    let reg = Registry::start().unwrap();
    let derived = derived_image();
    reg.push(busybox_image(), "library/busybox", "latest")
        .unwrap();
    reg.push(&derived, "derived", "latest").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open(dir.path()).await;
    let (bb_name, d_name) = (
        reg.image_ref("library/busybox", "latest"),
        reg.image_ref("derived", "latest"),
    );

    let (bb, bb_unpacked) = env.pull_image(&bb_name).await;
    let (d, d_unpacked) = env.pull_image(&d_name).await;
    assert_eq!(
        d_unpacked.applied, 1,
        "the busybox layer was unpacked again"
    );
    assert_eq!(d_unpacked.chain_ids[0], bb_unpacked.chain_ids[0]);
    let chains = chain_ids(&digests(&derived.diff_ids()));
    assert_eq!(d_unpacked.chain_ids, chains);
    let mut keys: Vec<String> = chains.iter().map(|c| c.to_string()).collect();
    keys.sort();
    assert_eq!(env.snapshot_keys(), keys);

    // the derived image's view: its file, busybox's files, the whiteout applied
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounts = env
        .snap
        .view(NS, "v", Some(chains[1].as_str()), Labels::new())
        .unwrap();
    {
        let _g = MountGuard::new(&mounts, &mnt).unwrap();
        assert_eq!(
            std::fs::read_to_string(mnt.join("etc/derived")).unwrap(),
            "derived\n"
        );
        assert!(mnt.join("bin/busybox").exists());
        assert!(
            mnt.join("bin/sh").symlink_metadata().is_err(),
            "whiteout not applied"
        );
        assert_eq!(run_busybox(&mnt), "ok\n");
    }
    env.snap.remove(NS, "v").unwrap();

    // nothing to collect while both images are there
    let stats = gc::collect(&env.store, &env.snap).await.unwrap();
    assert!(
        stats.blobs.is_empty() && stats.snapshots.is_empty(),
        "{stats:?}"
    );

    // delete the derived image: only its own blobs and snapshot go
    let before = env.blobs().await;
    env.md().delete_image(NS, &d_name).unwrap();
    let stats = gc::collect(&env.store, &env.snap).await.unwrap();
    eprintln!("gc of one image: {:?}", stats.elapsed);
    let mut expect_blobs: Vec<Digest> = vec![
        d.manifest_digest.clone(),
        d.config_digest.clone(),
        Digest::parse(&d.layers[1].digest).unwrap(),
    ];
    expect_blobs.sort();
    let mut got = stats.blobs.clone();
    got.sort();
    assert_eq!(got, expect_blobs);
    assert_eq!(stats.snapshots, [(NS.to_owned(), chains[1].to_string())]);
    let after = env.blobs().await;
    assert_eq!(before.len() - 3, after.len());
    for b in [&bb.manifest_digest, &bb.config_digest] {
        assert!(after.contains(b.as_str()));
    }
    assert_eq!(env.snapshot_keys(), [chains[0].to_string()]);
    env.assert_dirs_match_records();

    // a container on busybox keeps the busybox snapshot (not its blobs) once the image is gone
    env.snap
        .prepare(NS, "ctr", Some(chains[0].as_str()), Labels::new())
        .unwrap();
    env.md().delete_image(NS, &bb_name).unwrap();
    let stats = gc::collect(&env.store, &env.snap).await.unwrap();
    assert_eq!(stats.blobs.len(), 3, "{stats:?}");
    assert!(stats.snapshots.is_empty(), "{stats:?}");
    assert!(env.blobs().await.is_empty());
    assert_eq!(
        env.snapshot_keys(),
        ["ctr".to_owned(), chains[0].to_string()]
    );

    // gc.root protects a committed snapshot nothing references
    env.snap
        .commit(
            NS,
            "kept",
            "ctr",
            Labels::from([(LABEL_GC_ROOT.into(), "1".into())]),
        )
        .unwrap();
    let stats = gc::collect(&env.store, &env.snap).await.unwrap();
    assert!(stats.snapshots.is_empty(), "{stats:?}");
    env.snap.remove(NS, "kept").unwrap();
    let stats = gc::collect(&env.store, &env.snap).await.unwrap();
    assert_eq!(stats.snapshots, [(NS.to_owned(), chains[0].to_string())]);
    assert!(env.snapshot_keys().is_empty());
    env.assert_dirs_match_records();
    assert!(env.md().read(|tx| tx.contents(NS)).unwrap().is_empty());
}

#[tokio::test]
async fn diff_id_mismatch_commits_nothing() {
    let reg = Registry::start().unwrap();
    let bad = ImageBuilder::new()
        .layer(busybox_layer().clone())
        .edit_config(|c| {
            c["rootfs"]["diff_ids"][0] = format!("sha256:{}", "1".repeat(64)).into();
        })
        .build()
        .unwrap();
    reg.push(&bad, "bad", "latest").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open(dir.path()).await;
    let pulled = env.pull(&reg.image_ref("bad", "latest")).await;
    let err = env.unpack(&pulled).await.unwrap_err();
    eprintln!("{err}");
    assert!(
        matches!(err, ImageError::DiffIdMismatch { index: 0, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&busybox_layer().digest)
            && msg.contains(&busybox_layer().diff_id)
            && msg.contains(&"1".repeat(64)),
        "{msg}"
    );
    assert!(env.snapshot_keys().is_empty());
    env.assert_dirs_match_records();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unpacks_of_one_layer_do_not_collide() {
    let reg = Registry::start().unwrap();
    let derived = derived_image();
    reg.push(busybox_image(), "library/busybox", "latest")
        .unwrap();
    reg.push(&derived, "derived", "latest").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open(dir.path()).await;
    let a = env.pull(&reg.image_ref("library/busybox", "latest")).await;
    let b = env.pull(&reg.image_ref("derived", "latest")).await;
    for _ in 0..3 {
        let (ra, rb) = tokio::join!(env.unpack(&a), env.unpack(&b));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.chain_ids[0], rb.chain_ids[0]);
        assert_eq!(env.snapshot_keys().len(), 2, "{:?}", env.snapshot_keys());
        env.assert_dirs_match_records();
        for k in [&rb.chain_ids[1], &rb.chain_ids[0]] {
            env.snap.remove(NS, k.as_str()).unwrap();
        }
    }
}

/// The image of the crash test: busybox and many small layers, so that a kill lands mid-way.
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

/// The child of [`killed_mid_unpack_leaves_no_image`] (does nothing when run by itself).
#[tokio::test]
async fn crash_child() {
    let (Ok(root), Ok(name)) = (
        std::env::var("RCD_CRASH_ROOT"),
        std::env::var("RCD_CRASH_IMAGE"),
    ) else {
        return;
    };
    let env = Env::open(Path::new(&root)).await;
    env.pull_image(&name).await;
    println!("recorded");
}

#[tokio::test]
async fn killed_mid_unpack_leaves_no_image() {
    let reg = Registry::start().unwrap();
    let image = many_layers_image();
    reg.push(&image, "many", "latest").unwrap();
    let name = reg.image_ref("many", "latest");
    let dir = tempfile::tempdir().unwrap();
    let snapshots = dir.path().join("overlayfs/snapshots");

    let mut child = rtest::spawn_tied({
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args(["--exact", "crash_child", "--nocapture"])
            .env("RCD_CRASH_ROOT", dir.path())
            .env("RCD_CRASH_IMAGE", &name)
            .stdout(std::process::Stdio::null());
        c
    })
    .unwrap();
    // kill it once a few layers are committed and another is being extracted
    let t = Instant::now();
    loop {
        let n = std::fs::read_dir(&snapshots)
            .map(|d| d.count())
            .unwrap_or(0);
        if n >= 4 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "child exited early");
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "child made no progress"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eprintln!("killed the child {:?} after its start", t.elapsed());
    let status = child.wait().unwrap();
    assert!(
        status.code().is_none(),
        "child finished before the kill: {status:?}"
    );

    let env = Env::open(dir.path()).await;
    assert!(
        env.md().image(NS, &name).unwrap().is_none(),
        "half image visible"
    );
    let keys = env.snapshot_keys();
    eprintln!(
        "after the kill: {} snapshots ({:?}...)",
        keys.len(),
        keys.first()
    );
    let committed = env
        .snap
        .list(NS)
        .unwrap()
        .iter()
        .filter(|r| r.kind == SnapshotKind::Committed)
        .count();
    assert!(committed < image.layers.len());
    env.assert_dirs_match_records();

    // the re-run finishes the job
    let t = Instant::now();
    let (_, unpacked) = env.pull_image(&name).await;
    eprintln!(
        "re-run: pulled (nothing to fetch), unpacked {} layers, recorded in {:?}",
        unpacked.applied,
        t.elapsed()
    );
    assert_eq!(unpacked.applied, image.layers.len() - committed);
    assert!(env.md().image(NS, &name).unwrap().is_some());
    // the killed extraction's snapshot is garbage
    let stats = gc::collect(&env.store, &env.snap).await.unwrap();
    assert!(stats.blobs.is_empty());
    assert!(
        stats
            .snapshots
            .iter()
            .all(|(_, k)| k.starts_with("extract-")),
        "{stats:?}"
    );
    let keys = env.snapshot_keys();
    assert_eq!(keys.len(), image.layers.len(), "{keys:?}");
    env.assert_dirs_match_records();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let top = unpacked.top().unwrap();
    let mounts = env
        .snap
        .view(NS, "v", Some(top.as_str()), Labels::new())
        .unwrap();
    let _g = MountGuard::new(&mounts, &mnt).unwrap();
    assert_eq!(
        std::fs::read_to_string(mnt.join("l15/f19")).unwrap(),
        "15.19"
    );
    assert_eq!(run_busybox(&mnt), "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_and_sequential_unpacks_agree() {
    let reg = Registry::start().unwrap();
    let image = many_layers_image();
    reg.push(&image, "many", "latest").unwrap();
    let name = reg.image_ref("many", "latest");
    let mut trees = Vec::new();
    for parallel in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let env = Env::open(dir.path()).await;
        let pulled = env.pull(&name).await;
        let layers = ImageLayers::try_from(&pulled).unwrap();
        let t = Instant::now();
        let unpacked = unpack_image_with(NS, &layers, &env.store, &env.snap, parallel)
            .await
            .unwrap();
        eprintln!(
            "unpacked {} layers with parallel={parallel} in {:?}",
            unpacked.applied,
            t.elapsed()
        );
        assert_eq!(unpacked.applied, image.layers.len());
        // every snapshot sits on the one below
        for (i, c) in unpacked.chain_ids.iter().enumerate() {
            let rec = env.snap.stat(NS, c.as_str()).unwrap();
            assert_eq!(rec.kind, SnapshotKind::Committed);
            assert_eq!(
                rec.parent,
                i.checked_sub(1).map(|p| unpacked.chain_ids[p].to_string())
            );
        }
        assert_eq!(env.snapshot_keys().len(), image.layers.len());
        env.assert_dirs_match_records();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let top = unpacked.top().unwrap();
        let mounts = env
            .snap
            .view(NS, "v", Some(top.as_str()), Labels::new())
            .unwrap();
        let _g = MountGuard::new(&mounts, &mnt).unwrap();
        let mut tree: Vec<String> = Vec::new();
        let mut stack = vec![mnt.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.symlink_metadata().unwrap().is_dir() {
                    stack.push(p.clone());
                }
                tree.push(p.strip_prefix(&mnt).unwrap().display().to_string());
            }
        }
        tree.sort();
        trees.push(tree);
    }
    assert_eq!(trees[0], trees[1]);
    assert!(trees[0].contains(&"l15/f19".to_owned()));
}

#[tokio::test]
async fn an_index_image_keeps_its_manifest_through_gc() {
    let reg = Registry::start().unwrap();
    let index = rtest::busybox_index();
    reg.push_index(index, "multi", "latest").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open(dir.path()).await;
    let name = reg.image_ref("multi", "latest");
    let (pulled, unpacked) = env.pull_image(&name).await;
    let rec = env.md().image(NS, &name).unwrap().unwrap();
    assert_eq!(rec.target.digest.as_str(), index.digest());
    assert_eq!(Some(&rec.target.digest), pulled.index_digest.as_ref());
    assert_eq!(rec.target.media_type, index.index.media_type);
    let labels = env
        .md()
        .read(|tx| tx.content(NS, &rec.target.digest))
        .unwrap()
        .unwrap()
        .labels;
    assert_eq!(
        labels["containerd.io/gc.ref.content.m.0"],
        pulled.manifest_digest.as_str()
    );
    let stats = gc::collect(&env.store, &env.snap).await.unwrap();
    assert!(
        stats.blobs.is_empty() && stats.snapshots.is_empty(),
        "{stats:?}"
    );
    assert_eq!(env.snapshot_keys(), [unpacked.top().unwrap().to_string()]);
    env.md().delete_image(NS, &name).unwrap();
    let stats = gc::collect(&env.store, &env.snap).await.unwrap();
    assert_eq!(
        stats.blobs.len(),
        4,
        "index, manifest, config, layer: {stats:?}"
    );
    assert!(env.blobs().await.is_empty() && env.snapshot_keys().is_empty());
}
