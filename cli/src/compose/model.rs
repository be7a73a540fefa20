//! Compose files: reading, interpolation, validation and normalisation into a [`Project`].
//! Pure but for `Options::read_file` (env files), so every rule is unit-tested.

use super::interpolate::interpolate;
use serde::Serialize;
use serde_norway::{Mapping, Value};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// A compose file that cannot be used; the message names the file, the service and the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

type Result<T, E = String> = std::result::Result<T, E>;

/// The normalised project (what `compose config` prints).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Project {
    pub name: String,
    /// Relative bind sources are resolved against it (the first file's directory).
    #[serde(skip)]
    pub working_dir: PathBuf,
    #[serde(skip)]
    pub files: Vec<PathBuf>,
    pub services: BTreeMap<String, Service>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Network>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Volume>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// env_file entries with `environment` on top, host variables resolved.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Mount>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, Dependency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The one network it joins (key of the project's networks) and its extra aliases.
    pub network: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
    /// 0: a free port chosen by rcd.
    pub published: u16,
    pub target: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Bind,
    Volume,
    Anonymous,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: MountKind,
    /// Bind: an absolute host path; volume: the key in the project's volumes; anonymous: "".
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    pub target: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    pub condition: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    /// The name on rcd: `<project>_<key>`, or `name:`, or the key itself when external.
    pub name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subnet: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// The name on rcd: `<project>_<key>`, or `name:`, or the key itself when external.
    pub name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One compose file's text and where it came from.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// What loading needs from outside.
pub struct Options<'a> {
    /// `-p`.
    pub project_name: Option<String>,
    /// Variables for interpolation and host lookups: the `.env` file with the process's
    /// environment on top.
    pub env: &'a BTreeMap<String, String>,
    /// Reads an env file.
    pub read_file: &'a dyn Fn(&Path) -> std::io::Result<String>,
    /// For `~` in bind sources.
    pub home: Option<PathBuf>,
}

const TOP_KEYS: &[&str] = &["services", "networks", "volumes", "name", "version"];
const SERVICE_KEYS: &[&str] = &[
    "image",
    "container_name",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "depends_on",
    "restart",
    "working_dir",
    "user",
    "hostname",
    "labels",
    "networks",
];
const RESTARTS: &str = "no, always, on-failure[:N] or unless-stopped";

/// Reads and validates the files (later files override earlier ones: mappings merge, other
/// values are replaced). Returns the project and the warnings to print.
pub fn load(sources: &[Source], opts: &Options) -> Result<(Project, Vec<String>), Error> {
    let first = sources
        .first()
        .ok_or_else(|| Error("no compose file given".into()))?;
    let label = if sources.len() == 1 {
        first.path.display().to_string()
    } else {
        sources
            .iter()
            .map(|s| s.path.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let mut warnings = Vec::new();
    let mut merged = Value::Mapping(Mapping::new());
    for s in sources {
        let v = read_one(s, opts.env, &mut warnings)
            .map_err(|e| Error(format!("{}: {e}", s.path.display())))?;
        merge(&mut merged, v);
    }
    let working_dir = first
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let project = build(merged, &working_dir, opts, &mut warnings)
        .map_err(|e| Error(format!("{label}: {e}")))?;
    Ok((
        Project {
            files: sources.iter().map(|s| s.path.clone()).collect(),
            ..project
        },
        warnings,
    ))
}

fn read_one(
    s: &Source,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Value> {
    let mut v: Value = serde_norway::from_str(&s.text).map_err(|e| format!("invalid YAML: {e}"))?;
    v.apply_merge()
        .map_err(|e| format!("invalid YAML merge key: {e}"))?;
    let Value::Mapping(m) = &mut v else {
        return Err(if v.is_null() {
            "the file is empty".into()
        } else {
            "the top level must be a mapping (services:, networks:, volumes:)".into()
        });
    };
    drop_extensions(m);
    if let Some(Value::Mapping(services)) = m.get_mut("services") {
        for (_, svc) in services.iter_mut() {
            if let Value::Mapping(svc) = svc {
                drop_extensions(svc);
            }
        }
    }
    let lookup = |name: &str| env.get(name).cloned();
    interpolate_value(&mut v, "", &lookup, warnings)?;
    Ok(v)
}

/// `x-*` keys are compose's extension fields: free for anchors, never an error.
fn drop_extensions(m: &mut Mapping) {
    let keys: Vec<Value> = m
        .keys()
        .filter(|k| k.as_str().is_some_and(|k| k.starts_with("x-")))
        .cloned()
        .collect();
    for k in keys {
        m.remove(&k);
    }
}

fn interpolate_value(
    v: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    match v {
        Value::String(s) => {
            *s = interpolate(s, lookup, warnings).map_err(|e| format!("{path}: {e}"))?;
        }
        Value::Sequence(seq) => {
            for (i, item) in seq.iter_mut().enumerate() {
                interpolate_value(item, &format!("{path}[{i}]"), lookup, warnings)?;
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = scalar(k).unwrap_or_else(|| "?".into());
                let p = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                interpolate_value(item, &p, lookup, warnings)?;
            }
        }
        Value::Tagged(t) => interpolate_value(&mut t.value, path, lookup, warnings)?,
        _ => {}
    }
    Ok(())
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_mapping() && v.is_mapping() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// A scalar as compose reads it where a string is expected (numbers and booleans too).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn string(v: &Value, what: &str) -> Result<String> {
    scalar(v).ok_or_else(|| format!("{what} must be a string, not {}", kind(v)))
}

fn mapping<'v>(v: &'v Value, what: &str) -> Result<&'v Mapping> {
    v.as_mapping()
        .ok_or_else(|| format!("{what} must be a mapping, not {}", kind(v)))
}

/// The keys of a mapping as strings, each checked against `allowed`.
fn checked_keys<'v>(
    m: &'v Mapping,
    what: &str,
    allowed: &[&str],
) -> Result<Vec<(String, &'v Value)>> {
    m.iter()
        .map(|(k, v)| {
            let key = k
                .as_str()
                .ok_or_else(|| format!("{what}: key {k:?} is not a string"))?;
            if !allowed.is_empty() && !allowed.contains(&key) {
                return Err(format!(
                    "{what}: unknown key {key:?} (supported: {})",
                    allowed.join(", ")
                ));
            }
            Ok((key.to_owned(), v))
        })
        .collect()
}

