//! Corrections for plugin versions rcd meets in the field.
//!
//! The `bridge` plugin before 1.2 (Debian 12 ships 1.1.1) finds the addresses whose masquerade
//! rules it removes on DEL on the interface inside the namespace. When the namespace is gone
//! (reboot, crash, removed by hand) it frees the addresses but leaves one NAT chain and one
//! POSTROUTING rule per pod behind. rcd still has the addresses in its cached result and
//! removes the same rules the plugin would have: chain `CNI-<sha512(network+id)[..24]>`,
//! comment `name: "<network>" id: "<id>"` (libcni's `FormatChainName`/`FormatComment`).

use super::config::NetworkConfigList;
use super::result::CniResult;
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
    let masq = list.plugins.iter().any(|p| {
        p.plugin_type == "bridge" && p.config.get("ipMasq").and_then(|v| v.as_bool()) == Some(true)
    });
    if !masq {
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
    #[test]
    fn chain_names_match_libcni() {
        // seen on this host: bridge 1.1.1's chain for network rcdtest-3, container "crashed"
        assert_eq!(
            super::chain_name("rcdtest-3", "crashed"),
            "CNI-34a29f9be720463142a58023"
        );
    }
}
