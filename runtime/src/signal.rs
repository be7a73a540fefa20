//! Signal names and numbers as runc accepts them (`KILL`, `SIGKILL`, `9`, any case).

use nix::sys::signal::Signal;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignalError {
    #[error("invalid signal {0:?}: use a name such as TERM or SIGKILL, or a number from 1 to 64")]
    Invalid(String),
}

/// A signal to deliver; real-time signals have no `nix::Signal` variant, so keep the raw number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub i32);

impl FromStr for Sig {
    type Err = SignalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SignalError::Invalid(s.to_string());
        if let Ok(n) = s.parse::<i32>() {
            return if (1..=libc::SIGRTMAX()).contains(&n) {
                Ok(Sig(n))
            } else {
                Err(err())
            };
        }
        let upper = s.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some(rt) = name.strip_prefix("RTMIN") {
            let off = if rt.is_empty() {
                0
            } else {
                rt.trim_start_matches('+')
                    .parse::<i32>()
                    .map_err(|_| err())?
            };
            let n = libc::SIGRTMIN() + off;
            return if n <= libc::SIGRTMAX() {
                Ok(Sig(n))
            } else {
                Err(err())
            };
        }
        let name = match name {
            "IOT" => "ABRT",
            "CLD" => "CHLD",
            "POLL" => "IO",
            other => other,
        };
        Signal::from_str(&format!("SIG{name}"))
            .map(|s| Sig(s as i32))
            .map_err(|_| err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_numbers_and_case() {
        assert_eq!("KILL".parse::<Sig>().unwrap(), Sig(9));
        assert_eq!("sigterm".parse::<Sig>().unwrap(), Sig(15));
        assert_eq!("9".parse::<Sig>().unwrap(), Sig(9));
        assert_eq!("usr1".parse::<Sig>().unwrap(), Sig(libc::SIGUSR1));
        assert_eq!("IOT".parse::<Sig>().unwrap(), Sig(libc::SIGABRT));
        assert_eq!("RTMIN+2".parse::<Sig>().unwrap(), Sig(libc::SIGRTMIN() + 2));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "0", "65", "-1", "SIGFOO", "KILLL", "RTMIN+99"] {
            assert!(bad.parse::<Sig>().is_err(), "{bad} accepted");
        }
    }
}
