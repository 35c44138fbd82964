//! Sinks: where a flow's batches land, and the commit step that acks only
//! what the sink confirmed.
//!
//! The loop that fills batches and commits them is the flow's, once
//! ([`crate::flow::batcher`]); what differs per sink is behind two traits:
//! [`BatchBuilder`] (how a batch is filled, sized and sealed) and [`Sink`]
//! (how a sealed batch is written, then settled at the source).

pub(crate) mod clickhouse;
pub(crate) mod stream;

use std::future::Future;

use tokio::time::Instant;

use crate::redis::dead_letter::DeadLetter;
use crate::redis::Message;

/// The hard deadline passed while a sink or Redis was still failing; the
/// batch stays pending and another replica will claim it.
#[derive(Debug, thiserror::Error)]
#[error("gave up on a batch of {0} messages at the shutdown deadline; they stay pending for another replica")]
pub struct Abandoned(pub usize);

/// A sealed batch as the batch loop sees it: its messages (for the span
/// and trace continuation) and its dead letters.
pub(crate) trait Sealed: Send + 'static {
    fn messages(&self) -> &[Message];
    fn dead(&self) -> &[DeadLetter];
    fn is_empty(&self) -> bool {
        self.messages().is_empty() && self.dead().is_empty()
    }
}

/// Fills one sink's batches; owned by the batch loop.
pub(crate) trait BatchBuilder: Send {
    type Sealed: Sealed;

    /// When the open batch must be sealed; None while nothing is open.
    fn due(&self) -> Option<Instant>;
    /// At the due time: whether to seal now (false: wait for the next due time).
    fn may_seal_when_due(&mut self) -> impl Future<Output = bool> + Send;
    /// A chunk came: limits and mappings may be refreshed.
    fn chunk_starts(&mut self);
    fn add(&mut self, m: Message);
    fn add_dead(&mut self, dead: DeadLetter);
    fn is_empty(&self) -> bool;
    fn is_full(&self) -> bool;
    /// Before a full batch is sealed: waits until the sink may take it.
    fn ready_for_full(&mut self) -> impl Future<Output = ()> + Send;
    fn seal(&mut self) -> Self::Sealed;
}

/// Writes a sink's sealed batches and settles them at the source. The
/// batch loop settles one batch while it writes the next.
pub(crate) trait Sink: Send + Sync + 'static {
    type Sealed: Sealed;
    /// A written batch waiting for its dead letters and acks.
    type Written: Send + 'static;

    fn write(
        &self,
        batch: Self::Sealed,
    ) -> impl Future<Output = Result<Self::Written, Abandoned>> + Send;
    fn settle(&self, written: Self::Written) -> impl Future<Output = Result<(), Abandoned>> + Send;
    /// Every batch is settled (`all_committed`: none abandoned).
    fn finished(&self, all_committed: bool) -> impl Future<Output = ()> + Send {
        let _ = all_committed;
        async {}
    }
}
