//! Content store: write, commit, read, resume, locking, digest checks.

use rcd::content::{ContentError, ContentStore, Digest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("content"))
        .await
        .unwrap();
    (dir, store)
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// Files under `<root>/blobs/sha256`.
fn blob_files(store: &ContentStore) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn ingests(store: &ContentStore) -> usize {
    std::fs::read_dir(store.root().join("ingest"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn write_commit_read() {
    let (_d, store) = store().await;
    let bytes = data(300_000);
    let digest = Digest::of(&bytes);
    assert!(!store.exists(&digest).await.unwrap());
    let mut w = store
        .writer("test-1", Some((digest.clone(), bytes.len() as u64)))
        .await
        .unwrap();
    w.write_all(&bytes[..1000]).await.unwrap();
    // the AsyncWrite side hashes too
    AsyncWriteExt::write_all(&mut w, &bytes[1000..])
        .await
        .unwrap();
    assert_eq!(w.offset(), bytes.len() as u64);
    let info = w.commit().await.unwrap();
    assert_eq!(info.digest, digest);
    assert_eq!(info.size, bytes.len() as u64);

    assert!(store.exists(&digest).await.unwrap());
    assert_eq!(store.read_all(&digest).await.unwrap(), bytes);
    let mut r = store.reader(&digest).await.unwrap();
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, bytes);
    assert_eq!(store.info(&digest).await.unwrap().size, bytes.len() as u64);
    let mode = std::fs::metadata(store.blob_path(&digest))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o444
    );
    assert_eq!(ingests(&store), 0, "ingest left behind");

    let list = store.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].digest, digest);

    // no expected digest: stored under what was written
    let mut w = store.writer("test-2", None).await.unwrap();
    w.write_all(b"hello").await.unwrap();
    let info = w.commit().await.unwrap();
    assert_eq!(info.digest, Digest::of(b"hello"));
    assert_eq!(store.list().await.unwrap().len(), 2);
}

#[tokio::test]
async fn digest_mismatch_commits_nothing() {
    let (_d, store) = store().await;
    let bytes = data(5000);
    let wrong = Digest::of(b"something else");
    let mut w = store
        .writer("bad", Some((wrong.clone(), bytes.len() as u64)))
        .await
        .unwrap();
    w.write_all(&bytes).await.unwrap();
    let err = w.commit().await.unwrap_err();
    assert!(
        matches!(&err, ContentError::DigestMismatch { expected, actual, .. }
            if *expected == wrong && *actual == Digest::of(&bytes)),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(wrong.as_str()) && msg.contains("bad"), "{msg}");
    assert!(blob_files(&store).is_empty());
    assert_eq!(ingests(&store), 0, "bad ingest kept");
    assert!(store.ingest_status("bad").await.unwrap().is_none());

    // wrong size: too short at commit, too long while writing
    let digest = Digest::of(&bytes);
    let mut w = store
        .writer("short", Some((digest.clone(), bytes.len() as u64 + 1)))
        .await
        .unwrap();
    w.write_all(&bytes).await.unwrap();
    let err = w.commit().await.unwrap_err();
    assert!(matches!(err, ContentError::SizeMismatch { .. }), "{err:?}");
    let mut w = store
        .writer("long", Some((digest.clone(), bytes.len() as u64 - 1)))
        .await
        .unwrap();
    let err = w.write_all(&bytes).await.unwrap_err();
    assert!(matches!(err, ContentError::SizeExceeded { .. }), "{err:?}");
    w.abort().await.unwrap();
    assert!(blob_files(&store).is_empty());
    assert_eq!(ingests(&store), 0);
}

/// Reopens a ref right after its writer was dropped. The lock is on the open file and tokio
/// closes a dropped file once its last in-flight operation ends, so for a moment the ref can
/// still read as locked, as it would for a resuming pull.
async fn reopen(
    store: &ContentStore,
    r: &str,
    expected: Option<(Digest, u64)>,
) -> rcd::content::Writer {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match store.writer(r, expected.clone()).await {
            Err(ContentError::RefLocked(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await
            }
            other => return other.unwrap(),
        }
    }
}

#[tokio::test]
async fn resume_after_partial_write() {
    let (_d, store) = store().await;
    let bytes = data(1_000_000);
    let digest = Digest::of(&bytes);
    let expected = Some((digest.clone(), bytes.len() as u64));
    {
        let mut w = store.writer("resume", expected.clone()).await.unwrap();
        w.write_all(&bytes[..400_000]).await.unwrap();
        w.flush().await.unwrap();
        // dropped mid-way, as when a pull is interrupted
    }
    let status = store.ingest_status("resume").await.unwrap().unwrap();
    assert_eq!(status.offset, 400_000);
    assert_eq!(status.total, Some(bytes.len() as u64));

    let mut w = reopen(&store, "resume", expected.clone()).await;
    assert_eq!(w.offset(), 400_000);
    w.write_all(&bytes[400_000..]).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(store.read_all(&digest).await.unwrap(), bytes);
    assert!(store.ingest_status("resume").await.unwrap().is_none());

    // restart() throws the partial data away
    let mut w = store.writer("again", None).await.unwrap();
    w.write_all(b"garbage").await.unwrap();
    drop(w);
    let mut w = reopen(&store, "again", None).await;
    assert_eq!(w.offset(), 7);
    w.restart().await.unwrap();
    w.write_all(b"fine").await.unwrap();
    assert_eq!(w.commit().await.unwrap().digest, Digest::of(b"fine"));
}

