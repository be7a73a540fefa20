//! Tests of `generate` as a whole.

use super::*;
use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};
use std::fs;

fn rootfs() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("etc")).unwrap();
    fs::write(
        d.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        d.path().join("etc/group"),
        "root:x:0:\nstaff:x:50:app\napp:x:1000:\n",
    )
    .unwrap();
    d
}

fn image(f: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> ImageConfiguration {
    let cfg = f(ConfigBuilder::default()).build().unwrap();
    ImageConfigurationBuilder::default()
        .config(cfg)
        .build()
        .unwrap()
}

fn busybox() -> ImageConfiguration {
    image(|c| {
        c.env(vec!["PATH=/bin".to_string(), "A=image".to_string()])
            .cmd(vec!["sh".to_string()])
    })
}

fn req(id: &str) -> ContainerRequest {
    ContainerRequest {
        id: id.into(),
        ..Default::default()
    }
}

fn gen(img: &ImageConfiguration, r: &ContainerRequest) -> Result<GeneratedSpec, SpecError> {
    let d = rootfs();
    generate(Some(img), r, d.path())
}

fn process(g: &GeneratedSpec) -> &Process {
    g.spec.process().as_ref().unwrap()
}

fn linux(g: &GeneratedSpec) -> &oci_spec::runtime::Linux {
    g.spec.linux().as_ref().unwrap()
}

fn env(g: &GeneratedSpec) -> Vec<String> {
    process(g).env().clone().unwrap()
}

#[test]
fn defaults_are_safe() {
    let g = gen(&busybox(), &req("abcdef0123456789")).unwrap();
    let p = process(&g);
    assert_eq!(p.args().as_ref().unwrap(), &["sh"]);
    assert_eq!(p.cwd(), Path::new("/"));
    assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
    let caps = p.capabilities().as_ref().unwrap();
    assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
    assert_eq!(caps.effective(), caps.bounding());
    assert!(caps.ambient().is_none());
    let l = linux(&g);
    assert!(l
        .masked_paths()
        .as_ref()
        .unwrap()
        .contains(&"/proc/kcore".to_string()));
    assert!(l
        .readonly_paths()
        .as_ref()
        .unwrap()
        .contains(&"/proc/sys".to_string()));
    assert!(l.seccomp().is_some());
    assert_eq!(
        l.cgroups_path().as_deref(),
        Some(Path::new("/rcd/default/abcdef0123456789"))
    );
    let ns: Vec<LinuxNamespaceType> = l
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert_eq!(
        ns,
        vec![
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount
        ]
    );
    assert_eq!(g.spec.hostname().as_deref(), Some("abcdef012345"));
    let rl = p.rlimits().as_ref().unwrap();
    assert_eq!(
        (rl[0].typ(), rl[0].soft(), rl[0].hard()),
        (PosixRlimitType::RlimitNofile, 1024, 1024)
    );
    let rules = l.resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert!(!rules[0].allow());
    assert_eq!(g.spec.root().as_ref().unwrap().readonly(), Some(false));
    // and it is valid JSON the runtimes read
    let v = serde_json::to_value(&g.spec).unwrap();
    assert_eq!(v["process"]["user"]["uid"], 0);
}

#[test]
fn env_merges_image_then_request_and_adds_defaults() {
    let mut r = req("c1");
    r.env = vec!["A=req".into(), "B=2".into()];
    r.tty = true;
    let g = gen(&busybox(), &r).unwrap();
    assert_eq!(
        env(&g),
        vec![
            "PATH=/bin",
            "A=req",
            "B=2",
            "HOSTNAME=c1",
            "TERM=xterm",
            "HOME=/root"
        ]
    );
    let g = gen(&image(|c| c.cmd(vec!["x".to_string()])), &req("c1")).unwrap();
    assert_eq!(env(&g)[0], format!("PATH={DEFAULT_PATH}"));
    assert!(!env(&g).iter().any(|e| e.starts_with("TERM=")));
}

#[test]
fn bad_env_entries_are_refused() {
    for (e, why) in [
        ("NOEQ", "expected KEY=VALUE"),
        ("=v", "the key is empty"),
        ("A=\0", "NUL"),
    ] {
        let mut r = req("c1");
        r.env = vec![e.into()];
        let err = gen(&busybox(), &r).unwrap_err().to_string();
        assert!(err.contains(why), "{e}: {err}");
    }
}

#[test]
fn entrypoint_and_cmd_follow_docker() {
    let img = image(|c| {
        c.entrypoint(vec!["/ep".to_string()])
            .cmd(vec!["a".to_string()])
            .working_dir("/w")
            .user("app")
    });
    let g = gen(&img, &req("c")).unwrap();
    let p = process(&g);
    assert_eq!(p.args().as_ref().unwrap(), &["/ep", "a"]);
    assert_eq!(p.cwd(), Path::new("/w"));
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
    assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[50]);
    assert!(env(&g).contains(&"HOME=/home/app".to_string()));

    let mut r = req("c");
    r.args = Some(vec!["b".into()]);
    assert_eq!(
        process(&gen(&img, &r).unwrap()).args().as_ref().unwrap(),
        &["/ep", "b"]
    );
    r.entrypoint = Some(vec!["/other".into()]);
    r.args = None;
    assert_eq!(
        process(&gen(&img, &r).unwrap()).args().as_ref().unwrap(),
        &["/other"]
    );
    r.entrypoint = Some(vec![]);
    r.args = Some(vec!["/bin/true".into()]);
    assert_eq!(
        process(&gen(&img, &r).unwrap()).args().as_ref().unwrap(),
        &["/bin/true"]
    );

    let e = gen(&image(|c| c), &req("c")).unwrap_err().to_string();
    assert!(e.contains("no command"), "{e}");
    let mut r = req("c");
    r.cwd = Some("rel".into());
    let e = gen(&busybox(), &r).unwrap_err().to_string();
    assert!(e.contains("working directory \"rel\""), "{e}");
}

