//! Handlers: the processing step of a flow (the original "worker" node:
//! stream_in → logic → stream_out). A handler turns one message into zero,
//! one or several outputs, or fails.
//!
//! - [`exec`]: a pool of long-running child processes speaking JSON lines;
//! - [`http`]: POST the message as JSON to a URL;
//! - [`Handler`]: the trait, for Rust programs embedding sluice (see
//!   `examples/rust_handler.rs`); register implementations in [`Handlers`].
//!
//! Outputs carry their source message's stream and id, so the sink acks the
//! source only once every output of it has landed. A failed message is
//! parked under the group's [`RETRY_CONSUMER`] (un-acked) and redelivered by
//! a claim loop after `claim.min_idle`; on its last allowed delivery (or on
//! a permanent error) it is dead-lettered with the error as the reason.

pub(crate) mod exec;
pub(crate) mod http;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::HandlerConfig;
use crate::fields::Fields;
use crate::redis::{Message, MessageFields};

/// The consumer that holds failed messages until they are claimed again.
/// Parked entries are not refreshed by any live replica, so they go idle
/// and the claim loop redelivers them after `claim.min_idle`.
pub(crate) const RETRY_CONSUMER: &str = "sluice-retry";

/// A failed message: retried by redelivery, or dead-lettered at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Try again later (the message is redelivered after `claim.min_idle`,
    /// up to `max_deliveries` times).
    #[error("{0}")]
    Retry(String),
    /// The message itself is bad: dead-letter it now.
    #[error("{0}")]
    Fatal(String),
}

impl HandlerError {
    pub fn retry(reason: impl std::fmt::Display) -> Self {
        HandlerError::Retry(reason.to_string())
    }

    pub fn fatal(reason: impl std::fmt::Display) -> Self {
        HandlerError::Fatal(reason.to_string())
    }

    pub fn is_fatal(&self) -> bool {
        matches!(self, HandlerError::Fatal(_))
    }
}

/// The processing step of a flow. `handle` gets one message (fields, id,
/// stream, delivery count) and returns its outputs: none (the message is
/// consumed), one, or several. It may run concurrently for different
/// messages (the flow's handler `concurrency`).
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, message: &Message) -> Result<Vec<Fields>, HandlerError>;
}

/// Rust handlers by the name a flow's `handler = { type = "rust", name }` uses.
#[derive(Clone, Default)]
pub struct Handlers {
    by_name: HashMap<String, Arc<dyn Handler>>,
}

