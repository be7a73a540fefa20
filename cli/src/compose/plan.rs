//! From a [`Project`] to what to ask rcd for: start order, names, labels and each container's
//! options. Pure.

use super::model::{container_name, MountKind, Project, Service};
use rcd_proto::labels;
use rcd_proto::v1::{ContainerOptions, PortMapping};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// compose's own labels beside `labels::COMPOSE_PROJECT` / `COMPOSE_SERVICE`.
pub const LABEL_CONFIG_HASH: &str = "com.docker.compose.config-hash";
pub const LABEL_NUMBER: &str = "com.docker.compose.container-number";
pub const LABEL_ONEOFF: &str = "com.docker.compose.oneoff";
pub const LABEL_WORKING_DIR: &str = "com.docker.compose.project.working_dir";
pub const LABEL_CONFIG_FILES: &str = "com.docker.compose.project.config_files";
pub const LABEL_DEPENDS_ON: &str = "com.docker.compose.depends_on";
pub const LABEL_NETWORK: &str = "com.docker.compose.network";
pub const LABEL_VOLUME: &str = "com.docker.compose.volume";

/// Services in an order that starts each after what it depends on; ties by name. A cycle is
/// an error naming it (`a -> b -> a`).
pub fn start_order(p: &Project) -> Result<Vec<String>, String> {
    let mut indegree: BTreeMap<&str, usize> = p
        .services
        .iter()
        .map(|(k, s)| (k.as_str(), s.depends_on.len()))
        .collect();
    let mut ready: BTreeSet<&str> = indegree
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(k, _)| *k)
        .collect();
    let mut order = Vec::new();
    while let Some(next) = ready.pop_first() {
        order.push(next.to_owned());
        indegree.remove(next);
        for (k, s) in &p.services {
            if s.depends_on.contains_key(next) {
                if let Some(n) = indegree.get_mut(k.as_str()) {
                    *n -= 1;
                    if *n == 0 {
                        ready.insert(k);
                    }
                }
            }
        }
    }
    if indegree.is_empty() {
        return Ok(order);
    }
    Err(format!(
        "dependency cycle between services: {}",
        find_cycle(p, &indegree.keys().copied().collect::<Vec<_>>())
    ))
}

/// A cycle among `left` (services never ready), as `a -> b -> a`.
fn find_cycle(p: &Project, left: &[&str]) -> String {
    // Every service left depends on another one left: walk until a service repeats.
    let mut path: Vec<&str> = vec![left[0]];
    loop {
        let cur = path[path.len() - 1];
        let next = p.services[cur]
            .depends_on
            .keys()
            .map(String::as_str)
            .find(|d| left.contains(d))
            .unwrap_or(cur);
        if let Some(i) = path.iter().position(|s| *s == next) {
            let mut cycle = path[i..].to_vec();
            cycle.push(next);
            return cycle.join(" -> ");
        }
        path.push(next);
    }
}

/// One container to make.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerPlan {
    pub service: String,
    pub name: String,
    pub image: String,
    pub options: ContainerOptions,
    pub labels: HashMap<String, String>,
    pub config_hash: String,
}

