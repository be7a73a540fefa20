//! The compose commands against rcd: what [`super::plan`] decided, done through the native
//! API. Containers are found again by their `com.docker.compose.*` labels, so every command
//! works on what `up` made, whatever happened in between.

use super::model::Project;
use super::plan::{self, ContainerPlan, Plan};
use super::{DownArgs, LogsArgs, PsArgs, StopArgs, UpArgs};
use crate::client::{status_message, Client};
use anyhow::{anyhow, bail, Result};
use rcd_proto::labels;
use rcd_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tonic::Code;

pub struct Exec {
    client: Client,
    project: Project,
    /// Images whose registry is one of `--insecure-registry`'s.
    plain_http: Vec<String>,
}

fn progress(kind: &str, name: &str, state: &str) {
    eprintln!(" {kind} {name}  {state}");
}

fn random_id() -> String {
    (0..32)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

impl Exec {
    pub fn new(client: Client, project: Project, plain_http: Vec<String>) -> Exec {
        Exec {
            client,
            project,
            plain_http,
        }
    }

    fn fail(&self, what: &str, s: &tonic::Status) -> anyhow::Error {
        anyhow!("{what}: {}", status_message(self.client.address(), s))
    }

    /// The project's containers by service (orphans included), from rcd.
    async fn containers(&self) -> Result<BTreeMap<String, pb::Container>> {
        let resp = self
            .client
            .containers()
            .list(pb::ListContainersRequest {
                filters: vec![format!(
                    "labels.{}=={}",
                    labels::COMPOSE_PROJECT,
                    self.project.name
                )],
            })
            .await
            .map_err(|s| self.fail("listing containers", &s))?;
        Ok(resp
            .into_inner()
            .containers
            .into_iter()
            .filter_map(|c| {
                let svc = c.labels.get(labels::COMPOSE_SERVICE)?.clone();
                Some((svc, c))
            })
            .collect())
    }

    async fn task(&self, id: &str) -> Result<Option<pb::Process>> {
        match self
            .client
            .tasks()
            .get(pb::GetTaskRequest {
                container_id: id.into(),
                exec_id: String::new(),
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().process),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.fail(&format!("getting the task of {id}"), &s)),
        }
    }

    /// The names given, checked, or every service; in start order.
    fn select(&self, names: &[String], with_deps: bool) -> Result<Vec<String>> {
        let order = plan::start_order(&self.project).map_err(|e| anyhow!(e))?;
        if names.is_empty() {
            return Ok(order);
        }
        let mut want: Vec<String> = Vec::new();
        for n in names {
            if !self.project.services.contains_key(n) {
                bail!("no such service: {n:?} (services: {})", order.join(", "));
            }
            want.push(n.clone());
        }
        if with_deps {
            let mut i = 0;
            while i < want.len() {
                for d in self.project.services[&want[i]].depends_on.keys() {
                    if !want.contains(d) {
                        want.push(d.clone());
                    }
                }
                i += 1;
            }
        }
        Ok(order.into_iter().filter(|s| want.contains(s)).collect())
    }

    fn warn_orphans(&self, existing: &BTreeMap<String, pb::Container>) {
        for (svc, c) in existing {
            if !self.project.services.contains_key(svc) {
                eprintln!(
                    "rnerd: warning: container {} of service {svc:?} is not in the file (an orphan): remove it with --remove-orphans",
                    name_of(c)
                );
            }
        }
    }

    pub async fn up(&self, a: &UpArgs) -> Result<i32> {
        let plan = plan::plan(&self.project).map_err(|e| anyhow!(e))?;
        let selected = self.select(&a.services, true)?;
        let mut existing = self.containers().await?;
        if a.remove_orphans {
            for (svc, c) in existing.clone() {
                if !self.project.services.contains_key(&svc) {
                    self.stop_one(&c, a.timeout).await?;
                    self.remove_one(&c, false).await?;
                    existing.remove(&svc);
                }
            }
        } else {
            self.warn_orphans(&existing);
        }
        self.ensure_networks(&plan).await?;
        self.ensure_volumes(&plan).await?;
        let todo: Vec<&ContainerPlan> = plan
            .containers
            .iter()
            .filter(|c| selected.contains(&c.service))
            .collect();
        let mut images: Vec<&str> = todo.iter().map(|c| c.image.as_str()).collect();
        images.sort_unstable();
        images.dedup();
        for image in images {
            self.ensure_image(image).await?;
        }
        let mut ids = Vec::new();
        for c in &todo {
            let id = match existing.get(&c.service) {
                Some(old)
                    if !a.force_recreate
                        && old.labels.get(plan::LABEL_CONFIG_HASH) == Some(&c.config_hash) =>
                {
                    self.start_one(old, true).await?;
                    old.id.clone()
                }
                Some(old) => {
                    progress("Container", &c.name, "Recreate");
                    self.stop_one(old, a.timeout).await?;
                    self.remove_one(old, false).await?;
                    self.create_and_start(c).await?
                }
                None => self.create_and_start(c).await?,
            };
            ids.push(((*c).clone(), id));
        }
        if a.detach {
            return Ok(0);
        }
        self.attach(&ids, a.timeout).await
    }

    /// `up` without -d: the services' logs until they all exit, or Ctrl-C (which stops them).
    async fn attach(&self, ids: &[(ContainerPlan, String)], timeout: u64) -> Result<i32> {
        let targets: Vec<(String, String)> = ids
            .iter()
            .map(|(c, id)| (self.prefix_of(&c.name), id.clone()))
            .collect();
        // Printed while this waits for the services.
        let logs = tokio::spawn(self.stream_logs(&targets, true, None, false, true));
        // Containers that restart never end on their own.
        let waits = futures_util::future::join_all(
            ids.iter()
                .filter(|(c, _)| matches!(c.options.restart.as_str(), "" | "no"))
                .map(|(_, id)| {
                    let mut tasks = self.client.tasks();
                    let id = id.clone();
                    async move {
                        tasks
                            .wait(pb::WaitTaskRequest {
                                container_id: id,
                                exec_id: String::new(),
                            })
                            .await
                    }
                }),
        );
        let all_restart = ids
            .iter()
            .all(|(c, _)| !matches!(c.options.restart.as_str(), "" | "no"));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                eprintln!("Gracefully stopping... (press Ctrl+C again to force)");
                for (c, id) in ids.iter().rev() {
                    let ct = pb::Container { id: id.clone(), labels: c.labels.clone(), ..Default::default() };
                    tokio::select! {
                        r = self.stop_one(&ct, timeout) => r?,
                        _ = tokio::signal::ctrl_c() => return Ok(130),
                    }
                }
                Ok(130)
            }
            _ = waits, if !all_restart => {
                // Let the last lines through before leaving.
                let _ = tokio::time::timeout(Duration::from_millis(500), logs).await;
                Ok(0)
            }
        }
    }

    async fn ensure_networks(&self, plan: &Plan) -> Result<()> {
        for n in &plan.networks {
            let got = self
                .client
                .networks()
                .get(pb::GetNetworkRequest {
                    name: n.name.clone(),
                })
                .await;
            match got {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound && n.external => bail!(
                    "external network {:?} not found: create it with rnerd network create {}",
                    n.name,
                    n.name
                ),
                Err(s) if s.code() == Code::NotFound => {
                    self.client
                        .networks()
                        .create(pb::CreateNetworkRequest {
                            name: n.name.clone(),
                            subnet: n.subnet.clone(),
                            gateway: n.gateway.clone(),
                            labels: n.labels.clone(),
                            driver: String::new(),
                        })
                        .await
                        .map_err(|s| self.fail(&format!("creating network {}", n.name), &s))?;
                    progress("Network", &n.name, "Created");
                }
                Err(s) => return Err(self.fail(&format!("getting network {}", n.name), &s)),
            }
        }
        Ok(())
    }

    async fn ensure_volumes(&self, plan: &Plan) -> Result<()> {
        for v in &plan.volumes {
            let got = self
                .client
                .volumes()
                .get(pb::GetVolumeRequest {
                    name: v.name.clone(),
                    size: false,
                })
                .await;
            match got {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound && v.external => bail!(
                    "external volume {:?} not found: create it with rnerd volume create {}",
                    v.name,
                    v.name
                ),
                Err(s) if s.code() == Code::NotFound => {
                    self.client
                        .volumes()
                        .create(pb::CreateVolumeRequest {
                            name: v.name.clone(),
                            labels: v.labels.clone(),
                            driver: String::new(),
                        })
                        .await
                        .map_err(|s| self.fail(&format!("creating volume {}", v.name), &s))?;
                    progress("Volume", &v.name, "Created");
                }
                Err(s) => return Err(self.fail(&format!("getting volume {}", v.name), &s)),
            }
        }
        Ok(())
    }

    async fn ensure_image(&self, image: &str) -> Result<()> {
        match self
            .client
            .images()
            .get(pb::GetImageRequest { name: image.into() })
            .await
        {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(self.fail(&format!("getting image {image}"), &s)),
        }
        progress("Image", image, "Pulling");
        let mut stream = self
            .client
            .images()
            .pull(pb::PullRequest {
                reference: image.into(),
                plain_http: self.plain_http.iter().any(|i| i == image),
                ..Default::default()
            })
            .await
            .map_err(|s| self.fail(&format!("pulling {image}"), &s))?
            .into_inner();
        while stream
            .message()
            .await
            .map_err(|s| self.fail(&format!("pulling {image}"), &s))?
            .is_some()
        {}
        progress("Image", image, "Pulled");
        Ok(())
    }

    async fn create_and_start(&self, c: &ContainerPlan) -> Result<String> {
        // Names are unique per namespace (rnerd's rule): refuse one taken outside the project.
        let taken = self
            .client
            .containers()
            .list(pb::ListContainersRequest {
                filters: vec![format!("labels.{}=={}", labels::NAME, c.name)],
            })
            .await
            .map_err(|s| self.fail("listing containers", &s))?
            .into_inner()
            .containers;
        if let Some(other) = taken.first() {
            bail!(
                "container name {:?} is already in use by container {}: remove it, or set another container_name for service {:?}",
                c.name,
                &other.id[..other.id.len().min(12)],
                c.service
            );
        }
        let id = random_id();
        self.client
            .containers()
            .create(pb::CreateContainerRequest {
                id: id.clone(),
                image: c.image.clone(),
                options: Some(c.options.clone()),
                labels: c.labels.clone(),
                runtime: String::new(),
            })
            .await
            .map_err(|s| self.fail(&format!("creating container {}", c.name), &s))?;
        progress("Container", &c.name, "Created");
        self.create_task(&id, &c.name).await?;
        progress("Container", &c.name, "Started");
        Ok(id)
    }

    async fn create_task(&self, id: &str, name: &str) -> Result<()> {
        self.client
            .tasks()
            .create(pb::CreateTaskRequest {
                container_id: id.into(),
                // No stdio: rcd keeps the output in the container's json-file log.
                stdio: None,
            })
            .await
            .map_err(|s| self.fail(&format!("starting container {name}"), &s))?;
        self.client
            .tasks()
            .start(pb::StartTaskRequest {
                container_id: id.into(),
                exec_id: String::new(),
            })
            .await
            .map_err(|s| self.fail(&format!("starting container {name}"), &s))?;
        Ok(())
    }

    /// Starts a container's task unless it runs; `quiet_running`: say "Running" for one that does.
    async fn start_one(&self, c: &pb::Container, quiet_running: bool) -> Result<()> {
        let name = name_of(c);
        if c.labels.contains_key(labels::EXPLICITLY_STOPPED) {
            self.set_label(&c.id, labels::EXPLICITLY_STOPPED, "")
                .await?;
        }
        match self.task(&c.id).await? {
            Some(p) if p.status == pb::TaskStatus::Running as i32 => {
                if quiet_running {
                    progress("Container", &name, "Running");
                }
                return Ok(());
            }
            Some(p) if p.status == pb::TaskStatus::Paused as i32 => {
                self.client
                    .tasks()
                    .resume(pb::ResumeTaskRequest {
                        container_id: c.id.clone(),
                    })
                    .await
                    .map_err(|s| self.fail(&format!("resuming {name}"), &s))?;
                progress("Container", &name, "Resumed");
                return Ok(());
            }
            Some(_) => self.delete_task(&c.id, &name).await?,
            None => {}
        }
        self.create_task(&c.id, &name).await?;
        progress("Container", &name, "Started");
        Ok(())
    }

    async fn set_label(&self, id: &str, k: &str, v: &str) -> Result<()> {
        self.client
            .containers()
            .update(pb::UpdateContainerRequest {
                id: id.into(),
                labels: HashMap::from([(k.to_owned(), v.to_owned())]),
            })
            .await
            .map_err(|s| self.fail(&format!("updating container {id}"), &s))?;
        Ok(())
    }

    async fn delete_task(&self, id: &str, name: &str) -> Result<()> {
        match self
            .client
            .tasks()
            .delete(pb::DeleteTaskRequest {
                container_id: id.into(),
                force: true,
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.fail(&format!("deleting the task of {name}"), &s)),
        }
    }

    /// docker's stop: the stop signal, `timeout` seconds, then SIGKILL; the task deleted.
    async fn stop_one(&self, c: &pb::Container, timeout: u64) -> Result<()> {
        let name = name_of(c);
        // First, so that the restart monitor does not bring it back.
        self.set_label(&c.id, labels::EXPLICITLY_STOPPED, "true")
            .await?;
        let Some(p) = self.task(&c.id).await? else {
            return Ok(());
        };
        if p.status == pb::TaskStatus::Running as i32 || p.status == pb::TaskStatus::Paused as i32 {
            progress("Container", &name, "Stopping");
            let sig = c
                .labels
                .get(labels::STOP_SIGNAL)
                .filter(|s| !s.is_empty())
                .map(|s| crate::cmd::parse_signal(s))
                .transpose()?
                .unwrap_or(libc::SIGTERM as u32);
            if p.status == pb::TaskStatus::Paused as i32 {
                let _ = self
                    .client
                    .tasks()
                    .resume(pb::ResumeTaskRequest {
                        container_id: c.id.clone(),
                    })
                    .await;
            }
            self.kill(&c.id, sig, false).await?;
            let mut tasks = self.client.tasks();
            let wait = tasks.wait(pb::WaitTaskRequest {
                container_id: c.id.clone(),
                exec_id: String::new(),
            });
            if tokio::time::timeout(Duration::from_secs(timeout), wait)
                .await
                .is_err()
            {
                self.kill(&c.id, libc::SIGKILL as u32, true).await?;
            }
            progress("Container", &name, "Stopped");
        }
        self.delete_task(&c.id, &name).await
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        match self
            .client
            .tasks()
            .kill(pb::KillTaskRequest {
                container_id: id.into(),
                exec_id: String::new(),
                signal,
                all,
            })
            .await
        {
            Ok(_) => Ok(()),
            // It exited meanwhile.
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(s) => Err(self.fail(&format!("signalling {id}"), &s)),
        }
    }

    async fn remove_one(&self, c: &pb::Container, volumes: bool) -> Result<()> {
        let name = name_of(c);
        match self
            .client
            .containers()
            .delete(pb::DeleteContainerRequest {
                id: c.id.clone(),
                keep_snapshot: false,
                remove_volumes: volumes,
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(self.fail(&format!("removing container {name}"), &s)),
        }
        progress("Container", &name, "Removed");
        Ok(())
    }

    pub async fn down(&self, a: &DownArgs) -> Result<i32> {
        let existing = self.containers().await?;
        let order = plan::start_order(&self.project).map_err(|e| anyhow!(e))?;
        let mut doomed: Vec<&pb::Container> = Vec::new();
        if a.remove_orphans {
            doomed.extend(
                existing
                    .iter()
                    .filter(|(s, _)| !self.project.services.contains_key(*s))
                    .map(|(_, c)| c),
            );
        } else {
            self.warn_orphans(&existing);
        }
        doomed.extend(order.iter().rev().filter_map(|s| existing.get(s)));
        for c in doomed {
            self.stop_one(c, a.timeout).await?;
            self.remove_one(c, a.volumes).await?;
        }
        let plan = plan::plan(&self.project).map_err(|e| anyhow!(e))?;
        for n in plan.networks.iter().filter(|n| !n.external) {
            match self
                .client
                .networks()
                .delete(pb::DeleteNetworkRequest {
                    name: n.name.clone(),
                })
                .await
            {
                Ok(_) => progress("Network", &n.name, "Removed"),
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(self.fail(&format!("removing network {}", n.name), &s)),
            }
        }
        if a.volumes {
            for v in plan.volumes.iter().filter(|v| !v.external) {
                match self
                    .client
                    .volumes()
                    .delete(pb::DeleteVolumeRequest {
                        name: v.name.clone(),
                    })
                    .await
                {
                    Ok(_) => progress("Volume", &v.name, "Removed"),
                    Err(s) if s.code() == Code::NotFound => {}
                    Err(s) => return Err(self.fail(&format!("removing volume {}", v.name), &s)),
                }
            }
        }
        Ok(0)
    }

    pub async fn stop(&self, a: &StopArgs) -> Result<i32> {
        let existing = self.containers().await?;
        for s in self.select(&a.services, false)?.iter().rev() {
            if let Some(c) = existing.get(s) {
                self.stop_one(c, a.timeout).await?;
            }
        }
        Ok(0)
    }

    pub async fn start(&self, services: &[String]) -> Result<i32> {
        let existing = self.containers().await?;
        for s in self.select(services, false)? {
            match existing.get(&s) {
                Some(c) => self.start_one(c, false).await?,
                None => bail!("service {s:?} has no container to start: run rnerd compose up"),
            }
        }
        Ok(0)
    }

    pub async fn restart(&self, a: &StopArgs) -> Result<i32> {
        let existing = self.containers().await?;
        let selected = self.select(&a.services, false)?;
        for s in selected.iter().rev() {
            if let Some(c) = existing.get(s) {
                self.stop_one(c, a.timeout).await?;
            }
        }
        for s in &selected {
            if let Some(c) = existing.get(s) {
                // The stop set the label; start clears it.
                let mut c = c.clone();
                c.labels
                    .insert(labels::EXPLICITLY_STOPPED.into(), "true".into());
                self.start_one(&c, false).await?;
            }
        }
        Ok(0)
    }

    pub async fn ps(&self, a: &PsArgs) -> Result<i32> {
        let existing = self.containers().await?;
        if a.services {
            for s in existing.keys() {
                println!("{s}");
            }
            return Ok(0);
        }
        let wanted = if a.names.is_empty() {
            None
        } else {
            Some(self.select(&a.names, false)?)
        };
        let mut rows = Vec::new();
        for (svc, c) in &existing {
            if wanted.as_ref().is_some_and(|w| !w.contains(svc)) {
                continue;
            }
            let task = self.task(&c.id).await?;
            let (state, exit) = match &task {
                Some(p) if p.status == pb::TaskStatus::Running as i32 => ("running", None),
                Some(p) if p.status == pb::TaskStatus::Paused as i32 => ("paused", None),
                Some(p) if p.status == pb::TaskStatus::Created as i32 => ("created", None),
                Some(p) => ("exited", Some(p.exit_status)),
                None => ("exited", None),
            };
            if !a.all && state != "running" && state != "paused" {
                continue;
            }
            let status = match (state, exit) {
                ("exited", Some(code)) => format!("exited ({code})"),
                (s, _) => s.to_owned(),
            };
            let command = self.command_of(&c.id).await;
            rows.push((svc.clone(), c.clone(), state, exit, status, command));
        }
        if a.quiet {
            for (_, c, ..) in &rows {
                println!("{}", c.id);
            }
            return Ok(0);
        }
        if a.format == "json" {
            for (svc, c, state, exit, status, command) in &rows {
                let v = serde_json::json!({
                    "ID": c.id,
                    "Name": name_of(c),
                    "Image": c.image,
                    "Command": command,
                    "Project": self.project.name,
                    "Service": svc,
                    "State": state,
                    "Status": status,
                    "ExitCode": exit.unwrap_or(0),
                    "Ports": ports_of(c),
                    "CreatedAt": c.created_at,
                });
                println!("{v}");
            }
            return Ok(0);
        }
        if a.format != "table" {
            bail!("unknown --format {:?} (use table or json)", a.format);
        }
        let mut table = vec![[
            "NAME".to_owned(),
            "IMAGE".into(),
            "COMMAND".into(),
            "SERVICE".into(),
            "STATUS".into(),
            "PORTS".into(),
        ]];
        for (svc, c, _, _, status, command) in rows {
            let cmd = if command.chars().count() > 22 {
                format!("\"{}…\"", command.chars().take(20).collect::<String>())
            } else {
                format!("\"{command}\"")
            };
            table.push([name_of(&c), c.image.clone(), cmd, svc, status, ports_of(&c)]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|i| {
                table
                    .iter()
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for r in table {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
                .collect();
            println!("{}", line.join("   ").trim_end());
        }
        Ok(0)
    }

    /// The process's argv from the container's spec, joined.
    async fn command_of(&self, id: &str) -> String {
        let Ok(r) = self
            .client
            .containers()
            .get(pb::GetContainerRequest { id: id.into() })
            .await
        else {
            return String::new();
        };
        let spec = r.into_inner().container.map(|c| c.spec).unwrap_or_default();
        serde_json::from_slice::<serde_json::Value>(&spec)
            .ok()
            .and_then(|v| {
                v.pointer("/process/args")
                    .and_then(|a| a.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
            })
            .unwrap_or_default()
    }

    /// The prefix of a container's log lines: its name without the project.
    fn prefix_of(&self, name: &str) -> String {
        name.strip_prefix(&format!("{}-", self.project.name))
            .unwrap_or(name)
            .to_owned()
    }

    pub async fn logs(&self, a: &LogsArgs) -> Result<i32> {
        let tail =
            match a.tail.as_str() {
                "all" | "-1" => None,
                n => Some(n.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    anyhow!("invalid --tail {n:?}: a number of lines or \"all\"")
                })?),
            };
        let existing = self.containers().await?;
        let targets: Vec<(String, String)> = self
            .select(&a.services, false)?
            .iter()
            .filter_map(|s| existing.get(s))
            .map(|c| (self.prefix_of(&name_of(c)), c.id.clone()))
            .collect();
        self.stream_logs(&targets, a.follow, tail, a.timestamps, !a.no_log_prefix)
            .await
    }

    /// Prints the logs of (prefix, id) containers interleaved as they come.
    fn stream_logs(
        &self,
        targets: &[(String, String)],
        follow: bool,
        tail: Option<i64>,
        timestamps: bool,
        prefix: bool,
    ) -> impl std::future::Future<Output = Result<i32>> + 'static {
        let width = targets.iter().map(|t| t.0.len()).max().unwrap_or(0);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, String>>(64);
        for (name, id) in targets {
            let tx = tx.clone();
            let mut containers = self.client.containers();
            let address = self.client.address().to_owned();
            let head = if prefix {
                format!("{name:<width$} | ")
            } else {
                String::new()
            };
            let (name, id) = (name.clone(), id.clone());
            tokio::spawn(async move {
                let req = pb::LogsRequest {
                    id,
                    follow,
                    tail: tail.unwrap_or(0),
                    tail_all: tail.is_none(),
                    since: String::new(),
                    until: String::new(),
                };
                let mut stream = match containers.logs(req).await {
                    Ok(s) => s.into_inner(),
                    Err(s) => {
                        let _ = tx
                            .send(Err(format!("{name}: {}", status_message(&address, &s))))
                            .await;
                        return;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            let mut out = Vec::new();
                            for l in resp.lines {
                                out.extend_from_slice(head.as_bytes());
                                if timestamps {
                                    out.extend_from_slice(l.time.as_bytes());
                                    out.push(b' ');
                                }
                                out.extend_from_slice(&l.line);
                                if !l.line.ends_with(b"\n") {
                                    out.push(b'\n');
                                }
                            }
                            if tx.send(Ok(out)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(s) => {
                            let _ = tx
                                .send(Err(format!("{name}: {}", status_message(&address, &s))))
                                .await;
                            return;
                        }
                    }
                }
            });
        }
        drop(tx);
        async move {
            use std::io::Write;
            let mut failed = false;
            while let Some(m) = rx.recv().await {
                match m {
                    Ok(bytes) => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&bytes)?;
                        out.flush()?;
                    }
                    Err(e) => {
                        eprintln!("rnerd: {e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { 125 } else { 0 })
        }
    }
}

fn name_of(c: &pb::Container) -> String {
    c.labels
        .get(labels::NAME)
        .cloned()
        .unwrap_or_else(|| c.id[..c.id.len().min(12)].to_owned())
}

/// docker's PORTS column from the `rcd.io/ports` label (rnerd ps's).
fn ports_of(c: &pb::Container) -> String {
    crate::rnerd::cmd::container::ports_column(c)
}
