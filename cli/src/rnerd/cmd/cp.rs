//! `rnerd cp`: files between the host and a running container, through the container's
//! root as its init sees it (`/proc/PID/root`).
//!
//! Container paths are resolved by the kernel inside that root (`openat2` with
//! RESOLVE_IN_ROOT): `..` and symlinks, absolute ones too, stay in the container, whatever
//! the container has made of its files. Below the resolved start, the walk never follows a
//! symlink (every step is an `*at` call with O_NOFOLLOW): symlinks are copied as symlinks.

use super::super::names::name_of;
use super::super::Ctx;
use super::{resolve, state};
use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `CONTAINER:PATH` or a host path (which may start with `/` or `.` to hold a `:`).
pub fn split_arg(arg: &str) -> (Option<&str>, &str) {
    if arg.starts_with('/') || arg.starts_with('.') {
        return (None, arg);
    }
    match arg.split_once(':') {
        Some((c, p)) if !c.is_empty() => (Some(c), p),
        _ => (None, arg),
    }
}

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: fd was just returned to us by a successful open
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens `path` inside the root `root` (never outside it).
fn open_in_root(root: &OwnedFd, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    openat2(
        root.as_raw_fd(),
        rel,
        OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
    .map(own)
}

/// The last component of `p` and the rest ("" for `/`).
fn split_last(p: &str) -> (String, String) {
    let t = p.trim_end_matches('/');
    match t.rfind('/') {
        Some(i) => (
            if i == 0 {
                "/".into()
            } else {
                t[..i].to_owned()
            },
            t[i + 1..].to_owned(),
        ),
        None => (".".into(), t.to_owned()),
    }
}

fn check_name(name: &str, what: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." {
        bail!("cannot copy {what:?}: name a file or directory in it");
    }
    Ok(())
}