#[test]
fn user_errors_come_through() {
    let mut r = req("c");
    r.user = Some("ghost".into());
    let e = gen(&busybox(), &r).unwrap_err().to_string();
    assert_eq!(
        e,
        "unknown user \"ghost\": no such user in the image's /etc/passwd"
    );
}

#[test]
fn image_metadata_is_returned() {
    let img = image(|c| {
        c.cmd(vec!["x".to_string()])
            .exposed_ports(vec!["80/tcp".to_string(), "53/udp".to_string()])
            .volumes(vec!["/data".to_string(), "/cache".to_string()])
            .stop_signal("SIGQUIT")
    });
    let d = tempfile::tempdir().unwrap();
    let mut r = req("c");
    r.mounts = vec![MountRequest::bind(d.path(), "/data/", false)];
    let g = gen(&img, &r).unwrap();
    assert_eq!(g.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(g.exposed_ports, vec!["53/udp", "80/tcp"]);
    assert_eq!(g.image_volumes, vec!["/cache"]);
}

#[test]
fn request_mounts_replace_defaults_at_the_same_place() {
    let mut r = req("c");
    r.mounts = vec![MountRequest::tmpfs("/dev/shm", Some(1 << 20))];
    let g = gen(&busybox(), &r).unwrap();
    let shm: Vec<_> = g
        .spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|m| m.destination() == Path::new("/dev/shm"))
        .collect();
    assert_eq!(shm.len(), 1);
    assert_eq!(shm[0].typ().as_deref(), Some("tmpfs"));
    r.mounts.push(MountRequest::tmpfs("/dev/shm/", None));
    let e = gen(&busybox(), &r).unwrap_err().to_string();
    assert!(e.contains("two mounts"), "{e}");
}

#[test]
fn privileged_gets_everything_and_no_confinement() {
    let mut r = req("c");
    r.privileged = true;
    let g = gen(&busybox(), &r).unwrap();
    let caps = process(&g).capabilities().as_ref().unwrap();
    assert_eq!(caps.bounding().as_ref().unwrap(), &caps::own_bounding_set());
    let l = linux(&g);
    assert!(l.seccomp().is_none());
    assert!(l.masked_paths().is_none());
    assert!(l.readonly_paths().is_none());
    let rules = l.resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert!(rules.len() == 1 && rules[0].allow());
    assert!(l
        .devices()
        .as_ref()
        .unwrap()
        .iter()
        .any(|d| d.path() == Path::new("/dev/null")));
}

