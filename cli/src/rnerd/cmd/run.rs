//! `rnerd run` and `rnerd create`: docker's flags turned into rcd's ContainerOptions, the
//! image pulled as `--pull` says, then (run) the task created and started, attached or not.

use super::super::args::RunArgs;
use super::super::names::{self, random_id, random_name, valid_name};
use super::super::{CodedError, Ctx, Exit, EXIT_CANNOT_INVOKE, EXIT_NOT_FOUND};
use super::{delete_task, images, list};
use crate::cmd::stdio::{connect_attach, Fifos, Readers, ATTACH_WAIT};
use crate::cmd::tasks::{attached, Io};
use anyhow::{anyhow, bail, Context, Result};
use rcd_proto::labels;
use rcd_proto::v1 as pb;
use std::collections::HashMap;

/// `-p [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]`.
pub fn parse_port(spec: &str) -> Result<pb::PortMapping> {
    let bad = |why: &str| {
        anyhow!("invalid port {spec:?}: {why} (expected [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp], e.g. 8080:80)")
    };
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, p)) => (r, p.to_ascii_lowercase()),
        None => (spec, "tcp".to_owned()),
    };
    if proto != "tcp" && proto != "udp" {
        return Err(bad("the protocol is tcp or udp"));
    }
    // an IPv6 host address is in brackets: [::1]:8080:80
    let (host_ip, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, r) = r.split_once("]:").ok_or_else(|| bad("unclosed '['"))?;
        (ip.to_owned(), r.to_owned())
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.len() {
            1 | 2 => (String::new(), rest.to_owned()),
            3 => (parts[0].to_owned(), format!("{}:{}", parts[1], parts[2])),
            _ => return Err(bad("too many ':'")),
        }
    };
    if !host_ip.is_empty() && host_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(bad("the host address is not an IP address"));
    }
    let (host, ctr) = match rest.split_once(':') {
        Some((h, c)) => (h, c),
        None => ("", rest.as_str()),
    };
    let port = |s: &str| -> Result<u32> {
        match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p as u32),
            _ => Err(bad(&format!("{s:?} is not a port (1-65535)"))),
        }
    };
    Ok(pb::PortMapping {
        host_port: if host.is_empty() { 0 } else { port(host)? },
        container_port: port(ctr)?,
        protocol: proto,
        host_ip,
    })
}

/// `-m 512m`: bytes, or with b, k, m, g (powers of 1024).
pub fn parse_memory(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').filter(|r| !r.is_empty()).unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow!("invalid memory {s:?}: a number of bytes or with k, m, g (512m)"))?;
    if !n.is_finite() || n <= 0.0 {
        bail!("invalid memory {s:?}: must be more than 0");
    }
    let bytes = (n * mult as f64) as u64;
    if bytes < 6 << 20 {
        bail!("invalid memory {s:?}: the least is 6m");
    }
    Ok(bytes)
}

/// `--restart`: docker's policies.
pub fn check_restart(p: &str) -> Result<()> {
    let bad =
        || anyhow!("invalid restart policy {p:?}: no, always, on-failure[:N], unless-stopped");
    match p.split_once(':') {
        None if matches!(p, "no" | "always" | "on-failure" | "unless-stopped") => Ok(()),
        Some(("on-failure", n)) if n.parse::<u32>().is_ok() => Ok(()),
        _ => Err(bad()),
    }
}

/// `-e KEY=VALUE`, `-e KEY` (this environment's value; left out if unset) and
/// `--env-file` lines (`#` comments and blank lines skipped).
pub fn environment(env: &[String], files: &[std::path::PathBuf]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut one = |e: &str, whence: &str| -> Result<()> {
        let e = e.trim_start();
        if e.is_empty() || e.starts_with('#') {
            return Ok(());
        }
        match e.split_once('=') {
            Some(("", _)) => bail!("invalid environment variable {e:?}{whence}: no name"),
            Some(_) => out.push(e.to_owned()),
            None => {
                if let Ok(v) = std::env::var(e) {
                    out.push(format!("{e}={v}"));
                }
            }
        }
        Ok(())
    };
    for f in files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading env file {}", f.display()))?;
        for (i, l) in text.lines().enumerate() {
            one(l, &format!(" at {}:{}", f.display(), i + 1))?;
        }
    }
    for e in env {
        one(e, "")?;
    }
    Ok(out)
}

