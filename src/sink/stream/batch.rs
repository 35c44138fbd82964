//! The batch a stream sink's flow is filling: messages with their routed
//! targets, in read order; a message no rule places becomes a dead letter
//! (kind `route`).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::config::BatchConfig;
use crate::obs::metrics::FlowMetrics;
use crate::redis::dead_letter::DeadLetter;
use crate::redis::Message;
use crate::sink::stream::route::{RouteSet, Router};
use crate::sink::stream::StreamSink;
use crate::sink::{BatchBuilder, Sealed};

/// A batch being filled: messages and their targets, in read order.
#[derive(Default)]
pub(crate) struct StreamBatch {
    messages: Vec<Message>,
    routes: Vec<RouteSet>,
    dead: Vec<DeadLetter>,
    opened: Option<Instant>,
    bytes: usize,
}

/// A batch ready to write.
pub struct SealedStreamBatch {
    pub messages: Vec<Message>,
    pub routes: Vec<RouteSet>,
    pub dead: Vec<DeadLetter>,
}

impl StreamBatch {
    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.dead.is_empty()
    }

    pub(crate) fn opened(&self) -> Option<Instant> {
        self.opened
    }

    pub(crate) fn add(&mut self, router: &mut Router, m: Message) {
        self.opened.get_or_insert_with(Instant::now);
        match router.route(&m) {
            Ok(set) => {
                self.bytes += m.approx_size();
                self.messages.push(m);
                self.routes.push(set);
            }
            Err(why) => self.dead.push(DeadLetter {
                message: m,
                reason: format!("no route: {why}"),
                kind: "route",
            }),
        }
    }

    pub(crate) fn add_dead(&mut self, dead: DeadLetter) {
        self.opened.get_or_insert_with(Instant::now);
        self.dead.push(dead);
    }

    pub(crate) fn is_full(&self, limits: &BatchConfig) -> bool {
        self.messages.len() + self.dead.len() >= limits.max_rows
            || self.bytes as u64 >= limits.max_bytes.as_u64()
    }

    pub(crate) fn seal(&mut self) -> SealedStreamBatch {
        self.opened = None;
        self.bytes = 0;
        SealedStreamBatch {
            messages: std::mem::take(&mut self.messages),
            routes: std::mem::take(&mut self.routes),
            dead: std::mem::take(&mut self.dead),
        }
    }
}

impl Sealed for SealedStreamBatch {
    fn messages(&self) -> &[Message] {
        &self.messages
    }

    fn dead(&self) -> &[DeadLetter] {
        &self.dead
    }
}

/// The batch a stream sink's flow is filling, with its router and limits.
pub struct StreamBatches {
    router: Router,
    open: StreamBatch,
    limits: BatchConfig,
}

impl StreamSink {
    /// The batches of one flow: `limits` from its `batch` section, the
    /// router's targets reported to `metrics`.
    pub fn batches(self: &Arc<Self>, limits: BatchConfig, metrics: FlowMetrics) -> StreamBatches {
        StreamBatches {
            router: self.router().with_metrics(metrics),
            open: StreamBatch::default(),
            limits,
        }
    }
}

impl BatchBuilder for StreamBatches {
    type Sealed = SealedStreamBatch;

    fn due(&self) -> Option<tokio::time::Instant> {
        self.open
            .opened()
            .map(|t| tokio::time::Instant::from_std(t + self.limits.max_wait))
    }

    fn may_seal_when_due(&mut self) -> impl Future<Output = bool> + Send {
        std::future::ready(true)
    }

    fn chunk_starts(&mut self) {}

    fn add(&mut self, m: Message) {
        self.open.add(&mut self.router, m);
    }

    fn add_dead(&mut self, dead: DeadLetter) {
        self.open.add_dead(dead);
    }

    fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    fn is_full(&self) -> bool {
        self.open.is_full(&self.limits)
    }

    fn ready_for_full(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    fn seal(&mut self) -> SealedStreamBatch {
        self.open.seal()
    }
}
