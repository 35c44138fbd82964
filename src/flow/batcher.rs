//! The one batch+commit loop of a flow, for every sink: a batcher that
//! fills batches from the chunks and seals them when full or due, and a
//! committer that writes each sealed batch and settles it at the source.
//! What differs per sink (how a batch is built and sized, how it is
//! written and settled) is behind [`BatchBuilder`] and [`Sink`].
//!
//! ```text
//! chunks ─▶ batcher ─▶ (bounded: 1) ─▶ committer: write ─▶ settle (dead letters, XACK)
//! ```
//! The committer settles a batch while it writes the next one (one batch
//! settling at a time, so acks keep batch order): a batch is acked only
//! after its own write, and the source's round trip does not sit between
//! two batches' writes.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tracing::Instrument;

use crate::flow::admit::within_max_deliveries;
use crate::flow::lists::MessageLists;
use crate::obs::telemetry::continue_producer_traces;
use crate::redis::acks::same_stream;
use crate::redis::Message;
use crate::sink::{Abandoned, BatchBuilder, Sealed, Sink};

/// The flow's rules the batcher applies.
pub(crate) struct Batching {
    pub flow: String,
    /// Messages delivered more often are dead-lettered.
    pub max_deliveries: u64,
    /// Consecutive messages with one source entry (a handler's outputs)
    /// are never split between two batches.
    pub keep_siblings: bool,
    /// Where a chunk's list goes once its messages are in batches.
    pub chunk_lists: Arc<MessageLists>,
}

/// Runs the batcher here and the committer on a task of its own until the
/// chunks end; returns whether every batch was committed (false: one was
/// abandoned at the hard stop and stays pending).
pub(crate) async fn run<S, B>(
    rules: Batching,
    sink: Arc<S>,
    builder: B,
    chunks: mpsc::Receiver<Vec<Message>>,
) -> Result<bool, JoinError>
where
    S: Sink,
    B: BatchBuilder<Sealed = S::Sealed>,
{
    let (batch_tx, batch_rx) = mpsc::channel::<S::Sealed>(1);
    let committer = tokio::spawn(commit_loop(rules.flow.clone(), sink, batch_rx));
    batch_loop(&rules, builder, chunks, batch_tx).await;
    committer.await
}

async fn batch_loop<B: BatchBuilder>(
    rules: &Batching,
    mut open: B,
    mut chunks: mpsc::Receiver<Vec<Message>>,
    batches: mpsc::Sender<B::Sealed>,
) {
    loop {
        let chunk = match open.due() {
            Some(due) => tokio::select! {
                c = chunks.recv() => c,
                _ = tokio::time::sleep_until(due) => {
                    if open.may_seal_when_due().await && batches.send(open.seal()).await.is_err() {
                        return;
                    }
                    continue;
                }
            },
            None => chunks.recv().await,
        };
        let Some(mut chunk) = chunk else { break };
        open.chunk_starts();
        let mut messages = chunk.drain(..).peekable();
        while let Some(m) = messages.next() {
            let boundary = !rules.keep_siblings
                || messages
                    .peek()
                    .is_none_or(|n| n.id != m.id || !same_stream(&n.stream, &m.stream));
            match within_max_deliveries(m, rules.max_deliveries) {
                Ok(m) => open.add(m),
                Err(dead) => open.add_dead(dead),
            }
            if boundary && open.is_full() {
                open.ready_for_full().await;
                if batches.send(open.seal()).await.is_err() {
                    return;
                }
            }
        }
        drop(messages);
        rules.chunk_lists.give_back(chunk);
    }
    if !open.is_empty() {
        let _ = batches.send(open.seal()).await;
    }
}

async fn commit_loop<S: Sink>(
    flow: String,
    sink: Arc<S>,
    mut batches: mpsc::Receiver<S::Sealed>,
) -> bool {
    let mut all_committed = true;
    let mut settling: Option<JoinHandle<Result<(), Abandoned>>> = None;
    while let Some(batch) = batches.recv().await {
        if batch.is_empty() {
            continue;
        }
        let span = tracing::info_span!(
            "batch",
            flow = %flow,
            rows = batch.messages().len(),
            dead = batch.dead().len(),
            inserted = tracing::field::Empty,
            dead_lettered = tracing::field::Empty,
        );
        // Continue the producers' traces (`traceparent` fields), if traces are exported.
        continue_producer_traces(&span, batch.messages());
        let written = sink.write(batch).instrument(span.clone()).await;
        if let Some(previous) = settling.take() {
            all_committed &= settled(&flow, previous.await);
        }
        match written {
            Ok(written) => {
                let sink = sink.clone();
                let settle = async move { sink.settle(written).await };
                settling = Some(tokio::spawn(settle.instrument(span)));
            }
            Err(e) => {
                tracing::error!(flow = %flow, error = %e);
                all_committed = false;
            }
        }
    }
    if let Some(last) = settling {
        all_committed &= settled(&flow, last.await);
    }
    sink.finished(all_committed).await;
    all_committed
}

/// Whether a batch's settle task settled it; says why not.
fn settled(flow: &str, done: Result<Result<(), Abandoned>, JoinError>) -> bool {
    match done {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::error!(%flow, error = %e);
            false
        }
        Err(e) => {
            tracing::error!(%flow, error = %e, "acking a batch failed");
            false
        }
    }
}
