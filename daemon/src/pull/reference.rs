//! Image references, normalised as docker and containerd do (`busybox` →
//! `docker.io/library/busybox:latest`), checked against distribution's reference grammar.
//!
//! The grammar is checked by hand rather than with oci-spec's parser: that one compiles one
//! large regex on first use (~15 ms) and keeps it (~6 MiB of heap) for the life of the
//! process, which was a third of the daemon's idle memory. The unit tests check that both
//! agree.

pub use oci_client::Reference;

use super::PullError;

/// Longest repository name (distribution's `NAME_TOTAL_LENGTH_MAX`).
const NAME_MAX: usize = 255;

/// Parses and normalises an image reference: a missing registry is `docker.io`, a one-part
/// Docker Hub name gets `library/`, a missing tag (without a digest) is `latest`.
pub fn parse_reference(s: &str) -> Result<Reference, PullError> {
    let bad = |reason: &str| PullError::InvalidReference {
        reference: s.to_owned(),
        reason: reason.to_owned(),
    };
    if s != s.trim() || s.is_empty() {
        return Err(bad("empty or surrounded by spaces"));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    // a tag's ':' comes after the last '/' (a registry's port comes before one)
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    check_name(name).map_err(bad)?;
    if let Some(t) = tag {
        if !valid_tag(t) {
            return Err(bad("invalid tag format"));
        }
    }
    if let Some(d) = digest {
        check_digest(d).map_err(bad)?;
        crate::content::Digest::parse(d).map_err(|e| bad(&e.to_string()))?;
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_MAX {
        return Err(bad("repository name must not be more than 255 characters"));
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.to_owned(), d.to_owned())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.to_owned()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").to_owned()),
    })
}

/// `[domain '/'] path-component ('/' path-component)*`
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("repository name must have at least one component");
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.iter().all(|p| valid_path_component(p)) {
        return Ok(());
    }
    if parts.len() > 1
        && valid_domain(parts[0])
        && parts[1..].iter().all(|p| valid_path_component(p))
    {
        return Ok(());
    }
    let path = if parts.len() > 1 && valid_domain(parts[0]) {
        &parts[1..]
    } else {
        &parts[..]
    };
    if path
        .iter()
        .any(|p| p.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err("repository name must be lowercase");
    }
    Err("invalid reference format")
}

/// `[a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        match &b[start..i] {
            b"." | b"_" | b"__" => {}
            sep if sep.iter().all(|&x| x == b'-') => {}
            _ => return false,
        }
    }
    true
}

/// `host-component ('.' host-component)* (':' [0-9]+)?`, components alphanumeric with
/// inner '-'.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|x| x.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        })
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// `algorithm ':' hex{32,}` with a known algorithm and its length.
fn check_digest(d: &str) -> Result<(), &'static str> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err("invalid checksum digest format");
    };
    let alg_ok = !alg.is_empty()
        && alg.split(['-', '_', '+', '.']).all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphabetic()
                && b.iter().all(|x| x.is_ascii_alphanumeric())
        });
    if !alg_ok || hex.len() < 32 || !hex.bytes().all(|x| x.is_ascii_hexdigit()) {
        return Err("invalid reference format");
    }
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != want {
        return Err("invalid checksum digest length");
    }
    Ok(())
}

/// docker's rule: a first component with a '.' or ':' or `localhost` is a registry; Docker
/// Hub's legacy name is `docker.io`; its one-part names are under `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        Some((d, r)) if d.contains('.') || d.contains(':') || d == "localhost" => {
            (d.to_owned(), r.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".into();
    }
    if domain == "docker.io" && !rest.contains('/') {
        rest = format!("library/{rest}");
    }
    (domain, rest)
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
        let e = parse_reference("docker.io/Library/Busybox").unwrap_err();
        assert!(e.to_string().contains("must be lowercase"), "{e}");
    }

    /// The hand-written grammar accepts and splits exactly what oci-spec's regex does.
    #[test]
    fn agrees_with_oci_spec() {
        let d256 = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let d512 = format!("sha512:{}", "ab".repeat(64));
        let mut inputs: Vec<String> = [
            "busybox",
            "busybox:1",
            "a/b/c",
            "a.b/c",
            "a:1/b",
            "a:1",
            "a:b:c",
            "localhost/x",
            "localhost:5000/x:y",
            "LOCALHOST/x",
            "Host.Com/x",
            "host.com/X",
            "x/Y",
            "a..b",
            "a__b",
            "a___b",
            "a--b",
            "a-.b",
            "a._b",
            "-a",
            "a-",
            "a/",
            "/a",
            "a//b",
            "a:",
            ":a",
            "a@",
            "@a",
            "a:-x",
            "a:_x",
            "a:x.y-z_",
            "h-/a",
            "-h.com/a",
            "h.com:/a",
            "h.com:x/a",
            "h.c-m:99/a_b/c-d.e",
            "a/b:c/d",
            "127.0.0.1:5000/a/b:t",
            "1/2/3",
            "sha256:abc",
            "a@sha256:zz",
            "a@md5:0123456789abcdef0123456789abcdef",
            "test.com:tag",
            "test.com:5000",
            "index.docker.io/x",
            "docker.io/x/y",
            "a:b@c",
            "ä",
            "a b",
            "a\tb",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        inputs.push(format!("a:{}", "t".repeat(128)));
        inputs.push(format!("a:{}", "t".repeat(129)));
        inputs.push(format!("x/{}", "a".repeat(250)));
        inputs.push(format!("x/{}", "a".repeat(252)));
        for base in ["busybox", "h.com:1/a/b", "a:tag"] {
            inputs.push(format!("{base}@{d256}"));
            inputs.push(format!("{base}@{d512}"));
            inputs.push(format!("{base}@{}", &d256[..70]));
            inputs.push(format!("{base}@sha256:{}", "A".repeat(64)));
        }
        for input in &inputs {
            let theirs: Result<oci_spec::distribution::Reference, _> = input.parse();
            let ours = parse_reference(input);
            match (&theirs, &ours) {
                (Ok(t), Ok(o)) => assert_eq!(
                    (t.registry(), t.repository(), t.tag(), t.digest()),
                    (o.registry(), o.repository(), o.tag(), o.digest()),
                    "{input}"
                ),
                (Err(_), Err(_)) => {}
                // the content store knows sha256/sha512 only, in lower case
                (Ok(t), Err(e)) if t.digest().is_some() => {
                    assert!(e.to_string().contains("digest"), "{input}: {e}")
                }
                _ => panic!("{input}: oci-spec {theirs:?}, ours {ours:?}"),
            }
        }
    }
}
