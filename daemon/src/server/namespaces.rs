//! The Namespaces service (`ctr namespaces`) and Introspection (`ctr info`).
//!
//! A namespace exists once made by hand (a record in the `namespaces` table, with labels) or
//! once anything is recorded in it; removing one is refused while anything is.

use super::containers::{Runtime, TxError};
use super::service::{blocking, metadata_status, time};
use crate::metadata::NamespaceRecord;
use chrono::Utc;
use rcd_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

fn check(name: &str) -> Result<(), Status> {
    if rcd_proto::valid_namespace(name) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid namespace {name:?}: letters, digits, '-', '_' in '.'-separated labels"
        )))
    }
}

/// What keeps namespace `ns` from being removed, if anything (`$tx`: a read or write
/// transaction).
macro_rules! in_use {
    ($tx:expr, $ns:expr) => {{
        let (tx, ns) = ($tx, $ns);
        used_summary(&[
            ("images", tx.images(ns)?.len()),
            ("containers", tx.containers(ns)?.len()),
            ("snapshots", tx.snapshots(ns)?.len()),
            ("leases", tx.leases(ns)?.len()),
            ("content labels", tx.contents(ns)?.len()),
        ])
    }};
}

fn used_summary(what: &[(&str, usize)]) -> Option<String> {
    let used: Vec<String> = what
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(w, n)| format!("{n} {w}"))
        .collect();
    (!used.is_empty()).then(|| used.join(", "))
}

fn to_pb(name: &str, rec: Option<NamespaceRecord>) -> pb::Namespace {
    pb::Namespace {
        name: name.to_owned(),
        labels: rec
            .map(|r| r.labels.into_iter().collect())
            .unwrap_or_default(),
    }
}

pub struct NamespacesService(pub Arc<Runtime>);