/// Copies `name` in the container directory `dir` to the host path `dst` (made).
fn copy_out(dir: RawFd, name: &str, dst: &Path) -> Result<()> {
    let st = fstatat(Some(dir), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .with_context(|| format!("reading {name} in the container"))?;
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    let mode = st.st_mode & 0o7777;
    if kind == SFlag::S_IFLNK {
        let target = nix::fcntl::readlinkat(Some(dir), name)?;
        let _ = std::fs::remove_file(dst);
        std::os::unix::fs::symlink(&target, dst)
            .with_context(|| format!("creating {}", dst.display()))?;
    } else if kind == SFlag::S_IFDIR {
        let fd = own(openat(
            Some(dir),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?);
        std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
        // the names through the open descriptor itself (no path is looked up again)
        let names: Vec<String> = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .with_context(|| format!("listing {name} in the container"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for n in names {
            copy_out(fd.as_raw_fd(), &n, &dst.join(&n))?;
        }
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))?;
    } else if kind == SFlag::S_IFREG {
        let fd = own(openat(
            Some(dir),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?);
        let mut src = File::from(fd);
        let mut out = File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
        std::io::copy(&mut src, &mut out).with_context(|| format!("copying {name}"))?;
        out.set_permissions(std::fs::Permissions::from_mode(mode))?;
    } else {
        bail!("{name} in the container is not a file, directory or symlink: not copied");
    }
    Ok(())
}

/// Copies the host path `src` to `name` in the container directory `dir`.
fn copy_in(src: &Path, dir: RawFd, name: &str) -> Result<()> {
    let md =
        std::fs::symlink_metadata(src).with_context(|| format!("reading {}", src.display()))?;
    let mode = Mode::from_bits_truncate(md.permissions().mode() & 0o7777);
    let ft = md.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(src)?;
        match unlinkat(Some(dir), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(anyhow!("replacing {name} in the container: {e}")),
        }
        symlinkat(&target, Some(dir), name)
            .with_context(|| format!("creating {name} in the container"))?;
    } else if ft.is_dir() {
        match mkdirat(Some(dir), name, mode) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(anyhow!("creating {name} in the container: {e}")),
        }
        // O_NOFOLLOW: a symlink where the directory should be is refused, not followed
        let fd = own(openat(
            Some(dir),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening {name} in the container (not a directory?)"))?);
        for e in std::fs::read_dir(src)? {
            let e = e?;
            let n = e.file_name().to_string_lossy().into_owned();
            copy_in(&e.path(), fd.as_raw_fd(), &n)?;
        }
    } else if ft.is_file() {
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_TRUNC
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC;
        let fd = match openat(Some(dir), name, flags, mode) {
            Err(Errno::ELOOP) => {
                // a symlink in the way is replaced, never written through
                unlinkat(Some(dir), name, UnlinkatFlags::NoRemoveDir)?;
                openat(Some(dir), name, flags, mode)
            }
            r => r,
        }
        .with_context(|| format!("creating {name} in the container"))?;
        let fd = own(fd);
        fchmod(fd.as_raw_fd(), mode)?;
        let mut out = File::from(fd);
        let mut input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        std::io::copy(&mut input, &mut out)
            .with_context(|| format!("copying {}", src.display()))?;
    } else {
        bail!(
            "{} is not a file, directory or symlink: not copied",
            src.display()
        );
    }
    Ok(())
}

pub async fn cp(ctx: &Ctx, src: &str, dst: &str) -> Result<()> {
    let (sc, sp) = split_arg(src);
    let (dc, dp) = split_arg(dst);
    let (container, ctr_path, host, to_container) = match (sc, dc) {
        (Some(c), None) => (c, sp, dp, false),
        (None, Some(c)) => (c, dp, sp, true),
        (Some(_), Some(_)) => {
            bail!("copying between containers is not supported: copy through the host")
        }
        (None, None) => bail!("one of the paths must be CONTAINER:PATH"),
    };
    if ctr_path.is_empty() {
        bail!("empty path in the container: CONTAINER:/path");
    }
    let c = resolve(ctx, container).await?;
    let s = state(ctx, &c).await?;
    if !s.running() || s.pid == 0 {
        bail!(
            "container {} is not running: cp needs it running (`rnerd start` it first)",
            name_of(&c)
        );
    }
    let root = own(nix::fcntl::open(
        format!("/proc/{}/root", s.pid).as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening the root of container {}", name_of(&c)))?);
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
    if to_container {
        let src = PathBuf::from(host);
        if !src.exists() && std::fs::symlink_metadata(&src).is_err() {
            bail!("no such file or directory on the host: {host}");
        }
        let src_name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // into an existing directory: under the source's name; else as the given name
        let (dir, name) = match open_in_root(&root, ctr_path, dir_flags) {
            Ok(d) => {
                check_name(&src_name, host)?;
                (d, src_name)
            }
            Err(_) => {
                let (parent, name) = split_last(ctr_path);
                check_name(&name, ctr_path)?;
                let d = open_in_root(&root, &parent, dir_flags).map_err(|e| {
                    anyhow!(
                        "{parent} in container {}: {e} (make the directory first)",
                        name_of(&c)
                    )
                })?;
                (d, name)
            }
        };
        copy_in(&src, dir.as_raw_fd(), &name)
    } else {
        let (parent, name) = split_last(ctr_path);
        check_name(&name, ctr_path)?;
        let dir = open_in_root(&root, &parent, dir_flags)
            .map_err(|e| anyhow!("{parent} in container {}: {e}", name_of(&c)))?;
        // the source must exist before anything is made on the host
        fstatat(
            Some(dir.as_raw_fd()),
            name.as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| anyhow!("{ctr_path} in container {}: {e}", name_of(&c)))?;
        let host = Path::new(host);
        let target = if host.is_dir() {
            host.join(&name)
        } else {
            host.to_owned()
        };
        copy_out(dir.as_raw_fd(), &name, &target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        assert_eq!(split_arg("web:/etc/hosts"), (Some("web"), "/etc/hosts"));
        assert_eq!(split_arg("/tmp/a:b"), (None, "/tmp/a:b"));
        assert_eq!(split_arg("./a:b"), (None, "./a:b"));
        assert_eq!(split_arg("file"), (None, "file"));
        assert_eq!(split_last("/a/b/"), ("/a".into(), "b".into()));
        assert_eq!(split_last("/a"), ("/".into(), "a".into()));
        assert_eq!(split_last("a"), (".".into(), "a".into()));
        assert!(check_name("..", "/x/..").is_err());
    }

    #[test]
    fn paths_stay_in_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/inside"), "in").unwrap();
        std::fs::write(d.path().join("outside"), "out").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("etc/up")).unwrap();
        let fd = own(
            nix::fcntl::open(&root, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap(),
        );
        // an absolute symlink resolves inside the root
        assert!(open_in_root(&fd, "/abs/inside", OFlag::O_RDONLY).is_ok());
        // .. and a relative symlink climbing out stop at the root
        assert!(open_in_root(&fd, "/../../outside", OFlag::O_RDONLY).is_err());
        assert!(open_in_root(&fd, "/etc/up", OFlag::O_RDONLY).is_err());
        // copying in through a symlinked directory name is refused, not followed
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), "x").unwrap();
        let dir = open_in_root(&fd, "/", OFlag::O_RDONLY | OFlag::O_DIRECTORY).unwrap();
        std::os::unix::fs::symlink("/tmp", root.join("link")).unwrap();
        assert!(copy_in(&src, dir.as_raw_fd(), "link").is_err());
        // a file over a symlink replaces the link
        std::fs::write(d.path().join("victim"), "keep").unwrap();
        std::os::unix::fs::symlink(d.path().join("victim"), root.join("etc/v")).unwrap();
        let etc = open_in_root(&fd, "/etc", OFlag::O_RDONLY | OFlag::O_DIRECTORY).unwrap();
        copy_in(&src.join("f"), etc.as_raw_fd(), "v").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("victim")).unwrap(),
            "keep"
        );
        assert_eq!(std::fs::read_to_string(root.join("etc/v")).unwrap(), "x");
        // out: a directory with a symlink in it
        let out = d.path().join("out");
        copy_out(dir.as_raw_fd(), "etc", &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("inside")).unwrap(), "in");
        assert!(std::fs::symlink_metadata(out.join("up"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
