//! The layer unpacker on real files, as root: every entry type, overlay and plain whiteouts, a
//! real overlayfs mount, and a hostile corpus that must fail clearly or stay confined without
//! touching anything outside the destination.

use rcd::unpack::{
    apply_layer, remove_dir_all, Compression, Limit, UnpackError, UnpackMode, UnpackOptions,
    UnpackStats,
};
use rtest::{Layer, TarBuilder};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tar::EntryType;

// ---------------------------------------------------------------------------------------
// helpers

/// A temp dir with the destination at `<base>/d/dest` and a sentinel tree at
/// `<base>/outside` (`secret`, `dir/inner`), snapshotted so tests can check nothing outside
/// the destination changed.
struct Sandbox {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    dest: PathBuf,
    outside: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::Builder::new()
            .prefix("rcd-unpack-")
            .tempdir()
            .unwrap();
        let base = tmp.path().to_owned();
        let dest = base.join("d/dest");
        let outside = base.join("outside");
        fs::create_dir_all(&dest).unwrap();
        fs::create_dir_all(outside.join("dir")).unwrap();
        fs::write(outside.join("secret"), b"secret\n").unwrap();
        fs::write(outside.join("dir/inner"), b"inner\n").unwrap();
        let before = snapshot(&base, &dest);
        Sandbox {
            _tmp: tmp,
            base,
            dest,
            outside,
            before,
        }
    }

    /// The sentinel's absolute path, for symlinks and names pointing at it.
    fn outside_abs(&self) -> String {
        self.outside.to_str().unwrap().to_owned()
    }

    fn apply(&self, tar: &[u8], opts: &UnpackOptions) -> Result<UnpackStats, UnpackError> {
        apply_layer(Cursor::new(tar), Compression::Auto, &self.dest, opts)
    }

    /// Nothing outside the destination was created, changed or removed.
    fn assert_untouched(&self) {
        let after = snapshot(&self.base, &self.dest);
        assert_eq!(
            self.before, after,
            "something outside the destination changed"
        );
        assert_eq!(
            fs::read(self.outside.join("secret")).unwrap(),
            b"secret\n",
            "sentinel changed"
        );
    }
}

/// Every path under `root` but `skip`'s subtree, with its type, mode, owner, size, mtime and
/// content or target; symlinks are not followed.
fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fn walk(p: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let md = fs::symlink_metadata(p).unwrap();
        let mut desc = format!(
            "{:o} {}:{} {} {}.{} n{}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.size(),
            md.mtime(),
            md.mtime_nsec(),
            md.nlink()
        );
        if md.file_type().is_symlink() {
            desc += &format!(" -> {}", fs::read_link(p).unwrap().display());
        } else if md.is_file() {
            desc += &format!(" {:?}", fs::read(p).unwrap());
        }
        if p == skip {
            return;
        }
        out.insert(p.to_owned(), desc);
        if md.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), skip, out);
            }
        }
    }
    walk(root, skip, &mut out);
    out
}

fn small_limits() -> UnpackOptions {
    UnpackOptions {
        max_entries: 1000,
        max_file_size: 1 << 20,
        max_total_bytes: 4 << 20,
        max_tar_bytes: 8 << 20,
        ..UnpackOptions::default()
    }
}

fn plain() -> UnpackOptions {
    UnpackOptions::new(UnpackMode::Plain)
}

/// A PAX extended header (`x`) for the next entry.
fn pax(tb: &mut TarBuilder, records: &[(&str, &[u8])]) {
    let mut data = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = body + body.to_string().len();
        if len.to_string().len() != body.to_string().len() {
            len += 1;
        }
        write!(data, "{len} {k}=").unwrap();
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    tb.raw(
        EntryType::XHeader,
        b"PaxHeaders/x",
        None,
        0o644,
        &data,
        0,
        0,
    );
}

fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .map(|md| md.file_type().is_char_device() && md.rdev() == 0)
        .unwrap_or(false)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[track_caller]
fn expect_err(r: Result<UnpackStats, UnpackError>) -> UnpackError {
    match r {
        Ok(s) => panic!("expected an error, got {s:?}"),
        Err(e) => {
            eprintln!("error (as expected): {e}");
            e
        }
    }
}

// ---------------------------------------------------------------------------------------
// the busybox layer and compressions

