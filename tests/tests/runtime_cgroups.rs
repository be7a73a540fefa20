//! Resource limits: what lands in the container's cgroup, what `update` changes, and that the
//! limits bite. The cgroup is found through `/proc/<pid>/cgroup`, so this works on v1, v2 and
//! hybrid hosts.

use rtest::cgroup::Cgroup;
use rtest::{Bundle, Runtime};
use serde_json::{json, Value};
use std::path::Path;

const MIB: u64 = 1 << 20;

fn with_resources(rt: &Runtime, prefix: &str, args: &[&str], res: Value) -> (String, Bundle) {
    let id = rt.id(prefix);
    let mut b = rt.busybox(&id, args);
    let r = &mut b.linux()["resources"];
    for (k, v) in res.as_object().unwrap() {
        r[k] = v.clone();
    }
    b.save().unwrap();
    (id, b)
}

#[test]
fn container_gets_its_own_cgroup() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("cgpath");
    let pid = rt.pid(&id);
    let cg = Cgroup::of(pid).unwrap();
    let name = format!("rtest-{id}");
    for c in ["memory", "cpu", "pids", "freezer"] {
        let d = cg.dir(c);
        assert_eq!(
            d.file_name().unwrap().to_str().unwrap(),
            name,
            "{c} cgroup is {}",
            d.display()
        );
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pid.to_string()), "{c}: {procs}");
    }
    rt.delete_force(&id);
    rt.assert_no_leftovers(&id);
}

#[test]
fn limits_are_written_to_the_cgroup() {
    let rt = Runtime::new();
    let (id, b) = with_resources(
        &rt,
        "limits",
        &["sleep", "600"],
        json!({
            "memory": {"limit": 64 * MIB},
            "cpu": {"quota": 20000, "period": 50000, "shares": 512},
            "pids": {"limit": 42}
        }),
    );
    rt.run_detached(&b, &id);
    let cg = Cgroup::of(rt.pid(&id)).unwrap();
    assert_eq!(cg.memory_limit(), Some(64 * MIB));
    assert_eq!(cg.cpu_quota_period(), (20000, 50000));
    assert_eq!(cg.pids_max(), Some(42));
    if !cg.is_v2("cpu") {
        assert_eq!(cg.read("cpu", "cpu.shares"), "512");
    }
}

#[test]
fn memory_limit_oom_kills() {
    let rt = Runtime::new();
    // `tail` keeps a line in memory until it sees a newline, and /dev/zero has none
    let (id, b) = with_resources(
        &rt,
        "oom",
        &["tail", "/dev/zero"],
        json!({"memory": {"limit": 16 * MIB, "swap": 16 * MIB}}),
    );
    rt.run_fg(&b, &id).code_is(137);
    rt.assert_no_leftovers(&id);
}

#[test]
fn memory_limit_oom_visible_in_cgroup() {
    let rt = Runtime::new();
    let (id, b) = with_resources(
        &rt,
        "oomcg",
        &[
            "sh",
            "-c",
            "sleep 0.1; head -c 64m /dev/zero | tail; echo tail-exit=$?",
        ],
        json!({"memory": {"limit": 16 * MIB, "swap": 16 * MIB}}),
    );
    let created = rt.create(&b, &id);
    let cg = Cgroup::of(rt.pid(&id)).unwrap();
    rt.start(&id);
    rt.wait_status(&id, "stopped");
    assert!(
        created.stdout_now().contains("tail-exit=137"),
        "{}",
        created.stdout_now()
    );
    if cg.is_v2("memory") {
        let ev = cg.read("memory", "memory.events");
        assert!(
            ev.lines()
                .any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0"),
            "{ev}"
        );
    } else {
        // memory.oom_control counts OOM kills (since Linux 4.13); older kernels only have
        // the fail counters (on recent kernels those stay 0 under v1)
        let oc = cg.read("memory", "memory.oom_control");
        match oc.lines().find(|l| l.starts_with("oom_kill ")) {
            Some(l) => assert_ne!(l, "oom_kill 0", "{oc}"),
            None => {
                let failcnt: u64 = ["memory.failcnt", "memory.memsw.failcnt"]
                    .iter()
                    .filter(|f| cg.dir("memory").join(f).exists())
                    .map(|f| cg.read("memory", f).parse::<u64>().unwrap())
                    .sum();
                assert!(failcnt > 0, "no sign of the OOM in the cgroup");
            }
        }
    }
}

