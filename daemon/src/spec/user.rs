//! The container's user: `name`, `uid`, `name:group`, `uid:gid` (any mix), resolved against
//! the image's /etc/passwd and /etc/group, read confined to the rootfs.

use super::SpecError;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::io::Read;
use std::path::Path;

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups from /etc/group memberships (when no group was named), then the
    /// request's own, without duplicates.
    pub additional_gids: Vec<u32>,
    /// The passwd home directory, when the user was found there.
    pub home: Option<String>,
    /// The user name, when the user was found in /etc/passwd.
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_owned(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_owned(),
                gid: f[2].trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Reads `rel` (e.g. `etc/passwd`) inside `rootfs`, resolving every symlink on the way as if
/// `rootfs` were `/`: an image cannot make rcd read a host file. `None` when it is absent.
pub fn read_in_rootfs(rootfs: &Path, rel: &str) -> Result<Option<String>, SpecError> {
    let err = |source: std::io::Error| SpecError::ReadRootfs {
        path: rootfs.join(rel),
        source,
    };
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(e.into()))?;
    let mut tries = 0;
    let fd = loop {
        match rustix::fs::openat2(
            &root,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => break fd,
            Err(Errno::AGAIN) if tries < 64 => tries += 1,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(err(e.into())),
        }
    };
    let mut text = String::new();
    // a passwd file is small; a huge one is an image trying to make rcd use memory
    std::fs::File::from(fd)
        .take(16 << 20)
        .read_to_string(&mut text)
        .map_err(err)?;
    Ok(Some(text))
}

