//! `rbench`: benchmarks of this project's tools run side by side with their peers.

mod cri;
mod driver;
mod pull;
mod rnerd;
mod runtime;
mod shim;
mod stats;
mod tasks;
mod unpack;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rbench",
    about = "benchmarks against the peer tools (runc, crun, containerd)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time `<rt> run` of a busybox /bin/true container for runr, runc and crun.
    Runtime(runtime::RuntimeArgs),
    /// Unpack a large layer with rcd's confined unpacker and with GNU tar.
    Unpack(unpack::UnpackArgs),
    /// Pull + unpack of a large multi-layer image from a loopback registry: rcd vs containerd.
    Pull(pull::PullArgs),
    /// RSS and PSS per shim with N running containers: containerd's Go shim vs rshim.
    Shim(shim::ShimArgs),
    /// Containers and tasks: rcd + rctr + rshim vs containerd + ctr (run --rm, detached
    /// starts, daemon and shim memory).
    Tasks(tasks::TasksArgs),
    /// `rnerd run --rm` vs `ctr run --rm` (containerd) vs `runr run` (the floor).
    Rnerd(rnerd::RnerdArgs),
    /// CRI v1 as kubelet drives it: rcd vs containerd 1.6's CRI (pod start, N pods, list and
    /// exec latency, daemon and per-pod memory, teardown).
    Cri(cri::CriArgs),
    /// Internal: one rcd pull + unpack + record into an empty root (measured by `pull`).
    #[command(name = "__pull-child", hide = true)]
    PullChild(pull::PullChildArgs),
    /// Internal: the measuring helper process that `runtime` starts per runtime.
    #[command(name = "__driver", hide = true)]
    Driver(driver::DriverArgs),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Runtime(a) => runtime::main(a),
        Cmd::Unpack(a) => unpack::main(a),
        Cmd::Driver(a) => driver::main(a),
        Cmd::Pull(a) => pull::main(a),
        Cmd::PullChild(a) => pull::child_main(a),
        Cmd::Shim(a) => shim::main(a),
        Cmd::Tasks(a) => tasks::main(a),
        Cmd::Rnerd(a) => rnerd::main(a),
        Cmd::Cri(a) => cri::main(a),
    };
    if let Err(e) = r {
        eprintln!("rbench: error: {e:#}");
        std::process::exit(1);
    }
}
