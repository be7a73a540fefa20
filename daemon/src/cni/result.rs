//! CNI results (0.3.x, 0.4.0 and 1.0.0 share this shape; 0.3/0.4 add a `version` per IP).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for an interface inside the container, empty for a host interface.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR notation, `10.99.0.2/16`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

impl IpConfig {
    /// The address without its prefix length.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.split('/').next()?.parse().ok()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl CniResult {
    /// The addresses given to the interface `ifname` inside the sandbox, IPv4 first (the
    /// first one is the pod's primary IP, as containerd reports it). IPs without an interface
    /// index count as the container's (older plugins omit it).
    pub fn sandbox_ips(&self, ifname: &str) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(
                |ip| match ip.interface.and_then(|i| self.interfaces.get(i)) {
                    Some(iface) => iface.name == ifname && !iface.sandbox.is_empty(),
                    None => true,
                },
            )
            .filter_map(IpConfig::ip)
            .collect();
        ips.sort_by_key(|ip| ip.is_ipv6());
        ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_of_both_versions_parse() {
        let v040 = r#"{"cniVersion":"0.4.0","interfaces":[{"name":"b0","mac":"aa"},
            {"name":"eth0","mac":"bb","sandbox":"/run/netns/x"}],
            "ips":[{"version":"6","address":"fd00::2/64","interface":1},
                   {"version":"4","address":"10.9.0.2/24","gateway":"10.9.0.1","interface":1}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;
        let r: CniResult = serde_json::from_str(v040).unwrap();
        assert_eq!(
            r.sandbox_ips("eth0"),
            vec![
                "10.9.0.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
        assert!(r.sandbox_ips("eth1").is_empty());
        let v100 = r#"{"cniVersion":"1.0.0","ips":[{"address":"10.9.0.3/24"}],
            "dns":{"nameservers":["10.9.0.1"]}}"#;
        let r: CniResult = serde_json::from_str(v100).unwrap();
        assert_eq!(
            r.sandbox_ips("eth0"),
            vec!["10.9.0.3".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(r.dns.nameservers, ["10.9.0.1"]);
    }
}