fn build(
    v: Value,
    working_dir: &Path,
    opts: &Options,
    warnings: &mut Vec<String>,
) -> Result<Project> {
    let top = mapping(&v, "the top level")?;
    let mut top_name = None;
    let mut services_v = None;
    let mut networks_v = None;
    let mut volumes_v = None;
    for (k, v) in top {
        let key = k.as_str().unwrap_or_default();
        match key {
            "services" => services_v = Some(v),
            "networks" => networks_v = Some(v),
            "volumes" => volumes_v = Some(v),
            "name" => top_name = Some(string(v, "name")?),
            "version" => warnings.push(
                "the top-level \"version\" is obsolete and ignored (compose files have no version)"
                    .into(),
            ),
            "build" | "configs" | "secrets" | "include" | "models" => {
                return Err(format!(
                    "top-level {key:?} is not supported (supported: {})",
                    TOP_KEYS.join(", ")
                ))
            }
            _ => {
                return Err(format!(
                    "unknown top-level key {k:?} (supported: {})",
                    TOP_KEYS.join(", ")
                ))
            }
        }
    }
    let name = project_name(opts, top_name, working_dir)?;

    let mut networks = BTreeMap::new();
    if let Some(v) = networks_v.filter(|v| !v.is_null()) {
        for (key, v) in checked_keys(mapping(v, "networks")?, "networks", &[])? {
            let n = network(&name, &key, v).map_err(|e| format!("network {key:?}: {e}"))?;
            networks.insert(key, n);
        }
    }
    let mut volumes = BTreeMap::new();
    if let Some(v) = volumes_v.filter(|v| !v.is_null()) {
        for (key, v) in checked_keys(mapping(v, "volumes")?, "volumes", &[])? {
            let vol = volume(&name, &key, v).map_err(|e| format!("volume {key:?}: {e}"))?;
            volumes.insert(key, vol);
        }
    }

    let services_v = services_v
        .filter(|v| !v.is_null())
        .ok_or("no services: the file must have a \"services\" mapping")?;
    let mut services = BTreeMap::new();
    let ctx = Ctx {
        working_dir,
        opts,
        volumes: &volumes,
        networks: &networks,
    };
    for (key, v) in checked_keys(mapping(services_v, "services")?, "services", &[])? {
        if !valid_service_name(&key) {
            return Err(format!(
                "invalid service name {key:?}: use letters, digits, '.', '_' and '-'"
            ));
        }
        let s = service(&ctx, &key, v).map_err(|e| format!("service {key:?}: {e}"))?;
        services.insert(key, s);
    }
    if services.is_empty() {
        return Err("no services: the \"services\" mapping is empty".into());
    }
    for (key, s) in &services {
        for dep in s.depends_on.keys() {
            if !services.contains_key(dep) {
                return Err(format!(
                    "service {key:?} depends on undefined service {dep:?}"
                ));
            }
        }
    }
    // The default network is made only when some service uses it.
    if services.values().any(|s| s.network == "default") && !networks.contains_key("default") {
        networks.insert("default".into(), network(&name, "default", &Value::Null)?);
    }
    let mut names: BTreeMap<String, &str> = BTreeMap::new();
    for (key, s) in &services {
        let c = container_name(&name, key, s);
        if let Some(other) = names.insert(c.clone(), key) {
            return Err(format!(
                "services {other:?} and {key:?} both use container name {c:?}"
            ));
        }
    }
    let project = Project {
        name,
        working_dir: working_dir.to_owned(),
        files: Vec::new(),
        services,
        networks,
        volumes,
    };
    super::plan::start_order(&project)?;
    Ok(project)
}

