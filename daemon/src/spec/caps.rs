//! Capabilities: Docker's default set, `--cap-add`/`--cap-drop` names, and what this process
//! itself holds (a container can never get more than its creator's bounding set).

use super::SpecError;
use oci_spec::runtime::Capability;
use std::collections::HashSet;

/// Docker's and containerd's 14 default capabilities.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability oci-spec knows, with its number (`CAP_*` in linux/capability.h).
pub const ALL_CAPABILITIES: [(Capability, u32); 41] = [
    (Capability::Chown, 0),
    (Capability::DacOverride, 1),
    (Capability::DacReadSearch, 2),
    (Capability::Fowner, 3),
    (Capability::Fsetid, 4),
    (Capability::Kill, 5),
    (Capability::Setgid, 6),
    (Capability::Setuid, 7),
    (Capability::Setpcap, 8),
    (Capability::LinuxImmutable, 9),
    (Capability::NetBindService, 10),
    (Capability::NetBroadcast, 11),
    (Capability::NetAdmin, 12),
    (Capability::NetRaw, 13),
    (Capability::IpcLock, 14),
    (Capability::IpcOwner, 15),
    (Capability::SysModule, 16),
    (Capability::SysRawio, 17),
    (Capability::SysChroot, 18),
    (Capability::SysPtrace, 19),
    (Capability::SysPacct, 20),
    (Capability::SysAdmin, 21),
    (Capability::SysBoot, 22),
    (Capability::SysNice, 23),
    (Capability::SysResource, 24),
    (Capability::SysTime, 25),
    (Capability::SysTtyConfig, 26),
    (Capability::Mknod, 27),
    (Capability::Lease, 28),
    (Capability::AuditWrite, 29),
    (Capability::AuditControl, 30),
    (Capability::Setfcap, 31),
    (Capability::MacOverride, 32),
    (Capability::MacAdmin, 33),
    (Capability::Syslog, 34),
    (Capability::WakeAlarm, 35),
    (Capability::BlockSuspend, 36),
    (Capability::AuditRead, 37),
    (Capability::Perfmon, 38),
    (Capability::Bpf, 39),
    (Capability::CheckpointRestore, 40),
];

pub fn default_capabilities() -> HashSet<Capability> {
    DEFAULT_CAPABILITIES.into_iter().collect()
}

/// One capability name: `CAP_NET_ADMIN`, `NET_ADMIN` or `net_admin`.
pub fn parse_capability(name: &str) -> Result<Capability, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    ALL_CAPABILITIES
        .iter()
        .map(|(c, _)| *c)
        .find(|c| c.to_string() == bare)
        .ok_or_else(|| SpecError::UnknownCapability {
            name: name.to_owned(),
        })
}

/// The capabilities in a `CapXxx:` hex mask of /proc/<pid>/status.
pub fn from_mask(mask: u64) -> HashSet<Capability> {
    ALL_CAPABILITIES
        .iter()
        .filter(|(_, bit)| mask & (1u64 << bit) != 0)
        .map(|(c, _)| *c)
        .collect()
}

/// This process's bounding set: what any container it starts can hold at most. (This
/// machine's lacks CAP_SYS_RESOURCE; granting it would make the runtime fail.)
pub fn own_bounding_set() -> HashSet<Capability> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .map(from_mask)
        // without /proc, assume the defaults are there rather than granting everything
        .unwrap_or_else(default_capabilities)
}

