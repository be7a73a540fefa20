//! rctl: crictl's commands over CRI v1 gRPC (see `rcd_cli::rctl`).

#[path = "../rctl/mod.rs"]
mod rctl;

use clap::Parser;

// The modules are compiled into this binary; they share the library's helpers.
use rcd_cli::client;

fn main() {
    let cli = match rctl::cmd::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let usage = !matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            let _ = e.print();
            // crictl's usage errors exit 1, like every other failure.
            std::process::exit(if usage { 1 } else { 0 });
        }
    };
    if cli.debug {
        use tracing_subscriber::layer::{Layer, SubscriberExt};
        let only_rctl =
            tracing_subscriber::filter::Targets::new().with_target("rctl", tracing::Level::DEBUG);
        let _ = tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(only_rctl),
            ),
        );
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rctl: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(rctl::cmd::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rctl: {e:#}");
            1
        }
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Exit without dropping the runtime: a blocking stdin read would hold it open.
    std::process::exit(code);
}
