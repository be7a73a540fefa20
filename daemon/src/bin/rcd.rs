//! rcd, the container daemon: serves the native gRPC API (`rcd.v1`) on a unix socket.
//! Flags as containerd's: `--config`, `--root`, `--state`, `--address`, `--log-level`.

use clap::Parser;
use clap::Subcommand;
use rcd::server::config::{
    default_shim, Config, Settings, DEFAULT_ADDRESS, DEFAULT_ROOT, DEFAULT_STATE,
};
use std::path::PathBuf;
use std::process::ExitCode;
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(name = "rcd", version, about = "rcd, the container daemon")]
struct Cli {
    /// TOML config file (root, state, address, log_level, [registries."host"])
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Persistent data: content store, image records [default: /var/lib/rcd]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Runtime state [default: /run/rcd]
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// The gRPC socket [default: /run/rcd/rcd.sock]
    #[arg(short, long, value_name = "SOCK")]
    address: Option<PathBuf>,
    /// trace, debug, info, warn, error [default: info]
    #[arg(short, long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Shim binary tasks run under [default: containerd-shim-runr-v2 next to rcd]
    #[arg(long, value_name = "PATH")]
    shim: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// What shims run to publish an event (read from stdin) to rcd, as containerd's
    #[command(hide = true)]
    Publish {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        namespace: String,
    },
    /// What a shim runs as a container's `binary://` logger: CRI-format log lines
    #[command(hide = true)]
    CriLogger {
        /// `<max line bytes>,<control dir>,<log path>`
        spec: String,
    },
    /// What a shim runs as a container's `binary://` logger: docker's json-file lines
    #[command(hide = true)]
    JsonLogger {
        /// `<control dir>,<log path>,<max bytes>,<files>`
        spec: String,
    },
}

/// `rcd --address A publish --topic T --namespace NS < event`: forwards the event to the
/// daemon at A, or spools it in the state dir (`$RCD_STATE_DIR`, else --state) for the next
/// one.
fn publish(cli: &Cli, config: &Config, topic: &str, namespace: &str) -> ExitCode {
    let address = cli
        .address
        .clone()
        .or(config.address.clone())
        .unwrap_or(DEFAULT_ADDRESS.into());
    let state = cli
        .state
        .clone()
        .or(config.state.clone())
        .unwrap_or(DEFAULT_STATE.into());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rcd publish: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(rcd::task::publish_from_stdin(
        &address, &state, namespace, topic,
    )) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rcd publish: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What a pull, an import or a burst of starts freed goes back to the system once the burst
/// is over, instead of staying in the heap while the daemon idles: the trim threshold only
/// returns the top of a heap, and a burst's freed blocks mostly sit below blocks still in use.
/// Trimming when the bytes in use have fallen by `TRIM_AFTER_FREED` since their last peak
/// touches the allocator only after real bursts, not on every tick.
async fn trim_after_bursts() {
    const TRIM_AFTER_FREED: usize = 512 << 10;
    let in_use = || {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        unsafe { libc::mallinfo2() }.uordblks
    };
    let mut peak = in_use();
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let now = in_use();
        if peak.saturating_sub(now) >= TRIM_AFTER_FREED {
            // SAFETY: malloc_trim only releases free memory of the allocator.
            unsafe {
                libc::malloc_trim(0);
            }
            peak = now;
        } else {
            peak = peak.max(now);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("rcd: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    if let Some(Sub::Publish { topic, namespace }) = &cli.command {
        return publish(&cli, &config, topic, namespace);
    }
    if let Some(Sub::CriLogger { spec }) = &cli.command {
        return match rcd::cri::logger::run(spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rcd cri-logger: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Sub::JsonLogger { spec }) = &cli.command {
        return match rcd::server::logs::run_logger(spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rcd json-logger: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let level = cli
        .log_level
        .clone()
        .or(config.log_level.clone())
        .unwrap_or_else(|| "info".into());
    let level: tracing::Level = match level.parse() {
        Ok(l) => l,
        Err(_) => {
            eprintln!("rcd: invalid log level {level:?}: trace, debug, info, warn or error");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let settings = Settings {
        root: cli
            .root
            .or(config.root.clone())
            .unwrap_or(DEFAULT_ROOT.into()),
        state: cli
            .state
            .or(config.state.clone())
            .unwrap_or(DEFAULT_STATE.into()),
        address: cli
            .address
            .or(config.address.clone())
            .unwrap_or(DEFAULT_ADDRESS.into()),
        registry: config.registry(),
        shim: cli
            .shim
            .or(config.shim.clone())
            .unwrap_or_else(default_shim),
        cri: config.cri.clone(),
        networks: config.networks.clone(),
    };
    // glibc gives each thread that allocates its own arena; a daemon whose work hops over
    // tokio's workers and blocking threads ends up with freed memory spread over many
    // arenas, none of it returned. One is enough for rcd's load (each thread's tcache serves
    // small blocks without the arena lock) and keeps the free memory in one place: 0.2-0.3 MiB
    // less than two at idle and with 10 containers (`rbench tasks`).
    // glibc raises its trim threshold (to twice the largest block freed, up to 64 MiB) once a
    // pull has freed big buffers, and from then on keeps that much free memory at the top of
    // each heap. A fixed threshold (which also keeps the mmap threshold at its 128 KiB default)
    // returns it on free, as the first frees of a fresh process do.
    // SAFETY: mallopt only tunes the allocator; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 10);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rcd: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
            let (mut term, mut int) = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(t), Ok(i)) => (t, i),
                _ => return std::future::pending().await,
            };
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: shutting down"),
                _ = int.recv() => info!("SIGINT: shutting down"),
            }
        };
        tokio::spawn(trim_after_bursts());
        rcd::server::serve(settings, shutdown).await
    });
    // Pull tasks still running are dropped with the runtime; their ingests resume next time.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("rcd: {e}");
            ExitCode::FAILURE
        }
    }
}
