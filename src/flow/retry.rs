//! Retry with backoff through the delayed set: a message that failed in a
//! way worth retrying later (a handler error) is acked and re-added to its
//! stream's delayed set, due after an exponential, jittered delay — instead
//! of sitting pending until the claim idle time. The copy carries how many
//! times the message has failed; once that reaches `max_deliveries` the
//! message is dead-lettered instead.
//!
//! ```toml
//! [[flow]]
//! retry = { backoff = "exponential", base = "1s", max = "5m", jitter = true }
//! ```
//! Failure n (1-based) waits `min(max, base·2ⁿ⁻¹)` — or `base` when
//! `backoff = "fixed"` — and, with jitter, a uniformly random time between
//! half that and all of it.
//!
//! The retried copy is a new stream entry: every group reading the stream
//! sees it. Fields it carries besides the original ones: `sluice.attempt`
//! (failures so far), `sluice.retry_for` (`group@stream`: the count only
//! applies there, not to an output forwarded elsewhere), `sluice.first_id`
//! (the first entry's id) and `sluice.error` (the last error, truncated).

use std::sync::LazyLock;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::Value;

use crate::config::{FlowConfig, OnSuccess};
use crate::flow::admit::is_final_failure;
use crate::redis::dead_letter::{dead_letter_and_ack, DeadLetter};
use crate::redis::delayed::{self, encode_member};
use crate::redis::{Message, MessageFields, StreamError};

pub(crate) use crate::config::RetryConfig;

pub(crate) const FIELD_ATTEMPT: &str = "sluice.attempt";
pub(crate) const FIELD_RETRY_FOR: &str = "sluice.retry_for";
pub(crate) const FIELD_FIRST_ID: &str = "sluice.first_id";
pub(crate) const FIELD_ERROR: &str = "sluice.error";

/// Longest `sluice.error` kept on a retried copy.
const ERROR_MAX: usize = 500;

/// `group@stream`: where a retried copy's failure count applies.
pub(crate) fn retry_for(group: &str, stream: &str) -> String {
    format!("{group}@{stream}")
}

/// How many times a message has failed in `group` before this delivery.
pub(crate) fn previous_failures(m: &Message, group: &str) -> u64 {
    let ours = m
        .field(FIELD_RETRY_FOR.as_bytes())
        .is_some_and(|v| v == retry_for(group, &m.stream).as_bytes());
    if !ours {
        return 0;
    }
    m.field(FIELD_ATTEMPT.as_bytes())
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The message's own fields, without sluice's `sluice.*` bookkeeping.
pub(crate) fn original_fields(fields: &MessageFields) -> Vec<(Bytes, Bytes)> {
    fields
        .shared()
        .filter(|(k, _)| !k.starts_with(b"sluice."))
        .collect()
}

/// Atomically: add the retried copy to the delayed set, ack (and maybe
/// delete) the original. KEYS: set, stream[, index]. ARGV: stream, group,
/// id, delay ms, member, delete. Returns {now, due} by the server's clock.
const RETRY: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], string.format('%.0f', due), ARGV[5])
if KEYS[3] then redis.call('SADD', KEYS[3], ARGV[1]) end
redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
if ARGV[6] == '1' then redis.call('XDEL', KEYS[2], ARGV[3]) end
return {string.format('%.0f', now), string.format('%.0f', due)}
"#;

static RETRY_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(RETRY));

/// What became of a failed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failed {
    /// Re-enqueued: failure number `failures`, back in the stream at `due_ms`
    /// (server clock; `failed_at_ms` is the server's time of the failure).
    Retry {
        failures: u64,
        failed_at_ms: u64,
        due_ms: u64,
    },
    /// Failed `failures` times, reaching `max_deliveries`.
    DeadLettered { failures: u64 },
}

/// Retries failed messages of one flow through the delayed set.
#[derive(Clone)]
pub(crate) struct Retrier {
    pub client: Client,
    pub group: String,
    pub dead_letter_stream: String,
    pub policy: RetryConfig,
    pub max_deliveries: u64,
    /// XDEL the original too (`on_success = "ack_del"`).
    pub delete: bool,
}

impl Retrier {
    /// The retrier of a flow with `retry = { … }`; None without it (failures
    /// are then retried by redelivery after the claim idle time).
    pub(crate) fn for_flow(cfg: &FlowConfig, client: Client) -> Option<Retrier> {
        let policy = cfg.retry.clone()?;
        Some(Retrier {
            client,
            group: cfg.group.clone(),
            dead_letter_stream: cfg.dead_letter_stream(),
            policy,
            max_deliveries: cfg.max_deliveries,
            delete: cfg.on_success == OnSuccess::AckDel,
        })
    }

