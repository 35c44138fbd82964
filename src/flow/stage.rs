//! The handler stage of a flow: between the reader and the sink's batcher.
//!
//! ```text
//! reader ─▶ chunks ─▶ handler stage ─▶ outputs ─▶ batcher ─▶ committer
//!                        │ consumed (no output)  → XACK
//!                        │ refused / last try    → dead-letter stream
//!                        └ failed, tries left    → parked, redelivered later
//!                                                  (with `retry`: via the delayed set)
//! ```
//! Messages of a chunk are handled `concurrency` at a time; outputs keep
//! the chunk's order and carry their source's stream and id, so the sink
//! acks a source once all its outputs landed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};
use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;

use crate::fields::Fields;
use crate::flow::admit::{is_final_failure, within_max_deliveries};
use crate::flow::retry::{Failed, Retrier};
use crate::flow::settle::{Settler, Stopped};
use crate::handler::{Handler, HandlerError, RETRY_CONSUMER};
use crate::redis::acks::Acks;
use crate::redis::dead_letter::DeadLetter;
use crate::redis::{reply, Message, StreamError};

/// What became of one handled message.
pub(crate) enum Outcome {
    Outputs(Vec<Message>),
    Consumed(Message),
    Dead(DeadLetter),
    Retry(Message, String),
}

/// Decides a message's fate from its handler result: retry while
/// deliveries are left, dead-letter on the last one or a permanent error.
pub(crate) fn outcome(
    m: Message,
    result: Result<Vec<Fields>, HandlerError>,
    max_deliveries: u64,
) -> Outcome {
    match result {
        Ok(outputs) if outputs.is_empty() => Outcome::Consumed(m),
        Ok(outputs) => Outcome::Outputs(
            outputs
                .into_iter()
                .map(|fields| Message {
                    stream: m.stream.clone(),
                    id: m.id.clone(),
                    fields: fields.into(),
                    deliveries: m.deliveries,
                })
                .collect(),
        ),
        Err(HandlerError::Fatal(e)) => Outcome::Dead(DeadLetter {
            reason: format!("handler refused the message: {e}"),
            message: m,
            kind: "handler",
        }),
        Err(HandlerError::Retry(e)) if is_final_failure(m.deliveries, max_deliveries) => {
            Outcome::Dead(DeadLetter {
                reason: format!(
                    "handler failed on delivery {} of max_deliveries = {max_deliveries}: {e}",
                    m.deliveries
                ),
                message: m,
                kind: "handler",
            })
        }
        Err(HandlerError::Retry(e)) => Outcome::Retry(m, e),
    }
}

/// The handler stage of one flow, given only what it needs.
pub(crate) struct Stage {
    pub handler: Arc<dyn Handler>,
    pub concurrency: usize,
    pub timeout: Duration,
    pub max_deliveries: u64,
    /// Dead letters, acks and parking, retried until the hard stop.
    pub settler: Settler,
    /// `retry = { … }`: failures go back through the delayed set; None:
    /// they are parked and redelivered after `claim.min_idle`.
    pub retrier: Option<Retrier>,
}

impl Stage {
    pub(crate) async fn run(
        self,
        mut input: mpsc::Receiver<Vec<Message>>,
        output: mpsc::Sender<Vec<Message>>,
    ) {
        while let Some(chunk) = input.recv().await {
            let outputs = self.handle_chunk(chunk).await;
            if !outputs.is_empty() && output.send(outputs).await.is_err() {
                return;
            }
        }
    }

    async fn handle_chunk(&self, chunk: Vec<Message>) -> Vec<Message> {
        let flow = &self.settler.flow;
        let max = self.max_deliveries;
        let mut dead = Vec::new();
        let mut todo = Vec::with_capacity(chunk.len());
        for m in chunk {
            match within_max_deliveries(m, max) {
                Ok(m) => todo.push(m),
                Err(d) => dead.push(d),
            }
        }
        let (handler, timeout) = (&self.handler, self.timeout);
        let results: Vec<Outcome> = stream::iter(todo)
            .map(|m| async move {
                let result = match tokio::time::timeout(timeout, handler.handle(&m)).await {
                    Ok(r) => r,
                    Err(_) => Err(HandlerError::retry(format!(
                        "handler timed out after {timeout:?}"
                    ))),
                };
                outcome(m, result, max)
            })
            .buffered(self.concurrency)
            .collect()
            .await;
        let mut outputs = Vec::with_capacity(results.len());
        let mut consumed: Vec<Message> = Vec::new();
        let mut retry: Vec<Message> = Vec::new();
        let mut later: Vec<(Message, String)> = Vec::new();
        for o in results {
            match o {
                Outcome::Outputs(out) => outputs.extend(out),
                Outcome::Consumed(m) => consumed.push(m),
                Outcome::Dead(d) => dead.push(d),
                // `retry = { … }`: back off through the delayed set instead.
                Outcome::Retry(m, error) if self.retrier.is_some() => later.push((m, error)),
                Outcome::Retry(m, error) => {
                    tracing::warn!(%flow, stream = %m.stream, id = %String::from_utf8_lossy(&m.id), delivery = m.deliveries, max_deliveries = max, %error, "handler failed; the message will be redelivered after claim.min_idle");
                    retry.push(m);
                }
            }
        }
        self.settle(dead, consumed, retry).await;
        if let Some(retrier) = &self.retrier {
            retry_later(retrier, &self.settler, later).await;
        }
        outputs
    }

