//! Image references, normalised as docker and containerd do (`busybox` →
//! `docker.io/library/busybox:latest`). The parsing is oci-spec's (distribution's grammar).

pub use oci_client::Reference;

use super::PullError;

/// Parses and normalises an image reference: a missing registry is `docker.io`, a one-part
/// Docker Hub name gets `library/`, a missing tag (without a digest) is `latest`.
pub fn parse_reference(s: &str) -> Result<Reference, PullError> {
    let bad = |reason: String| PullError::InvalidReference {
        reference: s.to_owned(),
        reason,
    };
    if s != s.trim() || s.is_empty() {
        return Err(bad("empty or surrounded by spaces".into()));
    }
    let r: Reference = s.parse().map_err(|e| bad(format!("{e}")))?;
    if let Some(d) = r.digest() {
        crate::content::Digest::parse(d).map_err(|e| bad(e.to_string()))?;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        let d = format!("sha256:{}", "a".repeat(64));
        for (input, whole) in [
            ("busybox", "docker.io/library/busybox:latest".to_owned()),
            ("busybox:1.36", "docker.io/library/busybox:1.36".to_owned()),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".to_owned(),
            ),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest".to_owned(),
            ),
            ("user/app", "docker.io/user/app:latest".to_owned()),
            (
                "registry.k8s.io/pause:3.10",
                "registry.k8s.io/pause:3.10".to_owned(),
            ),
            ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000/a/b:t".to_owned()),
            ("localhost/x", "localhost/x:latest".to_owned()),
            (
                &format!("busybox@{d}"),
                format!("docker.io/library/busybox@{d}"),
            ),
            (&format!("h:1/r:t@{d}"), format!("h:1/r:t@{d}")),
        ] {
            let r = parse_reference(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.whole(), whole, "{input}");
        }
        let r = parse_reference("127.0.0.1:5000/a/b:t").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "a/b", Some("t"))
        );
        for bad in [
            "",
            " busybox",
            "Busybox",
            "busybox:",
            "busybox@sha256:../../x",
            &format!("busybox@sha256:{}", "A".repeat(64)),
            &format!("busybox@sha512:{}", "a".repeat(128)),
            "a//b",
        ] {
            let e = parse_reference(bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid image reference"), "{e}");
        }
    }
}