/// Applies `add` then `drop` to `base` the way Docker does: `ALL` in `add` means every
/// capability this process holds, `ALL` in `drop` removes everything not explicitly added.
pub fn apply(
    base: HashSet<Capability>,
    add: &[String],
    drop: &[String],
    available: &HashSet<Capability>,
) -> Result<HashSet<Capability>, SpecError> {
    let is_all = |s: &String| s.trim().eq_ignore_ascii_case("all");
    let mut added = HashSet::new();
    let mut add_all = false;
    for a in add {
        if is_all(a) {
            add_all = true;
        } else {
            let c = parse_capability(a)?;
            if !available.contains(&c) {
                return Err(SpecError::CapabilityUnavailable { cap: c });
            }
            added.insert(c);
        }
    }
    let mut dropped = HashSet::new();
    let mut drop_all = false;
    for d in drop {
        if is_all(d) {
            drop_all = true;
        } else {
            dropped.insert(parse_capability(d)?);
        }
    }
    let mut caps = if drop_all { HashSet::new() } else { base };
    if add_all {
        caps.extend(available.iter().copied());
    }
    caps.retain(|c| !dropped.contains(c));
    // an explicit add wins over a drop of ALL (docker run --cap-drop ALL --cap-add CHOWN)
    for c in added {
        if !dropped.contains(&c) {
            caps.insert(c);
        }
    }
    // the default set may name what this process lacks; never ask the runtime for it
    caps.retain(|c| available.contains(c));
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> HashSet<Capability> {
        ALL_CAPABILITIES.iter().map(|(c, _)| *c).collect()
    }

    #[test]
    fn names_parse_with_or_without_prefix_in_any_case() {
        assert_eq!(
            parse_capability("CAP_NET_ADMIN").unwrap(),
            Capability::NetAdmin
        );
        assert_eq!(parse_capability("net_admin").unwrap(), Capability::NetAdmin);
        assert_eq!(parse_capability("SYS_ADMIN").unwrap(), Capability::SysAdmin);
        assert_eq!(parse_capability("cap_bpf").unwrap(), Capability::Bpf);
    }

    #[test]
    fn unknown_capability_is_an_error_naming_it() {
        let e = parse_capability("CAP_FLY").unwrap_err().to_string();
        assert_eq!(e, "unknown capability \"CAP_FLY\"");
        assert!(parse_capability("").is_err());
    }

    #[test]
    fn masks_decode_by_bit_number() {
        assert_eq!(from_mask(0), HashSet::new());
        let caps = from_mask((1 << 21) | 1);
        assert_eq!(caps, [Capability::SysAdmin, Capability::Chown].into());
        assert_eq!(from_mask(u64::MAX).len(), 41);
    }

    #[test]
    fn every_capability_has_a_distinct_bit() {
        let bits: HashSet<u32> = ALL_CAPABILITIES.iter().map(|(_, b)| *b).collect();
        assert_eq!(bits.len(), 41);
        assert_eq!(all().len(), 41);
    }

    #[test]
    fn add_and_drop_follow_docker() {
        let avail = all();
        let c = apply(
            default_capabilities(),
            &["NET_ADMIN".into()],
            &["chown".into()],
            &avail,
        )
        .unwrap();
        assert!(c.contains(&Capability::NetAdmin));
        assert!(!c.contains(&Capability::Chown));
        assert_eq!(c.len(), 14);

        let c = apply(
            default_capabilities(),
            &["CHOWN".into()],
            &["ALL".into()],
            &avail,
        )
        .unwrap();
        assert_eq!(c, [Capability::Chown].into());

        let c = apply(
            default_capabilities(),
            &["all".into()],
            &["SYS_ADMIN".into()],
            &avail,
        )
        .unwrap();
        assert_eq!(c.len(), 40);
        assert!(!c.contains(&Capability::SysAdmin));
    }

    #[test]
    fn adding_a_capability_this_process_lacks_is_refused() {
        let mut avail = all();
        avail.remove(&Capability::SysResource);
        let e = apply(
            default_capabilities(),
            &["SYS_RESOURCE".into()],
            &[],
            &avail,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("CAP_SYS_RESOURCE"), "{e}");
        assert!(e.contains("bounding set"), "{e}");
        // ALL quietly means all that is available
        let c = apply(default_capabilities(), &["ALL".into()], &[], &avail).unwrap();
        assert_eq!(c.len(), 40);
    }

    #[test]
    fn bad_names_in_drop_are_errors_too() {
        let e = apply(default_capabilities(), &[], &["NOPE".into()], &all()).unwrap_err();
        assert!(e.to_string().contains("\"NOPE\""));
    }

    #[test]
    fn own_bounding_set_is_readable() {
        let own = own_bounding_set();
        assert!(!own.is_empty());
    }
}
