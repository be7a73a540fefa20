//! runr: an OCI runtime with runc's command line, on youki's libcontainer.
//!
//! Single-threaded on purpose: libcontainer forks the container from the calling process and
//! changes the working directory while doing so, which is only safe with one thread.

mod cli;
mod commands;
mod foreground;
mod seal;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command};
use commands::create::Mode;
use commands::Global;
use runr::logging;

fn main() {
    // Rust ignores SIGPIPE, and an ignored signal stays ignored across exec: restore the default
    // so neither our output to a closed pipe nor the container's processes behave unlike runc's.
    // SAFETY: setting a signal disposition to its default before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = cli::normalize_args(std::env::args().collect());
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if cli.version {
        println!(
            "runr version {}\nspec: {}\nlibcontainer: 0.7.0",
            env!("CARGO_PKG_VERSION"),
            oci_spec::runtime::VERSION
        );
        return;
    }
    let Some(command) = cli.command else {
        let _ = Cli::command().print_help();
        std::process::exit(1);
    };
    // A process entering a container must not expose our binary to it (CVE-2019-5736): run those
    // commands from a copy nothing can write to. The other commands never share a pid namespace with
    // a container process, so they skip the copy.
    if matches!(
        command,
        Command::Create(_) | Command::Run(_) | Command::Exec(_)
    ) {
        if let Err(e) = seal::ensure_sealed() {
            eprintln!("failed to re-execute runr from a sealed copy: {e}");
            std::process::exit(1);
        }
    }
    let sink = match logging::init(cli.log.as_deref(), cli.log_format, cli.debug) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("failed to open log file: {e}");
            std::process::exit(1);
        }
    };
    let g = Global {
        root: cli.root,
        systemd_cgroup: cli.systemd_cgroup,
    };
    let result: anyhow::Result<i32> = match command {
        Command::Create(a) => commands::create::create(&g, &a, Mode::Create),
        Command::Run(r) => commands::create::create(
            &g,
            &r.create,
            Mode::Run {
                detach: r.detach,
                keep: r.keep,
            },
        ),
        Command::Start(a) => commands::start::start(&g, &a.id).map(|_| 0),
        Command::State(a) => commands::state::state(&g, &a.id).map(|_| 0),
        Command::Kill(a) => commands::kill::kill(&g, &a.id, &a.signal, a.all).map(|_| 0),
        Command::Delete(a) => commands::delete::delete(&g, &a.id, a.force).map(|_| 0),
        Command::Exec(a) => commands::exec::exec(&g, &a),
        Command::Ps(a) => commands::ps::ps(&g, &a.id, a.format, &a.ps_args).map(|_| 0),
        Command::List(a) => commands::list::list(&g, a.format, a.quiet).map(|_| 0),
        Command::Pause(a) => commands::pause::pause(&g, &a.id).map(|_| 0),
        Command::Resume(a) => commands::pause::resume(&g, &a.id).map(|_| 0),
        Command::Update(a) => commands::update::update(&g, &a).map(|_| 0),
        Command::Events(a) => commands::events::events(&g, &a.id, &a.interval, a.stats).map(|_| 0),
        Command::Features => commands::features::features().map(|_| 0),
        Command::Spec(a) => commands::spec::spec(&a.bundle, a.rootless).map(|_| 0),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "runr", &mut std::io::stdout());
            Ok(0)
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = format!("{e:#}");
            if sink.to_file {
                tracing::error!("{msg}");
            }
            eprintln!("{msg}");
            std::process::exit(1);
        }
    }
}
