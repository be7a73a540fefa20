//! The overlayfs snapshotter and its metadata, on real files and real mounts (run as root).

use rcd::metadata::{Labels, Metadata, MetadataError, SnapshotKind, LABEL_GC_ROOT};
use rcd::snapshot::{Mount, MountGuard, SnapshotError, Snapshotter};
use std::fs;
use std::path::Path;

const NS: &str = "default";

struct Env {
    dir: tempfile::TempDir,
    snap: Snapshotter,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let snap = open(dir.path());
        Env { dir, snap }
    }
}

fn open(root: &Path) -> Snapshotter {
    let md = Metadata::open(root.join("meta.db")).unwrap();
    Snapshotter::open(root.join("overlayfs"), md).unwrap()
}

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn snapshot_dirs(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root.join("overlayfs/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn lifecycle_with_real_mounts() {
    let env = Env::new();
    let s = &env.snap;
    let mnt = env.dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();

    // a base layer, written through its rw bind mount
    let m = s.prepare(NS, "a", None, Labels::new()).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].kind, "bind");
    assert!(!m[0].read_only());
    {
        let _g = MountGuard::new(&m, &mnt).unwrap();
        fs::write(mnt.join("keep"), "base").unwrap();
        fs::write(mnt.join("gone"), "base").unwrap();
        fs::create_dir(mnt.join("d")).unwrap();
        fs::write(mnt.join("d/x"), "x").unwrap();
    }
    assert_eq!(s.stat(NS, "a").unwrap().kind, SnapshotKind::Active);
    s.commit(NS, "base", "a", labels(&[("l", "1")])).unwrap();
    assert!(matches!(
        s.stat(NS, "a"),
        Err(SnapshotError::NotFound { .. })
    ));
    let base = s.stat(NS, "base").unwrap();
    assert_eq!(base.kind, SnapshotKind::Committed);
    assert_eq!(base.labels["l"], "1");
    let u = s.usage(NS, "base").unwrap();
    assert_eq!(u.inodes, 4, "{u:?}");
    assert!(u.size > 0);

    // an overlay on top: parent files visible; a delete becomes a whiteout in the upper dir
    let m = s.prepare(NS, "b", Some("base"), Labels::new()).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].kind, "overlay");
    let opts = m[0].options.join(",");
    assert!(opts.contains("upperdir=") && opts.contains("workdir=") && opts.contains("lowerdir="));
    {
        let _g = MountGuard::new(&m, &mnt).unwrap();
        assert_eq!(fs::read_to_string(mnt.join("keep")).unwrap(), "base");
        fs::remove_file(mnt.join("gone")).unwrap();
        fs::remove_dir_all(mnt.join("d")).unwrap();
        fs::create_dir(mnt.join("d")).unwrap(); // opaque now
        fs::write(mnt.join("new"), "top").unwrap();
    }
    let upper = s.fs_dir(NS, "b").unwrap();
    assert!(upper.join("new").exists());
    assert!(!upper.join("keep").exists());
    s.commit(NS, "top", "b", Labels::new()).unwrap();
    assert!(
        !s.dir(s.stat(NS, "top").unwrap().id).join("work").exists(),
        "work dir kept after commit"
    );

    // a read-only view of two layers: an overlay without upper dir
    let m = s.view(NS, "v", Some("top"), Labels::new()).unwrap();
    assert_eq!(m[0].kind, "overlay");
    assert!(m[0].read_only());
    {
        let _g = MountGuard::new(&m, &mnt).unwrap();
        assert_eq!(fs::read_to_string(mnt.join("keep")).unwrap(), "base");
        assert_eq!(fs::read_to_string(mnt.join("new")).unwrap(), "top");
        assert!(!mnt.join("gone").exists(), "whiteout not applied");
        assert!(!mnt.join("d/x").exists(), "opaque dir not applied");
        let e = fs::write(mnt.join("w"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    }
    // a view of a single layer is a read-only bind
    let m = s.view(NS, "v1", Some("base"), Labels::new()).unwrap();
    assert_eq!(m[0].kind, "bind");
    assert!(m[0].read_only());
    {
        let _g = MountGuard::new(&m, &mnt).unwrap();
        assert!(mnt.join("gone").exists());
        assert!(fs::write(mnt.join("w"), "x").is_err());
    }
    assert_eq!(s.mounts(NS, "v1").unwrap(), m);

    // refusals
    assert!(matches!(
        s.remove(NS, "base"),
        Err(SnapshotError::HasChildren { .. })
    ));
    let e = s.commit(NS, "x", "v", Labels::new()).unwrap_err();
    assert!(matches!(e, SnapshotError::NotActive { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "cannot commit snapshot \"v\": it is view, not active"
    );
    s.prepare(NS, "c", None, Labels::new()).unwrap();
    assert!(matches!(
        s.prepare(NS, "c", None, Labels::new()),
        Err(SnapshotError::AlreadyExists { .. })
    ));
    assert!(matches!(
        s.commit(NS, "base", "c", Labels::new()),
        Err(SnapshotError::AlreadyExists { .. })
    ));
    assert_eq!(s.stat(NS, "c").unwrap().kind, SnapshotKind::Active);
    assert!(matches!(
        s.prepare(NS, "d", Some("c"), Labels::new()),
        Err(SnapshotError::ParentNotCommitted { .. })
    ));
    assert!(matches!(
        s.prepare(NS, "d", Some("nope"), Labels::new()),
        Err(SnapshotError::NotFound { .. })
    ));
    let e = s.prepare(NS, "a\0b", None, Labels::new()).unwrap_err();
    assert!(
        matches!(
            e,
            SnapshotError::Metadata(MetadataError::InvalidName { .. })
        ),
        "{e}"
    );
    assert!(s.prepare("bad/ns", "k", None, Labels::new()).is_err());
    assert_eq!(
        snapshot_dirs(env.dir.path()).len(),
        5,
        "a failed prepare left a dir"
    );

    // list, then remove everything, children first
    let keys: Vec<_> = s.list(NS).unwrap().into_iter().map(|r| r.key).collect();
    assert_eq!(keys, ["base", "c", "top", "v", "v1"]);
    assert!(s.list("k8s.io").unwrap().is_empty());
    for k in ["c", "v", "v1", "top", "base"] {
        s.remove(NS, k).unwrap();
    }
    assert!(s.list(NS).unwrap().is_empty());
    assert!(snapshot_dirs(env.dir.path()).is_empty());
}

#[test]
fn namespaces_are_separate() {
    let env = Env::new();
    let s = &env.snap;
    s.prepare("default", "k", None, Labels::new()).unwrap();
    s.prepare("k8s.io", "k", None, Labels::new()).unwrap();
    assert_ne!(
        s.stat("default", "k").unwrap().id,
        s.stat("k8s.io", "k").unwrap().id
    );
    s.remove("default", "k").unwrap();
    assert!(s.stat("k8s.io", "k").is_ok());
    assert_eq!(s.metadata().namespaces().unwrap(), ["k8s.io"]);
}

#[test]
fn metadata_survives_reopen_and_orphans_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let s = open(dir.path());
        s.prepare(NS, "a", None, labels(&[(LABEL_GC_ROOT, "x")]))
            .unwrap();
        fs::write(s.fs_dir(NS, "a").unwrap().join("f"), "data").unwrap();
        s.commit(NS, "layer", "a", Labels::new()).unwrap();
        s.prepare(NS, "b", Some("layer"), Labels::new()).unwrap();
        // a second handle on the same file is refused while this one is open
        let e = Metadata::open(dir.path().join("meta.db")).unwrap_err();
        assert!(e.to_string().contains("meta.db"), "{e}");
        s.stat(NS, "layer").unwrap().id
    };
    // a directory no record names, as a crash between mkdir and commit would leave
    let orphan = dir.path().join("overlayfs/snapshots/999");
    fs::create_dir_all(orphan.join("fs/deep")).unwrap();
    let s = open(dir.path());
    assert!(!orphan.exists(), "orphan dir kept");
    let layer = s.stat(NS, "layer").unwrap();
    assert_eq!((layer.id, layer.kind), (id, SnapshotKind::Committed));
    assert_eq!(layer.labels[LABEL_GC_ROOT], "x");
    assert_eq!(
        fs::read_to_string(s.fs_dir(NS, "layer").unwrap().join("f")).unwrap(),
        "data"
    );
    assert_eq!(s.stat(NS, "b").unwrap().parent.as_deref(), Some("layer"));
    // ids are never reused
    s.prepare(NS, "c", None, Labels::new()).unwrap();
    assert!(s.stat(NS, "c").unwrap().id > s.stat(NS, "b").unwrap().id);
}

/// Set in the copy of this test binary that prepares without a flush, then dies.
const CRASH_ROOT: &str = "RCD_TEST_UNSYNCED_CRASH_ROOT";

#[test]
fn an_unsynced_prepare_cut_by_a_crash_leaves_a_consistent_store() {
    if let Ok(root) = std::env::var(CRASH_ROOT) {
        let s = open(Path::new(&root));
        s.prepare_unsynced(NS, "unsynced", None, Labels::new())
            .unwrap();
        // no destructor, no later durable commit: a daemon killed right after the prepare
        unsafe { libc::_exit(0) };
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.prepare(NS, "synced", None, Labels::new()).unwrap();
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "an_unsynced_prepare_cut_by_a_crash_leaves_a_consistent_store",
            "--test-threads=1",
        ])
        .env(CRASH_ROOT, dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let s = open(dir.path());
    s.stat(NS, "synced").unwrap();
    // the record kept (the commit reached the file) with its directory, or lost with it
    match s.stat(NS, "unsynced") {
        Ok(_) => {
            assert!(s.fs_dir(NS, "unsynced").unwrap().is_dir());
            assert_eq!(snapshot_dirs(dir.path()).len(), 2);
        }
        Err(SnapshotError::NotFound { .. }) => {
            assert_eq!(
                snapshot_dirs(dir.path()).len(),
                1,
                "an orphan directory kept"
            );
            // the key is free again, and its id's directory is new
            s.prepare(NS, "unsynced", None, Labels::new()).unwrap();
            assert!(fs::read_dir(s.fs_dir(NS, "unsynced").unwrap())
                .unwrap()
                .next()
                .is_none());
        }
        Err(e) => panic!("{e}"),
    }
    // a later durable commit makes an unsynced one durable too
    s.prepare_unsynced(NS, "then", None, Labels::new()).unwrap();
    s.prepare(NS, "durable", None, Labels::new()).unwrap();
    drop(s);
    let s = open(dir.path());
    s.stat(NS, "then").unwrap();
}

#[test]
fn long_chains_mount_up_to_the_page_limit() {
    let env = Env::new();
    let s = &env.snap;
    let mut parent: Option<String> = None;
    let mut n = 0;
    let err = loop {
        let key = format!("k{n}");
        match s.prepare(NS, &key, parent.as_deref(), Labels::new()) {
            Ok(m) => {
                fs::write(s.fs_dir(NS, &key).unwrap().join(format!("f{n}")), "").unwrap();
                if n == 40 {
                    // on 40 parents: mounts and shows every layer
                    let mnt = env.dir.path().join("mnt");
                    fs::create_dir(&mnt).unwrap();
                    let _g = MountGuard::new(&m, &mnt).unwrap();
                    assert!(mnt.join("f0").exists() && mnt.join("f39").exists());
                    assert!(mnt.join("f40").exists());
                }
                let name = format!("c{n}");
                s.commit(NS, &name, &key, Labels::new()).unwrap();
                parent = Some(name);
                n += 1;
            }
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, SnapshotError::MountOptionsTooLong { .. }),
        "{err}"
    );
    eprintln!(
        "root {} (len {}): longest chain mountable {n} layers",
        env.dir.path().display(),
        env.dir.path().as_os_str().len()
    );
    assert!(n > 60, "only {n} layers");
    // leaves no dir for the refused prepare
    assert_eq!(snapshot_dirs(env.dir.path()).len(), n);
}

#[test]
fn mount_spec_serialises_like_containerd() {
    let m = Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options: vec!["lowerdir=/a:/b".into()],
    };
    assert_eq!(
        serde_json::to_string(&m).unwrap(),
        r#"{"type":"overlay","source":"overlay","options":["lowerdir=/a:/b"]}"#
    );
}