/// The network, volumes and containers of `up`, containers in start order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub project: String,
    /// (rcd name, key, external, subnet, gateway, labels) of the networks services use.
    pub networks: Vec<NetworkPlan>,
    pub volumes: Vec<VolumePlan>,
    pub containers: Vec<ContainerPlan>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkPlan {
    pub name: String,
    pub external: bool,
    pub subnet: String,
    pub gateway: String,
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VolumePlan {
    pub name: String,
    pub external: bool,
    pub labels: HashMap<String, String>,
}

pub fn plan(p: &Project) -> Result<Plan, String> {
    let order = start_order(p)?;
    let used_nets: BTreeSet<&str> = p.services.values().map(|s| s.network.as_str()).collect();
    let networks = p
        .networks
        .iter()
        .filter(|(k, _)| used_nets.contains(k.as_str()))
        .map(|(k, n)| {
            let mut labels: HashMap<String, String> = n.labels.clone().into_iter().collect();
            labels.insert(labels::COMPOSE_PROJECT.into(), p.name.clone());
            labels.insert(LABEL_NETWORK.into(), k.clone());
            NetworkPlan {
                name: n.name.clone(),
                external: n.external,
                subnet: n.subnet.clone(),
                gateway: n.gateway.clone(),
                labels,
            }
        })
        .collect();
    let volumes = p
        .volumes
        .iter()
        .map(|(k, v)| {
            let mut labels: HashMap<String, String> = v.labels.clone().into_iter().collect();
            labels.insert(labels::COMPOSE_PROJECT.into(), p.name.clone());
            labels.insert(LABEL_VOLUME.into(), k.clone());
            VolumePlan {
                name: v.name.clone(),
                external: v.external,
                labels,
            }
        })
        .collect();
    let containers = order
        .iter()
        .map(|name| container(p, name, &p.services[name]))
        .collect();
    Ok(Plan {
        project: p.name.clone(),
        networks,
        volumes,
        containers,
    })
}

fn container(p: &Project, key: &str, s: &Service) -> ContainerPlan {
    let name = container_name(&p.name, key, s);
    let network = &p.networks[&s.network];
    let mut aliases = vec![key.to_owned()];
    aliases.extend(s.aliases.iter().cloned());
    let volumes = s
        .volumes
        .iter()
        .map(|m| {
            let mut v = match m.kind {
                MountKind::Anonymous => m.target.clone(),
                MountKind::Bind => format!("{}:{}", m.source, m.target),
                MountKind::Volume => format!("{}:{}", p.volumes[&m.source].name, m.target),
            };
            if m.read_only {
                v.push_str(":ro");
            }
            v
        })
        .collect();
    let options = ContainerOptions {
        args: s.command.clone().unwrap_or_default(),
        env: s
            .environment
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        cwd: s.working_dir.clone().unwrap_or_default(),
        user: s.user.clone().unwrap_or_default(),
        entrypoint: s.entrypoint.clone().unwrap_or_default(),
        set_entrypoint: s.entrypoint.is_some(),
        hostname: s.hostname.clone().unwrap_or_default(),
        network: network.name.clone(),
        ports: s
            .ports
            .iter()
            .map(|pt| PortMapping {
                host_port: pt.published.into(),
                container_port: pt.target.into(),
                protocol: pt.protocol.clone(),
                host_ip: pt.host_ip.clone(),
            })
            .collect(),
        network_aliases: aliases,
        volumes,
        restart: s.restart.clone().unwrap_or_default(),
        log: true,
        ..Default::default()
    };
    // What makes a running container stale: its service's config and where it connects.
    let hash = {
        let doc = serde_json::json!({
            "service": s,
            "network": network.name,
            "volumes": s.volumes.iter().filter(|m| m.kind == MountKind::Volume)
                .map(|m| &p.volumes[&m.source].name).collect::<Vec<_>>(),
        });
        hex::encode(Sha256::digest(doc.to_string().as_bytes()))
    };
    let mut labels: HashMap<String, String> = s.labels.clone().into_iter().collect();
    labels.insert(labels::COMPOSE_PROJECT.into(), p.name.clone());
    labels.insert(labels::COMPOSE_SERVICE.into(), key.to_owned());
    labels.insert(LABEL_NUMBER.into(), "1".into());
    labels.insert(LABEL_ONEOFF.into(), "False".into());
    labels.insert(LABEL_CONFIG_HASH.into(), hash.clone());
    labels.insert(
        LABEL_WORKING_DIR.into(),
        p.working_dir.display().to_string(),
    );
    labels.insert(
        LABEL_CONFIG_FILES.into(),
        p.files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    if !s.depends_on.is_empty() {
        labels.insert(
            LABEL_DEPENDS_ON.into(),
            s.depends_on
                .iter()
                .map(|(d, c)| format!("{d}:{}:true", c.condition))
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    labels.insert(labels::NAME.into(), name.clone());
    ContainerPlan {
        service: key.to_owned(),
        name,
        image: s.image.clone(),
        options,
        labels,
        config_hash: hash,
    }
}
