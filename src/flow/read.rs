//! The readers of a flow: XREADGROUP on their own connections until
//! shutdown, recreating a deleted group, dead-lettering oversized messages
//! at once, and handing each chunk on (bounded: a slow sink stops the
//! reads). See [`crate::flow`] for one reader per shard in a cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::flow::admit::take_oversized;
use crate::flow::settle::Settler;
use crate::flow::Flow;
use crate::redis::{commands, Message, StreamError};

impl Flow {
    /// Reads `self.readers[reader]`'s streams until shutdown.
    pub(crate) async fn read_loop(
        self: Arc<Self>,
        reader: usize,
        chunks: mpsc::Sender<Vec<Message>>,
        shutdown: CancellationToken,
    ) {
        let (reader, streams) = &self.readers[reader];
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            if self.pause.is_paused() {
                tokio::select! {
                    _ = self.pause.wait_resumed() => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            let mut entries = self.chunk_lists.take(self.cfg.read_count.min(10_000));
            let sent = Instant::now();
            let read = reader
                .read_group(
                    &self.cfg.group,
                    &self.consumer,
                    self.cfg.read_count,
                    self.block,
                    streams,
                    &mut entries,
                )
                .await;
            match read {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    self.handle_read_error(streams, &e).await;
                    backoff.wait(&shutdown).await;
                }
            }
            if entries.is_empty() {
                self.chunk_lists.give_back(entries);
                continue;
            }
            self.metrics.read(&entries);
            self.held.insert_read(&entries, sent);
            self.dead_letter_oversized(&mut entries, &shutdown).await;
            // Whatever was read is handed on even during shutdown: it is
            // pending for us now and must be committed, not dropped.
            if chunks.send(entries).await.is_err() {
                break;
            }
        }
    }

    /// Takes the messages with a field over `max_field_bytes` out of
    /// `entries` and dead-letters (and acks) them, retrying Redis errors
    /// until shutdown (then they stay pending for another replica).
    pub(crate) async fn dead_letter_oversized(
        &self,
        entries: &mut Vec<Message>,
        shutdown: &CancellationToken,
    ) {
        let dead = take_oversized(entries, self.cfg.max_field_bytes.as_u64());
        if dead.is_empty() {
            return;
        }
        let settler = Settler::for_flow(
            &self.cfg,
            self.command_client.clone(),
            self.acks.clone(),
            self.metrics.clone(),
            shutdown.clone(),
        );
        // Stopped: they stay pending for another replica.
        let _ = settler.dead_letter(&dead).await;
    }

    async fn handle_read_error(&self, streams: &[Arc<str>], e: &StreamError) {
        tracing::warn!(flow = %self.cfg.name, ?streams, error = %e, "XREADGROUP failed");
        // The stream or group was deleted under us: recreate it.
        if e.to_string().contains("NOGROUP") {
            for stream in streams {
                if let Err(e) = commands::create_group(
                    &self.command_client,
                    stream,
                    &self.cfg.group,
                    &self.cfg.start_id,
                )
                .await
                {
                    tracing::warn!(flow = %self.cfg.name, %stream, error = %e, "recreating group failed");
                }
            }
        }
    }
}