#[test]
fn busybox_layer_unpacks_and_runs() {
    let layer = rtest::busybox_layer();
    for mode in [UnpackMode::Overlay, UnpackMode::Plain] {
        let sb = Sandbox::new();
        let t = Instant::now();
        let stats = apply_layer(
            Cursor::new(&layer.data),
            Compression::from_media_type(&layer.media_type).unwrap(),
            &sb.dest,
            &UnpackOptions::new(mode),
        )
        .unwrap();
        eprintln!(
            "busybox layer ({} bytes gzip, {} tar, {} entries) unpacked in {:?}",
            layer.data.len(),
            stats.tar_bytes,
            stats.entries,
            t.elapsed()
        );
        assert_eq!(stats.diff_id, layer.diff_id);
        assert_eq!(stats.compressed_bytes, layer.data.len() as u64);
        let out = Command::new(sb.dest.join("bin/busybox"))
            .args(["echo", "hello"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"hello\n");
        assert_eq!(
            fs::read_link(sb.dest.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(
            fs::metadata(sb.dest.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        sb.assert_untouched();
    }
}

#[test]
fn gzip_zstd_and_plain_give_the_same_tree_and_diff_id() {
    let tar = rtest::busybox_layer().tar().unwrap();
    let mut trees = Vec::new();
    for c in [
        rtest::Compression::None,
        rtest::Compression::Gzip,
        rtest::Compression::Zstd,
    ] {
        let layer = Layer::from_tar(&tar, c).unwrap();
        let sb = Sandbox::new();
        let declared = Compression::from_media_type(&layer.media_type).unwrap();
        let stats = apply_layer(
            Cursor::new(&layer.data),
            declared,
            &sb.dest,
            &UnpackOptions::default(),
        )
        .unwrap();
        assert_eq!(stats.diff_id, layer.diff_id, "{c:?}");
        assert_eq!(stats.tar_bytes, tar.len() as u64);
        assert_eq!(stats.compression, Some(declared));
        // auto-detection too
        let sb2 = Sandbox::new();
        let auto = apply_layer(
            Cursor::new(&layer.data),
            Compression::Auto,
            &sb2.dest,
            &UnpackOptions::default(),
        )
        .unwrap();
        assert_eq!(auto.diff_id, layer.diff_id);
        trees.push(tree(&sb.dest));
    }
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0], trees[2]);
}

#[test]
fn declared_compression_must_match() {
    let tar = TarBuilder::new().file("f", b"x", 0o644).finish();
    let gz = rtest::Compression::Gzip.compress(&tar).unwrap();
    let sb = Sandbox::new();
    let e = expect_err(apply_layer(
        Cursor::new(&tar),
        Compression::Gzip,
        &sb.dest,
        &UnpackOptions::default(),
    ));
    assert!(matches!(e, UnpackError::CompressionMismatch { .. }), "{e}");
    let e = expect_err(apply_layer(
        Cursor::new(&gz),
        Compression::Zstd,
        &sb.dest,
        &UnpackOptions::default(),
    ));
    assert!(matches!(e, UnpackError::CompressionMismatch { .. }), "{e}");
    assert!(matches!(
        Compression::from_media_type("application/json"),
        Err(UnpackError::UnsupportedMediaType(_))
    ));
}

// ---------------------------------------------------------------------------------------
// entry types and metadata

#[test]
fn ownership_modes_mtimes_and_xattrs_are_kept() {
    let mut tb = TarBuilder::new();
    tb.owner(1234, 5678).mtime(1_600_000_000);
    tb.dir("d/", 0o1755);
    // capability v2: effective, permitted CAP_NET_RAW (13)
    let mut cap = Vec::new();
    for w in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        cap.extend_from_slice(&w.to_le_bytes());
    }
    pax(
        &mut tb,
        &[
            ("SCHILY.xattr.user.color", b"blue"),
            ("SCHILY.xattr.security.capability", &cap),
            (
                "SCHILY.xattr.security.selinux",
                b"system_u:object_r:bin_t:s0",
            ),
            ("SCHILY.xattr.trusted.evil", b"1"),
            ("mtime", b"1600000000.25"),
        ],
    );
    tb.file("d/suid", b"#!/bin/sh\n", 0o4755);
    pax(&mut tb, &[("SCHILY.xattr.trusted.overlay.opaque", b"y")]);
    tb.dir("d/notopaque/", 0o700);
    tb.owner(42, 43).mtime(1_500_000_000);
    tb.symlink("d/link", "../nowhere");
    tb.file("d/plain", b"data", 0o640);
    let tar = tb.finish();
    let sb = Sandbox::new();
    let stats = sb.apply(&tar, &UnpackOptions::default()).unwrap();
    assert_eq!((stats.files, stats.dirs, stats.symlinks), (2, 2, 1));

    let md = fs::symlink_metadata(sb.dest.join("d")).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o1755, 1234, 5678)
    );
    assert_eq!(
        md.mtime(),
        1_600_000_000,
        "dir mtime set after its contents"
    );

    let suid = sb.dest.join("d/suid");
    let md = fs::symlink_metadata(&suid).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o4755, 1234, 5678)
    );
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 250_000_000));
    assert_eq!(
        lgetxattr(&suid, "user.color").as_deref(),
        Some(&b"blue"[..])
    );
    assert_eq!(lgetxattr(&suid, "security.capability"), Some(cap));
    assert_eq!(lgetxattr(&suid, "security.selinux"), None);
    assert_eq!(lgetxattr(&suid, "trusted.evil"), None);
    assert_eq!(
        lgetxattr(&sb.dest.join("d/notopaque"), "trusted.overlay.opaque"),
        None,
        "a layer must never set overlayfs xattrs"
    );

    let link = sb.dest.join("d/link");
    let md = fs::symlink_metadata(&link).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!((md.uid(), md.gid(), md.mtime()), (42, 43, 1_500_000_000));
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("../nowhere"));

    let md = fs::symlink_metadata(sb.dest.join("d/plain")).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.mtime()),
        (0o640, 42, 1_500_000_000)
    );
    assert_eq!(fs::read(sb.dest.join("d/plain")).unwrap(), b"data");

    // without ownership, the unpacking user owns everything
    let sb = Sandbox::new();
    let opts = UnpackOptions {
        keep_ownership: false,
        ..UnpackOptions::default()
    };
    sb.apply(&tar, &opts).unwrap();
    assert_eq!(
        fs::symlink_metadata(sb.dest.join("d/suid")).unwrap().uid(),
        0
    );
}

