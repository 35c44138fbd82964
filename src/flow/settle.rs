//! The settle step, written once: what every part of a flow does once it
//! knows the fate of its messages. Dead letters first (each is acked with
//! its dead letter), then the acks of what landed, one XACK per stream,
//! then the metrics; Redis errors are retried with backoff until the stop
//! token fires ([`Stopped`]), and whatever is left then stays pending for
//! another replica. Used by the reader (oversized fields), the handler
//! stage, the ClickHouse committer and the stream sink's committer, so
//! "ack only what landed, dead-letter first, retry until the hard stop"
//! lives in this one file.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::Client;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{FlowConfig, OnSuccess};
use crate::obs::metrics::FlowMetrics;
use crate::redis::acks::Acks;
use crate::redis::dead_letter::{dead_letter_and_ack, DeadLetter};
use crate::redis::direct::StreamConnection;
use crate::redis::Message;

/// The stop token fired while Redis was still failing: the step was given
/// up, and its messages stay pending (another replica claims them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped while Redis was still failing; the messages stay pending")]
pub struct Stopped;

/// Settles one flow's messages at the source (see the module docs).
#[derive(Clone)]
pub struct Settler {
    pub flow: String,
    pub group: String,
    pub dead_letter_stream: String,
    /// XDEL with the ack (`on_success = "ack_del"`).
    pub delete: bool,
    /// The source's Redis: dead letters.
    pub redis: Client,
    /// The flow's connection for acks (direct where it can be).
    pub(crate) acks: Arc<StreamConnection>,
    pub metrics: FlowMetrics,
    /// Ends the retries: the hard stop, or shutdown for the reader.
    pub stop: CancellationToken,
}

impl Settler {
    pub(crate) fn for_flow(
        cfg: &FlowConfig,
        redis: Client,
        acks: Arc<StreamConnection>,
        metrics: FlowMetrics,
        stop: CancellationToken,
    ) -> Settler {
        Settler {
            flow: cfg.name.clone(),
            group: cfg.group.clone(),
            dead_letter_stream: cfg.dead_letter_stream(),
            delete: cfg.on_success == OnSuccess::AckDel,
            redis,
            acks,
            metrics,
            stop,
        }
    }

    /// The same settler, retrying until `stop` instead.
    pub fn until(&self, stop: CancellationToken) -> Settler {
        Settler {
            stop,
            ..self.clone()
        }
    }

    /// Runs `attempt` until it succeeds, backing off (50 ms doubling to
    /// 5 s, jittered) after each failure, which `failed` logs; Err once the
    /// stop token fires first.
    pub async fn retry<T, E, F, Fut>(
        &self,
        mut attempt: F,
        failed: impl Fn(&E),
    ) -> Result<T, Stopped>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            match attempt().await {
                Ok(t) => return Ok(t),
                Err(e) => {
                    failed(&e);
                    if !backoff.wait(&self.stop).await {
                        return Err(Stopped);
                    }
                }
            }
        }
    }

    /// Dead letters first, then the acks of `landed`.
    pub async fn settle(&self, landed: &Acks, dead: &[DeadLetter]) -> Result<(), Stopped> {
        self.dead_letter(dead).await?;
        self.ack(landed).await
    }

    /// [`Self::settle`] for a sink's batch: also the end-to-end latency of
    /// what landed, and the counts on the batch's span.
    pub async fn settle_batch(&self, landed: &Acks, dead: &[DeadLetter]) -> Result<(), Stopped> {
        self.settle(landed, dead).await?;
        self.metrics.end_to_end(landed);
        let span = tracing::Span::current();
        span.record("inserted", landed.len());
        span.record("dead_lettered", dead.len());
        Ok(())
    }

    /// Writes `dead` to the dead-letter stream, acking each source.
    pub async fn dead_letter(&self, dead: &[DeadLetter]) -> Result<(), Stopped> {
        if dead.is_empty() {
            return Ok(());
        }
        self.retry(
            || {
                dead_letter_and_ack(
                    &self.redis,
                    &self.dead_letter_stream,
                    &self.group,
                    dead,
                    self.delete,
                )
            },
            |error| tracing::warn!(flow = %self.flow, count = dead.len(), %error, "writing dead letters failed; retrying"),
        )
        .await?;
        for d in dead {
            tracing::warn!(flow = %self.flow, stream = %d.message.stream, id = %String::from_utf8_lossy(&d.message.id), reason = %d.reason, "dead-lettered");
            self.metrics.dead_lettered(d.kind);
        }
        Ok(())
    }

    /// Acks `landed` at the source, one pipelined request per stream.
    pub async fn ack(&self, landed: &Acks) -> Result<(), Stopped> {
        for ids in landed.streams() {
            self.retry(
                || self.acks.ack(&self.group, ids, self.delete),
                |error| tracing::warn!(flow = %self.flow, stream = %ids.stream, %error, "XACK failed; retrying"),
            )
            .await?;
            self.metrics.acked(&ids.stream, ids.len());
        }
        Ok(())
    }

    /// Runs a per-stream step (e.g. parking failed messages) for each
    /// stream's ids of `messages`, retried like an ack.
    pub async fn per_stream<F, Fut, E>(
        &self,
        messages: &[Message],
        what: &str,
        mut step: F,
    ) -> Result<(), Stopped>
    where
        F: FnMut(Arc<str>, Vec<Bytes>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        for ids in Acks::of(messages).streams() {
            let stream = &ids.stream;
            self.retry(
                || step(stream.clone(), ids.to_vec()),
                |error| tracing::warn!(flow = %self.flow, %stream, %error, "{what} failed; retrying"),
            )
            .await?;
        }
        Ok(())
    }
}
