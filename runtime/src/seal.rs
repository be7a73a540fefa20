//! Keeps runr's binary out of reach of the containers it enters (CVE-2019-5736): a process in
//! the container could open `/proc/<runr pid>/exe` and, once runr exits, write through it.
//!
//! Preferred: re-execute runr from a private, detached, read-only overlayfs over its own
//! directory (what runc 1.2 does). No copy is made and the page cache stays shared, so it costs
//! a few mount syscalls instead of copying the whole binary; overlayfs without an upper layer
//! cannot be made writable, even by remounting. Fallback, on kernels without the new mount API:
//! a sealed memfd copy (`pentacle`), as youki does.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;

/// Makes sure this process runs from a copy of runr that nothing can write to; re-executes
/// itself when it does not. Returns only when already protected, or with the reason it failed.
pub fn ensure_sealed() -> std::io::Result<()> {
    if running_from_readonly_overlay() || pentacle::is_sealed() {
        return Ok(());
    }
    // exec_from_overlay only returns on failure
    if let Err(e) = exec_from_overlay() {
        tracing::debug!("overlay re-exec unavailable ({e}), copying to a sealed memfd");
    }
    pentacle::ensure_sealed()
}

fn running_from_readonly_overlay() -> bool {
    // SAFETY: statfs fills the struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let path = c"/proc/self/exe";
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return false;
    }
    if st.f_type as i64 != OVERLAYFS_SUPER_MAGIC {
        return false;
    }
    // SAFETY: statvfs fills the struct we own.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut vfs) } != 0 {
        return false;
    }
    vfs.f_flag & libc::ST_RDONLY != 0
}

fn check(ret: libc::c_long, what: &str) -> std::io::Result<OwnedFd> {
    if ret < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    // SAFETY: the syscall returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

fn fs_mount(
    fstype: &std::ffi::CStr,
    options: &[(&std::ffi::CStr, &CString)],
) -> std::io::Result<OwnedFd> {
    // SAFETY: raw new-mount-API syscalls with valid C strings and descriptors we own.
    unsafe {
        let ctx = check(
            libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC),
            "fsopen",
        )?;
        for (key, value) in options {
            let r = libc::syscall(
                libc::SYS_fsconfig,
                ctx.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            );
            if r < 0 {
                let e = std::io::Error::last_os_error();
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("fsconfig {key:?}: {e}"),
                ));
            }
        }
        let r = libc::syscall(
            libc::SYS_fsconfig,
            ctx.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        );
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                e.kind(),
                format!("fsconfig create: {e}"),
            ));
        }
        check(
            libc::syscall(
                libc::SYS_fsmount,
                ctx.as_raw_fd(),
                FSMOUNT_CLOEXEC,
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            ),
            "fsmount",
        )
    }
}

/// Overlay `lowerdir` values treat `:` and `,` as separators and `\` as escape.
fn escape_lowerdir(p: &OsStr) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in p.as_bytes() {
        if matches!(b, b':' | b',' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

fn exec_from_overlay() -> std::io::Result<()> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let (dir, name) = match (exe.parent(), exe.file_name()) {
        (Some(d), Some(n)) => (d, n),
        _ => return Err(std::io::Error::other("cannot split /proc/self/exe")),
    };
    // overlayfs needs two lower layers when it has no upper one: the second is an empty,
    // detached tmpfs, reached through our descriptor to it
    let empty = fs_mount(c"tmpfs", &[])?;
    let mut lower = escape_lowerdir(dir.as_os_str());
    lower.extend_from_slice(format!(":/proc/self/fd/{}", empty.as_raw_fd()).as_bytes());
    let lower = CString::new(lower).map_err(std::io::Error::other)?;
    let overlay = fs_mount(c"overlay", &[(c"lowerdir", &lower)])?;
    drop(empty);
    exec_at(&overlay, Path::new(name))
}

fn exec_at(dir: &OwnedFd, name: &Path) -> std::io::Result<()> {
    let to_c = |s: &OsStr| CString::new(s.as_bytes()).map_err(std::io::Error::other);
    let name = to_c(name.as_os_str())?;
    let args: Vec<CString> = std::env::args_os()
        .map(|a| to_c(&a))
        .collect::<Result<_, _>>()?;
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(std::io::Error::other)
        })
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: NUL-terminated argv/envp arrays of valid C strings that outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            dir.as_raw_fd(),
            name.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            0,
        );
    }
    Err(std::io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    #[test]
    fn lowerdir_escaping() {
        assert_eq!(
            super::escape_lowerdir("/a:b,c\\d".as_ref()),
            b"/a\\:b\\,c\\\\d".to_vec()
        );
    }
}
