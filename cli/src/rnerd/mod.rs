//! rnerd: the docker/nerdctl-compatible command line over rcd's native gRPC API.
//!
//! Flags are parsed in [`args`]; each command's logic lives in `cmd/<command>.rs`.
//! Containers get random 64-hex ids; the name a user sees is the `rcd.io/name` label, unique
//! in a namespace (rnerd checks), and every command taking a container accepts a name, an id
//! or a unique id prefix. Exit codes are docker's: 125 for rnerd's own errors, 126 when the
//! command cannot be invoked, 127 when it is not found, else the container's own.

pub mod args;
pub mod cmd;
pub mod names;
pub mod template;

use crate::client::{status_message, Client};
use anyhow::{anyhow, Result};
use args::{Cli, Command};
use clap::{CommandFactory, Parser};
use std::process::ExitCode;
use std::time::Duration;

/// Exit code of rnerd's own failures (bad flags, unknown names, daemon down).
pub const EXIT_ERROR: u8 = 125;
/// The container's command exists but could not be run.
pub const EXIT_CANNOT_INVOKE: u8 = 126;
/// The container's command was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// The command ended with this exit code (a container's or process's); nothing is printed.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// An error with its own exit code (126/127 for a command that cannot run), printed.
#[derive(Debug)]
pub struct CodedError(pub u8, pub String);

impl std::fmt::Display for CodedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for CodedError {}

/// Some arguments of a multi-argument command failed; each was printed already.
#[derive(Debug)]
pub struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("errors reported above")
    }
}

impl std::error::Error for Reported {}

/// The exit code for `e` and whether to print it.
pub fn exit_code(e: &anyhow::Error) -> (u8, bool) {
    if let Some(Exit(c)) = e.downcast_ref::<Exit>() {
        return (*c, false);
    }
    if let Some(CodedError(c, _)) = e.downcast_ref::<CodedError>() {
        return (*c, true);
    }
    (EXIT_ERROR, e.downcast_ref::<Reported>().is_none())
}

/// What every command gets: the connection and the global flags.
pub struct Ctx {
    pub client: Client,
    pub insecure_registries: Vec<String>,
}

impl Ctx {
    /// A failed call as rnerd prints it.
    pub fn st(&self) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
        move |s| anyhow!(status_message(self.client.address(), &s))
    }

    /// Whether `reference`'s registry is one of `--insecure-registry`'s (plain HTTP).
    pub fn plain_http(&self, reference: &str) -> bool {
        let host = reference.split('/').next().unwrap_or("");
        reference.contains('/')
            && self
                .insecure_registries
                .iter()
                .any(|r| r == host || r.split(':').next() == Some(host))
    }
}

