//! rcd's command-line clients: `rctr` now, `rnerd` and `rctl` later. [`client`] holds what
//! they share: connecting to rcd's socket, the namespace header, error messages.

pub mod client;
pub mod cmd;
pub mod compose;
pub mod format;
pub mod rnerd;

/// Prints `shell`'s completion script for `cmd`.
///
/// The CLIs build a subcommand's arguments only when it runs (`#[command(defer = true)]`:
/// rnerd's whole tree took 1 ms at every start). The script is made from the built tree,
/// which has everything but the `help` subcommand's deeper levels (`rnerd help compose
/// <TAB>`): clap makes that copy before the groups under it are built.
pub fn print_completions(shell: clap_complete::Shell, mut cmd: clap::Command, name: &str) {
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
}
