//! A busybox root filesystem built from Debian's static busybox.

use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's `busybox-static` puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The static busybox binary; fails loudly when `busybox-static` is not installed.
pub fn busybox_path() -> Result<PathBuf> {
    let p = PathBuf::from(std::env::var("RTEST_BUSYBOX").unwrap_or_else(|_| BUSYBOX.into()));
    if !p.exists() {
        bail!(
            "busybox not found at {}: install busybox-static (scripts/deps.sh)",
            p.display()
        );
    }
    Ok(p)
}

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
";

pub const GROUP: &str = "root:x:0:
daemon:x:1:
staff:x:50:app
app:x:1000:
nogroup:x:65534:
";

/// Fills `dir` with busybox, a link per applet, users (root, daemon, app=1000, nobody) and
/// groups (staff=50 lists app as a member), and the empty mount points a container needs.
pub fn populate_busybox(dir: &Path) -> Result<()> {
    let busybox = busybox_path()?;
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root",
        "home/app", "var/www", "run",
    ] {
        fs::create_dir_all(dir.join(d)).with_context(|| format!("creating {d} in rootfs"))?;
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    let target = dir.join("bin/busybox");
    fs::copy(&busybox, &target).with_context(|| format!("copying {}", busybox.display()))?;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
    for applet in applets(&busybox)? {
        let path = dir.join(&applet);
        if path.exists() || applet == "bin/busybox" {
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        symlink("/bin/busybox", &path).with_context(|| format!("linking {applet}"))?;
    }
    fs::write(dir.join("etc/passwd"), PASSWD)?;
    fs::write(dir.join("etc/group"), GROUP)?;
    fs::write(dir.join("etc/hostname"), "busybox\n")?;
    fs::write(dir.join("etc/hosts"), "127.0.0.1\tlocalhost\n")?;
    fs::write(dir.join("var/www/index.html"), "hello from busybox\n")?;
    Ok(())
}

/// Applet paths relative to the root, as `busybox --list-full` prints them.
pub fn applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .with_context(|| format!("running {} --list-full", busybox.display()))?;
    if !out.status.success() {
        bail!("{} --list-full failed", busybox.display());
    }
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}