#[tokio::test]
async fn ref_lock() {
    let (_d, store) = store().await;
    let bytes = data(1000);
    let digest = Digest::of(&bytes);
    let mut w1 = store.writer("locked", None).await.unwrap();
    let err = store.writer("locked", None).await.unwrap_err();
    assert!(
        matches!(&err, ContentError::RefLocked(r) if r == "locked"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("locked by another writer"),
        "{err}"
    );
    let err = store.abort("locked").await.unwrap_err();
    assert!(matches!(err, ContentError::RefLocked(_)), "{err:?}");

    // another ref for the same digest is independent; both commits succeed
    let mut w2 = store
        .writer("other", Some((digest.clone(), 1000)))
        .await
        .unwrap();
    w1.write_all(&bytes).await.unwrap();
    w2.write_all(&bytes).await.unwrap();
    assert_eq!(w1.commit().await.unwrap().digest, digest);
    assert_eq!(w2.commit().await.unwrap().digest, digest);
    assert_eq!(blob_files(&store), vec![digest.hex().to_owned()]);

    // released on commit and on drop
    drop(store.writer("locked", None).await.unwrap());
    let w = store.writer("locked", None).await.unwrap();
    w.abort().await.unwrap();
    assert_eq!(ingests(&store), 0);

    // a second store handle (as another process would) sees the lock too
    let other = ContentStore::open(store.root()).await.unwrap();
    let _w = store.writer("x", None).await.unwrap();
    assert!(matches!(
        other.writer("x", None).await.unwrap_err(),
        ContentError::RefLocked(_)
    ));
}

#[tokio::test]
async fn concurrent_writers_race() {
    let (_d, store) = store().await;
    let bytes = data(200_000);
    let digest = Digest::of(&bytes);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (store, bytes, digest) = (store.clone(), bytes.clone(), digest.clone());
        tasks.push(tokio::spawn(async move {
            let r = format!("ref-{}", i % 2);
            loop {
                match store.writer(&r, Some((digest.clone(), 200_000))).await {
                    Ok(mut w) => {
                        w.restart().await.unwrap();
                        w.write_all(&bytes).await.unwrap();
                        return w.commit().await.unwrap();
                    }
                    Err(ContentError::RefLocked(_)) => tokio::task::yield_now().await,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().digest, digest);
    }
    assert_eq!(blob_files(&store), vec![digest.hex().to_owned()]);
    assert_eq!(ingests(&store), 0);
}

#[tokio::test]
async fn evil_digests_rejected() {
    let (_d, store) = store().await;
    for evil in [
        "sha256:../../x",
        "sha256:../../../etc/passwd",
        "sha256:",
        "../blobs",
        "sha512:abc",
        &format!("sha256:{}", "A".repeat(64)),
        &format!("sha256:{}/..", "a".repeat(61)),
    ] {
        let err = Digest::parse(evil).unwrap_err();
        assert!(err.to_string().starts_with("invalid digest"), "{err}");
        let as_json = serde_json::to_string(evil).unwrap();
        assert!(serde_json::from_str::<Digest>(&as_json).is_err());
    }
    // refs are hashed into names, so any string is a safe ref
    let mut w = store.writer("../../../escape", None).await.unwrap();
    w.write_all(b"x").await.unwrap();
    w.commit().await.unwrap();
    assert!(!store.root().parent().unwrap().join("escape").exists());
    assert!(matches!(
        store.writer("", None).await.unwrap_err(),
        ContentError::InvalidRef(_)
    ));
}

#[tokio::test]
async fn delete() {
    let (_d, store) = store().await;
    let mut w = store.writer("d", None).await.unwrap();
    w.write_all(b"bye").await.unwrap();
    let digest = w.commit().await.unwrap().digest;
    store.delete(&digest).await.unwrap();
    assert!(!store.exists(&digest).await.unwrap());
    let err = store.delete(&digest).await.unwrap_err();
    assert!(
        matches!(&err, ContentError::NotFound(d) if *d == digest),
        "{err:?}"
    );
    assert_eq!(err.to_string(), format!("blob {digest} not found"));
    assert!(matches!(
        store.read_all(&digest).await.unwrap_err(),
        ContentError::NotFound(_)
    ));
    assert!(matches!(
        store.info(&digest).await.unwrap_err(),
        ContentError::NotFound(_)
    ));
    assert!(store.list().await.unwrap().is_empty());
}
