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
use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::OnSuccess;
use crate::flow::{over_max_deliveries, Flow};
use crate::handler::{Handler, HandlerError, RETRY_CONSUMER};
use crate::redis::dead_letter::{dead_letter_and_ack, DeadLetter};
use crate::redis::{commands, Message};

/// What became of one handled message.
pub enum Outcome {
    Outputs(Vec<Message>),
    Consumed(Message),
    Dead(DeadLetter),
    Retry(Message, String),
}

/// Decides a message's fate from its handler result: retry while
/// deliveries are left, dead-letter on the last one or a permanent error.
pub fn outcome(
    m: Message,
    result: Result<Vec<crate::fields::Fields>, HandlerError>,
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
                    fields,
                    deliveries: m.deliveries,
                })
                .collect(),
        ),
        Err(HandlerError::Fatal(e)) => Outcome::Dead(DeadLetter {
            reason: format!("handler refused the message: {e}"),
            message: m,
            kind: "handler",
        }),
        Err(HandlerError::Retry(e)) if m.deliveries >= max_deliveries => {
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

pub struct Stage {
    pub flow: Arc<Flow>,
    pub handler: Arc<dyn Handler>,
    pub concurrency: usize,
    pub timeout: Duration,
    pub hard_stop: CancellationToken,
}

impl Stage {
    pub async fn run(
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
        let cfg = &self.flow.cfg;
        let max = cfg.max_deliveries;
        let mut dead = Vec::new();
        let mut todo = Vec::with_capacity(chunk.len());
        for m in chunk {
            match over_max_deliveries(&m, max) {
                Some(reason) => dead.push(DeadLetter {
                    message: m,
                    reason,
                    kind: "max_deliveries",
                }),
                None => todo.push(m),
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
                Outcome::Retry(m, error) if cfg.retry.is_some() => later.push((m, error)),
                Outcome::Retry(m, error) => {
                    tracing::warn!(flow = %cfg.name, stream = %m.stream, id = %String::from_utf8_lossy(&m.id), delivery = m.deliveries, max_deliveries = max, %error, "handler failed; the message will be redelivered after claim.min_idle");
                    retry.push(m);
                }
            }
        }
        self.settle(dead, consumed, retry).await;
        crate::flow::retry::retry_later(&self.flow, later, &self.hard_stop).await;
        outputs
    }

    /// Dead-letters, acks and parks, retrying Redis errors until the hard stop
    /// (whatever is left then stays pending and is redelivered).
    async fn settle(&self, dead: Vec<DeadLetter>, consumed: Vec<Message>, retry: Vec<Message>) {
        let flow = &self.flow;
        let cfg = &flow.cfg;
        let redis = &flow.command_client;
        let delete = cfg.on_success == OnSuccess::AckDel;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        if !dead.is_empty() {
            let dl = cfg.dead_letter_stream();
            while let Err(error) = dead_letter_and_ack(redis, &dl, &cfg.group, &dead, delete).await
            {
                tracing::warn!(flow = %cfg.name, %error, "writing dead letters failed; retrying");
                if !self.wait(&mut backoff).await {
                    return;
                }
            }
            for d in &dead {
                tracing::warn!(flow = %cfg.name, stream = %d.message.stream, id = %String::from_utf8_lossy(&d.message.id), reason = %d.reason, "dead-lettered");
                flow.metrics.dead_lettered(d.kind);
            }
        }
        for (stream, ids) in by_stream(&consumed) {
            backoff.reset();
            while let Err(error) = commands::ack(redis, &stream, &cfg.group, &ids, delete).await {
                tracing::warn!(flow = %cfg.name, %stream, %error, "XACK failed; retrying");
                if !self.wait(&mut backoff).await {
                    return;
                }
            }
            flow.metrics.acked(&stream, ids.len());
        }
        for (stream, ids) in by_stream(&retry) {
            backoff.reset();
            while let Err(error) = park(redis, &stream, &cfg.group, &ids).await {
                tracing::warn!(flow = %cfg.name, %stream, %error, "parking failed messages failed; retrying");
                if !self.wait(&mut backoff).await {
                    return;
                }
            }
        }
    }

    async fn wait(&self, backoff: &mut Backoff) -> bool {
        backoff.wait(&self.hard_stop).await
    }
}

fn by_stream(messages: &[Message]) -> Vec<(Arc<str>, Vec<Bytes>)> {
    let mut out: Vec<(Arc<str>, Vec<Bytes>)> = Vec::new();
    for m in messages {
        match out
            .iter_mut()
            .find(|(s, _)| crate::sink::stream::same_stream(s, &m.stream))
        {
            Some((_, ids)) => ids.push(m.id.clone()),
            None => out.push((m.stream.clone(), vec![m.id.clone()])),
        }
    }
    out
}

/// Moves failed entries to [`RETRY_CONSUMER`] (XCLAIM … JUSTID: no delivery
/// counted, idle reset). No live replica refreshes that consumer's entries,
/// so after `claim.min_idle` a claim loop redelivers them.
pub async fn park(
    client: &fred::prelude::Client,
    stream: &str,
    group: &str,
    ids: &[Bytes],
) -> Result<(), crate::redis::StreamError> {
    use fred::prelude::*;
    use fred::types::{CustomCommand, Value};
    let mut args: Vec<Value> = Vec::with_capacity(ids.len() + 5);
    args.push(Value::Bytes(Bytes::copy_from_slice(stream.as_bytes())));
    args.push(Value::Bytes(Bytes::copy_from_slice(group.as_bytes())));
    args.push(RETRY_CONSUMER.into());
    args.push(Value::Integer(0));
    args.extend(ids.iter().map(|id| Value::Bytes(id.clone())));
    args.push("JUSTID".into());
    let cmd = CustomCommand::new_static("XCLAIM", fred::types::ClusterHash::FirstKey, false);
    crate::redis::reply::check(client.custom_raw(cmd, args).await?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(deliveries: u64) -> Message {
        Message {
            stream: Arc::from("s"),
            id: Bytes::from_static(b"1-0"),
            fields: vec![(Bytes::from_static(b"k"), Bytes::from_static(b"v"))],
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
