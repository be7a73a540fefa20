//! Corrections for plugin versions rcd meets in the field.
//!
//! The `bridge` plugin before 1.2 (Debian 12 ships 1.1.1) finds the addresses whose masquerade
//! rules it removes on DEL on the interface inside the namespace. When the namespace is gone
//! (reboot, crash, removed by hand) it frees the addresses but leaves one NAT chain and one
//! POSTROUTING rule per pod behind. rcd still has the addresses in its cached result and
//! removes the same rules the plugin would have: chain `CNI-<sha512(network+id)[..24]>`,
//! comment `name: "<network>" id: "<id>"` (libcni's `FormatChainName`/`FormatComment`).
//!
//! The same plugin's DEL fails for good when its masquerade chain is already gone (an
//! `iptables -F`, a firewall reload, an ADD cut short): iptables-nft words the error
//! "Chain '…' does not exist", which the plugin's go-iptables does not take for "absent".
//! Tearing down masquerading is the last step of its DEL (addresses and veth are gone by
//! then), so rcd takes that error as done and removes any remaining rules itself.

/// A DEL error of `bridge` that only says its masquerade chain is already gone.
pub(crate) fn masq_already_gone(plugin_type: &str, err: &CniError) -> bool {
    match err {
        CniError::Plugin { msg, command, .. } => {
            plugin_type == "bridge"
                && *command == "DEL"
                && msg.contains("POSTROUTING")
                && msg.contains("Chain 'CNI-")
                && msg.contains("does not exist")
        }
        _ => false,
    }
}

use super::config::NetworkConfigList;
use super::result::CniResult;
use super::CniError;
use sha2::{Digest, Sha512};

/// libcni's per-container chain name.
pub(crate) fn chain_name(network: &str, container_id: &str) -> String {
    let hash = hex::encode(Sha512::digest(format!("{network}{container_id}")));
    format!("CNI-{}", &hash[..24])
}

/// Removes the masquerade rules of a `bridge` plugin with `ipMasq` for the addresses of
/// `result`. Rules already gone are fine; other failures are logged (the DEL itself worked).
pub(crate) async fn bridge_masq_leftovers(
    list: &NetworkConfigList,
    container_id: &str,
    result: &CniResult,
) {
    if !masquerades(list) {
        return;
    }
    let chain = chain_name(&list.name, container_id);
    // names and ids are validated to [A-Za-z0-9_.-], so Go's %q and this agree
    let comment = format!("name: \"{}\" id: \"{}\"", list.name, container_id);
    let mut families = Vec::new();
    for ip in result.ips.iter().filter_map(|i| i.ip()) {
        let tool = if ip.is_ipv6() {
            "ip6tables"
        } else {
            "iptables"
        };
        if !families.contains(&tool) {
            families.push(tool);
        }
        let ip = ip.to_string();
        run(
            tool,
            &[
                "-t",
                "nat",
                "-D",
                "POSTROUTING",
                "-s",
                &ip,
                "-j",
                &chain,
                "-m",
                "comment",
                "--comment",
                &comment,
            ],
        )
        .await;
    }
    for tool in families {
        run(tool, &["-t", "nat", "-F", &chain]).await;
        run(tool, &["-t", "nat", "-X", &chain]).await;
    }
}

/// After a DEL of a masquerading `bridge`: if its per-container chain is still there (the
/// plugin could not find the addresses), removes its rules for the cached addresses. One
/// `iptables -S` per address family when all is well.
pub(crate) async fn bridge_masq_check(
    list: &NetworkConfigList,
    container_id: &str,
    result: &CniResult,
) {
    if !masquerades(list) {
        return;
    }
    let chain = chain_name(&list.name, container_id);
    let mut left = false;
    for v6 in [false, true] {
        if !result
            .ips
            .iter()
            .filter_map(|i| i.ip())
            .any(|ip| ip.is_ipv6() == v6)
        {
            continue;
        }
        let tool = if v6 { "ip6tables" } else { "iptables" };
        let exists = tokio::process::Command::new(tool)
            .args(["-w", "-t", "nat", "-S", &chain])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false);
        left |= exists;
    }
    if left {
        tracing::debug!(network = %list.name, id = %container_id, %chain,
            "bridge left its masquerade chain, removing it");
        bridge_masq_leftovers(list, container_id, result).await;
    }
}

fn masquerades(list: &NetworkConfigList) -> bool {
    list.plugins.iter().any(|p| {
        p.plugin_type == "bridge" && p.config.get("ipMasq").and_then(|v| v.as_bool()) == Some(true)
    })
}

async fn run(tool: &str, args: &[&str]) {
    let out = tokio::process::Command::new(tool)
        .arg("-w")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            // absent rules and chains are what a second DEL finds
            if !(err.contains("does a matching rule exist")
                || err.contains("No chain/target/match by that name")
                || err.contains("does not exist"))
            {
                tracing::warn!("{tool} {}: {}", args.join(" "), err.trim());
            }
        }
        Err(e) => tracing::warn!("running {tool}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_masquerade_chain_is_benign() {
        let err = |plugin: &str, command: &'static str, msg: &str| CniError::Plugin {
            network: "n".into(),
            plugin: plugin.into(),
            command,
            code: 999,
            msg: msg.into(),
            details: String::new(),
        };
        // seen from bridge 1.1.1 with iptables-nft 1.8.9
        let gone = "running [/usr/sbin/iptables -t nat -D POSTROUTING -s 10.231.8.2 -j \
            CNI-defc38b8515d993f5c130a09 -m comment --comment name: \"n\" id: \"x\" --wait]: \
            exit status 2: iptables v1.8.9 (nf_tables): Chain 'CNI-defc38b8515d993f5c130a09' \
            does not exist";
        assert!(masq_already_gone("bridge", &err("bridge", "DEL", gone)));
        assert!(!masq_already_gone("portmap", &err("portmap", "DEL", gone)));
        assert!(!masq_already_gone("bridge", &err("bridge", "ADD", gone)));
        assert!(!masq_already_gone(
            "bridge",
            &err("bridge", "DEL", "failed to delete veth: device busy")
        ));
    }

    #[test]
    fn chain_names_match_libcni() {
        // seen on this host: bridge 1.1.1's chain for network rcdtest-3, container "crashed"
        assert_eq!(
            super::chain_name("rcdtest-3", "crashed"),
            "CNI-34a29f9be720463142a58023"
        );
    }
}