#[test]
fn seccomp_modes() {
    let mut r = req("c");
    r.seccomp = SeccompMode::Unconfined;
    assert!(linux(&gen(&busybox(), &r).unwrap()).seccomp().is_none());
    r.seccomp = SeccompMode::Localhost("/nonexistent.json".into());
    let e = gen(&busybox(), &r).unwrap_err().to_string();
    assert!(e.contains("seccomp profile /nonexistent.json"), "{e}");
}

#[test]
fn apparmor_and_selinux_are_refused_clearly() {
    let mut r = req("c");
    r.apparmor_profile = Some("docker-default".into());
    let e = gen(&busybox(), &r).unwrap_err().to_string();
    assert_eq!(
        e,
        "apparmor profile \"docker-default\": rcd has no AppArmor support"
    );
    r.apparmor_profile = Some("unconfined".into());
    assert!(gen(&busybox(), &r).is_ok());
    r.selinux_label = Some("system_u:system_r:container_t:s0".into());
    let e = gen(&busybox(), &r).unwrap_err().to_string();
    assert!(e.contains("selinux label"), "{e}");
}

#[test]
fn capability_errors_come_through() {
    let mut r = req("c");
    r.cap_add = vec!["CAP_WIZARD".into()];
    let e = gen(&busybox(), &r).unwrap_err().to_string();
    assert_eq!(e, "unknown capability \"CAP_WIZARD\"");
    let mut r = req("c");
    r.cap_add = vec!["sys_admin".into()];
    r.cap_drop = vec!["NET_RAW".into()];
    let g = gen(&busybox(), &r).unwrap();
    let b = process(&g)
        .capabilities()
        .as_ref()
        .unwrap()
        .bounding()
        .clone()
        .unwrap();
    assert!(b.contains(&Capability::SysAdmin) && !b.contains(&Capability::NetRaw));
    // CAP_SYS_ADMIN unlocks mount in the default profile
    let sc = linux(&g).seccomp().as_ref().unwrap();
    assert!(sc
        .syscalls()
        .as_ref()
        .unwrap()
        .iter()
        .any(|s| s.names().contains(&"mount".to_string())));
}

#[test]
fn sysctls_must_be_namespaced_and_in_an_own_namespace() {
    let ns = Namespaces::default();
    let ok: BTreeMap<String, String> = [
        ("net.ipv4.ip_forward".to_string(), "1".to_string()),
        ("kernel/shmmax".to_string(), "1000".to_string()),
        ("fs.mqueue.msg_max".to_string(), "20".to_string()),
    ]
    .into();
    let out = check_sysctls(&ok, &ns).unwrap();
    assert!(out.contains_key("kernel.shmmax"));
    for (name, why) in [
        ("kernel.panic", "not a namespaced sysctl"),
        ("vm.swappiness", "not a namespaced sysctl"),
        ("net..x", "not a sysctl name"),
        ("net.ipv4.a b", "not a sysctl name"),
    ] {
        let m: BTreeMap<String, String> = [(name.to_string(), "1".to_string())].into();
        let e = check_sysctls(&m, &ns).unwrap_err().to_string();
        assert!(e.contains(why), "{name}: {e}");
        assert!(e.contains(&format!("{name:?}")), "{name}: {e}");
    }
    let host_net = Namespaces {
        network: NamespaceMode::Host,
        ..Default::default()
    };
    let m: BTreeMap<String, String> = [("net.ipv4.ip_forward".to_string(), "1".to_string())].into();
    let e = check_sysctls(&m, &host_net).unwrap_err().to_string();
    assert!(e.contains("host's network namespace"), "{e}");
    // joined (pod) namespaces are the pod's own: allowed
    let pod = Namespaces {
        network: NamespaceMode::Join("/proc/self/ns/net".into()),
        ..Default::default()
    };
    assert!(check_sysctls(&m, &pod).is_ok());
    let bad_val: BTreeMap<String, String> = [("net.x".to_string(), "1\n2".to_string())].into();
    assert!(check_sysctls(&bad_val, &ns).is_err());
}