#[test]
fn commit_on_stacks_a_parentless_snapshot() {
    let env = Env::new();
    let s = &env.snap;
    s.prepare(NS, "a", None, Labels::new()).unwrap();
    fs::write(s.fs_dir(NS, "a").unwrap().join("low"), "1").unwrap();
    s.commit(NS, "base", "a", Labels::new()).unwrap();
    // extracted without a parent, a whiteout as overlayfs writes it (0/0 char device)
    s.prepare(NS, "b", None, Labels::new()).unwrap();
    let upper = s.fs_dir(NS, "b").unwrap();
    fs::write(upper.join("high"), "2").unwrap();
    nix::sys::stat::mknod(
        &upper.join("low"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .unwrap();
    s.prepare(NS, "c", Some("base"), Labels::new()).unwrap();
    assert!(matches!(
        s.commit_on(NS, "x", "c", Some("base"), Labels::new()),
        Err(SnapshotError::HasParent { .. })
    ));
    assert!(matches!(
        s.commit_on(NS, "top", "b", Some("c"), Labels::new()),
        Err(SnapshotError::ParentNotCommitted { .. })
    ));
    s.commit_on(NS, "top", "b", Some("base"), Labels::new())
        .unwrap();
    assert_eq!(s.stat(NS, "top").unwrap().parent.as_deref(), Some("base"));
    let mnt = env.dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let m = s.view(NS, "v", Some("top"), Labels::new()).unwrap();
    let _g = MountGuard::new(&m, &mnt).unwrap();
    assert_eq!(fs::read_to_string(mnt.join("high")).unwrap(), "2");
    assert!(!mnt.join("low").exists(), "whiteout not applied");
}

#[test]
fn a_deferred_remove_shares_its_transaction() {
    let env = Env::new();
    let s = &env.snap;
    s.prepare(NS, "c1", None, Labels::new()).unwrap();
    // what fails in the same transaction keeps the snapshot
    let e = s
        .remove_deferred_with(NS, Some("c1"), |tx| tx.delete_container(NS, "no-such"))
        .unwrap_err();
    assert!(
        matches!(e, SnapshotError::Metadata(MetadataError::NotFound { .. })),
        "{e}"
    );
    assert_eq!(s.stat(NS, "c1").unwrap().key, "c1");
    // both go together; the key is free at once, the directory left to the trash
    let before = snapshot_dirs(env.dir.path());
    assert_eq!(
        s.remove_deferred_with(NS, Some("c1"), |_| Ok(7)).unwrap(),
        7
    );
    assert!(matches!(
        s.stat(NS, "c1"),
        Err(SnapshotError::NotFound { .. })
    ));
    assert!(!snapshot_dirs(env.dir.path())
        .iter()
        .any(|d| before.contains(d) && !d.starts_with("rm-")));
    // a snapshot already gone, or none asked for, is no error
    assert_eq!(
        s.remove_deferred_with(NS, Some("c1"), |_| Ok(1)).unwrap(),
        1
    );
    assert_eq!(s.remove_deferred_with(NS, None, |_| Ok(2)).unwrap(), 2);
    assert!(rcd::trash::flush(std::time::Duration::from_secs(10)));
}
