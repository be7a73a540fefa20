//! A real `docker-registry` (Debian's build of distribution 2.8) on a loopback port.
//!
//! ```no_run
//! let reg = rtest::Registry::builder().htpasswd("alice", "secret").start().unwrap();
//! reg.push(rtest::busybox_image(), "library/busybox", "latest").unwrap();
//! let name = reg.image_ref("library/busybox", "latest"); // 127.0.0.1:PORT/library/busybox:latest
//! ```
//!
//! The registry speaks plain HTTP; with htpasswd it answers `401` with
//! `WWW-Authenticate: Basic realm="rtest"` and takes basic auth on every request (no token
//! server). It is killed and reaped when the [`Registry`] is dropped, and by the kernel if
//! the test process dies (see [`crate::spawn_tied`]).

use crate::image::{
    Blob, Image, Index, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST,
};
use crate::process::spawn_tied;
use anyhow::{bail, Context, Result};
use base64::Engine as _;
use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary Debian's `docker-registry` package installs.
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// Header every response of our registry carries, with a value unique to the instance, so a
/// port taken over by another process is never mistaken for ours.
const INSTANCE_HEADER: &str = "X-Rtest-Registry";

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Options for [`Registry`]; see [`Registry::builder`].
#[derive(Default)]
pub struct RegistryBuilder {
    auth: Option<(String, String)>,
}