/// `<project>-<service>-1` unless the service sets `container_name`.
pub fn container_name(project: &str, service: &str, s: &Service) -> String {
    s.container_name
        .clone()
        .unwrap_or_else(|| format!("{project}-{service}-1"))
}

fn valid_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Compose's rule for a name given explicitly (`-p`, COMPOSE_PROJECT_NAME, `name:`).
fn valid_project_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
}

/// A directory name made into a project name as compose does: lower case, only `[a-z0-9_-]`,
/// no leading `_` or `-`.
pub fn normalize_project_name(s: &str) -> String {
    let lower = s.to_lowercase();
    let kept: String = lower
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        .collect();
    kept.trim_start_matches(['_', '-']).to_owned()
}

fn project_name(opts: &Options, top_name: Option<String>, dir: &Path) -> Result<String> {
    let explicit = [
        ("-p", opts.project_name.clone()),
        (
            "COMPOSE_PROJECT_NAME",
            opts.env
                .get("COMPOSE_PROJECT_NAME")
                .filter(|s| !s.is_empty())
                .cloned(),
        ),
        ("the top-level name", top_name),
    ];
    if let Some((from, name)) = explicit
        .into_iter()
        .find_map(|(from, n)| n.map(|n| (from, n)))
    {
        if !valid_project_name(&name) {
            return Err(format!(
                "invalid project name {name:?} (from {from}): use lower-case letters, digits, '_' and '-', starting with a letter or digit"
            ));
        }
        return Ok(name);
    }
    let abs = if dir.is_absolute() {
        dir.to_owned()
    } else {
        std::env::current_dir().unwrap_or_default().join(dir)
    };
    let base = clean(&abs)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = normalize_project_name(&base);
    if name.is_empty() {
        return Err(format!(
            "cannot make a project name of the directory name {base:?}: give one with -p"
        ));
    }
    Ok(name)
}

fn network(project: &str, key: &str, v: &Value) -> Result<Network> {
    let mut n = Network {
        name: format!("{project}_{key}"),
        external: false,
        subnet: String::new(),
        gateway: String::new(),
        labels: BTreeMap::new(),
    };
    if v.is_null() {
        return Ok(n);
    }
    let m = mapping(v, "a network")?;
    let mut name = None;
    for (k, v) in checked_keys(m, "", &["name", "external", "driver", "labels", "ipam"])
        .map_err(|e| e.trim_start_matches(": ").to_owned())?
    {
        match k.as_str() {
            "name" => name = Some(string(v, "name")?),
            "external" => n.external = bool_of(v, "external")?,
            "driver" => {
                let d = string(v, "driver")?;
                if d != "bridge" {
                    return Err(format!("driver {d:?} is not supported (only bridge)"));
                }
            }
            "labels" => n.labels = labels(v)?,
            "ipam" => (n.subnet, n.gateway) = ipam(v)?,
            _ => unreachable!(),
        }
    }
    if let Some(name) = name {
        n.name = name;
    } else if n.external {
        n.name = key.to_owned();
    }
    Ok(n)
}

