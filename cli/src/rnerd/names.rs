//! Container ids and names: random 64-hex ids, docker's `adjective_surname` names, and
//! finding a container by name, id or unique id prefix.

use anyhow::{bail, Result};
use rcd_proto::labels;
use rcd_proto::v1 as pb;

/// A random 64-hex container id.
pub fn random_id() -> String {
    (0..4)
        .map(|_| format!("{:016x}", fastrand::u64(..)))
        .collect()
}

const ADJECTIVES: &[&str] = &[
    "admiring",
    "agitated",
    "amazing",
    "angry",
    "awesome",
    "blissful",
    "bold",
    "brave",
    "busy",
    "charming",
    "clever",
    "cool",
    "dazzling",
    "eager",
    "ecstatic",
    "elegant",
    "epic",
    "festive",
    "focused",
    "friendly",
    "gallant",
    "gifted",
    "happy",
    "hungry",
    "jolly",
    "keen",
    "kind",
    "laughing",
    "loving",
    "lucid",
    "modest",
    "nice",
    "optimistic",
    "peaceful",
    "practical",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "stoic",
    "sweet",
    "tender",
    "trusting",
    "upbeat",
    "vibrant",
    "wizardly",
    "youthful",
    "zealous",
];

const SURNAMES: &[&str] = &[
    "agnesi", "babbage", "bardeen", "bell", "bohr", "cannon", "curie", "darwin", "dijkstra",
    "einstein", "euclid", "euler", "faraday", "fermat", "feynman", "galileo", "gauss", "goldberg",
    "hamilton", "hopper", "hypatia", "kepler", "knuth", "lamport", "lovelace", "maxwell", "mendel",
    "newton", "noether", "pascal", "pike", "ritchie", "shannon", "thompson", "torvalds", "turing",
    "wilson", "wozniak", "yalow",
];

/// docker's kind of automatic name.
pub fn random_name() -> String {
    format!(
        "{}_{}",
        ADJECTIVES[fastrand::usize(..ADJECTIVES.len())],
        SURNAMES[fastrand::usize(..SURNAMES.len())]
    )
}

/// Whether `name` is a valid container name (docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The container's name (its label, else its short id).
pub fn name_of(c: &pb::Container) -> String {
    c.labels
        .get(labels::NAME)
        .cloned()
        .unwrap_or_else(|| short_id(&c.id).to_owned())
}

pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Finds `what` (a name, an id or a unique id prefix) among `list`.
pub fn find<'a>(list: &'a [pb::Container], what: &str) -> Result<&'a pb::Container> {
    if what.is_empty() {
        bail!("empty container name");
    }
    if let Some(c) = list.iter().find(|c| c.id == what) {
        return Ok(c);
    }
    if let Some(c) = list
        .iter()
        .find(|c| c.labels.get(labels::NAME).map(String::as_str) == Some(what))
    {
        return Ok(c);
    }
    let matches: Vec<_> = list.iter().filter(|c| c.id.starts_with(what)).collect();
    match matches.len() {
        1 => Ok(matches[0]),
        0 => bail!("no such container {what:?}: `rnerd ps -a` lists them"),
        n => bail!("{n} containers have ids starting with {what:?}: give more of the id"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, name: &str) -> pb::Container {
        pb::Container {
            id: id.into(),
            labels: [(labels::NAME.to_owned(), name.to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn ids_and_names() {
        let id = random_id();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(valid_name(&random_name()));
        assert!(valid_name("web-1.a_b"));
        assert!(!valid_name("-x") && !valid_name("") && !valid_name("a/b"));
    }

    #[test]
    fn finding() {
        let list = vec![c("abc123", "web"), c("abd456", "db"), c("ff", "abc")];
        assert_eq!(find(&list, "web").unwrap().id, "abc123");
        assert_eq!(find(&list, "abd").unwrap().id, "abd456");
        // a name wins over an id prefix
        assert_eq!(find(&list, "abc").unwrap().id, "ff");
        assert!(find(&list, "ab")
            .unwrap_err()
            .to_string()
            .contains("2 containers"));
        assert!(find(&list, "zz")
            .unwrap_err()
            .to_string()
            .contains("no such container"));
    }
}