impl RegistryBuilder {
    /// Requires HTTP basic auth as `user`/`password` (a bcrypt htpasswd file).
    pub fn htpasswd(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Starts the registry and waits until `GET /v2/` answers.
    pub fn start(self) -> Result<Registry> {
        Registry::launch(self)
    }
}

/// A status, headers and body.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A running `docker-registry serve` with its storage in a temporary directory.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    auth: Option<(String, String)>,
    instance: String,
    agent: ureq::Agent,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry without auth.
    pub fn start() -> Result<Registry> {
        Registry::builder().start()
    }

    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    fn launch(opts: RegistryBuilder) -> Result<Registry> {
        if !Path::new(DOCKER_REGISTRY).exists() {
            bail!("{DOCKER_REGISTRY} not found: apt-get install docker-registry");
        }
        let dir = tempfile::Builder::new()
            .prefix("rtest-registry-")
            .tempdir()
            .context("creating registry dir")?;
        if let Some((user, password)) = &opts.auth {
            let hash = bcrypt::hash(password, 4).context("bcrypt")?;
            fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n"))?;
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut reg = Registry {
            child: None,
            port: 0,
            auth: opts.auth,
            instance: crate::unique_id("registry"),
            agent,
            dir,
        };
        let mut last_err = None;
        for _ in 0..10 {
            reg.port = free_port()?;
            match reg.spawn() {
                Ok(()) => return Ok(reg),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err
            .unwrap()
            .context("starting docker-registry (10 ports tried)"))
    }

    /// Runs the registry on `self.port`; errors if the port is taken or it does not come up.
    fn spawn(&mut self) -> Result<()> {
        let config = self.dir.path().join("config.yml");
        fs::write(&config, self.config_yaml())?;
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let log_start = log.metadata()?.len();
        let mut cmd = Command::new(DOCKER_REGISTRY);
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env_remove("REGISTRY_HTTP_ADDR");
        let child = spawn_tied(cmd).with_context(|| format!("running {DOCKER_REGISTRY}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                self.child = None;
                let log = read_from(&log_path, log_start);
                bail!(
                    "docker-registry exited ({status}) on port {}:\n{log}",
                    self.port
                );
            }
            if let Ok(r) = self.get_with("/v2/", None) {
                if r.header(INSTANCE_HEADER) == Some(self.instance.as_str()) {
                    return Ok(());
                }
                self.kill();
                bail!("port {} is served by another process", self.port);
            }
            if Instant::now() > deadline {
                self.kill();
                let log = read_from(&log_path, log_start);
                bail!(
                    "docker-registry not answering on port {} after {START_TIMEOUT:?}:\n{log}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn config_yaml(&self) -> String {
        let q = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap();
        let mut y = format!(
            "version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: {instance}
  headers:
    X-Content-Type-Options: [nosniff]
    {INSTANCE_HEADER}: [{instance}]
",
            storage = q(&self.storage_dir()),
            port = self.port,
            instance = self.instance,
        );
        if self.auth.is_some() {
            y += &format!(
                "auth:\n  htpasswd:\n    realm: rtest\n    path: {}\n",
                q(&self.dir.path().join("htpasswd"))
            );
        }
        y
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        self.addr().to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `127.0.0.1:PORT/<repo>:<tag>`.
    pub fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host())
    }

    /// The htpasswd user and password, if auth is on.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Where the registry keeps blobs and manifests (kept across [`Registry::restart`]).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's own log so far (stdout and stderr), for failure messages.
    pub fn log(&self) -> String {
        read_from(&self.log_path(), 0)
    }

    /// Whether the process is running (false after [`Registry::stop`] or a crash).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The registry's process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the registry (SIGKILL, reaped) to simulate an outage; the port then refuses
    /// connections. Storage is kept.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the registry again on the same port with the same storage and credentials
    /// (stopping it first if it runs).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("restarting on port {}", self.port)))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn auth_header(&self, auth: Option<(&str, &str)>) -> Option<String> {
        auth.map(|(u, p)| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!("Basic {token}")
        })
    }

    fn full_url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.url())
        }
    }

    /// `GET <path>` (e.g. `/v2/`) with the registry's credentials, if any.
    pub fn get(&self, path: &str) -> Result<HttpResponse> {
        self.get_with(path, self.credentials())
    }

    /// `GET <path>` with the given basic-auth credentials, or none.
    pub fn get_with(&self, path: &str, auth: Option<(&str, &str)>) -> Result<HttpResponse> {
        self.request("GET", path, auth, &[], None)
    }

    /// Any request, with the registry's credentials if any; `path` may also be a full URL
    /// (e.g. an upload `Location`).
    pub fn request_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<HttpResponse> {
        self.request(method, path, self.credentials(), headers, body)
    }

    /// The digest the registry has for `<repo>:<reference>` (a tag or digest), from a `HEAD`
    /// accepting every manifest and index media type; `None` on 404.
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> Result<Option<String>> {
        let accept = [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
        ]
        .join(", ");
        let path = format!("/v2/{repo}/manifests/{reference}");
        let r = self.request_raw("HEAD", &path, &[("Accept", &accept)], None)?;
        if r.status == 404 {
            return Ok(None);
        }
        let r = self.expect(r, &[200], &format!("HEAD {path}"))?;
        Ok(r.header("docker-content-digest").map(str::to_owned))
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        auth: Option<(&str, &str)>,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<HttpResponse> {
        let url = self.full_url(path);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(a) = self.auth_header(auth) {
            req = req.header("Authorization", a);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = match body {
            Some(body) => self.agent.run(req.body(body)?),
            None => self.agent.run(req.body(())?),
        };
        let mut resp = resp.with_context(|| format!("{method} {url}"))?;
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let status = resp.status().as_u16();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            resp.body_mut()
                .with_config()
                .limit(1 << 30)
                .read_to_vec()
                .with_context(|| format!("reading the body of {method} {url}"))?
        };
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    fn expect(&self, r: HttpResponse, ok: &[u16], what: &str) -> Result<HttpResponse> {
        if !ok.contains(&r.status) {
            bail!(
                "{what}: HTTP {} {}\nregistry log:\n{}",
                r.status,
                r.text(),
                self.log()
            );
        }
        Ok(r)
    }

    /// Uploads `blob` to `repo` unless it is there (`HEAD` first); true if it was uploaded.
    pub fn push_blob(&self, repo: &str, blob: &Blob) -> Result<bool> {
        let head = self.request_raw(
            "HEAD",
            &format!("/v2/{repo}/blobs/{}", blob.digest),
            &[],
            None,
        )?;
        if head.status == 200 {
            return Ok(false);
        }
        let start = self.request_raw("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], None)?;
        let start = self.expect(
            start,
            &[202],
            &format!("starting upload of {}", blob.digest),
        )?;
        let location = start
            .header("location")
            .context("upload without Location")?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self.request_raw(
            "PUT",
            &format!("{location}{sep}digest={}", blob.digest),
            &[("Content-Type", "application/octet-stream")],
            Some(&blob.data),
        )?;
        self.expect(put, &[201], &format!("uploading {}", blob.digest))?;
        Ok(true)
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with `manifest.media_type` as Content-Type;
    /// checks the registry's `Docker-Content-Digest` is `manifest.digest`.
    pub fn push_manifest(&self, repo: &str, reference: &str, manifest: &Blob) -> Result<()> {
        let r = self.request_raw(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", &manifest.media_type)],
            Some(&manifest.data),
        )?;
        let r = self.expect(r, &[201], &format!("pushing manifest {repo}:{reference}"))?;
        match r.header("docker-content-digest") {
            Some(d) if d == manifest.digest => Ok(()),
            other => bail!(
                "registry gave digest {other:?} for manifest {}",
                manifest.digest
            ),
        }
    }

    /// Pushes `image`'s config and layers (skipping those already there) and its manifest as
    /// `<repo>:<tag>`.
    pub fn push(&self, image: &Image, repo: &str, tag: &str) -> Result<()> {
        for blob in image.blobs() {
            self.push_blob(repo, &blob)?;
        }
        self.push_manifest(repo, tag, &image.manifest)
    }

    /// Pushes every image of `index` by digest, then the index as `<repo>:<tag>`.
    pub fn push_index(&self, index: &Index, repo: &str, tag: &str) -> Result<()> {
        for image in &index.images {
            for blob in image.blobs() {
                self.push_blob(repo, &blob)?;
            }
            self.push_manifest(repo, image.digest(), &image.manifest)?;
        }
        self.push_manifest(repo, tag, &index.index)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.seek(SeekFrom::Start(offset));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        s = String::from_utf8_lossy(&buf).into_owned();
    }
    s
}