fn ipam(v: &Value) -> Result<(String, String)> {
    let m = mapping(v, "ipam")?;
    let mut out = (String::new(), String::new());
    for (k, v) in checked_keys(m, "ipam", &["driver", "config"])? {
        match k.as_str() {
            "driver" => {
                let d = string(v, "ipam.driver")?;
                if d != "default" {
                    return Err(format!("ipam driver {d:?} is not supported"));
                }
            }
            _ => {
                let seq = v
                    .as_sequence()
                    .ok_or_else(|| format!("ipam.config must be a list, not {}", kind(v)))?;
                if seq.len() > 1 {
                    return Err("ipam.config: only one subnet is supported".into());
                }
                if let Some(c) = seq.first() {
                    for (k, v) in checked_keys(
                        mapping(c, "ipam.config[0]")?,
                        "ipam.config[0]",
                        &["subnet", "gateway"],
                    )? {
                        let s = string(v, &format!("ipam.config[0].{k}"))?;
                        if k == "subnet" {
                            out.0 = s
                        } else {
                            out.1 = s
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

fn volume(project: &str, key: &str, v: &Value) -> Result<Volume> {
    let mut vol = Volume {
        name: format!("{project}_{key}"),
        external: false,
        labels: BTreeMap::new(),
    };
    if v.is_null() {
        return Ok(vol);
    }
    let m = mapping(v, "a volume")?;
    let mut name = None;
    for (k, v) in checked_keys(m, "", &["name", "external", "driver", "labels"])
        .map_err(|e| e.trim_start_matches(": ").to_owned())?
    {
        match k.as_str() {
            "name" => name = Some(string(v, "name")?),
            "external" => vol.external = bool_of(v, "external")?,
            "driver" => {
                let d = string(v, "driver")?;
                if d != "local" {
                    return Err(format!("driver {d:?} is not supported (only local)"));
                }
            }
            "labels" => vol.labels = labels(v)?,
            _ => unreachable!(),
        }
    }
    if let Some(name) = name {
        vol.name = name;
    } else if vol.external {
        vol.name = key.to_owned();
    }
    Ok(vol)
}

fn bool_of(v: &Value, what: &str) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" || s == "false" => Ok(s == "true"),
        _ => Err(format!("{what} must be true or false, not {}", kind(v))),
    }
}

struct Ctx<'a> {
    working_dir: &'a Path,
    opts: &'a Options<'a>,
    volumes: &'a BTreeMap<String, Volume>,
    networks: &'a BTreeMap<String, Network>,
}

fn service(ctx: &Ctx, key: &str, v: &Value) -> Result<Service> {
    let m = mapping(v, "a service")?;
    let mut s = Service {
        image: String::new(),
        container_name: None,
        command: None,
        entrypoint: None,
        environment: BTreeMap::new(),
        ports: Vec::new(),
        volumes: Vec::new(),
        depends_on: BTreeMap::new(),
        restart: None,
        working_dir: None,
        user: None,
        hostname: None,
        labels: BTreeMap::new(),
        network: "default".into(),
        aliases: Vec::new(),
    };
    let mut env_files = Vec::new();
    let mut environment = BTreeMap::new();
    for (k, v) in m {
        let k = k
            .as_str()
            .ok_or_else(|| format!("key {k:?} is not a string"))?;
        if v.is_null() && k != "networks" && k != "environment" {
            continue;
        }
        match k {
            "image" => s.image = string(v, "image")?,
            "container_name" => {
                let c = string(v, "container_name")?;
                if !valid_container_name(&c) {
                    return Err(format!(
                        "invalid container_name {c:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"
                    ));
                }
                s.container_name = Some(c);
            }
            "command" => s.command = Some(words(v, "command")?),
            "entrypoint" => s.entrypoint = Some(words(v, "entrypoint")?),
            "environment" => environment = env_entries(v, "environment")?,
            "env_file" => env_files = env_file_list(v)?,
            "ports" => {
                s.ports = seq(v, "ports")?.iter().enumerate().try_fold(
                    Vec::new(),
                    |mut acc, (i, p)| {
                        acc.extend(port(p).map_err(|e| format!("ports[{i}]: {e}"))?);
                        Ok::<_, String>(acc)
                    },
                )?
            }
            "expose" => {
                // Every port is reachable on the project's network anyway.
                seq(v, "expose")?;
            }
            "volumes" => {
                for (i, item) in seq(v, "volumes")?.iter().enumerate() {
                    let mnt = mount(ctx, item).map_err(|e| format!("volumes[{i}]: {e}"))?;
                    if s.volumes.iter().any(|m: &Mount| m.target == mnt.target) {
                        return Err(format!(
                            "volumes[{i}]: {:?} is mounted more than once",
                            mnt.target
                        ));
                    }
                    s.volumes.push(mnt);
                }
            }
            "depends_on" => s.depends_on = depends_on(v)?,
            "restart" => s.restart = Some(restart(v)?),
            "working_dir" => {
                let w = string(v, "working_dir")?;
                if !w.starts_with('/') {
                    return Err(format!("working_dir {w:?} must be an absolute path"));
                }
                s.working_dir = Some(w);
            }
            "user" => s.user = Some(string(v, "user")?),
            "hostname" => s.hostname = Some(string(v, "hostname")?),
            "labels" => s.labels = labels(v)?,
            "networks" => (s.network, s.aliases) = service_networks(ctx, v)?,
            "build" => {
                return Err(
                    "\"build\" is not supported: build the image elsewhere and give its \"image\""
                        .into(),
                )
            }
            _ => {
                return Err(format!(
                    "unknown key {k:?} (supported: {})",
                    SERVICE_KEYS.join(", ")
                ))
            }
        }
    }
    if s.image.is_empty() {
        return Err("no \"image\": every service needs one (build is not supported)".into());
    }
    if s.depends_on.contains_key(key) {
        return Err("depends on itself".into());
    }
    for f in env_files {
        let path = absolute(ctx.working_dir, &f.path, ctx.opts.home.as_deref());
        match (ctx.opts.read_file)(Path::new(&path)) {
            Ok(text) => {
                let lookup = |k: &str| ctx.opts.env.get(k).cloned();
                let entries = parse_env_file(&text, &lookup)
                    .map_err(|e| format!("env_file {}: {e}", path))?;
                for (k, v) in entries {
                    if let Some(v) = v.or_else(|| ctx.opts.env.get(&k).cloned()) {
                        s.environment.insert(k, v);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !f.required => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("env_file {path}: no such file"))
            }
            Err(e) => return Err(format!("env_file {path}: {e}")),
        }
    }
    for (k, v) in environment {
        match v.or_else(|| ctx.opts.env.get(&k).cloned()) {
            Some(v) => {
                s.environment.insert(k, v);
            }
            None => {
                s.environment.remove(&k);
            }
        }
    }
    Ok(s)
}

fn valid_container_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn seq<'v>(v: &'v Value, what: &str) -> Result<&'v Vec<Value>> {
    v.as_sequence()
        .ok_or_else(|| format!("{what} must be a list, not {}", kind(v)))
}

/// A command or entrypoint: a list of words, or a string split as a shell would.
fn words(v: &Value, what: &str) -> Result<Vec<String>> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, w)| string(w, &format!("{what}[{i}]")))
            .collect(),
        Value::String(s) => shlex::split(s)
            .ok_or_else(|| format!("{what} {s:?}: unbalanced quotes or a trailing backslash")),
        _ => Err(format!(
            "{what} must be a string or a list of strings, not {}",
            kind(v)
        )),
    }
}

