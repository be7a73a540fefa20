//! rcd's native gRPC API, package `rcd.v1` (`proto/rcd/v1/*.proto`): the generated messages,
//! tonic clients (`*_client`) and servers (`*_server`), and the names both sides agree on.

/// Generated from `proto/rcd/v1/*.proto`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("rcd.v1");
}

pub mod attach;

/// gRPC metadata header carrying the namespace of a call.
pub const NAMESPACE_HEADER: &str = "rcd-namespace";

/// The namespace of calls without the header.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The daemon's default socket.
pub const DEFAULT_ADDRESS: &str = "/run/rcd/rcd.sock";

/// Whether `name` is a valid namespace: as containerd's, a DNS-label-like name, ASCII letters,
/// digits, `-`, `_` and `.` separated labels, starting with a letter or digit, at most 76 bytes.
pub fn valid_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 76
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.as_bytes()[0].is_ascii_alphanumeric()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::valid_namespace;

    #[test]
    fn namespaces() {
        for ok in ["default", "k8s.io", "a", "moby", "x-1_y"] {
            assert!(valid_namespace(ok), "{ok}");
        }
        for bad in ["", ".", "a..b", "-a", "a/b", "../x", "a b", &"x".repeat(77)] {
            assert!(!valid_namespace(bad), "{bad}");
        }
    }
}

/// Labels rcd keeps on a container for what its [`v1::ContainerOptions`] asked beyond ctr's
/// flags (written by Containers.Create, read by task creation, the restart monitor and rnerd).
pub mod labels {
    /// The network mode or network name (`ContainerOptions.network`).
    pub const NETWORK: &str = "rcd.io/network";
    /// JSON array of `{"host_ip","host_port","container_port","protocol"}`.
    pub const PORTS: &str = "rcd.io/ports";
    /// Comma-separated extra names on its networks.
    pub const ALIASES: &str = "rcd.io/aliases";
    /// JSON array of `{"source","destination","readonly","kind"}`, kind `bind|volume|anonymous`.
    pub const VOLUMES: &str = "rcd.io/volumes";
    /// The restart policy as given (`always`, `on-failure:3`, ...).
    pub const RESTART: &str = "rcd.io/restart";
    /// Set (to "true") by a client's stop, with Containers.Update before the kill: the restart
    /// monitor leaves the container alone until a start clears it (rcd's Tasks.Create does).
    pub const EXPLICITLY_STOPPED: &str = "rcd.io/explicitly-stopped";
    /// How many times the restart monitor restarted it since the last client start
    /// (Tasks.Create sets "0" on a container with a restart policy).
    pub const RESTART_COUNT: &str = "rcd.io/restart-count";
    /// "json-file" when rcd keeps its log.
    pub const LOG: &str = "rcd.io/log";
    /// The stop signal name.
    pub const STOP_SIGNAL: &str = "rcd.io/stop-signal";
    /// "true": removed by rcd once its task exits (`ContainerOptions.auto_remove`).
    pub const AUTO_REMOVE: &str = "rcd.io/auto-remove";
    /// A human name (rnerd's `--name`); ids stay 64-hex.
    pub const NAME: &str = "rcd.io/name";
    /// The task's IP on its network, set while attached.
    pub const IP: &str = "rcd.io/ip";
    /// The compose project and service a container belongs to.
    pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
    pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
}
