//! The flow-wide pause switch: the stream sink's committer sets it while
//! a target stream is full; the reader and the claim loop wait on it.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// The flow-wide pause switch: set while a target is full.
#[derive(Default)]
pub struct Pause {
    paused: AtomicBool,
    resumed: Notify,
}

impl Pause {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn set(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
        if !paused {
            self.resumed.notify_waiters();
        }
    }

    /// Returns once not paused.
    pub async fn wait_resumed(&self) {
        loop {
            let notified = self.resumed.notified();
            if !self.is_paused() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn pause_wakes_waiters() {
        let p = Arc::new(Pause::default());
        p.set(true);
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.wait_resumed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        p.set(false);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