#[test]
fn namespaces_new_host_and_joined() {
    let mut r = req("c");
    r.namespaces.network = NamespaceMode::Host;
    r.namespaces.ipc = NamespaceMode::Join("/proc/self/ns/ipc".into());
    r.namespaces.cgroup = NamespaceMode::New;
    let g = gen(&busybox(), &r).unwrap();
    let ns = linux(&g).namespaces().clone().unwrap();
    assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
    let ipc = ns
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Ipc)
        .unwrap();
    assert_eq!(ipc.path().as_deref(), Some(Path::new("/proc/self/ns/ipc")));
    assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup));

    r.namespaces.ipc = NamespaceMode::Join("/proc/999999999/ns/ipc".into());
    let e = gen(&busybox(), &r).unwrap_err().to_string();
    assert!(
        e.starts_with("ipc namespace: cannot join /proc/999999999/ns/ipc"),
        "{e}"
    );
    r.namespaces.ipc = NamespaceMode::Join("ns/ipc".into());
    let e = gen(&busybox(), &r).unwrap_err().to_string();
    assert!(e.contains("not an absolute path"), "{e}");
}

#[test]
fn hostname_rules() {
    let mut r = req("c");
    r.hostname = Some("web-1".into());
    let g = gen(&busybox(), &r).unwrap();
    assert_eq!(g.spec.hostname().as_deref(), Some("web-1"));
    assert!(env(&g).contains(&"HOSTNAME=web-1".to_string()));
    r.hostname = Some("bad host".into());
    assert!(gen(&busybox(), &r)
        .unwrap_err()
        .to_string()
        .contains("hostname \"bad host\""));
    r.hostname = Some("x".repeat(65));
    assert!(gen(&busybox(), &r).is_err());
    r.hostname = Some("h".into());
    r.namespaces.uts = NamespaceMode::Host;
    let e = gen(&busybox(), &r).unwrap_err().to_string();
    assert!(e.contains("host's uts namespace"), "{e}");
    r.hostname = None;
    assert_eq!(gen(&busybox(), &r).unwrap().spec.hostname(), &None);
}

#[test]
fn rlimits_parse_and_apply() {
    let r = Rlimit::parse("nofile=100:200").unwrap();
    assert_eq!(
        (r.typ, r.soft, r.hard),
        (PosixRlimitType::RlimitNofile, 100, 200)
    );
    let r = Rlimit::parse("RLIMIT_NPROC=-1").unwrap();
    assert_eq!(r.soft, u64::MAX);
    for (v, why) in [
        ("nofile", "expected NAME=SOFT"),
        ("files=1", "unknown resource"),
        ("nofile=x", "not a number"),
        ("nofile=2:1", "above the hard limit"),
    ] {
        let e = Rlimit::parse(v).unwrap_err().to_string();
        assert!(e.contains(why), "{v}: {e}");
    }
    let mut rq = req("c");
    rq.rlimits = Some(vec![]);
    assert!(process(&gen(&busybox(), &rq).unwrap()).rlimits().is_none());
    rq.rlimits = Some(vec![
        Rlimit::parse("nofile=1").unwrap(),
        Rlimit::parse("nofile=2").unwrap(),
    ]);
    assert!(gen(&busybox(), &rq)
        .unwrap_err()
        .to_string()
        .contains("given twice"));
}

