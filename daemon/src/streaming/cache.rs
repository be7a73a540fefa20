//! Pending requests behind one-time tokens: 128 random bits each, used at most once, forgotten
//! after a TTL.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{AttachRequest, ExecRequest, PortForwardRequest, StreamingError};

#[derive(Debug, Clone)]
pub(crate) enum Pending {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

impl Pending {
    /// The URL path segment the request is served under.
    pub(crate) fn path(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Cache {
    entries: HashMap<String, (Pending, Instant)>,
    ttl: Duration,
    max: usize,
}

impl Cache {
    pub(crate) fn new(ttl: Duration, max: usize) -> Cache {
        Cache {
            entries: HashMap::new(),
            ttl,
            max,
        }
    }

    fn purge(&mut self) {
        let ttl = self.ttl;
        self.entries.retain(|_, (_, at)| at.elapsed() < ttl);
    }

    pub(crate) fn insert(&mut self, pending: Pending) -> Result<String, StreamingError> {
        self.purge();
        if self.entries.len() >= self.max {
            return Err(StreamingError::TooManyPending(self.max));
        }
        loop {
            let token = random_token().map_err(StreamingError::Random)?;
            if !self.entries.contains_key(&token) {
                self.entries
                    .insert(token.clone(), (pending, Instant::now()));
                return Ok(token);
            }
        }
    }

    /// Whether `token` is pending for `path`, without using it up.
    pub(crate) fn peek(&mut self, path: &str, token: &str) -> bool {
        self.purge();
        self.entries
            .get(token)
            .is_some_and(|(p, _)| p.path() == path)
    }

    /// Takes the request behind `token` if it is pending for `path`.
    pub(crate) fn consume(&mut self, path: &str, token: &str) -> Option<Pending> {
        if !self.peek(path, token) {
            return None;
        }
        self.entries.remove(token).map(|(p, _)| p)
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }
}

fn random_token() -> std::io::Result<String> {
    let mut buf = [0u8; 16];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(hex::encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Pending {
        Pending::Exec(ExecRequest {
            container_id: "c".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
    }

    #[test]
    fn tokens_are_single_use_and_bound_to_their_kind() {
        let mut c = Cache::new(Duration::from_secs(60), 10);
        let t = c.insert(exec()).unwrap();
        assert_eq!(t.len(), 32);
        assert!(!c.peek("attach", &t));
        assert!(c.consume("attach", &t).is_none());
        assert!(c.consume("exec", &t).is_some());
        assert!(c.consume("exec", &t).is_none());
    }

    #[test]
    fn tokens_expire() {
        let mut c = Cache::new(Duration::from_millis(1), 10);
        let t = c.insert(exec()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(c.consume("exec", &t).is_none());
    }

    #[test]
    fn the_pending_count_is_bounded() {
        let mut c = Cache::new(Duration::from_secs(60), 2);
        let a = c.insert(exec()).unwrap();
        let b = c.insert(exec()).unwrap();
        assert_ne!(a, b);
        let err = c.insert(exec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "too many pending streaming requests (2): wait for some to be used or expire"
        );
        c.consume("exec", &a).unwrap();
        c.insert(exec()).unwrap();
    }
}
