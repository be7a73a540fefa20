//! Where a pod's start and teardown spend their time: each step's start offset and length,
//! logged as one debug line per call under the target `rcd::cri::timing` (steps may overlap:
//! the network and the pause are set up at the same time).

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct Timeline {
    what: &'static str,
    id: String,
    start: Instant,
    steps: Mutex<Vec<(&'static str, Duration, Duration)>>,
}

impl Timeline {
    pub(crate) fn new(what: &'static str, id: &str) -> Self {
        Timeline {
            what,
            id: id.to_owned(),
            start: Instant::now(),
            steps: Mutex::new(vec![]),
        }
    }

    /// Runs `f` as step `name`.
    pub(crate) async fn step<T>(&self, name: &'static str, f: impl Future<Output = T>) -> T {
        let s = Instant::now();
        let r = f.await;
        self.steps
            .lock()
            .unwrap()
            .push((name, s - self.start, s.elapsed()));
        r
    }

    /// The steps as `name +offset/length` in milliseconds, in the order they began.
    fn render(&self) -> String {
        let mut steps = self.steps.lock().unwrap().clone();
        steps.sort_by_key(|s| s.1);
        steps
            .iter()
            .map(|(n, at, len)| {
                format!(
                    "{n} +{:.1}/{:.1}",
                    at.as_secs_f64() * 1e3,
                    len.as_secs_f64() * 1e3
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        if tracing::enabled!(target: "rcd::cri::timing", tracing::Level::DEBUG) {
            tracing::debug!(target: "rcd::cri::timing", id = %self.id,
                total_ms = format!("{:.1}", self.start.elapsed().as_secs_f64() * 1e3),
                "{}: {}", self.what, self.render());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_are_listed_in_the_order_they_began() {
        let t = Timeline::new("test", "x");
        let (a, b) = tokio::join!(
            t.step("slow", async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                1
            }),
            t.step("fast", async { 2 })
        );
        assert_eq!((a, b), (1, 2));
        let r = t.render();
        assert!(r.starts_with("slow +") && r.contains(", fast +"), "{r}");
    }
}