/// `-v`: relative host paths (`./data`) made absolute, the rest left for rcd to parse.
pub fn volume(spec: &str) -> Result<String> {
    if spec.is_empty() {
        bail!("invalid volume \"\": HOST_PATH:CTR_PATH[:ro], NAME:CTR_PATH[:ro] or CTR_PATH");
    }
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.len() > 3 || (parts.len() == 3 && !matches!(parts[2], "ro" | "rw" | "z" | "Z")) {
        bail!("invalid volume {spec:?}: HOST_PATH:CTR_PATH[:ro|rw] or NAME:CTR_PATH[:ro|rw]");
    }
    let dst = if parts.len() == 1 { parts[0] } else { parts[1] };
    if !dst.starts_with('/') {
        bail!("invalid volume {spec:?}: the container path {dst:?} must be absolute");
    }
    if parts.len() > 1 && parts[0].starts_with('.') {
        let abs =
            std::path::absolute(parts[0]).with_context(|| format!("resolving {}", parts[0]))?;
        let mut v = vec![abs.display().to_string()];
        v.extend(parts[1..].iter().map(|s| s.to_string()));
        return Ok(v.join(":"));
    }
    Ok(spec.to_owned())
}

/// docker's `--mount type=bind|volume|tmpfs,source=..,target=..[,readonly]`: binds and
/// tmpfs become ctr-style mounts, volumes `-v` entries. (mounts, volumes)
pub fn docker_mount(spec: &str) -> Result<(Option<String>, Option<String>)> {
    let mut kind = "volume".to_owned();
    let (mut src, mut dst, mut ro) = (String::new(), String::new(), false);
    for kv in spec.split(',') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "type" => kind = v.to_owned(),
            "source" | "src" => src = v.to_owned(),
            "target" | "destination" | "dst" => dst = v.to_owned(),
            "readonly" | "ro" => ro = v.is_empty() || v == "true" || v == "1",
            _ => {
                bail!("invalid mount {spec:?}: unknown key {k:?} (type, source, target, readonly)")
            }
        }
    }
    if !dst.starts_with('/') {
        bail!("invalid mount {spec:?}: target=/absolute/path is required");
    }
    let opt = if ro { "ro" } else { "rw" };
    match kind.as_str() {
        "bind" => {
            if src.is_empty() {
                bail!("invalid mount {spec:?}: a bind mount needs source=");
            }
            let src = std::path::absolute(&src)?.display().to_string();
            if !std::path::Path::new(&src).exists() {
                bail!("invalid mount {spec:?}: bind source {src} does not exist");
            }
            Ok((
                Some(format!("type=bind,src={src},dst={dst},options=rbind:{opt}")),
                None,
            ))
        }
        "tmpfs" => Ok((
            Some(format!(
                "type=tmpfs,src=tmpfs,dst={dst},options=nosuid:nodev:{opt}"
            )),
            None,
        )),
        "volume" if src.is_empty() => Ok((None, Some(dst))),
        "volume" => Ok((None, Some(format!("{src}:{dst}:{opt}")))),
        k => bail!("invalid mount {spec:?}: type {k:?} is not bind, volume or tmpfs"),
    }
}

/// Maps a failed task create/start to docker's codes: 127 for a command that does not
/// exist, 126 for one that cannot run.
fn start_error(ctx: &Ctx, s: tonic::Status) -> anyhow::Error {
    let msg = crate::client::status_message(ctx.client.address(), &s);
    let m = msg.to_ascii_lowercase();
    if m.contains("not found") && (m.contains("exec") || m.contains("executable"))
        || m.contains("no such file or directory") && m.contains("exec")
    {
        return CodedError(EXIT_NOT_FOUND, msg).into();
    }
    if m.contains("permission denied")
        || m.contains("exec format error")
        || m.contains("is a directory")
    {
        return CodedError(EXIT_CANNOT_INVOKE, msg).into();
    }
    anyhow!(msg)
}

/// The image's exposed ports (`-P`).
async fn exposed_ports(ctx: &Ctx, image: &str) -> Result<Vec<pb::PortMapping>> {
    let r = ctx
        .client
        .images()
        .get(pb::GetImageRequest {
            name: image.to_owned(),
        })
        .await
        .map_err(ctx.st())?
        .into_inner();
    let cfg: serde_json::Value = serde_json::from_slice(&r.config).unwrap_or_default();
    let mut out = Vec::new();
    if let Some(m) = cfg["config"]["ExposedPorts"].as_object() {
        for k in m.keys() {
            let mut p = parse_port(k)?;
            p.host_port = 0;
            out.push(p);
        }
    }
    Ok(out)
}

