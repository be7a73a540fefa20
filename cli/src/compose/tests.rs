//! Parsing, validation and planning of compose files, without a daemon.

use super::model::{self, load, MountKind, Options, Port, Project, Source};
use super::plan::{self, plan, start_order};
use rcd_proto::labels;
use rcd_proto::v1::PortMapping;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const DIR: &str = "/srv/My_App";

fn env() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("TAG".to_owned(), "1.36".to_owned()),
        ("PORT".to_owned(), "8080".to_owned()),
        ("FROM_HOST".to_owned(), "host-value".to_owned()),
        ("EMPTY".to_owned(), String::new()),
    ])
}

fn files(p: &Path) -> std::io::Result<String> {
    match p.to_str().unwrap() {
        "/srv/My_App/web.env" => Ok("# comment\nA=from-file\nB=\"quoted value\"\nexport C='single'\n\nFROM_HOST\nD=x # trailing\n".into()),
        "/srv/My_App/over.env" => Ok("A=second-file\n".into()),
        "/srv/My_App/expand.env" => Ok("X=${TAG}\nY=\"$X-${NOPE:-d}\"\nZ='${TAG}'\nW=$$TAG\n".into()),
        "/srv/My_App/bad.env" => Ok("has space=1\n".into()),
        _ => Err(std::io::ErrorKind::NotFound.into()),
    }
}

fn load_with(
    texts: &[&str],
    project: Option<&str>,
    env: BTreeMap<String, String>,
) -> Result<(Project, Vec<String>), String> {
    let sources: Vec<Source> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Source {
            path: PathBuf::from(DIR).join(if i == 0 {
                "compose.yaml".to_owned()
            } else {
                format!("override{i}.yaml")
            }),
            text: t.to_string(),
        })
        .collect();
    let opts = Options {
        project_name: project.map(str::to_owned),
        env: &env,
        read_file: &files,
        home: Some("/home/me".into()),
    };
    load(&sources, &opts).map_err(|e| e.to_string())
}

fn ok(text: &str) -> Project {
    load_with(&[text], None, env())
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

fn err(text: &str) -> String {
    match load_with(&[text], None, env()) {
        Ok(p) => panic!("should fail: {p:#?}"),
        Err(e) => e,
    }
}

fn assert_err(text: &str, want: &str) {
    let e = err(text);
    assert!(e.contains(want), "error {e:?} should contain {want:?}");
    assert!(
        e.starts_with("/srv/My_App/compose.yaml: "),
        "error names the file: {e}"
    );
}

const TWO: &str = r#"
services:
  web:
    image: busybox
    command: httpd -f -p 80
  client:
    image: busybox
    depends_on: [web]
    command: ["sh", "-c", "wget -qO- http://web:80/"]
"#;

#[test]
fn minimal_two_services() {
    let p = ok(TWO);
    assert_eq!(p.name, "my_app");
    assert_eq!(p.working_dir, Path::new(DIR));
    let web = &p.services["web"];
    assert_eq!(web.image, "busybox");
    assert_eq!(web.command.as_deref().unwrap(), ["httpd", "-f", "-p", "80"]);
    assert_eq!(web.network, "default");
    assert_eq!(p.networks["default"].name, "my_app_default");
    assert_eq!(start_order(&p).unwrap(), ["web", "client"]);

    let plan = plan(&p).unwrap();
    assert_eq!(plan.networks.len(), 1);
    assert_eq!(plan.networks[0].name, "my_app_default");
    assert_eq!(plan.networks[0].labels[labels::COMPOSE_PROJECT], "my_app");
    let names: Vec<_> = plan.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["my_app-web-1", "my_app-client-1"]);
    let client = &plan.containers[1];
    assert_eq!(client.labels[labels::COMPOSE_PROJECT], "my_app");
    assert_eq!(client.labels[labels::COMPOSE_SERVICE], "client");
    assert_eq!(client.labels[labels::NAME], "my_app-client-1");
    assert_eq!(
        client.labels[plan::LABEL_DEPENDS_ON],
        "web:service_started:true"
    );
    assert_eq!(
        client.labels[plan::LABEL_CONFIG_FILES],
        "/srv/My_App/compose.yaml"
    );
    let o = &client.options;
    assert_eq!(o.network, "my_app_default");
    assert_eq!(o.network_aliases, ["client"]);
    assert_eq!(o.args, ["sh", "-c", "wget -qO- http://web:80/"]);
    assert!(o.log, "rcd keeps the log");
    assert!(!o.set_entrypoint);
    assert_eq!(client.config_hash.len(), 64);
}

