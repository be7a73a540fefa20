//! Bad input and wrong-state operations: each must fail with a non-zero exit code and a
//! message about the actual problem, and a failed create must leave nothing behind (no state
//! under --root, no cgroup, no process).

use rtest::Runtime;
use serde_json::json;
use std::fs;
use std::path::Path;

const NOT_EXIST: &[&str] = &["not exist", "not found", "no such"];

/// `create -b BUNDLE ID` must fail mentioning one of `mentions` and leave nothing behind.
#[track_caller]
fn create_fails_cleanly(rt: &Runtime, bundle: &Path, id: &str, mentions: &[&str]) -> rtest::Output {
    rt.track(id);
    let out = rt
        .cmd(&["create", "--bundle", bundle.to_str().unwrap(), id])
        .fails_mentioning(mentions);
    rt.assert_no_leftovers(id);
    rt.assert_root_empty();
    out
}

#[test]
fn missing_bundle_dir() {
    let rt = Runtime::new();
    let id = rt.id("nobundle");
    let missing = rt.scratch().join("no-such-bundle");
    create_fails_cleanly(&rt, &missing, &id, &["no-such-bundle", "no such file"]);
}

#[test]
fn missing_config_json() {
    let rt = Runtime::new();
    let id = rt.id("noconfig");
    let b = rt.busybox(&id, &["true"]);
    fs::remove_file(b.path().join("config.json")).unwrap();
    create_fails_cleanly(&rt, b.path(), &id, &["config.json"]);
}

#[test]
fn malformed_config_json() {
    let rt = Runtime::new();
    let id = rt.id("badjson");
    let b = rt.busybox(&id, &["true"]);
    fs::write(
        b.path().join("config.json"),
        "{\"ociVersion\": \"1.0.2\", \"process\": {",
    )
    .unwrap();
    // runc says only "unexpected EOF"
    let out = create_fails_cleanly(&rt, b.path(), &id, &["eof", "json", "parse", "config"]);
    if !rt.skip_unless_runr("malformed config error names config.json") {
        assert!(out.stderr.contains("config.json"), "{out:?}");
    }
}

#[test]
fn wrong_field_type() {
    let rt = Runtime::new();
    let id = rt.id("badtype");
    let mut b = rt.busybox(&id, &["true"]);
    b.process()["args"] = json!("sh -c true");
    b.save().unwrap();
    // runc: json: cannot unmarshal string into Go struct field Process.process.args of type []string
    create_fails_cleanly(&rt, b.path(), &id, &["args"]);
}

#[test]
fn rootfs_missing() {
    let rt = Runtime::new();
    let id = rt.id("norootfs");
    let mut b = rt.busybox(&id, &["true"]);
    b.config["root"]["path"] = json!("no-such-rootfs");
    b.save().unwrap();
    create_fails_cleanly(&rt, b.path(), &id, &["no-such-rootfs", "rootfs"]);
}

#[test]
fn process_binary_missing() {
    let rt = Runtime::new();
    let id = rt.id("nobinary");
    let b = rt.busybox(&id, &["/no/such/binary"]);
    create_fails_cleanly(&rt, b.path(), &id, &["/no/such/binary"]);
}

#[test]
fn resource_limit_that_cannot_be_applied() {
    let rt = Runtime::new();
    let id = rt.id("tinymem");
    let mut b = rt.busybox(&id, &["sleep", "600"]);
    // far below what the runtime's own init process already uses
    b.linux()["resources"]["memory"] = json!({"limit": 4096});
    b.save().unwrap();
    create_fails_cleanly(&rt, b.path(), &id, &["memory"]);
}

#[test]
fn duplicate_id() {
    let rt = Runtime::new();
    let id = rt.id("dup");
    let b = rt.busybox(&id, &["sleep", "600"]);
    rt.create(&b, &id);
    let pid = rt.pid(&id);
    rt.cmd(&["create", "--bundle", b.path().to_str().unwrap(), &id])
        .fails_mentioning(&["exist"]);
    // the first container is untouched
    let st = rt.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["pid"].as_i64(), Some(pid as i64));
    rt.cmd(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id])
        .fails_mentioning(&["exist"]);
    assert_eq!(rt.status(&id), "created");
}

