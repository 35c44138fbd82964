//! The dead-letter stream: where a message goes, with its reason, when it
//! cannot be delivered. Its original fields are kept so it can be replayed.

use bytes::Bytes;
use fred::prelude::*;
use fred::types::{CustomCommand, Value};

use crate::redis::{Message, Result};

/// Fields added to every dead-letter entry, before the original fields.
pub(crate) const FIELD_ID: &str = "sluice.id";
pub(crate) const FIELD_STREAM: &str = "sluice.stream";
pub(crate) const FIELD_GROUP: &str = "sluice.group";
pub(crate) const FIELD_DELIVERIES: &str = "sluice.deliveries";
pub(crate) const FIELD_REASON: &str = "sluice.reason";

/// A message refused for good, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message: Message,
    pub reason: String,
    /// Bounded label for metrics: convert, rejected, max_deliveries, payload.
    pub kind: &'static str,
}

fn xadd_args(dead_stream: &str, group: &str, d: &DeadLetter) -> Vec<Value> {
    let m = &d.message;
    let mut args: Vec<Value> = Vec::with_capacity(12 + m.fields.len() * 2);
    args.push(Value::Bytes(Bytes::copy_from_slice(dead_stream.as_bytes())));
    args.push("*".into());
    for (k, v) in [
        (FIELD_ID, m.id.clone()),
        (FIELD_STREAM, Bytes::copy_from_slice(m.stream.as_bytes())),
        (FIELD_GROUP, Bytes::copy_from_slice(group.as_bytes())),
        (FIELD_DELIVERIES, Bytes::from(m.deliveries.to_string())),
        (FIELD_REASON, Bytes::from(d.reason.clone())),
    ] {
        args.push(k.into());
        args.push(Value::Bytes(v));
    }
    for (k, v) in m.fields.shared() {
        args.push(Value::Bytes(k));
        args.push(Value::Bytes(v));
    }
    args
}

/// XADDs every dead letter and, only once Redis confirmed every one of
/// them, XACKs (and XDELs) the originals: two pipelined round trips.
///
/// The acks wait for the confirmations because an XADD can be refused while
/// the XACK of its source would pass: at `maxmemory` with `noeviction` Redis
/// refuses XADD (OOM) but not XACK, and on a cluster the dead-letter stream
/// lives on another node, which may be failing over. On any failure nothing
/// is acked: the sources stay pending and the caller retries. A retry after
/// a partial failure (some XADDs confirmed, a connection cut before the
/// rest) can duplicate a dead letter, never lose one.
pub(crate) async fn dead_letter_and_ack(
    client: &Client,
    dead_stream: &str,
    group: &str,
    items: &[DeadLetter],
    delete: bool,
) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let cmd = |name| CustomCommand::new_static(name, fred::types::ClusterHash::FirstKey, false);
    let pipeline = client.pipeline();
    for d in items {
        let _: Value = pipeline
            .custom(cmd("XADD"), xadd_args(dead_stream, group, d))
            .await?;
    }
    for result in pipeline.try_all::<Value>().await {
        result?;
    }
    let pipeline = client.pipeline();
    for d in items {
        let stream = Value::Bytes(Bytes::copy_from_slice(d.message.stream.as_bytes()));
        let id = Value::Bytes(d.message.id.clone());
        let _: Value = pipeline
            .custom(cmd("XACK"), vec![stream.clone(), group.into(), id.clone()])
            .await?;
        if delete {
            let _: Value = pipeline.custom(cmd("XDEL"), vec![stream, id]).await?;
        }
    }
    for result in pipeline.try_all::<Value>().await {
        result?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn dead_letter_keeps_fields_and_names_reason() {
        let d = DeadLetter {
            message: Message {
                stream: Arc::from("events"),
                id: Bytes::from("5-1"),
                fields: vec![(Bytes::from("rec_id"), Bytes::from("x"))].into(),
                deliveries: 3,
            },
            reason: "column `rec_id` (UInt64): cannot convert \"x\"".into(),
            kind: "convert",
        };
        let args = xadd_args("events:dead", "g", &d);
        let text: Vec<String> = args
            .iter()
            .map(|v| v.as_string().unwrap_or_default())
            .collect();
        assert_eq!(text[0], "events:dead");
        assert_eq!(text[1], "*");
        let pos = |k: &str| text.iter().position(|t| t == k).unwrap();
        assert_eq!(text[pos(FIELD_ID) + 1], "5-1");
        assert_eq!(text[pos(FIELD_STREAM) + 1], "events");
        assert_eq!(text[pos(FIELD_DELIVERIES) + 1], "3");
        assert!(text[pos(FIELD_REASON) + 1].contains("rec_id"));
        assert_eq!(text[pos("rec_id") + 1], "x");
    }
}