pub fn main() -> ExitCode {
    // SAFETY: nothing else runs yet; SIG_DFL is a valid disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match Cli::try_parse_from(separate_command(std::env::args_os().collect())) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                // bare `rnerd`: the help, as docker
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                    if std::env::args_os().len() == 1 =>
                {
                    0
                }
                _ => EXIT_ERROR,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Command::Completion { shell } = cli.command {
        crate::print_completions(shell, Cli::command(), "rnerd");
        return ExitCode::SUCCESS;
    }
    if let Command::Compose(a) = &cli.command {
        if let Some(r) = crate::compose::offline(a) {
            return match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let (code, print) = exit_code(&e);
                    if print {
                        eprintln!("rnerd: {e:#}");
                    }
                    ExitCode::from(code)
                }
            };
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let (code, print) = exit_code(&e);
            if print {
                eprintln!("rnerd: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}

/// docker stops reading its own flags at the image of `run`/`create` and at the container
/// of `exec`: what follows is the container's command (`rnerd run busybox ls -l`). clap
/// would take `-l` as one of rnerd's, so a `--` is put after that first operand.
pub fn separate_command(mut argv: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let cmd = Cli::command();
    let takes_value = |c: &clap::Command, tok: &str| -> bool {
        let globals = cmd.get_arguments();
        let all = c.get_arguments().chain(globals);
        for a in all {
            let long = tok.strip_prefix("--");
            let hit = match long {
                Some(l) => {
                    a.get_long() == Some(l) || a.get_all_aliases().is_some_and(|al| al.contains(&l))
                }
                None => tok
                    .chars()
                    .nth(1)
                    .is_some_and(|ch| a.get_short() == Some(ch)),
            };
            if hit {
                return a.get_action().takes_values();
            }
        }
        false
    };
    let mut i = 1;
    let mut sub: Option<clap::Command> = None;
    while i < argv.len() {
        let Some(tok) = argv[i].to_str().map(str::to_owned) else {
            i += 1;
            continue;
        };
        if tok == "--" {
            return argv;
        }
        if tok.starts_with('-') && tok.len() > 1 {
            let c = sub.as_ref().unwrap_or(&cmd);
            if tok.starts_with("--") {
                if !tok.contains('=') && takes_value(c, &tok) {
                    i += 1;
                }
            } else {
                // a cluster of shorts: the first that takes a value takes the rest or the next
                for (k, ch) in tok.char_indices().skip(1) {
                    if takes_value(c, &format!("-{ch}")) {
                        if k + ch.len_utf8() == tok.len() {
                            i += 1;
                        }
                        break;
                    }
                }
            }
            i += 1;
            continue;
        }
        match sub {
            None => match tok.as_str() {
                "run" | "create" | "exec" => {
                    // its arguments exist once it is built (`defer`)
                    sub = cmd.find_subcommand(&tok).cloned().map(|mut c| {
                        c.build();
                        c
                    })
                }
                _ => return argv,
            },
            Some(_) => {
                argv.insert(i + 1, "--".into());
                return argv;
            }
        }
        i += 1;
    }
    argv
}

async fn run(cli: Cli) -> Result<()> {
    // credentials are files of this host's; no daemon needed
    match cli.command {
        Command::Login(a) => return cmd::images2::login(a),
        Command::Logout { server } => return cmd::images2::logout(server),
        _ => {}
    }
    let client = Client::connect(&cli.address, &cli.namespace, Duration::from_secs(10))
        .await
        .map_err(|e| anyhow!("{e}: start rcd or pass --address (or RCD_ADDRESS)"))?;
    let ctx = Ctx {
        client,
        insecure_registries: cli.insecure_registry,
    };
    cmd::dispatch(&ctx, cli.command).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&Exit(7).into()), (7, false));
        assert_eq!(exit_code(&CodedError(127, "x".into()).into()), (127, true));
        assert_eq!(exit_code(&Reported.into()), (125, false));
        assert_eq!(exit_code(&anyhow!("x")), (125, true));
    }

    #[test]
    fn cli_parses() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from(["rnerd", "run", "--rm", "-h", "box", "busybox", "ls", "-l"])
            .unwrap();
        let Command::Run(r) = c.command else { panic!() };
        assert_eq!(r.hostname.as_deref(), Some("box"));
        assert_eq!(r.command, ["ls", "-l"]);
        // flags after the image belong to the command
        let parse =
            |v: &[&str]| Cli::try_parse_from(separate_command(v.iter().map(Into::into).collect()));
        let c = parse(&[
            "rnerd", "-n", "x", "run", "-e", "A=1", "--name=n", "-it", "-p", "80", "busybox", "-d",
            "x",
        ])
        .unwrap();
        let Command::Run(r) = c.command else { panic!() };
        assert!(!r.detach && r.interactive && r.tty);
        assert_eq!(r.env, ["A=1"]);
        assert_eq!(r.command, ["-d", "x"]);
        let c = parse(&["rnerd", "exec", "-w", "/", "web", "ls", "-l"]).unwrap();
        let Command::Exec(e) = c.command else {
            panic!()
        };
        assert_eq!(
            (e.container.as_str(), e.command.clone()),
            ("web", vec!["ls".to_owned(), "-l".into()])
        );
        let c = parse(&["rnerd", "run", "busybox"]).unwrap();
        let Command::Run(r) = c.command else { panic!() };
        assert!(r.command.is_empty());
        assert!(parse(&["rnerd", "run", "--bogus", "busybox"]).is_err());
    }
}