#[test]
fn every_service_key() {
    let p = ok(r#"
name: ignored-by-nothing
services:
  app:
    image: "registry.local:5000/app:${TAG}"
    container_name: my-app
    entrypoint: /bin/sh -c
    command: ['echo "$$HOME"', 7]
    environment:
      ONE: 1
      YES: true
      HOST_ONE:
      PORT: "${PORT}"
    ports: ["${PORT:-9}:80"]
    volumes: ["data:/data", "./conf:/etc/conf:ro", "/cache"]
    restart: unless-stopped
    working_dir: /work
    user: 1000
    hostname: apphost
    labels:
      tier: front
    networks:
      back:
        aliases: [api, api2]
    expose: ["80"]
networks:
  back:
volumes:
  data:
"#);
    // the top-level name wins over the directory
    assert_eq!(p.name, "ignored-by-nothing");
    let s = &p.services["app"];
    assert_eq!(s.image, "registry.local:5000/app:1.36");
    assert_eq!(s.container_name.as_deref(), Some("my-app"));
    assert_eq!(s.entrypoint.as_deref().unwrap(), ["/bin/sh", "-c"]);
    assert_eq!(s.command.as_deref().unwrap(), ["echo \"$HOME\"", "7"]);
    assert_eq!(s.environment["ONE"], "1");
    assert_eq!(s.environment["YES"], "true");
    assert_eq!(s.environment["PORT"], "8080");
    // a null value takes the host's, absent there: left out
    assert!(!s.environment.contains_key("HOST_ONE"));
    assert_eq!(s.ports[0].published, 8080);
    assert_eq!(s.restart.as_deref(), Some("unless-stopped"));
    assert_eq!(s.user.as_deref(), Some("1000"));
    assert_eq!(s.network, "back");
    assert_eq!(s.aliases, ["api", "api2"]);
    assert_eq!(s.labels["tier"], "front");
    // the default network is not made when nobody uses it
    assert!(!p.networks.contains_key("default"));

    let pl = plan(&p).unwrap();
    assert_eq!(pl.networks.len(), 1);
    assert_eq!(pl.networks[0].name, "ignored-by-nothing_back");
    assert_eq!(pl.volumes[0].name, "ignored-by-nothing_data");
    assert_eq!(pl.volumes[0].labels[plan::LABEL_VOLUME], "data".to_owned());
    let c = &pl.containers[0];
    assert_eq!(c.name, "my-app");
    assert_eq!(c.labels[labels::NAME], "my-app");
    assert_eq!(c.labels["tier"], "front");
    let o = &c.options;
    assert_eq!(o.entrypoint, ["/bin/sh", "-c"]);
    assert!(o.set_entrypoint);
    assert_eq!(o.cwd, "/work");
    assert_eq!(o.user, "1000");
    assert_eq!(o.hostname, "apphost");
    assert_eq!(o.restart, "unless-stopped");
    assert_eq!(o.network, "ignored-by-nothing_back");
    assert_eq!(o.network_aliases, ["app", "api", "api2"]);
    assert_eq!(o.env, ["ONE=1", "PORT=8080", "YES=true"]);
    assert_eq!(
        o.volumes,
        [
            "ignored-by-nothing_data:/data",
            "/srv/My_App/conf:/etc/conf:ro",
            "/cache"
        ]
    );
    assert_eq!(
        o.ports,
        [PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }]
    );
}