#[test]
fn devices_fifos_hardlinks_and_symlinks() {
    let mut tb = TarBuilder::new();
    tb.char_device("dev/null", 1, 3, 0o666)
        .block_device("dev/loop7", 7, 7, 0o660)
        .fifo("run/fifo", 0o620)
        .file("a/file", b"linked", 0o644)
        .hardlink("a/hard", "a/file")
        .hardlink("b/hard2", "/a/./file")
        .symlink("a/sym", "file")
        .hardlink("a/hardsym", "a/sym")
        .symlink("abs", "/etc/passwd");
    let tar = tb.finish();
    let sb = Sandbox::new();
    let stats = sb.apply(&tar, &UnpackOptions::default()).unwrap();
    assert_eq!((stats.devices, stats.hardlinks, stats.symlinks), (3, 3, 2));

    let md = fs::symlink_metadata(sb.dest.join("dev/null")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), libc::makedev(1, 3));
    assert_eq!(md.mode() & 0o7777, 0o666);
    let md = fs::symlink_metadata(sb.dest.join("dev/loop7")).unwrap();
    assert!(md.file_type().is_block_device());
    assert_eq!(md.rdev(), libc::makedev(7, 7));
    let md = fs::symlink_metadata(sb.dest.join("run/fifo")).unwrap();
    assert!(md.file_type().is_fifo());
    assert_eq!(md.mode() & 0o7777, 0o620);

    let f = fs::metadata(sb.dest.join("a/file")).unwrap();
    for h in ["a/hard", "b/hard2"] {
        let md = fs::symlink_metadata(sb.dest.join(h)).unwrap();
        assert_eq!(md.ino(), f.ino(), "{h}");
    }
    assert_eq!(f.nlink(), 3);
    let hs = fs::symlink_metadata(sb.dest.join("a/hardsym")).unwrap();
    assert!(
        hs.file_type().is_symlink(),
        "a hard link to a symlink links the symlink"
    );
    assert_eq!(
        fs::read_link(sb.dest.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    sb.assert_untouched();
}

#[test]
fn sparse_file_is_written_sparse() {
    let real: u64 = 8 << 20;
    let tar = sparse_tar("sparse", real, b"tail");
    let sb = Sandbox::new();
    let stats = sb.apply(&tar, &UnpackOptions::default()).unwrap();
    assert_eq!(stats.file_bytes, real);
    let p = sb.dest.join("sparse");
    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.len(), real);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "holes kept: {} blocks",
        md.blocks()
    );
    let data = fs::read(&p).unwrap();
    assert!(data[..real as usize - 512].iter().all(|&b| b == 0));
    assert_eq!(&data[real as usize - 512..][..4], b"tail");
}

/// A GNU sparse entry of `real` bytes whose only data is its last 512-byte block.
fn sparse_tar(name: &str, real: u64, tail: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_path(name).unwrap();
    h.set_mode(0o644);
    h.set_size(512);
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(real);
        gnu.sparse[0].set_offset(real - 512);
        gnu.sparse[0].set_length(512);
    }
    h.set_cksum();
    let mut block = vec![0u8; 512];
    block[..tail.len()].copy_from_slice(tail);
    TarBuilder::new().header(&h, &block).finish()
}

#[test]
fn existing_entries_are_replaced_directories_merged() {
    let sb = Sandbox::new();
    let l1 = TarBuilder::new()
        .dir("d/", 0o755)
        .file("d/keep", b"1", 0o644)
        .file("f", b"old", 0o644)
        .dir("x/", 0o755)
        .file("x/y", b"z", 0o644)
        .finish();
    sb.apply(&l1, &plain()).unwrap();
    let l2 = TarBuilder::new()
        .dir("d/", 0o700)
        .file("d/new", b"2", 0o644)
        .symlink("f", "d")
        .file("x", b"now a file", 0o644)
        .finish();
    sb.apply(&l2, &plain()).unwrap();
    assert_eq!(names(&sb.dest.join("d")), ["keep", "new"]);
    assert_eq!(
        fs::metadata(sb.dest.join("d")).unwrap().mode() & 0o777,
        0o700
    );
    assert_eq!(fs::read_link(sb.dest.join("f")).unwrap(), Path::new("d"));
    assert_eq!(fs::read(sb.dest.join("x")).unwrap(), b"now a file");
}

// ---------------------------------------------------------------------------------------
// whiteouts

fn lower_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir("keep/", 0o755)
        .file("keep/a", b"a", 0o644)
        .file("gone", b"gone", 0o644)
        .dir("opq/", 0o755)
        .file("opq/old", b"old", 0o644)
        .dir("opq/sub/", 0o755)
        .file("opq/sub/old2", b"old2", 0o644)
        .dir("dir2/", 0o755)
        .file("dir2/x", b"x", 0o644)
        .dir("gonedir/", 0o755)
        .file("gonedir/f", b"f", 0o644)
        .finish()
}