#[test]
fn unknown_id() {
    let rt = Runtime::new();
    let id = "rtest-never-created";
    for args in [
        vec!["state", id],
        vec!["start", id],
        vec!["kill", id],
        vec!["kill", id, "KILL"],
        vec!["delete", id],
        vec!["exec", id, "true"],
        vec!["pause", id],
        vec!["resume", id],
        vec!["ps", id],
        vec!["events", "--stats", id],
        vec!["update", "--pids-limit", "10", id],
    ] {
        rt.cmd(&args).fails_mentioning(NOT_EXIST);
    }
    // runc: `delete --force` of a container that does not exist succeeds
    rt.cmd(&["delete", "--force", id]).ok();
    rt.assert_root_empty();
}

#[test]
fn start_twice_and_after_exit() {
    let rt = Runtime::new();
    let (id, _b) = rt.sleeper("start2");
    rt.cmd(&["start", &id])
        .fails_mentioning(&["running", "not created", "already"]);
    assert_eq!(rt.status(&id), "running");

    let id2 = rt.id("startstopped");
    let b2 = rt.busybox(&id2, &["true"]);
    rt.create(&b2, &id2);
    rt.start(&id2);
    rt.wait_status(&id2, "stopped");
    rt.cmd(&["start", &id2])
        .fails_mentioning(&["stopped", "not created"]);
}

#[test]
fn operations_in_the_wrong_state() {
    let rt = Runtime::new();
    // a stopped container cannot be paused, resumed, signalled or exec'd into
    let id = rt.id("stopped");
    let b = rt.busybox(&id, &["true"]);
    rt.create(&b, &id);
    rt.start(&id);
    rt.wait_status(&id, "stopped");
    rt.cmd(&["pause", &id])
        .fails_mentioning(&["not running", "stopped"]);
    rt.cmd(&["resume", &id])
        .fails_mentioning(&["not paused", "stopped"]);
    rt.cmd(&["kill", &id, "KILL"])
        .fails_mentioning(&["not running", "stopped"]);
    assert_eq!(rt.status(&id), "stopped");

    // a running container that is not paused cannot be resumed
    let (run, _rb) = rt.sleeper("notpaused");
    rt.cmd(&["resume", &run]).fails_mentioning(&["not paused"]);
    // a paused container cannot be exec'd into
    rt.cmd(&["pause", &run]).ok();
    rt.exec(&run, &["true"]).fails_mentioning(&["paused"]);
    rt.cmd(&["resume", &run]).ok();
    assert_eq!(rt.status(&run), "running");
}

#[test]
fn invalid_container_ids() {
    let rt = Runtime::new();
    let id = rt.id("validbundle");
    let b = rt.busybox(&id, &["true"]);
    let escape = rt.root().parent().unwrap().join("escaped");
    for bad in ["a/b", "../escaped", "a b", "a:b", "with\nnewline"] {
        rt.cmd(&["create", "--bundle", b.path().to_str().unwrap(), bad])
            .fails_mentioning(&["id"]);
        rt.assert_root_empty();
        assert!(!escape.exists(), "container state written outside --root");
    }
    rt.cmd(&["create", "--bundle", b.path().to_str().unwrap(), ""])
        .failed();
    rt.assert_root_empty();
    rt.assert_no_leftovers(&id);
}

#[test]
fn usage_errors() {
    let rt = Runtime::new();
    rt.cmd(&["state"]).failed();
    rt.cmd(&["no-such-command"]).failed();
    rt.cmd(&["create", "--no-such-flag", "x"]).failed();
    rt.cmd(&["list", "--format", "yaml"]).failed();
    rt.assert_root_empty();
}

#[test]
fn systemd_cgroup_without_systemd() {
    let rt = Runtime::new();
    if Path::new("/run/systemd/system").exists() {
        eprintln!("systemd is running here; nothing to check");
        return;
    }
    let id = rt.id("systemd");
    let mut b = rt.busybox(&id, &["sleep", "600"]);
    b.linux()["cgroupsPath"] = json!(format!("system.slice:rtest:{id}"));
    b.save().unwrap();
    rt.cmd(&[
        "--systemd-cgroup",
        "create",
        "--bundle",
        b.path().to_str().unwrap(),
        &id,
    ])
    .fails_mentioning(&["systemd"]);
    rt.assert_no_leftovers(&id);
    rt.assert_root_empty();
}