#[test]
fn project_names() {
    let env_with = |name: &str| {
        let mut e = env();
        e.insert("COMPOSE_PROJECT_NAME".into(), name.into());
        e
    };
    let named = "name: fromfile\nservices: {a: {image: x}}";
    let name = |texts: &str, p: Option<&str>, e| load_with(&[texts], p, e).map(|r| r.0.name);
    assert_eq!(name(TWO, None, env()).unwrap(), "my_app");
    assert_eq!(name(named, None, env()).unwrap(), "fromfile");
    assert_eq!(name(named, None, env_with("fromenv")).unwrap(), "fromenv");
    assert_eq!(
        name(named, Some("flag"), env_with("fromenv")).unwrap(),
        "flag"
    );
    // an empty variable counts as unset
    assert_eq!(name(named, None, env_with("")).unwrap(), "fromfile");
    let e = name(TWO, Some("Bad Name"), env()).unwrap_err();
    assert!(
        e.contains("invalid project name \"Bad Name\" (from -p)"),
        "{e}"
    );
    let e = name(TWO, None, env_with("-x")).unwrap_err();
    assert!(e.contains("(from COMPOSE_PROJECT_NAME)"), "{e}");
    assert_eq!(model::normalize_project_name("My App.v2"), "myappv2");
    assert_eq!(model::normalize_project_name("__x-Y_"), "x-y_");
    assert_eq!(model::normalize_project_name("---"), "");
}