    /// Records that handling `m` failed with `error`: re-enqueue it with
    /// backoff, or dead-letter it once it has failed `max_deliveries` times.
    /// Either way the original entry is acked.
    pub(crate) async fn fail(&self, m: &Message, error: &str) -> Result<Failed, StreamError> {
        let previous = previous_failures(m, &self.group);
        let failures = previous + m.deliveries.max(1);
        let first_id = m
            .field(FIELD_FIRST_ID.as_bytes())
            .filter(|_| previous > 0)
            .map(Bytes::copy_from_slice)
            .unwrap_or_else(|| m.id.clone());
        let mut fields = original_fields(&m.fields);
        if is_final_failure(failures, self.max_deliveries) {
            let dead = DeadLetter {
                message: Message {
                    stream: m.stream.clone(),
                    id: m.id.clone(),
                    fields: fields.into(),
                    deliveries: failures,
                },
                reason: format!(
                    "failed {failures} times (max_deliveries = {}); last error: {error}",
                    self.max_deliveries
                ),
                kind: "handler",
            };
            dead_letter_and_ack(
                &self.client,
                &self.dead_letter_stream,
                &self.group,
                std::slice::from_ref(&dead),
                self.delete,
            )
            .await?;
            return Ok(Failed::DeadLettered { failures });
        }
        let mut error_text = error.to_string();
        if error_text.len() > ERROR_MAX {
            let mut cut = ERROR_MAX;
            while !error_text.is_char_boundary(cut) {
                cut -= 1;
            }
            error_text.truncate(cut);
        }
        fields.push((
            Bytes::from(FIELD_ATTEMPT),
            Bytes::from(failures.to_string()),
        ));
        fields.push((
            Bytes::from(FIELD_RETRY_FOR),
            Bytes::from(retry_for(&self.group, &m.stream)),
        ));
        fields.push((Bytes::from(FIELD_FIRST_ID), first_id));
        fields.push((Bytes::from(FIELD_ERROR), Bytes::from(error_text)));
        let delay = self.policy.delay(failures);
        let script = &RETRY_S;
        let args: Vec<Value> = vec![
            m.stream.as_ref().into(),
            self.group.as_str().into(),
            Value::Bytes(m.id.clone()),
            (delay.as_millis() as u64).to_string().into(),
            Value::Bytes(Bytes::from(encode_member(&fields))),
            if self.delete { "1" } else { "0" }.into(),
        ];
        // [set, index] (index alone in a cluster) → [set, stream, index].
        let mut keys = delayed::index_keys(&self.client, &m.stream, delayed::set_key(&m.stream))
            .await
            .map_err(|e| StreamError::Reply(e.to_string()))?;
        keys.insert(1, m.stream.to_string());
        let reply: Value = script.evalsha_with_reload(&self.client, keys, args).await?;
        let (failed_at_ms, due_ms) = match &reply {
            Value::Array(v) if v.len() == 2 => {
                (v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0))
            }
            _ => {
                return Err(StreamError::Shape {
                    command: "retry script",
                    detail: format!("{reply:?}"),
                })
            }
        };
        Ok(Failed::Retry {
            failures,
            failed_at_ms,
            due_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackoffKind;
    use std::sync::Arc;
    use std::time::Duration;

    fn policy() -> RetryConfig {
        RetryConfig {
            backoff: BackoffKind::Exponential,
            base: Duration::from_millis(500),
            max: Duration::from_secs(3),
            jitter: true,
        }
    }

    #[test]
    fn exponential_delays_double_until_max() {
        let p = policy();
        let want = [500, 1000, 2000, 3000, 3000];
        for (i, ms) in want.iter().enumerate() {
            assert_eq!(
                p.nominal_delay(i as u64 + 1),
                Duration::from_millis(*ms),
                "failure {}",
                i + 1
            );
        }
        assert_eq!(p.nominal_delay(1000), Duration::from_secs(3));
        let fixed = RetryConfig {
            backoff: BackoffKind::Fixed,
            ..policy()
        };
        assert_eq!(fixed.nominal_delay(7), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_within_half_to_full_and_spreads() {
        let p = policy();
        for failures in 1..=5 {
            let (low, high) = p.delay_bounds(failures);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..200 {
                let d = p.delay(failures);
                assert!(d >= low && d <= high, "{d:?} outside {low:?}..{high:?}");
                seen.insert(d);
            }
            assert!(seen.len() > 10, "jitter should spread delays");
        }
        let exact = RetryConfig {
            jitter: false,
            ..policy()
        };
        assert_eq!(exact.delay(2), Duration::from_secs(1));
    }

    #[test]
    fn failures_count_across_copies_and_internal_fields_are_stripped() {
        let m = Message {
            stream: Arc::from("s"),
            id: Bytes::from("9-0"),
            fields: vec![
                (Bytes::from("rec_id"), Bytes::from("1")),
                (Bytes::from(FIELD_ATTEMPT), Bytes::from("2")),
                (Bytes::from(FIELD_RETRY_FOR), Bytes::from("g@s")),
                (Bytes::from(FIELD_FIRST_ID), Bytes::from("1-0")),
            ]
            .into(),
            deliveries: 1,
        };
        assert_eq!(previous_failures(&m, "g"), 2);
        // A count made for another group (or stream) does not apply here.
        assert_eq!(previous_failures(&m, "other"), 0);
        let forwarded = Message {
            stream: Arc::from("next"),
            ..m.clone()
        };
        assert_eq!(previous_failures(&forwarded, "g"), 0);
        assert_eq!(
            original_fields(&m.fields),
            vec![(Bytes::from("rec_id"), Bytes::from("1"))]
        );
    }

    #[test]
    fn config_parses_and_validates() {
        let c: RetryConfig = toml::from_str(
            r#"backoff = "exponential"
base = "1s"
max = "5m""#,
        )
        .unwrap();
        assert_eq!(c.max, Duration::from_secs(300));
        assert!(c.validate().is_ok());
        let bad = RetryConfig {
            max: Duration::from_millis(1),
            ..c
        };
        assert!(bad.validate().is_err());
    }
}
