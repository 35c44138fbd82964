//! The exactly-once batch ledger (`delivery = "exactly_once"`).
//!
//! Before a batch is inserted, its id and member entry ids are recorded in
//! Redis; every row carries the batch id in a configured column (and, on
//! servers that have it, the insert carries `insert_deduplication_token`).
//! After the ack the record is dropped. A replica that claims entries of a
//! dead replica looks them up here: if ClickHouse already holds the batch,
//! it only acks; otherwise it re-inserts the identical batch (same members,
//! same order, same batch id). See docs/EXACTLY_ONCE.md for the guarantees.
//!
//! Keys (per flow; the braces are literal, a Redis Cluster hash tag):
//! `sluice:eo:{flow}:open` (set of open batch ids),
//! `sluice:eo:{flow}:batch:{id}` (JSON `[[stream, entry id], …]`, expiring
//! after `ledger_ttl`), `sluice:eo:{flow}:lease:{id}` (the consumer that may
//! insert the batch now, expiring unless renewed: the inserting replica takes
//! it with the record, a recovering one once it has expired).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::Expiration;

use crate::stream::{Message, Result, StreamError};

/// One recorded batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRecord {
    pub id: String,
    /// (stream, entry id) in block order.
    pub members: Vec<(Arc<str>, Bytes)>,
}

pub struct Ledger {
    client: Client,
    prefix: String,
    ttl: Duration,
    /// How long a lease lasts without renewal.
    lease: Duration,
}

/// Renews the lease if we hold it, takes it if nobody does; 0 if another
/// consumer holds it.
const RENEW_LEASE: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// A random UUID (v4) as text: valid for String, FixedString(36) and UUID columns.
pub fn new_batch_id() -> String {
    let b: [u8; 16] = rand::random();
    let hex =
        |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    // Version 4, variant 10xx.
    let mut b6 = b[6];
    b6 = (b6 & 0x0f) | 0x40;
    let mut b8 = b[8];
    b8 = (b8 & 0x3f) | 0x80;
    format!(
        "{}-{}-{:02x}{:02x}-{:02x}{:02x}-{}",
        hex(0..4),
        hex(4..6),
        b6,
        b[7],
        b8,
        b[9],
        hex(10..16)
    )
}

fn encode_members(messages: &[Message]) -> String {
    let pairs: Vec<(&str, String)> = messages
        .iter()
        .map(|m| (&*m.stream, String::from_utf8_lossy(&m.id).into_owned()))
        .collect();
    serde_json::to_string(&pairs).expect("plain strings serialize")
}

fn decode_members(text: &str) -> Option<Vec<(Arc<str>, Bytes)>> {
    let pairs: Vec<(String, String)> = serde_json::from_str(text).ok()?;
    Some(
        pairs
            .into_iter()
            .map(|(s, id)| (Arc::from(s.as_str()), Bytes::from(id)))
            .collect(),
    )
}

impl Ledger {
    /// `lease` must outlast one insert attempt (see `Committer`).
    pub fn new(client: Client, flow: &str, ttl: Duration, lease: Duration) -> Self {
        Ledger {
            client,
            prefix: Self::prefix_for(flow),
            ttl,
            lease,
        }
    }

    fn lease_key(&self, id: &str) -> String {
        format!("{}:lease:{id}", self.prefix)
    }

    /// The flow name is a hash tag: all of a flow's ledger keys sit in one
    /// Redis Cluster slot, so MGET over batch records works there.
    fn prefix_for(flow: &str) -> String {
        format!("sluice:eo:{{{flow}}}")
    }

    fn batch_key(&self, id: &str) -> String {
        format!("{}:batch:{id}", self.prefix)
    }

    fn open_key(&self) -> String {
        format!("{}:open", self.prefix)
    }