/// `environment`: a mapping (null values: from the host) or a list of `KEY=VALUE` / `KEY`.
fn env_entries(v: &Value, what: &str) -> Result<BTreeMap<String, Option<String>>> {
    let mut out = BTreeMap::new();
    match v {
        Value::Null => {}
        Value::Mapping(m) => {
            for (k, val) in m {
                let k = scalar(k).ok_or_else(|| format!("{what}: key {k:?} is not a string"))?;
                let val = match val {
                    Value::Null => None,
                    v => Some(string(v, &format!("{what}.{k}"))?),
                };
                check_env_name(&k, what)?;
                out.insert(k, val);
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let e = string(item, &format!("{what}[{i}]"))?;
                let (k, val) = match e.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (e.clone(), None),
                };
                check_env_name(&k, &format!("{what}[{i}]"))?;
                out.insert(k, val);
            }
        }
        _ => {
            return Err(format!(
                "{what} must be a mapping or a list of KEY=VALUE, not {}",
                kind(v)
            ))
        }
    }
    Ok(out)
}

fn check_env_name(k: &str, what: &str) -> Result<()> {
    if k.is_empty() || k.contains(char::is_whitespace) {
        return Err(format!("{what}: invalid variable name {k:?}"));
    }
    Ok(())
}

struct EnvFile {
    path: String,
    required: bool,
}

fn env_file_list(v: &Value) -> Result<Vec<EnvFile>> {
    let one = |v: &Value, what: &str| -> Result<EnvFile> {
        match v {
            Value::Mapping(m) => {
                let mut f = EnvFile {
                    path: String::new(),
                    required: true,
                };
                for (k, v) in checked_keys(m, what, &["path", "required", "format"])? {
                    match k.as_str() {
                        "path" => f.path = string(v, &format!("{what}.path"))?,
                        "required" => f.required = bool_of(v, &format!("{what}.required"))?,
                        _ => {}
                    }
                }
                if f.path.is_empty() {
                    return Err(format!("{what}: no path"));
                }
                Ok(f)
            }
            v => Ok(EnvFile {
                path: string(v, what)?,
                required: true,
            }),
        }
    };
    match v {
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| one(v, &format!("env_file[{i}]")))
            .collect(),
        v => Ok(vec![one(v, "env_file")?]),
    }
}

