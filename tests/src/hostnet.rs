//! What CNI plugins leave on the host, for the tests' leftover checks and clean-ups: bridges
//! and iptables rules and chains.
//!
//! Tests run in parallel, each with a pool of addresses and a bridge prefix of its own, so
//! a test's rules are found by what they name (its pool, its network), never by chain alone.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

/// The tables the bridge, portmap and firewall plugins write to.
pub const TABLES: [&str; 2] = ["nat", "filter"];

/// The `-A` lines of iptables table `table` that `matches` picks.
pub fn rules(table: &str, matches: impl Fn(&str) -> bool) -> Vec<String> {
    let out = Command::new("iptables-save")
        .args(["-t", table])
        .output()
        .expect("running iptables-save");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A ") && matches(l))
        .map(str::to_owned)
        .collect()
}

/// The rules of every table in [`TABLES`] that `matches` picks, as `iptables -t T RULE`.
pub fn leftover_rules(matches: impl Fn(&str) -> bool) -> Vec<String> {
    TABLES
        .iter()
        .flat_map(|t| {
            rules(t, &matches)
                .into_iter()
                .map(move |r| format!("iptables -t {t} {r}"))
        })
        .collect()
}

/// Whether `chain` is one a plugin makes for one container (bridge's masquerade
/// `CNI-<hash>`, portmap's `CNI-DN-<hash>`), not one every network shares (`CNI-FORWARD`,
/// `CNI-HOSTPORT-DNAT`, ...).
pub fn per_pod_chain(chain: &str) -> bool {
    let Some(rest) = chain.strip_prefix("CNI-") else {
        return false;
    };
    let hash = rest
        .strip_prefix("DN-")
        .or_else(|| rest.strip_prefix("SN-"))
        .unwrap_or(rest);
    hash.len() >= 16 && hash.chars().all(|c| c.is_ascii_hexdigit())
}

/// The chain a rule line (`-A CHAIN ...`) is in, and the one it jumps to, if any.
fn chains_of(rule: &str) -> (Option<&str>, Option<&str>) {
    let mut words = rule.split_whitespace();
    let chain = match (words.next(), words.next()) {
        (Some("-A"), c) => c,
        _ => None,
    };
    let target = rule.split_whitespace().skip_while(|w| *w != "-j").nth(1);
    (chain, target)
}

/// Removes the rules `matches` picks and the per-container chains they are in or jump to
/// (what a test killed half-way left). Removing only the rules that name a pod's address
/// would orphan its masquerade chain, whose MASQUERADE rule names neither address nor pool.
pub fn purge_rules(matches: impl Fn(&str) -> bool) {
    for table in TABLES {
        let mut chains = BTreeSet::new();
        for rule in rules(table, &matches) {
            let (chain, target) = chains_of(&rule);
            chains.extend(
                [chain, target]
                    .into_iter()
                    .flatten()
                    .filter(|c| per_pod_chain(c))
                    .map(str::to_owned),
            );
            // iptables-save quotes as a shell would read it back
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("iptables -w -t {table} -D {}", &rule[3..]))
                .stderr(Stdio::null())
                .status();
        }
        for c in chains {
            // the jumps to a chain go first, or it cannot be deleted
            for rule in rules(table, |l| chains_of(l).1 == Some(c.as_str())) {
                let _ = Command::new("sh")
                    .arg("-c")
                    .arg(format!("iptables -w -t {table} -D {}", &rule[3..]))
                    .stderr(Stdio::null())
                    .status();
            }
            for op in ["-F", "-X"] {
                let _ = Command::new("iptables")
                    .args(["-w", "-t", table, op, &c])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// The bridges whose names start with `prefix`.
pub fn bridges(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
        .expect("running ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

/// Deletes the bridges whose names start with `prefix` (their veths go with them).
pub fn remove_bridges(prefix: &str) {
    for b in bridges(prefix) {
        let _ = Command::new("ip")
            .args(["link", "del", &b])
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes what a test whose bridges start with `bridge_prefix` and whose addresses start with
/// `pool` (`10.140.`) left: its bridges, and the iptables rules naming its pool with their
/// per-pod chains.
pub fn purge_test_net(bridge_prefix: &str, pool: &str) {
    remove_bridges(bridge_prefix);
    purge_rules(|l| l.contains(pool));
}

/// The iptables rules naming `pool`: once a test's containers are gone, every one left is a
/// leak (each container's CNI DEL removes its own).
pub fn pool_rules(pool: &str) -> Vec<String> {
    leftover_rules(|l| l.contains(pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_pod_chains_are_told_from_shared_ones() {
        assert!(per_pod_chain("CNI-0123456789abcdef01234567"));
        assert!(per_pod_chain("CNI-DN-0123456789abcdef01234"));
        assert!(!per_pod_chain("CNI-FORWARD"));
        assert!(!per_pod_chain("CNI-ADMIN"));
        assert!(!per_pod_chain("CNI-HOSTPORT-DNAT"));
        assert!(!per_pod_chain("CNI-HOSTPORT-SETMARK"));
        assert!(!per_pod_chain("POSTROUTING"));
        assert!(!per_pod_chain("CNI-abc"));
    }

    #[test]
    fn a_rule_names_its_chain_and_target() {
        assert_eq!(
            chains_of("-A POSTROUTING -s 10.88.0.2/32 -m comment --comment \"x\" -j CNI-0123"),
            (Some("POSTROUTING"), Some("CNI-0123"))
        );
        assert_eq!(
            chains_of("-A CNI-0123 ! -d 224.0.0.0/4 -j MASQUERADE"),
            (Some("CNI-0123"), Some("MASQUERADE"))
        );
        assert_eq!(
            chains_of("-A CNI-0123 -d 10.1.0.0/24"),
            (Some("CNI-0123"), None)
        );
    }
}