fn upper_layer() -> Vec<u8> {
    TarBuilder::new()
        .whiteout("gone")
        .dir("opq/", 0o755)
        .opaque_whiteout("opq")
        .file("opq/new", b"new", 0o644)
        .dir("opq/sub/", 0o755)
        .file("opq/sub/new2", b"new2", 0o644)
        .whiteout("dir2/x")
        .whiteout("gonedir")
        .file("added", b"added", 0o644)
        .finish()
}

#[test]
fn whiteouts_in_overlay_mode_become_overlay_markers() {
    let sb = Sandbox::new();
    let stats = sb.apply(&upper_layer(), &UnpackOptions::default()).unwrap();
    assert_eq!(stats.whiteouts, 4);
    let d = &sb.dest;
    assert!(is_whiteout(&d.join("gone")));
    assert!(is_whiteout(&d.join("dir2/x")));
    assert!(is_whiteout(&d.join("gonedir")));
    assert!(!d.join(".wh.gone").exists());
    assert!(!d.join("opq/.wh..wh..opq").exists());
    assert_eq!(
        lgetxattr(&d.join("opq"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        lgetxattr(&d.join("opq/sub"), "trusted.overlay.opaque"),
        None
    );
    assert_eq!(names(&d.join("opq")), ["new", "sub"]);
}

#[test]
fn whiteouts_in_plain_mode_delete() {
    let sb = Sandbox::new();
    sb.apply(&lower_layer(), &plain()).unwrap();
    sb.apply(&upper_layer(), &plain()).unwrap();
    let d = &sb.dest;
    assert_eq!(names(d), ["added", "dir2", "keep", "opq"]);
    assert_eq!(names(&d.join("opq")), ["new", "sub"]);
    assert_eq!(names(&d.join("opq/sub")), ["new2"]);
    assert!(names(&d.join("dir2")).is_empty());
    assert_eq!(names(&d.join("keep")), ["a"]);
    sb.assert_untouched();
}

#[test]
fn whiteout_after_own_entry_does_not_delete_it() {
    // a whiteout hides the layers below only; the opaque marker after the entries too
    let tar = TarBuilder::new()
        .file("f", b"mine", 0o644)
        .whiteout("f")
        .dir("o/", 0o755)
        .file("o/mine", b"m", 0o644)
        .opaque_whiteout("o")
        .finish();
    let sb = Sandbox::new();
    fs::create_dir(sb.dest.join("o")).unwrap();
    fs::write(sb.dest.join("o/lower"), b"l").unwrap();
    sb.apply(&tar, &plain()).unwrap();
    assert_eq!(fs::read(sb.dest.join("f")).unwrap(), b"mine");
    assert_eq!(names(&sb.dest.join("o")), ["mine"]);
    let sb = Sandbox::new();
    sb.apply(&tar, &UnpackOptions::default()).unwrap();
    assert_eq!(fs::read(sb.dest.join("f")).unwrap(), b"mine");
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        if nix::mount::umount(&self.0).is_err() {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn overlay_mount_hides_whited_out_and_opaque_contents() {
    let sb = Sandbox::new();
    let lower = sb.base.join("lower");
    let work = sb.base.join("work");
    let merged = sb.base.join("merged");
    let plain_dir = sb.base.join("plain");
    for d in [&lower, &work, &merged, &plain_dir] {
        fs::create_dir(d).unwrap();
    }
    let opts = UnpackOptions::default();
    apply_layer(Cursor::new(lower_layer()), Compression::Auto, &lower, &opts).unwrap();
    sb.apply(&upper_layer(), &opts).unwrap();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        sb.dest.display(),
        work.display()
    );
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &data])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(st.success(), "mount -t overlay failed");
    let _mount = Mount(merged.clone());
    assert!(!merged.join("gone").exists());
    assert!(!merged.join("gonedir").exists());
    assert_eq!(names(&merged), ["added", "dir2", "keep", "opq"]);
    assert_eq!(names(&merged.join("opq")), ["new", "sub"]);
    assert_eq!(names(&merged.join("opq/sub")), ["new2"]);
    assert!(names(&merged.join("dir2")).is_empty());
    assert_eq!(fs::read(merged.join("keep/a")).unwrap(), b"a");

    // the plain mode applied layer by layer gives the same tree
    let p = plain();
    apply_layer(
        Cursor::new(lower_layer()),
        Compression::Auto,
        &plain_dir,
        &p,
    )
    .unwrap();
    apply_layer(
        Cursor::new(upper_layer()),
        Compression::Auto,
        &plain_dir,
        &p,
    )
    .unwrap();
    assert_eq!(tree(&merged), tree(&plain_dir));
}

/// Paths below `root` with type and mode, owner and content or target (no sizes, times or
/// link counts, which overlayfs reports its own way).
fn tree(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    fn walk(root: &Path, p: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            let md = fs::symlink_metadata(&e).unwrap();
            let mut d = format!("{:o} {}:{}", md.mode(), md.uid(), md.gid());
            if md.file_type().is_symlink() {
                d += &format!(" -> {}", fs::read_link(&e).unwrap().display());
            } else if md.is_file() {
                d += &format!(" {:?}", fs::read(&e).unwrap());
            }
            out.push((e.strip_prefix(root).unwrap().to_owned(), d));
            if md.is_dir() {
                walk(root, &e, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

// ---------------------------------------------------------------------------------------
// hostile layers: each must fail clearly or stay inside the destination, and nothing
// outside may change

#[test]
fn dotdot_escapes_are_refused() {
    for name in [
        "../escape",
        "../../etc/x",
        "a/../../escape",
        "/../escape",
        "./../x",
    ] {
        let sb = Sandbox::new();
        let tar = TarBuilder::new().file(name, b"pwned", 0o644).finish();
        let e = expect_err(sb.apply(&tar, &UnpackOptions::default()));
        assert!(matches!(e, UnpackError::PathEscapes { .. }), "{name}: {e}");
        assert!(e.to_string().contains(name), "{e}");
        sb.assert_untouched();
    }
    // a directory entry, a whiteout and a hard link name too
    let sb = Sandbox::new();
    for tar in [
        TarBuilder::new().dir("../escdir/", 0o755).finish(),
        TarBuilder::new().file("../.wh.secret", b"", 0o644).finish(),
        TarBuilder::new().whiteout("../outside/secret").finish(),
        TarBuilder::new().symlink("../esclink", "/").finish(),
    ] {
        for opts in [UnpackOptions::default(), plain()] {
            let e = expect_err(sb.apply(&tar, &opts));
            assert!(matches!(e, UnpackError::PathEscapes { .. }), "{e}");
        }
    }
    sb.assert_untouched();
}

#[test]
fn absolute_names_are_relative_to_dest() {
    let sb = Sandbox::new();
    let etc_name = format!("/etc/rcd-unpack-test-{}", std::process::id());
    let abs_secret = format!("{}/secret", sb.outside_abs());
    let tar = TarBuilder::new()
        .file(&etc_name, b"pwned", 0o644)
        .file(&abs_secret, b"pwned", 0o644)
        .finish();
    sb.apply(&tar, &UnpackOptions::default()).unwrap();
    assert!(!Path::new(&etc_name).exists());
    assert_eq!(
        fs::read(sb.dest.join(&etc_name[1..])).unwrap(),
        b"pwned".to_vec()
    );
    assert_eq!(fs::read(sb.dest.join(&abs_secret[1..])).unwrap(), b"pwned");
    sb.assert_untouched();
}

#[test]
fn symlinked_parents_resolve_inside_dest() {
    // `a -> <outside>` (absolute) and `b -> ../../outside` (relative, pointing at the
    // sentinel from dest): writes through them land inside dest, as under chroot
    let sb = Sandbox::new();
    let abs = sb.outside_abs();
    let tar = TarBuilder::new()
        .dir(&format!("{abs}/"), 0o755)
        .symlink("a", &abs)
        .file("a/x", b"pwned", 0o644)
        .file("a/secret", b"pwned", 0o644)
        .dir("outside/", 0o755)
        .symlink("b", "../../outside")
        .file("b/x", b"pwned", 0o644)
        .dir("b/dir/", 0o700)
        .symlink("c", "/")
        .file("c/c-x", b"pwned", 0o644)
        .symlink("e", "../../../../../../..")
        .file("e/e-x", b"pwned", 0o644)
        .finish();
    sb.apply(&tar, &UnpackOptions::default()).unwrap();
    let inside = sb.dest.join(&abs[1..]);
    assert_eq!(fs::read(inside.join("x")).unwrap(), b"pwned");
    assert_eq!(fs::read(inside.join("secret")).unwrap(), b"pwned");
    assert_eq!(fs::read(sb.dest.join("outside/x")).unwrap(), b"pwned");
    assert!(sb.dest.join("outside/dir").is_dir());
    assert!(sb.dest.join("c-x").exists());
    assert!(sb.dest.join("e-x").exists());
    assert_eq!(fs::read_link(sb.dest.join("a")).unwrap(), Path::new(&abs));
    sb.assert_untouched();

    // a symlink to a directory missing from dest cannot be a parent (as `mkdir -p` under
    // chroot); nor can a symlink loop
    for target in [abs.as_str(), "../../outside", "loop"] {
        let sb = Sandbox::new();
        let tar = TarBuilder::new()
            .symlink("loop", "loop")
            .symlink("a", target)
            .file("a/x", b"pwned", 0o644)
            .finish();
        let e = expect_err(sb.apply(&tar, &UnpackOptions::default()));
        assert!(e.to_string().contains("a/x"), "{e}");
        sb.assert_untouched();
    }

    // a symlink already in the destination (a lower layer in plain mode) is no way out
    let sb = Sandbox::new();
    std::os::unix::fs::symlink("/", sb.dest.join("pre")).unwrap();
    let tar = TarBuilder::new()
        .file(&format!("pre/{abs}/secret"), b"pwned", 0o644)
        .file("pre/pre-x", b"pwned", 0o644)
        .finish();
    let _ = sb.apply(&tar, &plain());
    assert!(sb.dest.join("pre-x").exists());
    sb.assert_untouched();
}

#[test]
fn whiteouts_through_symlinks_stay_inside() {
    for opts in [UnpackOptions::default(), plain()] {
        let sb = Sandbox::new();
        let abs = sb.outside_abs();
        let tar = TarBuilder::new()
            .symlink("a", &abs)
            .whiteout("a/secret")
            .whiteout("a/dir")
            .opaque_whiteout("a")
            .symlink("b", "../../outside")
            .whiteout("b/secret")
            .opaque_whiteout("b/dir")
            .finish();
        // overlay mode creates the whiteouts' parents: a symlink to a directory missing
        // from dest is then an error (see symlinked_parents_resolve_inside_dest)
        match sb.apply(&tar, &opts) {
            Ok(_) => assert_eq!(opts.mode, UnpackMode::Plain),
            Err(e) => assert!(matches!(e, UnpackError::NotADirectory { .. }), "{e}"),
        }
        sb.assert_untouched();
        // a whiteout of the symlink itself removes (plain) or hides (overlay) the link only
        let tar = TarBuilder::new().whiteout("a").finish();
        sb.apply(&tar, &opts).unwrap();
        sb.assert_untouched();
    }
}

#[test]
fn hardlinks_out_of_dest_are_refused() {
    let sb = Sandbox::new();
    let abs_secret = format!("{}/secret", sb.outside_abs());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            TarBuilder::new().hardlink("h", &abs_secret).finish(),
            "absolute",
        ),
        (
            TarBuilder::new()
                .hardlink("h", "../outside/secret")
                .finish(),
            "../",
        ),
        (
            TarBuilder::new()
                .hardlink("h", "../../outside/secret")
                .finish(),
            "../../",
        ),
        (
            TarBuilder::new()
                .symlink("a", &sb.outside_abs())
                .hardlink("h", "a/secret")
                .finish(),
            "symlinked parent",
        ),
        (
            TarBuilder::new()
                .symlink("b", "../../outside")
                .hardlink("h", "b/secret")
                .finish(),
            "relative symlinked parent",
        ),
        (
            TarBuilder::new()
                .dir("d/", 0o755)
                .hardlink("h", "d")
                .finish(),
            "directory",
        ),
        (
            TarBuilder::new().hardlink("h", "missing").finish(),
            "missing",
        ),
        (TarBuilder::new().hardlink("h", "/").finish(), "root"),
    ];
    for (tar, what) in cases {
        let e = expect_err(sb.apply(&tar, &UnpackOptions::default()));
        assert!(
            matches!(e, UnpackError::Hardlink { .. }),
            "{what}: wrong error {e}"
        );
        assert_eq!(
            fs::metadata(sb.outside.join("secret")).unwrap().nlink(),
            1,
            "{what}"
        );
        sb.assert_untouched();
    }
    // an in-root symlinked parent is fine: it resolves inside
    let sb = Sandbox::new();
    let tar = TarBuilder::new()
        .file("real/f", b"f", 0o644)
        .symlink("s", "/real")
        .hardlink("h", "s/f")
        .finish();
    sb.apply(&tar, &UnpackOptions::default()).unwrap();
    assert_eq!(
        fs::metadata(sb.dest.join("h")).unwrap().ino(),
        fs::metadata(sb.dest.join("real/f")).unwrap().ino()
    );
}

#[test]
fn a_symlink_is_replaced_not_written_through() {
    let sb = Sandbox::new();
    let secret = format!("{}/secret", sb.outside_abs());
    let tar = TarBuilder::new()
        .symlink("x", &secret)
        .file("x", b"pwned", 0o644)
        .symlink("rel", "../../outside/secret")
        .file("rel", b"pwned", 0o644)
        .symlink("d", &sb.outside_abs())
        .dir("d/", 0o777)
        .symlink("dev", &secret)
        .char_device("dev", 1, 3, 0o666)
        .symlink("l", &secret)
        .file("target", b"t", 0o644)
        .hardlink("l", "target")
        .finish();
    sb.apply(&tar, &UnpackOptions::default()).unwrap();
    for f in ["x", "rel"] {
        let md = fs::symlink_metadata(sb.dest.join(f)).unwrap();
        assert!(md.is_file(), "{f}");
        assert_eq!(fs::read(sb.dest.join(f)).unwrap(), b"pwned");
    }
    assert!(fs::symlink_metadata(sb.dest.join("d")).unwrap().is_dir());
    assert!(fs::symlink_metadata(sb.dest.join("dev"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(fs::read(sb.dest.join("l")).unwrap(), b"t");
    sb.assert_untouched();

    // and a symlink planted by an earlier layer (plain mode), too
    let sb = Sandbox::new();
    std::os::unix::fs::symlink(&secret, sb.dest.join("pre")).unwrap();
    let tar = TarBuilder::new().file("pre", b"pwned", 0o644).finish();
    sb.apply(&tar, &plain()).unwrap();
    assert!(fs::symlink_metadata(sb.dest.join("pre")).unwrap().is_file());
    sb.assert_untouched();
}

#[test]
fn a_file_as_parent_is_an_error() {
    let sb = Sandbox::new();
    let tar = TarBuilder::new()
        .file("f", b"file", 0o644)
        .file("f/x", b"x", 0o644)
        .finish();
    let e = expect_err(sb.apply(&tar, &UnpackOptions::default()));
    assert!(matches!(e, UnpackError::NotADirectory { .. }), "{e}");
    assert!(e.to_string().contains("f/x"), "{e}");
    // a dangling symlink as parent, too
    let sb = Sandbox::new();
    let tar = TarBuilder::new()
        .symlink("dl", "/missing/dir")
        .file("dl/x", b"x", 0o644)
        .finish();
    let e = expect_err(sb.apply(&tar, &UnpackOptions::default()));
    assert!(matches!(e, UnpackError::NotADirectory { .. }), "{e}");
    sb.assert_untouched();
}

#[test]
fn device_nodes_are_created_inside_only() {
    let sb = Sandbox::new();
    let tar = TarBuilder::new()
        .dir(&format!("{}/", sb.outside_abs()), 0o755)
        .symlink("dev", &sb.outside_abs())
        .char_device("dev/kmsg", 1, 11, 0o666)
        .block_device("dev/sda", 8, 0, 0o660)
        .fifo("dev/fifo", 0o600)
        .finish();
    sb.apply(&tar, &UnpackOptions::default()).unwrap();
    let inside = sb.dest.join(&sb.outside_abs()[1..]);
    assert!(fs::symlink_metadata(inside.join("kmsg"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(fs::symlink_metadata(inside.join("sda"))
        .unwrap()
        .file_type()
        .is_block_device());
    sb.assert_untouched();
}

#[test]
fn huge_sparse_file_beyond_the_limit() {
    let sb = Sandbox::new();
    let tar = sparse_tar("bomb", 1 << 40, b"x");
    let t = Instant::now();
    let e = expect_err(sb.apply(&tar, &small_limits()));
    assert!(
        matches!(
            e,
            UnpackError::LimitExceeded {
                limit: Limit::FileSize,
                ..
            }
        ),
        "{e}"
    );
    assert!(t.elapsed().as_secs() < 2);
    assert!(!sb.dest.join("bomb").exists(), "refused before writing");
    // a plain header claiming a huge size, too
    let mut h = tar::Header::new_gnu();
    h.set_path("big").unwrap();
    h.set_size(1 << 40);
    h.set_mode(0o644);
    h.set_cksum();
    let mut tar = Vec::from(h.as_bytes().as_slice());
    tar.extend_from_slice(&[0; 1024]);
    let e = expect_err(sb.apply(&tar, &small_limits()));
    assert!(matches!(e, UnpackError::LimitExceeded { .. }), "{e}");
    sb.assert_untouched();
}

#[test]
fn gzip_bomb_beyond_the_limit() {
    // 64 MiB of zeros in one file: ~64 KiB of gzip
    let size = 64usize << 20;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut h = tar::Header::new_gnu();
    h.set_path("zeros").unwrap();
    h.set_size(size as u64);
    h.set_mode(0o644);
    h.set_cksum();
    enc.write_all(h.as_bytes()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..size >> 20 {
        enc.write_all(&chunk).unwrap();
    }
    enc.write_all(&[0; 1024]).unwrap();
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    let sb = Sandbox::new();
    let e = expect_err(sb.apply(&bomb, &small_limits()));
    assert!(
        matches!(
            e,
            UnpackError::LimitExceeded {
                limit: Limit::FileSize,
                ..
            }
        ),
        "{e}"
    );
    // many files adding up past the total limit
    let mut tb = TarBuilder::new();
    let mb = vec![1u8; 1 << 20];
    for i in 0..8 {
        tb.file(&format!("f{i}"), &mb, 0o644);
    }
    let gz = rtest::Compression::Gzip.compress(&tb.finish()).unwrap();
    let e = expect_err(sb.apply(&gz, &small_limits()));
    assert!(
        matches!(
            e,
            UnpackError::LimitExceeded {
                limit: Limit::TotalBytes,
                ..
            }
        ),
        "{e}"
    );
    // zeros after the end of the archive count against the stream limit
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&TarBuilder::new().file("f", b"x", 0o644).finish())
        .unwrap();
    for _ in 0..16 {
        enc.write_all(&chunk).unwrap();
    }
    let tail_bomb = enc.finish().unwrap();
    let sb = Sandbox::new();
    let e = expect_err(sb.apply(&tail_bomb, &small_limits()));
    assert!(
        matches!(
            e,
            UnpackError::LimitExceeded {
                limit: Limit::TarBytes,
                ..
            }
        ),
        "{e}"
    );
    sb.assert_untouched();
}

#[test]
fn too_many_entries() {
    let mut tb = TarBuilder::new();
    for i in 0..1001 {
        tb.file(&format!("f{i}"), b"", 0o644);
    }
    let sb = Sandbox::new();
    let e = expect_err(sb.apply(&tb.finish(), &small_limits()));
    assert!(
        matches!(
            e,
            UnpackError::LimitExceeded {
                limit: Limit::Entries,
                max: 1000,
                ..
            }
        ),
        "{e}"
    );
    sb.assert_untouched();
}

#[test]
fn truncated_tar() {
    let data = vec![7u8; 10_000];
    let tar = TarBuilder::new()
        .file("a", b"a", 0o644)
        .file("big", &data, 0o644)
        .finish();
    for cut in [512 + 512 + 512 + 5000, 512 + 512 + 200] {
        let sb = Sandbox::new();
        let e = expect_err(sb.apply(&tar[..cut], &UnpackOptions::default()));
        assert!(matches!(e, UnpackError::Truncated { .. }), "cut {cut}: {e}");
        sb.assert_untouched();
    }
}

#[test]
fn truncated_gzip() {
    let mut x: u32 = 1;
    let data: Vec<u8> = (0..256 << 10)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 24) as u8
        })
        .collect();
    let tar = TarBuilder::new()
        .file("a", &data, 0o644)
        .file("b", &data[..1000], 0o644)
        .finish();
    let gz = rtest::Compression::Gzip.compress(&tar).unwrap();
    for cut in [gz.len() / 2, gz.len() - 4] {
        let sb = Sandbox::new();
        let e = expect_err(sb.apply(&gz[..cut], &UnpackOptions::default()));
        assert!(
            matches!(
                e,
                UnpackError::Decompress {
                    compression: Compression::Gzip,
                    ..
                }
            ),
            "cut {cut}: {e}"
        );
        sb.assert_untouched();
    }
    // and zstd
    let zst = rtest::Compression::Zstd.compress(&tar).unwrap();
    let sb = Sandbox::new();
    let e = expect_err(sb.apply(&zst[..zst.len() / 2], &UnpackOptions::default()));
    assert!(matches!(e, UnpackError::Decompress { .. }), "{e}");
    // corrupted gzip data (CRC)
    let mut bad = gz.clone();
    let n = bad.len();
    bad[n - 6] ^= 0xff;
    let e = expect_err(sb.apply(&bad, &UnpackOptions::default()));
    assert!(matches!(e, UnpackError::Decompress { .. }), "{e}");
}

#[test]
fn garbage_and_bad_checksums() {
    let sb = Sandbox::new();
    let mut x: u32 = 12345;
    let garbage: Vec<u8> = (0..8192)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8 | 1
        })
        .collect();
    let e = expect_err(sb.apply(&garbage, &UnpackOptions::default()));
    assert!(matches!(e, UnpackError::Tar { .. }), "{e}");
    let mut tar = TarBuilder::new().file("f", b"x", 0o644).finish();
    tar[3] ^= 0x20; // the name, not the checksum
    let e = expect_err(sb.apply(&tar, &UnpackOptions::default()));
    assert!(e.to_string().contains("checksum"), "{e}");
    // a gzip magic followed by garbage
    let mut g = vec![0x1f, 0x8b];
    g.extend_from_slice(&garbage);
    let e = expect_err(sb.apply(&g, &UnpackOptions::default()));
    assert!(matches!(e, UnpackError::Decompress { .. }), "{e}");
    // empty input: no entries, but a valid (empty) tar stream is all it takes
    let stats = sb.apply(&[], &UnpackOptions::default()).unwrap();
    assert_eq!(stats.entries, 0);
    assert!(names(&sb.dest).is_empty());
    sb.assert_untouched();
}

#[test]
fn remove_dir_all_does_not_follow_symlinks() {
    let sb = Sandbox::new();
    let secret = format!("{}/secret", sb.outside_abs());
    let tar = TarBuilder::new()
        .symlink("a", &sb.outside_abs())
        .symlink("s", &secret)
        .dir("d/", 0o000)
        .file("d/f", b"x", 0o000)
        .symlink("d/up", "../../..")
        .finish();
    sb.apply(&tar, &UnpackOptions::default()).unwrap();
    std::os::unix::fs::symlink(&sb.outside, sb.dest.join("d/out")).unwrap();
    remove_dir_all(&sb.dest).unwrap();
    assert!(!sb.dest.exists());
    remove_dir_all(&sb.dest).unwrap(); // gone already: fine
    fs::create_dir(&sb.dest).unwrap();
    // a symlink as the path itself is removed, not followed
    let link = sb.base.join("d/link");
    std::os::unix::fs::symlink(&sb.outside, &link).unwrap();
    remove_dir_all(&link).unwrap();
    assert!(!link.exists());
    // dest's parent changed, of course: compare the sentinel only
    assert_eq!(
        snapshot(&sb.outside, Path::new("/nonexistent")),
        sb.before
            .iter()
            .filter(|(p, _)| p.starts_with(&sb.outside))
            .map(|(p, d)| (p.clone(), d.clone()))
            .collect()
    );
}

#[test]
fn parallel_unpacks() {
    let layer = rtest::busybox_layer();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let data = layer.data.clone();
            std::thread::spawn(move || {
                let sb = Sandbox::new();
                let s = apply_layer(
                    Cursor::new(data),
                    Compression::Gzip,
                    &sb.dest,
                    &UnpackOptions::default(),
                )
                .unwrap();
                assert!(sb.dest.join("bin/busybox").exists());
                s.diff_id
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), layer.diff_id);
    }
}
