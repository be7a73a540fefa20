//! `rcd-logger`: the log writers shims run for rcd's containers through containerd's
//! `binary://` protocol (`cri-logger SPEC` for CRI containers, `json-logger SPEC` for the
//! native API's json-file logs). The same code runs as `rcd cri-logger` / `rcd json-logger`;
//! this binary exists because one logger runs per container for the container's whole life,
//! and the daemon's binary costs each of them ~1 MiB of private memory (its relocated data)
//! where this one costs a fraction.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, result) = match args.as_slice() {
        [kind, spec] if kind == "cri-logger" => (
            "cri-logger",
            rcd::cri::logger::run(spec).map_err(|e| e.to_string()),
        ),
        [kind, spec] if kind == "json-logger" => (
            "json-logger",
            rcd::server::logs::run_logger(spec).map_err(|e| e.to_string()),
        ),
        _ => {
            eprintln!(
                "rcd-logger: expected `cri-logger SPEC` or `json-logger SPEC` (run by a shim \
                 through binary:// logging), got {args:?}"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rcd {name}: {e}");
            ExitCode::FAILURE
        }
    }
}