/// An env file (compose's and docker's `--env-file`): `KEY=VALUE` lines, `#` comments, blank
/// lines, an optional `export `, values optionally in single or double quotes; a bare `KEY`
/// takes the host's value. As compose's, `${VAR}` in unquoted and double-quoted values is
/// expanded from the file's earlier lines, then `lookup`; single quotes keep it literal.
pub fn parse_env_file(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Option<String>)>> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let (k, v) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (line, None),
        };
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(format!("line {}: invalid variable name {k:?}", n + 1));
        }
        let v = match v {
            None => None,
            Some(v) if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') => {
                Some(v[1..v.len() - 1].to_owned())
            }
            Some(v) => {
                let raw = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
                    &v[1..v.len() - 1]
                } else {
                    // An unquoted value ends at an inline comment.
                    v.find(" #").map_or(v, |i| v[..i].trim_end())
                };
                let earlier = |name: &str| {
                    out.iter()
                        .rev()
                        .find(|(k, _)| k == name)
                        .and_then(|(_, v)| v.clone())
                        .or_else(|| lookup(name))
                };
                let expanded = interpolate(raw, &earlier, &mut Vec::new())
                    .map_err(|e| format!("line {}: {e}", n + 1))?;
                Some(expanded)
            }
        };
        out.push((k.to_owned(), v));
    }
    Ok(out)
}

fn labels(v: &Value) -> Result<BTreeMap<String, String>> {
    Ok(env_entries(v, "labels")?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

fn restart(v: &Value) -> Result<String> {
    // YAML 1.1 readers take a bare `no` as false; accept that spelling too.
    let r = match v {
        Value::Bool(false) => "no".to_owned(),
        v => string(v, "restart")?,
    };
    let ok = match r.split_once(':') {
        None => matches!(
            r.as_str(),
            "no" | "always" | "on-failure" | "unless-stopped"
        ),
        Some(("on-failure", n)) => n.parse::<u32>().is_ok(),
        Some(_) => false,
    };
    if !ok {
        return Err(format!("invalid restart {r:?} (use {RESTARTS})"));
    }
    Ok(r)
}

fn depends_on(v: &Value) -> Result<BTreeMap<String, Dependency>> {
    let mut out = BTreeMap::new();
    let started = || Dependency {
        condition: "service_started".into(),
    };
    match v {
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                out.insert(string(item, &format!("depends_on[{i}]"))?, started());
            }
        }
        Value::Mapping(m) => {
            for (name, spec) in checked_keys(m, "depends_on", &[])? {
                let mut d = started();
                if !spec.is_null() {
                    let what = format!("depends_on.{name}");
                    for (k, v) in checked_keys(
                        mapping(spec, &what)?,
                        &what,
                        &["condition", "required", "restart"],
                    )? {
                        match k.as_str() {
                            "condition" => d.condition = string(v, &format!("{what}.condition"))?,
                            "required" => {
                                if !bool_of(v, &format!("{what}.required"))? {
                                    return Err(format!("{what}.required: false is not supported"));
                                }
                            }
                            _ => {
                                bool_of(v, &format!("{what}.restart"))?;
                            }
                        }
                    }
                }
                match d.condition.as_str() {
                    "service_started" => {}
                    "service_healthy" | "service_completed_successfully" => {
                        return Err(format!(
                        "depends_on.{name}: condition {:?} is not supported (only service_started)",
                        d.condition
                    ))
                    }
                    c => {
                        return Err(format!(
                            "depends_on.{name}: unknown condition {c:?} (use service_started)"
                        ))
                    }
                }
                out.insert(name, d);
            }
        }
        _ => {
            return Err(format!(
                "depends_on must be a list of services or a mapping, not {}",
                kind(v)
            ))
        }
    }
    Ok(out)
}

fn service_networks(ctx: &Ctx, v: &Value) -> Result<(String, Vec<String>)> {
    let mut nets: Vec<(String, Vec<String>)> = Vec::new();
    match v {
        Value::Null => return Ok(("default".into(), Vec::new())),
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                nets.push((string(item, &format!("networks[{i}]"))?, Vec::new()));
            }
        }
        Value::Mapping(m) => {
            for (name, spec) in checked_keys(m, "networks", &[])? {
                let mut aliases = Vec::new();
                if !spec.is_null() {
                    let what = format!("networks.{name}");
                    for (k, v) in checked_keys(mapping(spec, &what)?, &what, &["aliases"])? {
                        for (i, a) in seq(v, &format!("{what}.{k}"))?.iter().enumerate() {
                            aliases.push(string(a, &format!("{what}.{k}[{i}]"))?);
                        }
                    }
                }
                nets.push((name, aliases));
            }
        }
        _ => {
            return Err(format!(
                "networks must be a list or a mapping, not {}",
                kind(v)
            ))
        }
    }
    if nets.len() > 1 {
        return Err(format!(
            "networks: {} networks given; a container joins only one network here",
            nets.len()
        ));
    }
    let Some((name, aliases)) = nets.pop() else {
        return Ok(("default".into(), Vec::new()));
    };
    if name != "default" && !ctx.networks.contains_key(&name) {
        return Err(format!(
            "networks: {name:?} is not declared under the top-level networks"
        ));
    }
    Ok((name, aliases))
}