    /// Records a batch before its insert, with `holder`'s lease on it (a
    /// new batch id, so nobody else can hold it). Recording again replaces
    /// the member list.
    pub async fn record(&self, id: &str, holder: &str, messages: &[Message]) -> Result<()> {
        let pipeline = self.client.pipeline();
        let _: () = pipeline
            .set(
                self.lease_key(id),
                holder,
                Some(Expiration::PX(self.lease.as_millis() as i64)),
                None,
                false,
            )
            .await?;
        let _: () = pipeline
            .set(
                self.batch_key(id),
                encode_members(messages),
                Some(Expiration::PX(self.ttl.as_millis() as i64)),
                None,
                false,
            )
            .await?;
        let _: () = pipeline.sadd(self.open_key(), id).await?;
        for r in pipeline.try_all::<Value>().await {
            r?;
        }
        Ok(())
    }

    /// Drops a batch's record once its members are acked.
    pub async fn forget(&self, id: &str) -> Result<()> {
        let pipeline = self.client.pipeline();
        let _: () = pipeline.del(self.batch_key(id)).await?;
        let _: () = pipeline.del(self.lease_key(id)).await?;
        let _: () = pipeline.srem(self.open_key(), id).await?;
        for r in pipeline.try_all::<Value>().await {
            r?;
        }
        Ok(())
    }

    /// Every open batch; ids whose record expired are removed from the set.
    pub async fn open_batches(&self) -> Result<Vec<BatchRecord>> {
        let ids: Vec<String> = self.client.smembers(self.open_key()).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One MGET, also on a cluster: the flow's hash tag puts every
        // record in one slot.
        let keys: Vec<String> = ids.iter().map(|id| self.batch_key(id)).collect();
        let texts: Vec<Option<String>> = self.client.mget(keys).await?;
        let mut out = Vec::new();
        let mut expired = Vec::new();
        for (id, text) in ids.into_iter().zip(texts) {
            match text.as_deref().and_then(decode_members) {
                Some(members) => out.push(BatchRecord { id, members }),
                None => expired.push(id),
            }
        }
        if !expired.is_empty() {
            let _: () = self.client.srem(self.open_key(), expired).await?;
        }
        Ok(out)
    }

    /// Renews `holder`'s lease on batch `id`, or takes it if it expired;
    /// false if another holder has it. Only the holder inserts a batch, so a
    /// replica recovers a batch only once its inserter stopped renewing.
    /// Holders are per task (committer, each recovery), not per process, so
    /// a process never races itself.
    pub async fn renew_lease(&self, id: &str, holder: &str) -> Result<bool> {
        static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| Script::from_lua(RENEW_LEASE));
        let held: i64 = script
            .evalsha_with_reload(
                &self.client,
                vec![self.lease_key(id)],
                vec![holder.to_string(), self.lease.as_millis().to_string()],
            )
            .await
            .map_err(StreamError::from)?;
        Ok(held == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flows_ledger_keys_share_one_cluster_slot() {
        let slot = |k: String| fred::util::redis_keyslot(k.as_bytes());
        let prefix = Ledger::prefix_for("events");
        let open = slot(format!("{prefix}:open"));
        for id in [new_batch_id(), new_batch_id()] {
            assert_eq!(slot(format!("{prefix}:batch:{id}")), open);
            assert_eq!(slot(format!("{prefix}:lease:{id}")), open);
        }
    }

    #[test]
    fn batch_ids_are_uuid_v4_text() {
        let id = new_batch_id();
        assert_eq!(id.len(), 36);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{id}");
        assert!(
            matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{id}"
        );
        assert_ne!(new_batch_id(), id);
    }

    #[test]
    fn members_round_trip_in_order() {
        let m = |s: &str, id: &str| Message {
            stream: Arc::from(s),
            id: Bytes::from(id.to_string()),
            fields: vec![],
            deliveries: 1,
        };
        let text = encode_members(&[m("a", "1-0"), m("b\"x", "2-5")]);
        let back = decode_members(&text).unwrap();
        assert_eq!(
            back,
            vec![
                (Arc::from("a"), Bytes::from("1-0")),
                (Arc::from("b\"x"), Bytes::from("2-5"))
            ]
        );
    }
}