#[test]
fn resources_devices_labels_and_oom() {
    let mut r = req("c");
    r.resources.memory_limit = Some(64 << 20);
    r.resources.pids_limit = Some(10);
    r.devices = vec![DeviceRequest::parse("/dev/null:/dev/mynull:r").unwrap()];
    r.labels = [("a".to_string(), "b".to_string())].into();
    r.oom_score_adj = Some(-1000);
    r.readonly_rootfs = true;
    r.no_new_privileges = true;
    let g = gen(&busybox(), &r).unwrap();
    let l = linux(&g);
    let res = l.resources().as_ref().unwrap();
    assert_eq!(res.memory().as_ref().unwrap().limit(), Some(64 << 20));
    assert!(res
        .devices()
        .as_ref()
        .unwrap()
        .iter()
        .any(|d| d.allow() && d.access().as_deref() == Some("r") && d.major() == Some(1)));
    assert_eq!(
        l.devices().as_ref().unwrap()[0].path(),
        Path::new("/dev/mynull")
    );
    assert_eq!(g.spec.annotations().as_ref().unwrap()["a"], "b");
    let adj = process(&g).oom_score_adj().unwrap();
    if caps::own_bounding_set().contains(&Capability::SysResource) {
        assert_eq!(adj, -1000);
    } else {
        assert_eq!(adj, resources::own_oom_score_adj().max(-1000));
    }
    assert_eq!(g.spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(process(&g).no_new_privileges(), Some(true));
}

#[test]
fn merge_env_keeps_first_position() {
    let out = merge_env(&["A=1".into(), "B=2".into(), "A=3".into()], &["B=4".into()]).unwrap();
    assert_eq!(out, vec!["A=3", "B=4"]);
}

#[test]
fn cgroup_paths() {
    let mut r = req("c1");
    r.namespace = Some("k8s.io".into());
    let g = gen(&busybox(), &r).unwrap();
    assert_eq!(
        linux(&g).cgroups_path().as_deref(),
        Some(Path::new("/rcd/k8s.io/c1"))
    );
    r.cgroups_path = Some(cgroups_path_under("/kubepods/pod123/", "c1"));
    let g = gen(&busybox(), &r).unwrap();
    assert_eq!(
        linux(&g).cgroups_path().as_deref(),
        Some(Path::new("/kubepods/pod123/c1"))
    );
    for (p, why) in [
        ("rel/c1", "absolute"),
        ("/a/../b", "\"..\""),
        ("/", "root cgroup"),
    ] {
        r.cgroups_path = Some(p.into());
        let e = gen(&busybox(), &r).unwrap_err().to_string();
        assert!(e.contains(why) && e.contains(p), "{p}: {e}");
    }
    let e = gen(&busybox(), &req("")).unwrap_err().to_string();
    assert!(e.contains("container id"), "{e}");
}

#[test]
fn exec_processes_inherit_the_container_and_override() {
    let d = rootfs();
    let mut r = req("c1");
    r.env = vec!["A=1".into()];
    r.cap_add = vec!["NET_ADMIN".into()];
    let g = generate(Some(&busybox()), &r, d.path()).unwrap();
    let e = ExecRequest {
        args: vec!["id".into()],
        env: vec!["B=2".into()],
        cwd: Some("/tmp".into()),
        user: Some("app".into()),
        tty: true,
    };
    let p = exec_process(&g.spec, &e, d.path()).unwrap();
    assert_eq!(p.args().as_ref().unwrap(), &["id"]);
    assert_eq!(p.cwd(), Path::new("/tmp"));
    assert_eq!(p.user().uid(), 1000);
    let env = p.env().clone().unwrap();
    for want in ["A=1", "B=2", "HOME=/home/app", "TERM=xterm"] {
        assert!(env.contains(&want.to_string()), "{want}: {env:?}");
    }
    assert!(!env.contains(&"HOME=/root".to_string()));
    assert_eq!(p.capabilities(), process(&g).capabilities());
    assert_eq!(p.terminal(), Some(true));

    let e = exec_process(&g.spec, &ExecRequest::default(), d.path()).unwrap_err();
    assert!(e.to_string().contains("exec command"), "{e}");
    let bad = ExecRequest {
        args: vec!["x".into()],
        user: Some("ghost".into()),
        ..Default::default()
    };
    let e = exec_process(&g.spec, &bad, d.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown user \"ghost\""), "{e}");
    let bad = ExecRequest {
        args: vec!["x".into()],
        env: vec!["NOPE".into()],
        ..Default::default()
    };
    assert!(exec_process(&g.spec, &bad, d.path()).is_err());
}
