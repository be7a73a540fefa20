//! rctr's container commands (ctr's shape): `containers`, `tasks`, `run`, `namespaces`,
//! `events`, `info`. Each module holds its clap definitions and the code that runs them; the
//! binary only hooks them into its command enum.

pub mod containers;
pub mod events;
pub mod info;
pub mod namespaces;
pub mod run;
pub mod stdio;
pub mod tasks;

use crate::client::{status_message, Client};
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;

/// The command ended with a process's exit status, which becomes rctr's exit code (`run`,
/// `tasks start`, `tasks exec`, `tasks attach`); nothing is printed for it.
#[derive(Debug)]
pub struct ExitStatus(pub u32);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitStatus {}

/// Some arguments of a multi-argument command failed; each was printed already.
#[derive(Debug)]
pub struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("errors reported above")
    }
}

impl std::error::Error for Reported {}

/// The exit code rctr ends with for `e`: the process's for [`ExitStatus`] (an exit status
/// above 255 is clamped), 1 otherwise. `None`: print the error.
pub fn exit_code(e: &anyhow::Error) -> (u8, bool) {
    if let Some(s) = e.downcast_ref::<ExitStatus>() {
        return (s.0.min(255) as u8, false);
    }
    (1, e.downcast_ref::<Reported>().is_none())
}

/// A failed call as rctr prints it.
pub(crate) fn st(client: &Client) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
    move |s| anyhow!(status_message(client.address(), &s))
}

/// `KEY=VALUE` arguments as a map; `KEY=` or `KEY` (no `=`) give an empty value, which the
/// daemon's label updates take as "remove".
pub(crate) fn parse_labels(args: &[String]) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for a in args {
        let (k, v) = a.split_once('=').unwrap_or((a, ""));
        if k.is_empty() {
            bail!("invalid label {a:?}: expected KEY=VALUE");
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// A signal by name (`SIGTERM`, `term`, `KILL`) or number.
pub(crate) fn parse_signal(s: &str) -> Result<u32> {
    if let Ok(n) = s.parse::<u32>() {
        if n == 0 || n > 64 {
            bail!("invalid signal {s:?}: numbers go from 1 to 64");
        }
        return Ok(n);
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32 as u32)
        .map_err(|_| anyhow!("invalid signal {s:?}"))
}

/// Labels sorted and joined as `k=v,k=v` (ctr's column).
pub(crate) fn labels_column(labels: &HashMap<String, String>) -> String {
    let mut v: Vec<_> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    v.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("term").unwrap(), 15);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("65").is_err());
    }

    #[test]
    fn labels() {
        let l = parse_labels(&["a=b".into(), "c=".into(), "d".into(), "e=f=g".into()]).unwrap();
        assert_eq!(l["a"], "b");
        assert_eq!(l["c"], "");
        assert_eq!(l["d"], "");
        assert_eq!(l["e"], "f=g");
        assert!(parse_labels(&["=x".into()]).is_err());
        assert_eq!(labels_column(&l), "a=b,c=,d=,e=f=g");
    }

    #[test]
    fn exit_codes() {
        let e: anyhow::Error = ExitStatus(3).into();
        assert_eq!(exit_code(&e), (3, false));
        let e: anyhow::Error = ExitStatus(300).into();
        assert_eq!(exit_code(&e), (255, false));
        let e: anyhow::Error = Reported.into();
        assert_eq!(exit_code(&e), (1, false));
        assert_eq!(exit_code(&anyhow!("x")), (1, true));
    }
}