pub async fn run(ctx: &Ctx, a: RunArgs, start: bool) -> Result<()> {
    // every flag is checked before anything is made
    check_restart(&a.restart)?;
    if a.rm && a.restart != "no" {
        bail!("--rm and --restart {} exclude each other", a.restart);
    }
    if !matches!(a.pull.as_str(), "always" | "missing" | "never") {
        bail!("invalid --pull {:?}: always, missing or never", a.pull);
    }
    if let Some(n) = &a.name {
        if !valid_name(n) {
            bail!("invalid container name {n:?}: letters, digits and _ . - (not first)");
        }
    }
    if let Some(s) = &a.stop_signal {
        crate::cmd::parse_signal(s)?;
    }
    if let Some(c) = &a.cpus {
        match c.parse::<f64>() {
            Ok(n) if n > 0.0 && n.is_finite() => {}
            _ => bail!("invalid --cpus {c:?}: a number of CPUs above 0 (0.5, 2)"),
        }
    }
    let memory = a
        .memory
        .as_deref()
        .map(parse_memory)
        .transpose()?
        .unwrap_or(0);
    let mut ports = a
        .publish
        .iter()
        .map(|p| parse_port(p))
        .collect::<Result<Vec<_>>>()?;
    let env = environment(&a.env, &a.env_file)?;
    let mut volumes = a
        .volumes
        .iter()
        .map(|v| volume(v))
        .collect::<Result<Vec<_>>>()?;
    let mut mounts = Vec::new();
    for m in &a.mounts {
        let (mount, vol) = docker_mount(m)?;
        mounts.extend(mount);
        volumes.extend(vol);
    }
    let user_labels = crate::cmd::parse_labels(&a.labels)?;

    // rcd's record is the lock on a name (checked in the transaction that writes it) and
    // create resolves the image: the common case is one call, the rare ones (a name taken,
    // an image to pull) are handled from its refusal
    let mut name = a.name.clone().unwrap_or_else(random_name);
    let mut pulled = false;
    let image = if a.pull == "always" || a.publish_all {
        pulled = a.pull == "always";
        images::ensure(ctx, &a.image, &a.pull).await?
    } else {
        a.image.clone()
    };
    if a.publish_all {
        ports.extend(exposed_ports(ctx, &image).await?);
    }
    let id = random_id();
    let mut labels: HashMap<String, String> = user_labels;
    labels.insert(labels::NAME.to_owned(), name.clone());
    let (entrypoint, set_entrypoint) = match &a.entrypoint {
        Some(e) if e.is_empty() => (vec![], true),
        Some(e) => (vec![e.clone()], true),
        None => (vec![], false),
    };
    let mut req = pb::CreateContainerRequest {
        id: id.clone(),
        image: image.clone(),
        options: Some(pb::ContainerOptions {
            args: a.command.clone(),
            env,
            cwd: a.workdir.clone().unwrap_or_default(),
            user: a.user.clone().unwrap_or_default(),
            mounts,
            net_host: a.network == "host",
            cpus: a.cpus.clone().unwrap_or_default(),
            memory_limit: memory,
            privileged: a.privileged,
            cap_add: a.cap_add.clone(),
            cap_drop: a.cap_drop.clone(),
            tty: a.tty,
            readonly_rootfs: a.read_only,
            entrypoint,
            set_entrypoint,
            hostname: a.hostname.clone().unwrap_or_default(),
            network: a.network.clone(),
            ports,
            network_aliases: a.network_alias.clone(),
            volumes,
            pids_limit: a.pids_limit.unwrap_or(0),
            restart: a.restart.clone(),
            log: true,
            stop_signal: a.stop_signal.clone().unwrap_or_default(),
            add_hosts: a.add_host.clone(),
            dns: a.dns.clone(),
            // detached (or created now, started later): rcd removes it at its exit; an
            // attached run removes it itself once it has the exit code
            auto_remove: a.rm && (a.detach || !start),
        }),
        labels,
        runtime: String::new(),
    };
    let mut tries = 0;
    loop {
        let Err(s) = ctx.client.containers().create(req.clone()).await else {
            break;
        };
        tries += 1;
        if s.code() == tonic::Code::AlreadyExists && s.message().contains("container name") {
            if a.name.is_none() && tries < 5 {
                name = random_name();
                req.labels.insert(labels::NAME.to_owned(), name.clone());
                continue;
            }
            return Err(name_taken(ctx, &name).await);
        }
        if images::is_image_not_found(&s) && !pulled {
            // pulled as the policy says (`--pull never` ends here, with its message)
            req.image = images::ensure(ctx, &a.image, &a.pull).await?;
            pulled = true;
            continue;
        }
        return Err(images::not_found_hint(ctx, s, &a.image));
    }
    if !start {
        println!("{id}");
        return Ok(());
    }
    let remove = || async {
        let _ = ctx
            .client
            .containers()
            .delete(pb::DeleteContainerRequest {
                id: id.clone(),
                keep_snapshot: false,
                remove_volumes: true,
            })
            .await;
    };
    if a.detach {
        // -i/-t: FIFOs kept for `rnerd attach`; otherwise rcd keeps the log
        let io = if a.interactive || a.tty {
            Some(Io::new(&id, a.tty, true, false)?)
        } else {
            None
        };
        let stdio = io.as_ref().map(Io::stdio).unwrap_or_default();
        let r = start_task(ctx, &id, stdio).await;
        drop(io);
        if let Err(e) = r {
            let _ = delete_task(ctx, &id, true).await;
            return Err(e);
        }
        println!("{id}");
        return Ok(());
    }
    // Without -i/-t, rcd's logger takes the output (so `rnerd logs` has it, as docker's)
    // and rnerd reads it live from the logger's attach socket; -i/-t keep FIFOs.
    let logged = !a.interactive && !a.tty;
    let fifos = if logged {
        None
    } else {
        Some(Fifos::create(&id, a.interactive, a.tty)?)
    };
    let readers = match &fifos {
        Some(f) => Readers::open(Some(&f.stdout), f.stderr.as_deref())?,
        None => Readers::none(),
    };
    let created = ctx
        .client
        .tasks()
        .create(pb::CreateTaskRequest {
            container_id: id.clone(),
            stdio: Some(fifos.as_ref().map(Fifos::stdio).unwrap_or_default()),
        })
        .await
        .map_err(|s| start_error(ctx, s));
    // connected before the start: the logger sends a client what comes after it connects
    let readers = match created {
        Ok(r) if logged => logger_readers(&id, &r.into_inner().attach_socket)
            .await
            .map_err(|e| (e, true)),
        Ok(_) => Ok(readers),
        Err(e) => Err((e, false)),
    };
    let readers = match readers {
        Ok(r) => r,
        Err((e, task_made)) => {
            if task_made {
                let _ = delete_task(ctx, &id, true).await;
            }
            if a.rm {
                remove().await;
            } else {
                record_failure(ctx, &id, &e).await;
            }
            return Err(e);
        }
    };
    let status = attached(
        &ctx.client,
        &id,
        "",
        a.tty,
        true,
        fifos.as_ref().and_then(|f| f.stdin.as_deref()),
        readers,
    )
    .await;
    let status = match status {
        Ok(s) => Ok(s),
        Err(e) => {
            // a start refused: the command could not be run
            let msg = format!("{e:#}");
            Err(start_error(ctx, tonic::Status::unknown(msg)))
        }
    };
    if a.rm {
        // nothing to record about a container that goes
        let _ = ctx
            .client
            .tasks()
            .delete(pb::DeleteTaskRequest {
                container_id: id.clone(),
                force: true,
            })
            .await;
    } else {
        let _ = delete_task(ctx, &id, true).await;
    }
    if let Err(e) = &status {
        if !a.rm {
            record_failure(ctx, &id, e).await;
        }
    }
    if a.rm {
        remove().await;
    }
    drop(fifos);
    let status = status?;
    if status != 0 {
        return Err(Exit(status.min(255) as u8).into());
    }
    Ok(())
}

