//! `rbench runtime` end to end, with runc standing in for runr (so it does not need runr
//! built) and only the peers that are installed.

use std::path::Path;
use std::process::Command;

#[test]
fn runtime_benchmark_json() {
    let Some(runc) = ["/usr/sbin/runc", "/usr/bin/runc", "/sbin/runc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        panic!("runc is not installed: apt-get install runc");
    };
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "rbench runtime needs root"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rbench"))
        .args([
            "runtime", "--runr", runc, "--runs", "3", "--warmup", "1", "--json",
        ])
        .output()
        .expect("running rbench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rbench failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    for rt in ["runr", "runc", "crun"] {
        let r = &v["runtimes"][rt];
        let wall = r["wall_ms"]["median"].as_f64().unwrap();
        assert!(wall > 0.5 && wall < 5000.0, "{rt} wall {wall}");
        let rss = r["child_maxrss_kib"]["median"].as_f64().unwrap();
        assert!(rss > 500.0, "{rt} rss {rss}");
        assert!(r["tree_maxrss_kib"]["median"].as_f64().unwrap() >= rss);
        assert!(r["tree_cpu_ms"]["median"].as_f64().unwrap() > 0.0);
        assert_eq!(r["samples"]["wall_ms"].as_array().unwrap().len(), 3);
    }
    // runc stands in for runr, so their memory ratio is about 1.
    let mem = v["ratios"]["runr/runc"]["child_maxrss_median"]
        .as_f64()
        .unwrap();
    assert!(
        (0.7..1.4).contains(&mem),
        "runr(=runc)/runc rss ratio {mem}"
    );
    assert!(v["ratios"]["runr/crun"]["wall_median"].as_f64().is_some());
}

#[test]
fn missing_peer_names_the_debian_package() {
    let out = Command::new(env!("CARGO_BIN_EXE_rbench"))
        .args([
            "runtime",
            "--runr",
            "/bin/true",
            "--crun",
            "/nonexistent/crun",
        ])
        .output()
        .expect("running rbench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install crun"), "{err}");
}

#[test]
fn runtime_benchmark_with_workspace_runr() {
    // rbench takes the runr built beside it (see rtest::runtime::built_binary_candidates)
    let beside = Path::new(env!("CARGO_BIN_EXE_rbench")).with_file_name("runr");
    assert!(
        beside.is_file(),
        "runr is not built next to rbench ({}): run `cargo build -p runr`",
        beside.display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rbench"))
        .args(["runtime", "--runs", "2", "--warmup", "0", "--json"])
        .output()
        .expect("running rbench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rbench with runr failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let runr = &v["runtimes"]["runr"];
    assert!(runr["path"].as_str().unwrap().ends_with("/runr"), "{runr}");
    assert!(
        runr["version"].as_str().unwrap().starts_with("runr"),
        "{runr}"
    );
    assert!(v["ratios"]["runr/runc"]["wall_median"].as_f64().unwrap() > 0.0);
}