/// One `ports` entry: `80`, `"8080:80"`, `"127.0.0.1:8080:80/udp"`, `"127.0.0.1::80"`,
/// `"[::1]:8080:80"`, ranges `"8000-8001:80-81"`, or the long form.
pub fn port(v: &Value) -> Result<Vec<Port>> {
    match v {
        Value::Number(_) | Value::String(_) => port_short(&scalar(v).unwrap_or_default()),
        Value::Mapping(m) => {
            let mut p = Port {
                host_ip: String::new(),
                published: 0,
                target: 0,
                protocol: "tcp".into(),
            };
            let mut published = String::new();
            for (k, v) in checked_keys(
                m,
                "",
                &[
                    "target",
                    "published",
                    "host_ip",
                    "protocol",
                    "mode",
                    "name",
                    "app_protocol",
                ],
            )
            .map_err(|e| e.trim_start_matches(": ").to_owned())?
            {
                let s = string(v, &k)?;
                match k.as_str() {
                    "target" => p.target = port_number(&s, "target")?,
                    "published" => published = s,
                    "host_ip" => p.host_ip = s,
                    "protocol" => p.protocol = protocol(&s)?,
                    "mode" if s != "host" && s != "ingress" => {
                        return Err(format!("mode {s:?}: use host or ingress"))
                    }
                    _ => {}
                }
            }
            if p.target == 0 {
                return Err("no target port".into());
            }
            let published = if published.is_empty() {
                vec![0]
            } else {
                port_range(&published)?
            };
            if published.len() != 1 {
                return Err(format!(
                    "published {:?}: a range needs a target range",
                    published
                ));
            }
            p.published = published[0];
            Ok(vec![p])
        }
        _ => Err(format!(
            "a port must be a number, a string or a mapping, not {}",
            kind(v)
        )),
    }
}

fn port_short(spec: &str) -> Result<Vec<Port>> {
    let bad = |why: &str| format!("invalid port {spec:?}: {why}");
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, p)) => (r, protocol(p).map_err(|e| bad(&e))?),
        None => (spec, "tcp".to_owned()),
    };
    let (ip, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, r) = r.split_once(']').ok_or_else(|| bad("'[' without ']'"))?;
        let r = r
            .strip_prefix(':')
            .ok_or_else(|| bad("expected ':' after the address"))?;
        (ip.to_owned(), r)
    } else {
        match rest.matches(':').count() {
            0 | 1 => (String::new(), rest),
            2 => {
                let (ip, r) = rest.split_once(':').unwrap_or_default();
                (ip.to_owned(), r)
            }
            _ => return Err(bad("too many ':' (put an IPv6 address in [brackets])")),
        }
    };
    if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
        return Err(bad(&format!("{ip:?} is not an IP address")));
    }
    let (host, target) = match rest.split_once(':') {
        Some((h, t)) => (h, t),
        None => ("", rest),
    };
    let targets = port_range(target).map_err(|e| bad(&e))?;
    let hosts = if host.is_empty() {
        vec![0; targets.len()]
    } else {
        port_range(host).map_err(|e| bad(&e))?
    };
    if hosts.len() != targets.len() {
        return Err(bad("the host and container ranges differ in length"));
    }
    Ok(hosts
        .into_iter()
        .zip(targets)
        .map(|(published, target)| Port {
            host_ip: ip.clone(),
            published,
            target,
            protocol: proto.clone(),
        })
        .collect())
}

fn protocol(p: &str) -> Result<String> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" => Ok("tcp".into()),
        "udp" => Ok("udp".into()),
        _ => Err(format!("protocol {p:?} is not supported (use tcp or udp)")),
    }
}

fn port_number(s: &str, what: &str) -> Result<u16> {
    match s.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{what} {s:?} is not a port number (1-65535)")),
    }
}

