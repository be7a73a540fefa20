//! rnerd: rcd's docker/nerdctl-compatible command line (see `rcd_cli::rnerd`).

fn main() -> std::process::ExitCode {
    rcd_cli::rnerd::main()
}
