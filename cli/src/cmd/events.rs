//! `rctr events [FILTER...]`: the daemon's events, one line each, until interrupted.

use super::st;
use crate::client::Client;
use anyhow::Result;
use rcd_proto::v1 as pb;
use std::io::Write;

pub async fn run(client: &Client, filters: Vec<String>) -> Result<()> {
    let mut stream = client
        .events()
        .subscribe(pb::SubscribeEventsRequest { filters })
        .await
        .map_err(st(client))?
        .into_inner();
    let mut out = std::io::stdout();
    while let Some(e) = stream.message().await.map_err(st(client))? {
        // ctr's line: time, namespace, topic, the event's fields
        let mut attrs: Vec<_> = e.attributes.into_iter().collect();
        attrs.sort();
        let attrs: serde_json::Map<_, _> = attrs
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        writeln!(
            out,
            "{} {} {} {}",
            e.timestamp,
            e.namespace,
            e.topic,
            serde_json::Value::Object(attrs)
        )?;
        out.flush()?;
    }
    Ok(())
}
