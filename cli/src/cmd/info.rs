//! `rctr info`: what the daemon says about itself, as JSON.

use super::st;
use crate::client::Client;
use anyhow::Result;
use rcd_proto::v1 as pb;

pub async fn run(client: &Client) -> Result<()> {
    let i = client
        .introspection()
        .server(pb::ServerInfoRequest {})
        .await
        .map_err(st(client))?
        .into_inner();
    let v = serde_json::json!({
        "Version": i.version,
        "Revision": i.revision,
        "Pid": i.pid,
        "Root": i.root,
        "State": i.state,
        "Address": i.address,
        "Shim": i.shim,
        "StartedAt": i.started_at,
        "Namespaces": i.namespaces,
        "Containers": i.containers,
        "Tasks": i.tasks,
        "TasksRunning": i.tasks_running,
        "Images": i.images,
        "CgroupMode": i.cgroup_mode,
        "RssBytes": i.rss_bytes,
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
