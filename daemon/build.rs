//! Compiles `pause/pause.c` into the static binary rcd embeds as its built-in pod sandbox
//! process (written to `<root>/pause/rootfs/pause` at start): pods start offline.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=pause/pause.c");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let target = out.join("pause");
    let status = Command::new(&cc)
        .args(["-static", "-Os", "-s", "-Wall", "-o"])
        .arg(&target)
        .arg("pause/pause.c")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "building daemon/pause/pause.c with `{cc} -static -Os` failed ({s}): \
             a static C toolchain is needed: apt-get install gcc libc6-dev"
        ),
        Err(e) => panic!(
            "cannot run the C compiler `{cc}` to build daemon/pause/pause.c ({e}): \
             apt-get install gcc libc6-dev"
        ),
    }
}
