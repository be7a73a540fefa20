//! OCI runtime bundles (a rootfs plus `config.json`) for driving runtimes directly.
//!
//! The config is kept as JSON so tests can set any field, including invalid ones on purpose.

use crate::rootfs::populate_busybox;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A bundle in a temporary directory, removed on drop.
pub struct Bundle {
    dir: tempfile::TempDir,
    /// The `config.json` that [`Bundle::save`] writes.
    pub config: Value,
}

/// A container ID unique in this process and across concurrent test processes.
pub fn unique_id(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Bundle {
    /// A busybox bundle running `args`, with runc's default confinement, no terminal, and the
    /// cgroup path `/rtest-<id>` so each container's cgroup is its own and removable.
    pub fn busybox(id: &str, args: &[&str]) -> Result<Bundle> {
        let dir = tempfile::Builder::new()
            .prefix("rtest-bundle-")
            .tempdir()
            .context("creating bundle dir")?;
        populate_busybox(&dir.path().join("rootfs"))?;
        let config = default_config(id, args);
        let b = Bundle { dir, config };
        b.save()?;
        Ok(b)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Leaves the directory in place when the `Bundle` is dropped: whoever calls this removes
    /// it (a runtime's container may outlive the test's handle on its bundle).
    pub fn keep_on_drop(&mut self) {
        self.dir.disable_cleanup(true);
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// Writes `config` to `config.json`.
    pub fn save(&self) -> Result<()> {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config)?,
        )
        .context("writing config.json")
    }

    /// Mutable access to `process`.
    pub fn process(&mut self) -> &mut Value {
        &mut self.config["process"]
    }

    /// Mutable access to `linux`.
    pub fn linux(&mut self) -> &mut Value {
        &mut self.config["linux"]
    }
}

/// The configuration `runc spec` writes, minus the terminal, running `args`.
pub fn default_config(id: &str, args: &[&str]) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "rtest",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]}
        ],
        "linux": {
            "cgroupsPath": format!("/rtest-{id}"),
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}
