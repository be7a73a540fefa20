//! `rnerd logs`: rcd's json-file log of a container (Containers.Logs).

use super::super::args::LogsArgs;
use super::super::Ctx;
use super::resolve;
use anyhow::{anyhow, bail, Result};
use rcd_proto::v1 as pb;
use std::io::Write;

/// `--since 10m` (relative) or an absolute time as rcd takes it.
fn time_arg(s: &str) -> Result<String> {
    if let Ok(d) = crate::client::parse_duration(s) {
        if s.ends_with(|c: char| c.is_ascii_alphabetic()) {
            let t = chrono::Utc::now() - chrono::Duration::from_std(d)?;
            return Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
        }
    }
    if chrono::DateTime::parse_from_rfc3339(s).is_ok() || s.parse::<f64>().is_ok() {
        return Ok(s.to_owned());
    }
    bail!("invalid time {s:?}: RFC 3339 (2026-01-02T15:04:05Z), Unix seconds or a duration (10m)")
}

async fn stream(ctx: &Ctx, req: pb::LogsRequest, timestamps: bool) -> Result<()> {
    let mut s = ctx
        .client
        .containers()
        .logs(req)
        .await
        .map_err(|s| logs_error(ctx, s))?
        .into_inner();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(m) = s.message().await.map_err(|s| logs_error(ctx, s))? {
        for l in m.lines {
            let w: &mut dyn Write = if l.stream == "stderr" {
                &mut err
            } else {
                &mut out
            };
            if timestamps {
                write!(w, "{} ", l.time)?;
            }
            w.write_all(&l.line)?;
            w.flush()?;
        }
    }
    Ok(())
}

fn logs_error(ctx: &Ctx, s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unimplemented {
        return anyhow!(
            "this rcd keeps no container logs (Containers.Logs is not implemented): update rcd"
        );
    }
    if s.code() == tonic::Code::FailedPrecondition {
        return anyhow!(
            "{}: rcd keeps logs of containers made by rnerd (or with ContainerOptions.log)",
            s.message()
        );
    }
    ctx.st()(s)
}

pub async fn logs(ctx: &Ctx, a: LogsArgs) -> Result<()> {
    let (tail, tail_all) = match a.tail.as_str() {
        "all" | "-1" => (0, true),
        n => match n.parse::<i64>() {
            Ok(n) if n >= 0 => (n, false),
            _ => bail!("invalid --tail {n:?}: a number of lines or \"all\""),
        },
    };
    let since = a
        .since
        .as_deref()
        .map(time_arg)
        .transpose()?
        .unwrap_or_default();
    let until = a
        .until
        .as_deref()
        .map(time_arg)
        .transpose()?
        .unwrap_or_default();
    let c = resolve(ctx, &a.container).await?;
    stream(
        ctx,
        pb::LogsRequest {
            id: c.id,
            follow: a.follow,
            tail,
            tail_all,
            since,
            until,
        },
        a.timestamps,
    )
    .await
}

/// `attach` to a container without stdio of rnerd's: its log, followed.
pub async fn follow_until_exit(ctx: &Ctx, c: &pb::Container) -> Result<()> {
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    stream(
        ctx,
        pb::LogsRequest {
            id: c.id.clone(),
            follow: true,
            tail: 0,
            tail_all: true,
            since,
            until: String::new(),
        },
        false,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert!(time_arg("10m").unwrap().ends_with('Z'));
        assert_eq!(time_arg("1700000000").unwrap(), "1700000000");
        assert_eq!(
            time_arg("2026-01-02T15:04:05Z").unwrap(),
            "2026-01-02T15:04:05Z"
        );
        assert!(time_arg("yesterday").is_err());
    }
}