#[test]
fn update_memory_cpu_pids_flags() {
    let rt = Runtime::new();
    let (id, b) = with_resources(
        &rt,
        "update",
        &["sleep", "600"],
        json!({"memory": {"limit": 64 * MIB}}),
    );
    rt.run_detached(&b, &id);
    let cg = Cgroup::of(rt.pid(&id)).unwrap();
    rt.cmd(&["update", "--memory", "32M", &id]).ok();
    assert_eq!(cg.memory_limit(), Some(32 * MIB));
    rt.cmd(&["update", "--memory", "100663296", &id]).ok();
    assert_eq!(cg.memory_limit(), Some(96 * MIB));
    rt.cmd(&[
        "update",
        "--cpu-quota",
        "30000",
        "--cpu-period",
        "100000",
        &id,
    ])
    .ok();
    assert_eq!(cg.cpu_quota_period(), (30000, 100000));
    rt.cmd(&["update", "--pids-limit", "17", &id]).ok();
    assert_eq!(cg.pids_max(), Some(17));
    // the container keeps running through all of it
    assert_eq!(rt.status(&id), "running");
}

#[test]
fn update_resources_from_stdin_and_file() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("updatejson");
    let cg = Cgroup::of(rt.pid(&id)).unwrap();
    let res = json!({
        "memory": {"limit": 48 * MIB},
        "cpu": {"quota": 25000, "period": 100000},
        "pids": {"limit": 33}
    });
    rt.cmd_stdin(&["update", "--resources", "-", &id], &res.to_string())
        .ok();
    assert_eq!(cg.memory_limit(), Some(48 * MIB));
    assert_eq!(cg.cpu_quota_period(), (25000, 100000));
    assert_eq!(cg.pids_max(), Some(33));

    let f = rt.scratch().join("res.json");
    std::fs::write(&f, json!({"memory": {"limit": 40 * MIB}}).to_string()).unwrap();
    rt.cmd(&["update", "-r", f.to_str().unwrap(), &id]).ok();
    assert_eq!(cg.memory_limit(), Some(40 * MIB));
    // values not in the file are kept
    assert_eq!(cg.pids_max(), Some(33));
}

#[test]
fn update_bad_input_fails() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("updatebad");
    rt.cmd_stdin(&["update", "--resources", "-", &id], "{not json")
        .failed();
    rt.cmd(&["update", "--memory", "lots", &id]).failed();
    rt.cmd(&["update", "--memory", "32M", "no-such-container"])
        .fails_mentioning(&["not exist", "not found", "no such"]);
    assert_eq!(rt.status(&id), "running");
}

#[test]
fn pids_limit_prevents_forks() {
    let rt = Runtime::new();
    let (id, b) = with_resources(
        &rt,
        "pids",
        &[
            "sh",
            "-c",
            "n=0; for i in 1 2 3 4 5 6 7 8 9 10; do sleep 30 & n=$((n+1)); done; echo started=$n",
        ],
        json!({"pids": {"limit": 5}}),
    );
    let out = rt.run_fg(&b, &id);
    assert!(!out.stdout.contains("started=10"), "{out:?}");
    assert!(out.stderr.contains("fork"), "{out:?}");
    rt.assert_no_leftovers(&id);
}

#[test]
fn cgroup_removed_after_delete() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("cgrm");
    let cg = Cgroup::of(rt.pid(&id)).unwrap();
    let mem = cg.dir("memory");
    assert!(mem.exists());
    rt.kill(&id, "KILL");
    rt.wait_status(&id, "stopped");
    rt.delete(&id);
    assert!(!Path::new(&mem).exists(), "{} still there", mem.display());
    rt.assert_no_leftovers(&id);
}
