//! rcd's native gRPC API, package `rcd.v1` (`proto/rcd/v1/*.proto`): the generated messages,
//! tonic clients (`*_client`) and servers (`*_server`), and the names both sides agree on.

/// Generated from `proto/rcd/v1/*.proto`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("rcd.v1");
}

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