/// The refusal of a name another container holds, naming the holder when it is still there.
async fn name_taken(ctx: &Ctx, name: &str) -> anyhow::Error {
    let holder = list(ctx).await.ok().and_then(|l| {
        l.into_iter()
            .find(|c| c.labels.get(labels::NAME).map(String::as_str) == Some(name))
    });
    match holder {
        Some(c) => anyhow::anyhow!(
            "the name {name:?} is taken by container {}: remove it (`rnerd rm -f {name}`) or choose another",
            names::short_id(&c.id)
        ),
        None => anyhow::anyhow!(
            "the name {name:?} is taken: remove it (`rnerd rm -f {name}`) or choose another"
        ),
    }
}

/// The output of a task rcd logs, read from its logger's attach socket (Tasks.Create's
/// `attach_socket`).
pub(super) async fn logger_readers(id: &str, socket: &str) -> Result<Readers> {
    if socket.is_empty() {
        bail!(
            "rcd named no log attach socket for container {}: its output is not logged by \
             rcd (an rcd older than rnerd?)",
            names::short_id(id)
        );
    }
    let path = std::path::PathBuf::from(socket);
    let conn = tokio::task::spawn_blocking(move || -> Result<_> {
        let conn = connect_attach(&path, ATTACH_WAIT)?;
        // the start follows: output sent before the logger registered us would be lost
        conn.set_read_timeout(Some(ATTACH_WAIT))?;
        match rcd_proto::attach::read_frame(&mut &conn)? {
            Some((rcd_proto::attach::ATTACHED, _)) => {}
            other => bail!(
                "the container's logger at {} did not acknowledge the attach (got {other:?})",
                path.display()
            ),
        }
        conn.set_read_timeout(None)?;
        Ok(conn)
    })
    .await
    .map_err(|e| anyhow!("connecting to the container's logger: {e}"))?
    .with_context(|| format!("attaching to container {}", names::short_id(id)))?;
    Ok(Readers::attach(conn))
}

