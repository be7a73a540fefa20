//! The default bundle configuration, as `runc spec` writes it.

use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    ProcessBuilder, Spec, SpecBuilder,
};
use oci_spec::OciSpecError;
use std::collections::HashSet;

/// Capabilities runc grants by default: the minimum a shell needs, nothing that reaches the host.
const DEFAULT_CAPS: [Capability; 3] = [
    Capability::AuditWrite,
    Capability::Kill,
    Capability::NetBindService,
];

/// The spec `runc spec` writes: an interactive `sh` in `rootfs/` with its own pid, network, ipc,
/// uts, mount and cgroup namespaces, a read-only root, masked `/proc` files and three capabilities.
pub fn default_spec() -> Result<Spec, OciSpecError> {
    let base = Spec::default();
    let caps: HashSet<Capability> = DEFAULT_CAPS.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps.clone())
        .ambient(caps.clone())
        .inheritable(HashSet::new())
        .build()?;
    let base_process = base.process().clone().unwrap_or_default();
    let process = ProcessBuilder::default()
        .terminal(true)
        .user(base_process.user().clone())
        .args(vec!["sh".to_string()])
        .env(base_process.env().clone().unwrap_or_default())
        .cwd("/")
        .capabilities(capabilities)
        .rlimits(base_process.rlimits().clone().unwrap_or_default())
        .no_new_privileges(true)
        .build()?;
    let mut linux = base.linux().clone().unwrap_or_default();
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()?;
    linux.set_namespaces(Some(namespaces));
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    SpecBuilder::default()
        .version("1.0.2-dev")
        .process(process)
        .root(base.root().clone().unwrap_or_default())
        .hostname("runr")
        .mounts(base.mounts().clone().unwrap_or_default())
        .linux(linux)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_matches_runc_shape() {
        let spec = default_spec().unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.terminal(), Some(true));
        assert_eq!(process.args().as_ref().unwrap(), &vec!["sh".to_string()]);
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path().to_str(), Some("rootfs"));
        assert_eq!(root.readonly(), Some(true));
        let ns = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert_eq!(ns.len(), 6);
        let caps = process.capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 3);
        let masked = spec
            .linux()
            .as_ref()
            .unwrap()
            .masked_paths()
            .as_ref()
            .unwrap();
        assert!(masked.iter().any(|p| p == "/proc/kcore"));
    }
}