fn port_range(s: &str) -> Result<Vec<u16>> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port_number(a, "port")?, port_number(b, "port")?);
            if a > b {
                return Err(format!("range {s:?} ends before it starts"));
            }
            Ok((a..=b).collect())
        }
        None => Ok(vec![port_number(s, "port")?]),
    }
}

/// One `volumes` entry of a service.
fn mount(ctx: &Ctx, v: &Value) -> Result<Mount> {
    let m = match v {
        Value::String(s) => mount_short(ctx, s)?,
        Value::Mapping(m) => mount_long(ctx, m)?,
        _ => {
            return Err(format!(
                "a volume must be a string or a mapping, not {}",
                kind(v)
            ))
        }
    };
    if !m.target.starts_with('/') {
        return Err(format!(
            "the container path {:?} must be absolute",
            m.target
        ));
    }
    if m.kind == MountKind::Volume && !ctx.volumes.contains_key(&m.source) {
        return Err(format!(
            "volume {:?} is not declared under the top-level volumes",
            m.source
        ));
    }
    Ok(m)
}

fn mount_short(ctx: &Ctx, spec: &str) -> Result<Mount> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] => ("", *t, ""),
        [s, t] => (*s, *t, ""),
        [s, t, m] => (*s, *t, *m),
        _ => return Err(format!("invalid volume {spec:?}: too many ':'")),
    };
    if target.is_empty() {
        return Err(format!("invalid volume {spec:?}: no container path"));
    }
    let mut read_only = false;
    for opt in mode.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => read_only = true,
            "rw" => read_only = false,
            // SELinux relabelling and macOS consistency hints mean nothing here.
            "z" | "Z" | "cached" | "delegated" | "consistent" | "nocopy" => {}
            _ => {
                return Err(format!(
                    "invalid volume {spec:?}: unknown option {opt:?} (use ro or rw)"
                ))
            }
        }
    }
    Ok(source_to_mount(ctx, source, target, read_only))
}

fn source_to_mount(ctx: &Ctx, source: &str, target: &str, read_only: bool) -> Mount {
    let (kind, source) = if source.is_empty() {
        (MountKind::Anonymous, String::new())
    } else if source.starts_with(['/', '.', '~']) {
        (
            MountKind::Bind,
            absolute(ctx.working_dir, source, ctx.opts.home.as_deref()),
        )
    } else {
        (MountKind::Volume, source.to_owned())
    };
    Mount {
        kind,
        source,
        target: target.to_owned(),
        read_only,
    }
}

fn mount_long(ctx: &Ctx, m: &Mapping) -> Result<Mount> {
    let mut ty = String::new();
    let mut source = String::new();
    let mut target = String::new();
    let mut read_only = false;
    for (k, v) in checked_keys(
        m,
        "",
        &[
            "type",
            "source",
            "target",
            "read_only",
            "bind",
            "volume",
            "consistency",
        ],
    )
    .map_err(|e| e.trim_start_matches(": ").to_owned())?
    {
        match k.as_str() {
            "type" => ty = string(v, "type")?,
            "source" => source = string(v, "source")?,
            "target" => target = string(v, "target")?,
            "read_only" => read_only = bool_of(v, "read_only")?,
            "bind" => {
                checked_keys(
                    mapping(v, "bind")?,
                    "bind",
                    &["create_host_path", "selinux"],
                )?;
            }
            "volume" => {
                checked_keys(mapping(v, "volume")?, "volume", &["nocopy"])?;
            }
            _ => {}
        }
    }
    if target.is_empty() {
        return Err("no target".into());
    }
    match ty.as_str() {
        "bind" => {
            if source.is_empty() {
                return Err("a bind mount needs a source".into());
            }
            Ok(Mount {
                kind: MountKind::Bind,
                source: absolute(ctx.working_dir, &source, ctx.opts.home.as_deref()),
                target,
                read_only,
            })
        }
        "volume" => Ok(Mount {
            kind: if source.is_empty() {
                MountKind::Anonymous
            } else {
                MountKind::Volume
            },
            source,
            target,
            read_only,
        }),
        "" => Err("no type (use bind or volume)".into()),
        t => Err(format!("type {t:?} is not supported (use bind or volume)")),
    }
}

/// A host path from a file: `~` is the home directory, relative paths are against the
/// project directory; `.` and `..` are resolved lexically.
fn absolute(dir: &Path, p: &str, home: Option<&Path>) -> String {
    let path = if p == "~" || p.starts_with("~/") {
        home.unwrap_or(Path::new("/"))
            .join(p.trim_start_matches('~').trim_start_matches('/'))
    } else {
        dir.join(p)
    };
    clean(&path).display().to_string()
}

fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}