/// docker shows a container whose command could not start as exited with 126/127.
async fn record_failure(ctx: &Ctx, id: &str, e: &anyhow::Error) {
    let (code, _) = super::super::exit_code(e);
    let _ = ctx
        .client
        .containers()
        .update(pb::UpdateContainerRequest {
            id: id.to_owned(),
            labels: [
                (super::LABEL_EXIT_CODE.to_owned(), code.to_string()),
                (
                    super::LABEL_FINISHED_AT.to_owned(),
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                ),
            ]
            .into(),
        })
        .await;
}

/// Creates and starts a detached task.
pub async fn start_task(ctx: &Ctx, id: &str, stdio: pb::Stdio) -> Result<()> {
    ctx.client
        .tasks()
        .create(pb::CreateTaskRequest {
            container_id: id.to_owned(),
            stdio: Some(stdio),
        })
        .await
        .map_err(|s| start_error(ctx, s))?;
    ctx.client
        .tasks()
        .start(pb::StartTaskRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        })
        .await
        .map_err(|s| start_error(ctx, s))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.protocol.as_str()),
            (8080, 80, "tcp")
        );
        let p = parse_port("127.0.0.1:53:53/udp").unwrap();
        assert_eq!(
            (p.host_ip.as_str(), p.host_port, p.protocol.as_str()),
            ("127.0.0.1", 53, "udp")
        );
        let p = parse_port("80").unwrap();
        assert_eq!((p.host_port, p.container_port), (0, 80));
        let p = parse_port("[::1]:8080:80").unwrap();
        assert_eq!(p.host_ip, "::1");
        for bad in [
            "",
            "x",
            "80/sctp",
            "0",
            "70000",
            "a:b:c:d",
            "1.2.3:80:80",
            ":",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
        assert!(parse_port("8080:80/sctp")
            .unwrap_err()
            .to_string()
            .contains("tcp or udp"));
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_memory("10000000").unwrap(), 10_000_000);
        for bad in ["", "x", "-1m", "1k", "0"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn restart_policies() {
        for ok in [
            "no",
            "always",
            "on-failure",
            "on-failure:3",
            "unless-stopped",
        ] {
            check_restart(ok).unwrap();
        }
        for bad in ["sometimes", "on-failure:x", "always:3", ""] {
            assert!(check_restart(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_and_files() {
        std::env::set_var("RNERD_TEST_ENV", "here");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("env");
        std::fs::write(&f, "# c\nA=1\n\nB=x=y\n").unwrap();
        let e = environment(
            &["C=3".into(), "RNERD_TEST_ENV".into(), "UNSET_XYZ".into()],
            &[f],
        )
        .unwrap();
        assert_eq!(e, ["A=1", "B=x=y", "C=3", "RNERD_TEST_ENV=here"]);
        assert!(environment(&["=x".into()], &[]).is_err());
        let missing = environment(&[], &["/nonexistent/env".into()]).unwrap_err();
        assert!(format!("{missing:#}").contains("/nonexistent/env"));
    }

    #[test]
    fn volumes_and_mounts() {
        assert_eq!(volume("data:/d").unwrap(), "data:/d");
        assert_eq!(volume("/h:/c:ro").unwrap(), "/h:/c:ro");
        assert!(volume("./x:/c").unwrap().starts_with('/'));
        assert!(volume("x:rel").is_err());
        assert!(volume("a:/b:c:d").is_err());
        assert!(volume("a:/b:bogus").is_err());
        assert_eq!(
            docker_mount("type=volume,source=v,target=/d,readonly").unwrap(),
            (None, Some("v:/d:ro".into()))
        );
        assert_eq!(
            docker_mount("type=bind,source=/tmp,target=/t")
                .unwrap()
                .0
                .unwrap(),
            "type=bind,src=/tmp,dst=/t,options=rbind:rw"
        );
        assert!(docker_mount("type=bind,source=/nonexistent-x,target=/t").is_err());
        assert!(docker_mount("type=nfs,target=/t").is_err());
        assert!(docker_mount("type=bind,source=/tmp").is_err());
        assert!(docker_mount("bogus=1,target=/t").is_err());
    }
}