#[test]
fn environment_forms_and_env_files() {
    let p = ok(r#"
services:
  a:
    image: x
    env_file: [web.env, {path: missing.env, required: false}]
    environment: ["B=from-environment", "FROM_HOST", "NOT_ON_HOST", "E=a=b"]
"#);
    let e = &p.services["a"].environment;
    assert_eq!(e["A"], "from-file");
    // environment wins over env_file
    assert_eq!(e["B"], "from-environment");
    assert_eq!(e["C"], "single");
    assert_eq!(e["D"], "x");
    assert_eq!(e["E"], "a=b");
    assert_eq!(e["FROM_HOST"], "host-value");
    assert!(!e.contains_key("NOT_ON_HOST"));

    // values expand from earlier lines and the project's variables, not in single quotes
    let p = ok("services: {a: {image: x, env_file: expand.env}}");
    let e = &p.services["a"].environment;
    assert_eq!(e["X"], "1.36");
    assert_eq!(e["Y"], "1.36-d");
    assert_eq!(e["Z"], "${TAG}");
    assert_eq!(e["W"], "$TAG");

    // later env files override earlier ones
    let p = ok("services: {a: {image: x, env_file: [web.env, over.env]}}");
    assert_eq!(p.services["a"].environment["A"], "second-file");
    let p = ok("services: {a: {image: x, env_file: over.env}}");
    assert_eq!(p.services["a"].environment["A"], "second-file");

    assert_err(
        "services: {a: {image: x, env_file: nope.env}}",
        "service \"a\": env_file /srv/My_App/nope.env: no such file",
    );
    assert_err(
        "services: {a: {image: x, env_file: bad.env}}",
        "env_file /srv/My_App/bad.env: line 1: invalid variable name \"has space\"",
    );
    assert_err(
        "services: {a: {image: x, environment: 3}}",
        "environment must be a mapping or a list of KEY=VALUE, not a number",
    );
    assert_err(
        "services: {a: {image: x, environment: [\"=v\"]}}",
        "environment[0]: invalid variable name \"\"",
    );
}

#[test]
fn ports() {
    let one = |s: &str| {
        model::port(&serde_norway::from_str(s).unwrap()).unwrap_or_else(|e| panic!("{s}: {e}"))
    };
    let p = |ip: &str, published: u16, target: u16, proto: &str| Port {
        host_ip: ip.into(),
        published,
        target,
        protocol: proto.into(),
    };
    assert_eq!(one("80"), [p("", 0, 80, "tcp")]);
    assert_eq!(one("\"80\""), [p("", 0, 80, "tcp")]);
    assert_eq!(one("\"8080:80\""), [p("", 8080, 80, "tcp")]);
    assert_eq!(
        one("\"127.0.0.1:8080:80/udp\""),
        [p("127.0.0.1", 8080, 80, "udp")]
    );
    assert_eq!(one("\"127.0.0.1::80\""), [p("127.0.0.1", 0, 80, "tcp")]);
    assert_eq!(one("\"[::1]:8080:80\""), [p("::1", 8080, 80, "tcp")]);
    assert_eq!(one("\"53:53/UDP\""), [p("", 53, 53, "udp")]);
    assert_eq!(
        one("\"8000-8001:80-81\""),
        [p("", 8000, 80, "tcp"), p("", 8001, 81, "tcp")]
    );
    assert_eq!(
        one("{target: 80, published: \"8081\", host_ip: 127.0.0.1, protocol: udp, mode: host}"),
        [p("127.0.0.1", 8081, 80, "udp")]
    );
    assert_eq!(one("{target: 80}"), [p("", 0, 80, "tcp")]);

    let bad = |s: &str, want: &str| {
        let e = model::port(&serde_norway::from_str(s).unwrap()).unwrap_err();
        assert!(e.contains(want), "{s}: {e:?} should contain {want:?}");
    };
    bad("\"80/sctp\"", "protocol \"sctp\" is not supported");
    bad("\"x:80\"", "port \"x\" is not a port number");
    bad("\"70000\"", "port \"70000\" is not a port number");
    bad("\"0:80\"", "port \"0\" is not a port number");
    bad("\"1.2.3:80:80\"", "\"1.2.3\" is not an IP address");
    bad("\"::1:80:80\"", "put an IPv6 address in [brackets]");
    bad("\"8000-8002:80-81\"", "ranges differ in length");
    bad("\"81-80:1-2\"", "ends before it starts");
    bad("{published: 80}", "no target port");
    bad("{target: 80, size: 1}", "unknown key \"size\"");
    bad(
        "[80]",
        "a port must be a number, a string or a mapping, not a list",
    );
    // in a file, the entry is named
    assert_err(
        "services: {a: {image: x, ports: [\"80\", \"x\"]}}",
        "service \"a\": ports[1]: invalid port \"x\"",
    );
}

#[test]
fn volumes() {
    let p = ok(r#"
services:
  a:
    image: x
    volumes:
      - /abs:/a
      - ./rel/../conf:/b:ro
      - ~/home:/c:rw,z
      - data:/d:ro
      - /e
      - type: bind
        source: ./x
        target: /f
        read_only: true
      - {type: volume, source: data, target: /g}
      - {type: volume, target: /h}
volumes:
  data: {labels: [k=v]}
  ext: {external: true}
  renamed: {name: exact}
"#);
    let v = &p.services["a"].volumes;
    let kinds: Vec<_> = v.iter().map(|m| m.kind).collect();
    use MountKind::*;
    assert_eq!(
        kinds,
        [Bind, Bind, Bind, Volume, Anonymous, Bind, Volume, Anonymous]
    );
    let sources: Vec<_> = v.iter().map(|m| m.source.as_str()).collect();
    assert_eq!(
        sources,
        [
            "/abs",
            "/srv/My_App/conf",
            "/home/me/home",
            "data",
            "",
            "/srv/My_App/x",
            "data",
            ""
        ]
    );
    let ro: Vec<_> = v.iter().map(|m| m.read_only).collect();
    assert_eq!(ro, [false, true, false, true, false, true, false, false]);
    assert_eq!(p.volumes["data"].name, "my_app_data");
    assert_eq!(p.volumes["data"].labels["k"], "v");
    assert_eq!(p.volumes["ext"].name, "ext");
    assert!(p.volumes["ext"].external);
    assert_eq!(p.volumes["renamed"].name, "exact");

    assert_err(
        "services: {a: {image: x, volumes: [\"undeclared:/d\"]}}",
        "service \"a\": volumes[0]: volume \"undeclared\" is not declared under the top-level volumes",
    );
    assert_err(
        "services: {a: {image: x, volumes: [\"/a:rel\"]}}",
        "the container path \"rel\" must be absolute",
    );
    assert_err(
        "services: {a: {image: x, volumes: [\"/a:/b:rx\"]}}",
        "unknown option \"rx\" (use ro or rw)",
    );
    assert_err(
        "services: {a: {image: x, volumes: [\"/a:/b:ro:x\"]}}",
        "too many ':'",
    );
    assert_err(
        "services: {a: {image: x, volumes: [\"/a:/b\", \"/c:/b\"]}}",
        "\"/b\" is mounted more than once",
    );
    assert_err(
        "services: {a: {image: x, volumes: [{type: tmpfs, target: /t}]}}",
        "type \"tmpfs\" is not supported (use bind or volume)",
    );
    assert_err(
        "services: {a: {image: x, volumes: [{type: bind, target: /t}]}}",
        "a bind mount needs a source",
    );
    assert_err(
        "services: {a: {image: x}}\nvolumes: {d: {driver: nfs}}",
        "volume \"d\": driver \"nfs\" is not supported (only local)",
    );
    assert_err(
        "services: {a: {image: x}}\nvolumes: {d: {driver_opts: {}}}",
        "volume \"d\": unknown key \"driver_opts\"",
    );
}

#[test]
fn depends_on_and_order() {
    let p = ok(r#"
services:
  db: {image: x}
  cache: {image: x}
  api: {image: x, depends_on: {db: {condition: service_started}, cache: null}}
  web: {image: x, depends_on: [api]}
  alone: {image: x}
"#);
    // each after its dependencies, ties by name
    assert_eq!(
        start_order(&p).unwrap(),
        ["alone", "cache", "db", "api", "web"]
    );
    let pl = plan(&p).unwrap();
    let order: Vec<_> = pl.containers.iter().map(|c| c.service.as_str()).collect();
    assert_eq!(order, ["alone", "cache", "db", "api", "web"]);

    assert_err(
        "services: {a: {image: x, depends_on: [b]}, b: {image: x, depends_on: [c]}, c: {image: x, depends_on: [a]}, d: {image: x}}",
        "dependency cycle between services: a -> b -> c -> a",
    );
    assert_err(
        "services: {a: {image: x, depends_on: [b]}, b: {image: x, depends_on: [a]}, z: {image: x, depends_on: [a]}}",
        "dependency cycle between services: a -> b -> a",
    );
    assert_err(
        "services: {a: {image: x, depends_on: [a]}}",
        "service \"a\": depends on itself",
    );
    assert_err(
        "services: {a: {image: x, depends_on: [nope]}}",
        "service \"a\" depends on undefined service \"nope\"",
    );
    assert_err(
        "services: {a: {image: x, depends_on: {b: {condition: service_healthy}}}, b: {image: x}}",
        "depends_on.b: condition \"service_healthy\" is not supported (only service_started)",
    );
    assert_err(
        "services: {a: {image: x, depends_on: {b: {condition: soon}}}, b: {image: x}}",
        "unknown condition \"soon\"",
    );
    assert_err(
        "services: {a: {image: x, depends_on: {b: {when: now}}}, b: {image: x}}",
        "depends_on.b: unknown key \"when\"",
    );
    assert_err(
        "services: {a: {image: x, depends_on: b}, b: {image: x}}",
        "depends_on must be a list of services or a mapping, not a string",
    );
}

#[test]
fn unknown_and_unsupported_keys() {
    assert_err(
        "services: {web: {image: x, imagee: y}}",
        "service \"web\": unknown key \"imagee\" (supported: image, container_name,",
    );
    assert_err(
        "services: {web: {image: x}}\nservice: {}",
        "unknown top-level key String(\"service\")",
    );
    assert_err(
        "services: {web: {image: x}}\nsecrets: {}",
        "top-level \"secrets\" is not supported",
    );
    assert_err(
        "services: {web: {build: .}}",
        "service \"web\": \"build\" is not supported",
    );
    assert_err(
        "services: {web: {command: x}}",
        "service \"web\": no \"image\"",
    );
    // harmless: warned or ignored
    let (p, warnings) = load_with(
        &["version: \"3.9\"\nx-common: &c {image: busybox}\nservices:\n  web:\n    <<: *c\n    x-note: hi\n"],
        None,
        env(),
    )
    .unwrap();
    assert_eq!(p.services["web"].image, "busybox");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("\"version\" is obsolete"),
        "{warnings:?}"
    );
}

#[test]
fn bad_files() {
    assert_err("services: [", "invalid YAML");
    assert_err("", "the file is empty");
    assert_err("- a\n- b", "the top level must be a mapping");
    assert_err("version: '3'", "no services");
    assert_err("services: {}", "the \"services\" mapping is empty");
    assert_err("services: [a]", "services must be a mapping, not a list");
    assert_err(
        "services: {web: busybox}",
        "service \"web\": a service must be a mapping, not a string",
    );
    assert_err(
        "services: {\"we b\": {image: x}}",
        "invalid service name \"we b\"",
    );
    assert_err(
        "services: {a: {image: [x]}}",
        "image must be a string, not a list",
    );
    assert_err(
        "services: {a: {image: x, command: \"echo 'unterminated\"}}",
        "command \"echo 'unterminated\": unbalanced quotes",
    );
    assert_err(
        "services: {a: {image: x, restart: sometimes}}",
        "invalid restart \"sometimes\"",
    );
    assert_err(
        "services: {a: {image: x, restart: \"on-failure:x\"}}",
        "invalid restart \"on-failure:x\"",
    );
    assert_err(
        "services: {a: {image: x, working_dir: rel}}",
        "working_dir \"rel\" must be an absolute path",
    );
    assert_err(
        "services: {a: {image: x, container_name: \"-bad\"}}",
        "invalid container_name \"-bad\"",
    );
    assert_err(
        "services: {a: {image: x, container_name: same}, b: {image: x, container_name: same}}",
        "services \"a\" and \"b\" both use container name \"same\"",
    );
    // interpolation errors name where
    assert_err(
        "services: {a: {image: \"${NOPE:?set NOPE}\"}}",
        "services.a.image: required variable \"NOPE\" is missing a value: set NOPE",
    );
    assert_err(
        "services: {a: {image: \"x$\"}}",
        "services.a.image: invalid interpolation",
    );
    // restart values accepted
    for r in [
        "no",
        "always",
        "on-failure",
        "\"on-failure:3\"",
        "unless-stopped",
    ] {
        let p = ok(&format!("services: {{a: {{image: x, restart: {r}}}}}"));
        assert_eq!(
            p.services["a"].restart.as_deref(),
            Some(r.trim_matches('"'))
        );
    }
    let p = ok("services: {a: {image: x, restart: false}}");
    assert_eq!(p.services["a"].restart.as_deref(), Some("no"));
}

#[test]
fn interpolation_warnings_and_defaults() {
    let (p, w) = load_with(
        &["services:\n  a:\n    image: \"busybox:${NOTSET}\"\n    command: echo ${EMPTY:-dflt} ${TAG-x}\n"],
        None,
        env(),
    )
    .unwrap();
    assert_eq!(p.services["a"].image, "busybox:");
    assert_eq!(
        p.services["a"].command.as_deref().unwrap(),
        ["echo", "dflt", "1.36"]
    );
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("\"NOTSET\" variable is not set"), "{w:?}");
}

#[test]
fn networks() {
    let p = ok(r#"
services:
  a: {image: x, networks: [front]}
  b: {image: x, networks: {default: {aliases: [bee]}}}
  c: {image: x, networks: {outside: null}}
networks:
  front: {driver: bridge, ipam: {config: [{subnet: 10.9.8.0/24, gateway: 10.9.8.1}]}}
  outside: {external: true}
  default: {name: custom_default, labels: {a: b}}
"#);
    assert_eq!(p.networks["front"].name, "my_app_front");
    assert_eq!(p.networks["front"].subnet, "10.9.8.0/24");
    assert_eq!(p.networks["front"].gateway, "10.9.8.1");
    assert_eq!(p.networks["outside"].name, "outside");
    assert_eq!(p.networks["default"].name, "custom_default");
    let pl = plan(&p).unwrap();
    let opts: BTreeMap<_, _> = pl
        .containers
        .iter()
        .map(|c| {
            (
                c.service.as_str(),
                (
                    c.options.network.as_str(),
                    c.options.network_aliases.clone(),
                ),
            )
        })
        .collect();
    assert_eq!(opts["a"], ("my_app_front", vec!["a".to_owned()]));
    assert_eq!(
        opts["b"],
        ("custom_default", vec!["b".to_owned(), "bee".to_owned()])
    );
    assert_eq!(opts["c"], ("outside", vec!["c".to_owned()]));
    let nets: Vec<_> = pl
        .networks
        .iter()
        .map(|n| (n.name.as_str(), n.external))
        .collect();
    assert_eq!(
        nets,
        [
            ("custom_default", false),
            ("my_app_front", false),
            ("outside", true)
        ]
    );

    assert_err(
        "services: {a: {image: x, networks: [one, two]}}\nnetworks: {one: , two: }",
        "service \"a\": networks: 2 networks given; a container joins only one network here",
    );
    assert_err(
        "services: {a: {image: x, networks: [nope]}}",
        "networks: \"nope\" is not declared under the top-level networks",
    );
    assert_err(
        "services: {a: {image: x, networks: {n: {ipv4_address: 1.2.3.4}}}}\nnetworks: {n: }",
        "networks.n: unknown key \"ipv4_address\"",
    );
    assert_err(
        "services: {a: {image: x}}\nnetworks: {n: {driver: overlay}}",
        "network \"n\": driver \"overlay\" is not supported (only bridge)",
    );
    assert_err(
        "services: {a: {image: x}}\nnetworks: {n: {internal: true}}",
        "network \"n\": unknown key \"internal\"",
    );
}

#[test]
fn merged_files_override() {
    let (p, _) = load_with(
        &[
            TWO,
            "services:\n  web:\n    image: busybox:2\n    ports: [\"8080:80\"]\n  extra:\n    image: y\n",
        ],
        None,
        env(),
    )
    .unwrap();
    assert_eq!(p.services["web"].image, "busybox:2");
    // kept from the first file
    assert_eq!(
        p.services["web"].command.as_deref().unwrap(),
        ["httpd", "-f", "-p", "80"]
    );
    assert_eq!(p.services["web"].ports.len(), 1);
    assert!(p.services.contains_key("extra"));
    assert_eq!(p.files.len(), 2);
    // errors name both files
    let e = load_with(&[TWO, "services: {web: {imagee: x}}"], None, env()).unwrap_err();
    assert!(
        e.starts_with("/srv/My_App/compose.yaml + /srv/My_App/override1.yaml: "),
        "{e}"
    );
    // a YAML error names the file it is in
    let e = load_with(&[TWO, "services: ["], None, env()).unwrap_err();
    assert!(
        e.starts_with("/srv/My_App/override1.yaml: invalid YAML"),
        "{e}"
    );
}

#[test]
fn config_hash_follows_the_service() {
    let hash = |text: &str, svc: &str| {
        plan(&ok(text))
            .unwrap()
            .containers
            .into_iter()
            .find(|c| c.service == svc)
            .unwrap()
            .config_hash
    };
    let base = hash(TWO, "web");
    assert_eq!(base, hash(TWO, "web"), "stable");
    // another service's change leaves it alone
    assert_eq!(base, hash(&TWO.replace("wget -qO-", "wget -O-"), "web"));
    assert_ne!(base, hash(&TWO.replace("-p 80", "-p 81"), "web"));
    assert_ne!(base, hash(&TWO.replacen("busybox", "busybox:1", 1), "web"));
}

#[test]
fn config_output_is_yaml_of_the_normalised_project() {
    let p = ok(TWO);
    let yaml = serde_norway::to_string(&p).unwrap();
    let v: serde_norway::Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(v["name"].as_str(), Some("my_app"));
    assert_eq!(v["services"]["web"]["image"].as_str(), Some("busybox"));
    assert_eq!(
        v["services"]["client"]["depends_on"]["web"]["condition"].as_str(),
        Some("service_started")
    );
    assert_eq!(
        v["networks"]["default"]["name"].as_str(),
        Some("my_app_default")
    );
}

#[test]
fn command_line_is_consistent() {
    use clap::CommandFactory;
    // clap checks flag clashes (e.g. with rnerd's global -n) only when a command is parsed
    crate::rnerd::args::Cli::command().debug_assert();
}
