//! Whether this worker process is ready: every flow is running. `/readyz`
//! (on `[metrics] listen`) answers 200, or 503 naming each flow not running
//! yet and why — e.g. waiting for ClickHouse to answer, which a replica
//! started during an outage does instead of exiting.

use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Readiness {
    /// Flows not running yet → why.
    not_ready: Mutex<BTreeMap<String, String>>,
}

impl Readiness {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.not_ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `flow` is not running: `why`.
    pub fn waiting(&self, flow: &str, why: impl Into<String>) {
        self.lock().insert(flow.to_string(), why.into());
    }

    /// `flow` runs.
    pub fn running(&self, flow: &str) {
        self.lock().remove(flow);
    }

    /// Ok when every flow runs, else one line per flow that does not.
    pub fn check(&self) -> Result<(), String> {
        let not_ready = self.lock();
        if not_ready.is_empty() {
            return Ok(());
        }
        Err(not_ready
            .iter()
            .map(|(flow, why)| format!("flow `{flow}`: {why}\n"))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_flow_runs() {
        let r = Readiness::default();
        assert!(r.check().is_ok());
        r.waiting("a", "opening");
        r.waiting("b", "waiting for ClickHouse: connection refused");
        let why = r.check().unwrap_err();
        assert!(
            why.contains("flow `a`: opening") && why.contains("connection refused"),
            "{why}"
        );
        r.running("a");
        r.running("b");
        assert!(r.check().is_ok());
    }
}