/// Splits `user[:group]`; each part must be non-empty.
fn split_user(spec: &str) -> Result<(&str, Option<&str>), SpecError> {
    let bad = |reason: &str| SpecError::InvalidUser {
        user: spec.to_owned(),
        reason: reason.to_owned(),
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if u.is_empty() {
        return Err(bad("the user part is empty"));
    }
    if g == Some("") {
        return Err(bad("the group part is empty"));
    }
    if g.is_some_and(|g| g.contains(':')) {
        return Err(bad("expected user[:group]"));
    }
    Ok((u, g))
}

/// Resolves `spec` (`None`: the image has no user, which means root) in `rootfs`.
pub fn resolve(
    rootfs: &Path,
    spec: Option<&str>,
    extra_gids: &[u32],
) -> Result<ResolvedUser, SpecError> {
    let spec = spec.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("0");
    let (u, g) = split_user(spec)?;
    let numeric_user = u.parse::<u32>().ok();
    let numeric_group = g.and_then(|g| g.parse::<u32>().ok());
    // numeric ids need no passwd; still read it (if any) for HOME and memberships
    let passwd = read_in_rootfs(rootfs, "etc/passwd")?;
    let users = passwd.as_deref().map(parse_passwd).unwrap_or_default();
    let entry = match numeric_user {
        Some(uid) => users.iter().find(|e| e.uid == uid).cloned(),
        None => {
            if passwd.is_none() {
                return Err(SpecError::UnknownUser {
                    name: u.to_owned(),
                    reason: "the image has no /etc/passwd".into(),
                });
            }
            Some(users.iter().find(|e| e.name == u).cloned().ok_or_else(|| {
                SpecError::UnknownUser {
                    name: u.to_owned(),
                    reason: "no such user in the image's /etc/passwd".into(),
                }
            })?)
        }
    };
    let uid = numeric_user.or(entry.as_ref().map(|e| e.uid)).unwrap_or(0);
    let group_text = if g.is_some() && numeric_group.is_none() || entry.is_some() {
        read_in_rootfs(rootfs, "etc/group")?
    } else {
        None
    };
    let groups = group_text.as_deref().map(parse_group).unwrap_or_default();
    let gid = match (g, numeric_group) {
        (_, Some(gid)) => gid,
        (Some(name), None) => {
            if group_text.is_none() {
                return Err(SpecError::UnknownGroup {
                    name: name.to_owned(),
                    reason: "the image has no /etc/group".into(),
                });
            }
            groups
                .iter()
                .find(|e| e.name == name)
                .map(|e| e.gid)
                .ok_or_else(|| SpecError::UnknownGroup {
                    name: name.to_owned(),
                    reason: "no such group in the image's /etc/group".into(),
                })?
        }
        (None, None) => entry.as_ref().map(|e| e.gid).unwrap_or(0),
    };
    let mut additional_gids = Vec::new();
    // as runc: memberships count only when the group was not named explicitly
    if g.is_none() {
        if let Some(e) = &entry {
            for grp in &groups {
                if grp.members.iter().any(|m| m == &e.name)
                    && grp.gid != gid
                    && !additional_gids.contains(&grp.gid)
                {
                    additional_gids.push(grp.gid);
                }
            }
        }
    }
    for &x in extra_gids {
        if !additional_gids.contains(&x) {
            additional_gids.push(x);
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: entry
            .as_ref()
            .map(|e| e.home.clone())
            .filter(|h| !h.is_empty()),
        name: entry.map(|e| e.name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
        app:x:1000:1000:app:/home/app:/bin/sh\n\
        broken-line\n";
    const GROUP: &str =
        "root:x:0:\nstaff:x:50:app,other\nwheel:x:10:app\napp:x:1000:\nnogroup:x:65534:\n";

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/passwd"), PASSWD).unwrap();
        fs::write(d.path().join("etc/group"), GROUP).unwrap();
        d
    }

    #[test]
    fn no_user_means_root_with_home() {
        let d = rootfs();
        let u = resolve(d.path(), None, &[]).unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
        assert_eq!(u.home.as_deref(), Some("/root"));
        assert_eq!(u.name.as_deref(), Some("root"));
    }

    #[test]
    fn a_name_gets_its_gid_home_and_memberships() {
        let d = rootfs();
        let u = resolve(d.path(), Some("app"), &[7]).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![50, 10, 7]);
        assert_eq!(u.home.as_deref(), Some("/home/app"));
    }

    #[test]
    fn an_explicit_group_skips_memberships() {
        let d = rootfs();
        let u = resolve(d.path(), Some("app:nogroup"), &[]).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 65534));
        assert!(u.additional_gids.is_empty());
        let u = resolve(d.path(), Some("app:5"), &[]).unwrap();
        assert_eq!(u.gid, 5);
    }

    #[test]
    fn numeric_ids_need_no_passwd() {
        let d = tempfile::tempdir().unwrap();
        let u = resolve(d.path(), Some("1234:5678"), &[]).unwrap();
        assert_eq!((u.uid, u.gid), (1234, 5678));
        assert_eq!(u.home, None);
        let u = resolve(d.path(), Some("1234"), &[]).unwrap();
        assert_eq!((u.uid, u.gid), (1234, 0));
    }

    #[test]
    fn a_numeric_uid_in_passwd_takes_its_entry() {
        let d = rootfs();
        let u = resolve(d.path(), Some("1000"), &[]).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![50, 10]);
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let d = rootfs();
        let e = resolve(d.path(), Some("x"), &[]).unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown user \"x\": no such user in the image's /etc/passwd"
        );
        let e = resolve(d.path(), Some("app:nope"), &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "unknown group \"nope\": no such group in the image's /etc/group"
        );
        let empty = tempfile::tempdir().unwrap();
        let e = resolve(empty.path(), Some("app"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("the image has no /etc/passwd"), "{e}");
        let e = resolve(empty.path(), Some("0:staff"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("the image has no /etc/group"), "{e}");
    }

    #[test]
    fn malformed_user_specs_are_refused() {
        let d = rootfs();
        for (spec, why) in [
            (":1", "the user part is empty"),
            ("1:", "the group part is empty"),
            ("1:2:3", "expected user[:group]"),
        ] {
            let e = resolve(d.path(), Some(spec), &[]).unwrap_err().to_string();
            assert!(e.contains(why), "{spec}: {e}");
            assert!(e.contains(&format!("\"{spec}\"")), "{spec}: {e}");
        }
    }

    #[test]
    fn a_symlinked_passwd_cannot_escape_the_rootfs() {
        let host = tempfile::tempdir().unwrap();
        fs::write(
            host.path().join("passwd"),
            "evil:x:4242:4242::/evil:/bin/sh\n",
        )
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("etc")).unwrap();
        // an absolute link and a ../ link both resolve inside the rootfs
        std::os::unix::fs::symlink(host.path().join("passwd"), d.path().join("etc/passwd"))
            .unwrap();
        let e = resolve(d.path(), Some("evil"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no /etc/passwd"), "{e}");
        fs::remove_file(d.path().join("etc/passwd")).unwrap();
        let up = "../".repeat(20) + host.path().join("passwd").to_str().unwrap();
        std::os::unix::fs::symlink(&up, d.path().join("etc/passwd")).unwrap();
        let e = resolve(d.path(), Some("evil"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no /etc/passwd"), "{e}");
        // a link that stays inside is followed
        fs::write(d.path().join("etc/passwd.real"), PASSWD).unwrap();
        fs::remove_file(d.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd.real", d.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve(d.path(), Some("app"), &[]).unwrap().uid, 1000);
    }

    #[test]
    fn a_missing_rootfs_is_an_error_naming_it() {
        let e = resolve(Path::new("/nonexistent-rootfs"), Some("app"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent-rootfs"), "{e}");
    }
}