#[tonic::async_trait]
impl pb::namespaces_server::Namespaces for NamespacesService {
    async fn list(
        &self,
        _req: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let md = self.0.d.md.clone();
        let mut names = std::collections::BTreeSet::new();
        let list = blocking(move || {
            md.read(|tx| {
                let mut out = Vec::new();
                for n in tx.all_namespaces()? {
                    let rec = tx.namespace_record(&n)?;
                    out.push(to_pb(&n, rec));
                }
                Ok(out)
            })
            .map_err(metadata_status)
        })
        .await?;
        names.extend(list.iter().map(|n| n.name.clone()));
        // namespaces that only have tasks (their containers gone) still show
        let mut list = list;
        for t in self.0.tasks.list(None) {
            if names.insert(t.namespace.clone()) {
                list.push(to_pb(&t.namespace, None));
            }
        }
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListNamespacesResponse {
            namespaces: list,
        }))
    }

    async fn create(
        &self,
        req: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::CreateNamespaceResponse>, Status> {
        let req = req.into_inner();
        check(&req.name)?;
        let md = self.0.d.md.clone();
        let rec = blocking(move || {
            md.write(|tx| -> Result<_, TxError> {
                if tx.all_namespaces()?.contains(&req.name) {
                    return Err(Status::already_exists(format!(
                        "namespace {:?} already exists",
                        req.name
                    ))
                    .into());
                }
                let rec = NamespaceRecord {
                    name: req.name.clone(),
                    labels: req
                        .labels
                        .into_iter()
                        .filter(|(_, v)| !v.is_empty())
                        .collect(),
                    created: Utc::now(),
                };
                tx.put_namespace(&rec)?;
                Ok(rec)
            })
            .map_err(Status::from)
        })
        .await?;
        let name = rec.name.clone();
        Ok(Response::new(pb::CreateNamespaceResponse {
            namespace: Some(to_pb(&name, Some(rec))),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateNamespaceRequest>,
    ) -> Result<Response<pb::UpdateNamespaceResponse>, Status> {
        let req = req.into_inner();
        check(&req.name)?;
        let md = self.0.d.md.clone();
        let rec = blocking(move || {
            md.write(|tx| -> Result<_, TxError> {
                let mut rec = match tx.namespace_record(&req.name)? {
                    Some(r) => r,
                    None if tx.all_namespaces()?.contains(&req.name) => NamespaceRecord {
                        name: req.name.clone(),
                        labels: Default::default(),
                        created: Utc::now(),
                    },
                    None => {
                        return Err(Status::not_found(format!(
                            "namespace {:?} not found",
                            req.name
                        ))
                        .into())
                    }
                };
                for (k, v) in req.labels {
                    if v.is_empty() {
                        rec.labels.remove(&k);
                    } else {
                        rec.labels.insert(k, v);
                    }
                }
                tx.put_namespace(&rec)?;
                Ok(rec)
            })
            .map_err(Status::from)
        })
        .await?;
        let name = rec.name.clone();
        Ok(Response::new(pb::UpdateNamespaceResponse {
            namespace: Some(to_pb(&name, Some(rec))),
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteNamespaceRequest>,
    ) -> Result<Response<pb::DeleteNamespaceResponse>, Status> {
        let name = req.into_inner().name;
        check(&name)?;
        let tasks = self.0.tasks.list(Some(&name)).len();
        if tasks > 0 {
            return Err(Status::failed_precondition(format!(
                "namespace {name:?} is not empty: {tasks} tasks"
            )));
        }
        let md = self.0.d.md.clone();
        blocking(move || {
            md.write(|tx| -> Result<_, TxError> {
                if !tx.all_namespaces()?.contains(&name) {
                    return Err(Status::not_found(format!("namespace {name:?} not found")).into());
                }
                if let Some(used) = in_use!(&*tx, name.as_str()) {
                    return Err(Status::failed_precondition(format!(
                        "namespace {name:?} is not empty: {used}"
                    ))
                    .into());
                }
                tx.delete_namespace_record(&name)?;
                Ok(())
            })
            .map_err(Status::from)
        })
        .await?;
        Ok(Response::new(pb::DeleteNamespaceResponse {}))
    }
}

/// The cgroup layout of this host, as `ctr info` would call it.
fn cgroup_mode() -> &'static str {
    let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let hybrid = std::path::Path::new("/sys/fs/cgroup/unified").exists();
    match (unified, hybrid) {
        (true, _) => "v2",
        (false, true) => "hybrid",
        _ => "v1",
    }
}

/// This process's resident set, from /proc/self/status.
fn own_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

pub struct IntrospectionService(pub Arc<Runtime>);

#[tonic::async_trait]
impl pb::introspection_server::Introspection for IntrospectionService {
    async fn server(
        &self,
        _req: Request<pb::ServerInfoRequest>,
    ) -> Result<Response<pb::ServerInfoResponse>, Status> {
        let rt = &self.0;
        let md = rt.d.md.clone();
        let (namespaces, containers, images) = blocking(move || {
            md.read(|tx| {
                let ns = tx.all_namespaces()?;
                let (mut c, mut i) = (0, 0);
                for n in &ns {
                    c += tx.containers(n)?.len();
                    i += tx.images(n)?.len();
                }
                Ok((ns, c, i))
            })
            .map_err(metadata_status)
        })
        .await?;
        let tasks = rt.tasks.list(None);
        let running = tasks
            .iter()
            .filter(|t| t.exit.is_none() && !t.shim_dead)
            .count();
        let s = &rt.d.settings;
        Ok(Response::new(pb::ServerInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision: option_env!("RCD_REVISION").unwrap_or_default().to_owned(),
            pid: std::process::id(),
            root: s.root.display().to_string(),
            state: s.state.display().to_string(),
            address: s.address.display().to_string(),
            shim: rt.shim.display().to_string(),
            started_at: time(&rt.started_at),
            namespaces,
            containers: containers as u32,
            tasks: tasks.len() as u32,
            tasks_running: running as u32,
            images: images as u32,
            cgroup_mode: cgroup_mode().to_owned(),
            rss_bytes: own_rss(),
        }))
    }
}