impl Handlers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` under `name`; returns self for chaining.
    pub fn register(mut self, name: impl Into<String>, handler: impl Handler) -> Self {
        self.by_name.insert(name.into(), Arc::new(handler));
        self
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Handler>> {
        self.by_name.get(name).cloned()
    }
}

/// Builds the handler a flow's config names.
pub(crate) async fn open(
    flow: &str,
    cfg: &HandlerConfig,
    registry: &Handlers,
) -> anyhow::Result<Arc<dyn Handler>> {
    Ok(match cfg {
        HandlerConfig::Exec(e) => Arc::new(exec::ExecHandler::start(flow, e).await?),
        HandlerConfig::Http(h) => Arc::new(http::HttpHandler::new(h)?),
        HandlerConfig::Rust(r) => registry.get(&r.name).ok_or_else(|| {
            anyhow::anyhow!(
                "flow `{flow}`: handler `{}` is a Rust handler; run this flow from a program \
                 that registers it (sluice::run_with_handlers, see examples/rust_handler.rs)",
                r.name
            )
        })?,
    })
}

/// One line for `sluice check`.
pub(crate) fn describe(cfg: &HandlerConfig) -> String {
    match cfg {
        HandlerConfig::Exec(e) => format!(
            "exec {:?}, {} process(es), timeout {:?} per message",
            e.command, e.workers, e.timeout
        ),
        HandlerConfig::Http(h) => format!(
            "POST to {}, {} at once, timeout {:?}",
            h.url, h.concurrency, h.timeout
        ),
        HandlerConfig::Rust(r) => format!(
            "Rust handler `{}`, {} at once, timeout {:?}",
            r.name, r.concurrency, r.timeout
        ),
    }
}

/// The JSON a handler receives for a message:
/// `{"id": …, "stream": …, "deliveries": n, "fields": {name: value, …}}`.
/// Values that are not UTF-8 are passed with replacement characters.
pub(crate) fn request_json(m: &Message) -> Vec<u8> {
    use serde::ser::{SerializeMap, Serializer};
    struct FieldsJson<'a>(&'a MessageFields);
    impl serde::Serialize for FieldsJson<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in self.0 {
                map.serialize_entry(&String::from_utf8_lossy(k), &String::from_utf8_lossy(v))?;
            }
            map.end()
        }
    }
    let mut out = Vec::with_capacity(64 + m.approx_size());
    let mut ser = serde_json::Serializer::new(&mut out);
    let mut map = ser.serialize_map(Some(4)).expect("in-memory write");
    map.serialize_entry("id", &String::from_utf8_lossy(&m.id))
        .expect("in-memory write");
    map.serialize_entry("stream", &*m.stream)
        .expect("in-memory write");
    map.serialize_entry("deliveries", &m.deliveries)
        .expect("in-memory write");
    map.serialize_entry("fields", &FieldsJson(&m.fields))
        .expect("in-memory write");
    map.end().expect("in-memory write");
    out
}

/// Output fields from a reply object: strings as they are, numbers as
/// their JSON text, booleans as `true`/`false`, nested values as JSON text;
/// null fields are left out.
pub(crate) fn fields_from_json(
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<Fields, String> {
    use serde_json::Value;
    let mut out = Vec::with_capacity(object.len());
    for (k, v) in object {
        if k.is_empty() {
            return Err("output has an empty field name".into());
        }
        let value = match v {
            Value::Null => continue,
            Value::String(s) => Bytes::copy_from_slice(s.as_bytes()),
            Value::Bool(b) => Bytes::from_static(if *b { b"true" } else { b"false" }),
            Value::Number(n) => Bytes::from(n.to_string()),
            nested => Bytes::from(nested.to_string()),
        };
        out.push((Bytes::copy_from_slice(k.as_bytes()), value));
    }
    if out.is_empty() {
        return Err("output has no fields".into());
    }
    Ok(out)
}

/// Outputs from a reply value: an object is one output, an array of
/// objects several (an empty array: none).
pub(crate) fn outputs_from_json(value: &serde_json::Value) -> Result<Vec<Fields>, String> {
    match value {
        serde_json::Value::Object(o) => Ok(vec![fields_from_json(o)?]),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                serde_json::Value::Object(o) => {
                    fields_from_json(o).map_err(|e| format!("output {i}: {e}"))
                }
                _ => Err(format!("output {i} is not an object")),
            })
            .collect(),
        _ => Err("reply is not an object or an array of objects".into()),
    }
}

/// `handler.timeout` plus a margin: the outer bound the flow puts on one
/// call (exec and http enforce `timeout` themselves, and clean up).
pub(crate) fn outer_timeout(cfg: &HandlerConfig) -> Duration {
    match cfg {
        HandlerConfig::Rust(r) => r.timeout,
        other => other.timeout() + Duration::from_secs(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carries_id_stream_deliveries_and_fields() {
        let m = Message {
            stream: Arc::from("jobs.in"),
            id: Bytes::from("5-1"),
            fields: vec![
                (Bytes::from("rec_id"), Bytes::from("7")),
                (Bytes::from("data"), Bytes::from("{\"x\":1}")),
            ]
            .into(),
            deliveries: 2,
        };
        let v: serde_json::Value = serde_json::from_slice(&request_json(&m)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "5-1", "stream": "jobs.in", "deliveries": 2,
                "fields": {"rec_id": "7", "data": "{\"x\":1}"}})
        );
    }

    #[test]
    fn reply_values_become_fields() {
        let v =
            serde_json::json!({"a": "x", "n": 1.5, "b": false, "gone": null, "obj": {"k": [1]}});
        let out = outputs_from_json(&v).unwrap();
        let text: Vec<(String, String)> = out[0]
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into(),
                    String::from_utf8_lossy(v).into(),
                )
            })
            .collect();
        assert!(text.contains(&("n".into(), "1.5".into())));
        assert!(text.contains(&("b".into(), "false".into())));
        assert!(text.contains(&("obj".into(), "{\"k\":[1]}".into())));
        assert!(!text.iter().any(|(k, _)| k == "gone"));
        let several = outputs_from_json(&serde_json::json!([{"a": 1}, {"a": 2}])).unwrap();
        assert_eq!(several.len(), 2);
        assert!(outputs_from_json(&serde_json::json!([]))
            .unwrap()
            .is_empty());
        assert!(outputs_from_json(&serde_json::json!("x")).is_err());
        assert!(outputs_from_json(&serde_json::json!([1])).is_err());
        assert!(outputs_from_json(&serde_json::json!({"a": null})).is_err());
    }
}
