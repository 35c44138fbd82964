//! Keep-alive: resets the idle time of the pending entries this process
//! holds, so that neither other replicas nor our own claim pass take them
//! over while we work on them (e.g. a batch retrying through a ClickHouse
//! outage).
//!
//! It runs as its own task on its own timer and never waits on the
//! pipeline: a full pipeline (sink down) must not stop it, or the entries
//! in flight go idle, are claimed elsewhere and count deliveries until
//! healthy rows are dead-lettered for "too many deliveries".
//!
//! Each pass lists *all* of our consumer's entries idle past a quarter of
//! `claim.min_idle` (XPENDING … IDLE, in pages, each starting after the
//! last id of the one before) and refreshes those in [`Held`]. A page
//! without a held entry does not end the pass: thousands of orphans
//! (entries delivered in a reply a cut connection lost) can sit in front
//! of held ones. Orphans are left to go idle, so a claim pass delivers
//! them again. XCLAIM JUSTID does not count a delivery.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::Client;
use tokio_util::sync::CancellationToken;

use crate::redis::held::Held;
use crate::redis::{commands, Result};
use crate::time::Ticker;

/// Entries listed per XPENDING page.
const PAGE: usize = 10_000;

/// What one flow's keep-alive needs.
pub struct KeepAlive {
    pub flow: String,
    pub client: Client,
    pub streams: Vec<Arc<str>>,
    pub group: String,
    pub consumer: String,
    pub held: Arc<Held>,
    pub min_idle: Duration,
    pub every: Duration,
}

/// What one pass over a stream did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Idle entries listed (held, orphans and released ones).
    pub listed: usize,
    /// Held entries refreshed.
    pub refreshed: usize,
    pub orphans: usize,
}

impl KeepAlive {
    /// Entries idle longer than this are refreshed.
    pub fn threshold(&self) -> Duration {
        self.min_idle / 4
    }

    /// Every `every` until `stop`: one pass over each stream.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = Ticker::every(self.every);
        // A held entry is idle past the threshold again within this many
        // passes, and is then seen; one not seen that long was acked.
        let keep = self
            .threshold()
            .as_millis()
            .div_ceil(self.every.as_millis().max(1)) as u64
            + 2;
        while tick.tick_until(&stop).await {
            let mut listed_all = true;
            for stream in &self.streams {
                match self.pass(stream).await {
                    Ok(p) if p.orphans > 0 => {
                        tracing::info!(flow = %self.flow, %stream, count = p.orphans, "entries pending under our name that we never received (reply lost on a cut connection); left for the claim pass");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        listed_all = false;
                        tracing::warn!(flow = %self.flow, %stream, error = %e, "refreshing in-flight entries failed");
                    }
                }
            }
            if listed_all {
                self.held.end_pass(keep);
            }
        }
    }

    /// Pages through our consumer's whole idle pending list of `stream`,
    /// refreshing the held entries.
    pub async fn pass(&self, stream: &Arc<str>) -> Result<Pass> {
        let threshold = self.threshold();
        let mut pass = Pass::default();
        let mut start = Bytes::from_static(b"-");
        loop {
            let page = commands::pending_idle(
                &self.client,
                stream,
                &self.group,
                &self.consumer,
                threshold,
                &start,
                PAGE,
            )
            .await?;
            let listed = page.len();
            pass.listed += listed;
            let Some(last) = page.last().map(|p| p.id.clone()) else {
                return Ok(pass);
            };
            let ids = page.into_iter().map(|p| p.id).collect();
            let (held, orphans) = self.held.split(stream, ids);
            pass.orphans += orphans.len();
            pass.refreshed += held.len();
            commands::touch(
                &self.client,
                stream,
                &self.group,
                &self.consumer,
                threshold,
                &held,
            )
            .await?;
            if listed < PAGE {
                return Ok(pass);
            }
            start = exclusive(&last);
        }
    }
}

/// `(id`: an XPENDING / XRANGE bound just after `id`.
pub(crate) fn exclusive(id: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(id.len() + 1);
    b.push(b'(');
    b.extend_from_slice(id);
    Bytes::from(b)
}