    /// Dead-letters, acks and parks, retrying Redis errors until the hard stop
    /// (whatever is left then stays pending and is redelivered).
    async fn settle(&self, dead: Vec<DeadLetter>, consumed: Vec<Message>, retry: Vec<Message>) {
        let s = &self.settler;
        if s.settle(&Acks::of(&consumed), &dead).await.is_err() {
            return;
        }
        let _ = s
            .per_stream(
                &retry,
                "parking failed messages",
                |stream, ids| async move { park(&s.redis, &stream, &s.group, &ids).await },
            )
            .await;
    }
}

/// The handler stage's path for failures of a flow with `retry`: each
/// message goes back through the delayed set, or to the dead-letter stream
/// once it has failed `max_deliveries` times. Redis errors are retried until
/// the settler's stop (the hard stop); a message left then stays pending and
/// is redelivered by the claim loop.
async fn retry_later(retrier: &Retrier, settler: &Settler, failed: Vec<(Message, String)>) {
    let flow = &settler.flow;
    for (m, error) in failed {
        let id = String::from_utf8_lossy(&m.id).into_owned();
        let failed = settler
            .retry(
                || retrier.fail(&m, &error),
                |e| tracing::warn!(%flow, stream = %m.stream, %id, error = %e, "re-enqueueing a failed message failed; retrying"),
            )
            .await;
        match failed {
            Ok(Failed::Retry {
                failures,
                failed_at_ms,
                due_ms,
            }) => {
                tracing::warn!(%flow, stream = %m.stream, %id, failures, max_deliveries = retrier.max_deliveries, retry_in_ms = due_ms.saturating_sub(failed_at_ms), %error, "handler failed; retrying through the delayed set");
            }
            Ok(Failed::DeadLettered { failures }) => {
                tracing::warn!(%flow, stream = %m.stream, %id, failures, %error, "handler failed max_deliveries times; dead-lettered");
                settler.metrics.dead_lettered("handler");
            }
            Err(Stopped) => return,
        }
    }
}

/// Moves failed entries to [`RETRY_CONSUMER`] (XCLAIM … JUSTID: no delivery
/// counted, idle reset). No live replica refreshes that consumer's entries,
/// so after `claim.min_idle` a claim loop redelivers them.
pub(crate) async fn park(
    client: &Client,
    stream: &str,
    group: &str,
    ids: &[Bytes],
) -> Result<(), StreamError> {
    let mut args: Vec<Value> = Vec::with_capacity(ids.len() + 5);
    args.push(Value::Bytes(Bytes::copy_from_slice(stream.as_bytes())));
    args.push(Value::Bytes(Bytes::copy_from_slice(group.as_bytes())));
    args.push(RETRY_CONSUMER.into());
    args.push(Value::Integer(0));
    args.extend(ids.iter().map(|id| Value::Bytes(id.clone())));
    args.push("JUSTID".into());
    let cmd = CustomCommand::new_static("XCLAIM", ClusterHash::FirstKey, false);
    reply::check(client.custom_raw(cmd, args).await?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(deliveries: u64) -> Message {
        Message {
            stream: Arc::from("s"),
            id: Bytes::from_static(b"1-0"),
            fields: vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))].into(),
            deliveries,
        }
    }

    #[test]
    fn retry_until_the_last_delivery_then_dead_letter() {
        let e = || Err(HandlerError::retry("boom"));
        assert!(matches!(outcome(m(1), e(), 3), Outcome::Retry(_, r) if r == "boom"));
        assert!(matches!(outcome(m(2), e(), 3), Outcome::Retry(..)));
        match outcome(m(3), e(), 3) {
            Outcome::Dead(d) => {
                assert_eq!(d.kind, "handler");
                assert!(
                    d.reason.contains("delivery 3 of max_deliveries = 3")
                        && d.reason.contains("boom"),
                    "{}",
                    d.reason
                );
            }
            _ => panic!("expected a dead letter"),
        }
    }

    #[test]
    fn fatal_errors_dead_letter_at_once_and_outputs_keep_the_source_id() {
        match outcome(m(1), Err(HandlerError::fatal("bad input")), 5) {
            Outcome::Dead(d) => assert!(d.reason.contains("bad input")),
            _ => panic!("expected a dead letter"),
        }
        assert!(matches!(outcome(m(1), Ok(vec![]), 5), Outcome::Consumed(_)));
        let two = vec![
            vec![(Bytes::from_static(b"a"), Bytes::from_static(b"1"))],
            vec![(Bytes::from_static(b"a"), Bytes::from_static(b"2"))],
        ];
        match outcome(m(2), Ok(two), 5) {
            Outcome::Outputs(out) => {
                assert_eq!(out.len(), 2);
                assert!(out
                    .iter()
                    .all(|o| o.id.as_ref() == b"1-0" && o.deliveries == 2));
            }
            _ => panic!("expected outputs"),
        }
    }
}
