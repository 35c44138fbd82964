//! Whether this worker process is ready: every flow is running. `/readyz`
//! (on `[metrics] listen`) answers 200, or 503 naming each flow not running
//! yet and why — e.g. waiting for ClickHouse, which a replica started
//! during an outage does instead of exiting.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::Notify;

/// A flow not running yet.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NotReady {
    /// Connecting, starting its handler, reading its table's columns.
    Opening,
    /// Cannot open yet and keeps trying (why).
    Waiting(String),
}

#[derive(Debug, Default)]
pub(crate) struct Readiness {
    not_ready: Mutex<BTreeMap<String, NotReady>>,
    changed: Notify,
}

impl Readiness {
    fn update(&self, f: impl FnOnce(&mut BTreeMap<String, NotReady>)) {
        f(&mut self.not_ready.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_waiters();
    }

    /// `flow` is opening.
    pub(crate) fn opening(&self, flow: &str) {
        self.update(|m| {
            m.insert(flow.to_string(), NotReady::Opening);
        });
    }

    /// `flow` cannot open yet and keeps trying: `why`.
    pub(crate) fn waiting(&self, flow: &str, why: impl Into<String>) {
        let why = why.into();
        self.update(|m| {
            m.insert(flow.to_string(), NotReady::Waiting(why));
        });
    }

    /// `flow` runs.
    pub(crate) fn running(&self, flow: &str) {
        self.update(|m| {
            m.remove(flow);
        });
    }

    /// Ok when every flow runs, else one line per flow that does not.
    pub(crate) fn check(&self) -> Result<(), String> {
        let not_ready = self.not_ready.lock().unwrap_or_else(|p| p.into_inner());
        if not_ready.is_empty() {
            return Ok(());
        }
        Err(not_ready
            .iter()
            .map(|(flow, state)| match state {
                NotReady::Opening => format!("flow `{flow}`: opening\n"),
                NotReady::Waiting(why) => format!("flow `{flow}`: {why}\n"),
            })
            .collect())
    }

    /// Returns once no flow is still opening: each runs or waits.
    pub(crate) async fn settled(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let opening = self
                .not_ready
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .any(|s| *s == NotReady::Opening);
            if !opening {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn ready_once_every_flow_runs_settled_once_none_is_opening() {
        let r = Arc::new(Readiness::default());
        assert!(r.check().is_ok());
        r.opening("a");
        r.opening("b");
        let settled = tokio::spawn({
            let r = r.clone();
            async move { r.settled().await }
        });
        r.running("a");
        r.waiting("b", "waiting for ClickHouse: connection refused");
        tokio::time::timeout(std::time::Duration::from_secs(5), settled)
            .await
            .expect("settled")
            .unwrap();
        let why = r.check().unwrap_err();
        assert_eq!(
            why,
            "flow `b`: waiting for ClickHouse: connection refused\n"
        );
        r.running("b");
        assert!(r.check().is_ok());
    }
}
