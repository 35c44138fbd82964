//! Filling a ClickHouse flow's batches: rows converted with the table's
//! mapping current when the batch opens, sized and timed by the [`Pacer`]
//! (limits scaled by the server's pressure, the table's insert budget).
//! The loop around it is the flow's ([`crate::flow::batcher`]).

use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;

use crate::clickhouse::rows::{OpenBatch, RowMapper, SealedBatch};
use crate::redis::dead_letter::DeadLetter;
use crate::redis::Message;
use crate::sink::clickhouse::pacing::Pacer;
use crate::sink::clickhouse::ClickHouseSink;
use crate::sink::BatchBuilder;

/// The batch a ClickHouse flow is filling.
pub(crate) struct ClickHouseBatches {
    sink: Arc<ClickHouseSink>,
    pacer: Pacer,
    /// The table's columns may be re-read meanwhile: each batch is
    /// converted with the mapping current when it opens.
    mapper: Arc<RowMapper>,
    open: OpenBatch,
}

impl ClickHouseBatches {
    /// `with_batch_ids`: exactly-once (each batch carries its id).
    pub(crate) fn new(sink: Arc<ClickHouseSink>, pacer: Pacer, with_batch_ids: bool) -> Self {
        let mapper = sink.mapper.current();
        let open = if with_batch_ids {
            OpenBatch::with_batch_ids()
        } else {
            OpenBatch::new()
        };
        ClickHouseBatches {
            sink,
            pacer,
            mapper,
            open,
        }
    }
}

impl BatchBuilder for ClickHouseBatches {
    type Sealed = SealedBatch;

    fn due(&self) -> Option<Instant> {
        self.open.opened().map(|t| self.pacer.due(t))
    }

    fn may_seal_when_due(&mut self) -> impl Future<Output = bool> + Send {
        self.pacer.may_seal()
    }

    fn chunk_starts(&mut self) {
        self.pacer.refresh();
        if self.open.is_empty() && !self.sink.mapper.is_current(&self.mapper) {
            self.mapper = self.sink.mapper.current();
            self.open.remap();
        }
    }

    fn add(&mut self, m: Message) {
        self.open.add(&self.mapper, m);
    }

    fn add_dead(&mut self, dead: DeadLetter) {
        self.open.add_dead(dead);
    }

    fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    fn is_full(&self) -> bool {
        self.open.is_full(self.pacer.limits())
    }

    fn ready_for_full(&mut self) -> impl Future<Output = ()> + Send {
        self.pacer.wait_for_slot()
    }

    fn seal(&mut self) -> SealedBatch {
        // Sized like this batch (the full batch, under load) when no acked
        // batch's list is back yet.
        let next = self.sink.lists.take(self.open.len());
        self.open.seal_with(&self.mapper, next)
    }
}
