//! The fleet-wide insert budget of a ClickHouse table
//! (`sink.max_inserts_per_second`): every replica, and every flow inserting
//! into the same table, reserves a slot before sealing a batch, and the
//! slots are `1 / max_inserts_per_second` apart.
//!
//! One Redis key per table, `sluice:budget:{<db>.<table>}` (the braces are
//! literal: a Redis Cluster hash tag; a table on a named connection is
//! `{<connection>:<db>.<table>}`), holding the time of the next free slot in
//! Redis's own clock (microseconds). One script reserves a slot: it reads
//! `TIME`, takes `max(next free slot, now)` and moves the next free slot one
//! interval on. The reply is how long to wait for the reserved slot, so a
//! replica needs one round trip per batch and never polls; reservations are
//! served first come first served, so no replica starves. A replica that dies
//! holding a reservation wastes that one slot. The key expires once its slot
//! is in the past.
//!
//! This is a reservation form of a token bucket with a burst of one: over
//! any window of `w` seconds at most `1 + w × max_inserts_per_second`
//! batches are sealed fleet-wide.

use std::sync::LazyLock;
use std::time::Duration;

use crate::config::connections::DEFAULT;
use fred::prelude::*;
use fred::types::scripts::Script;

/// KEYS[1] = the budget key; ARGV[1] = microseconds between slots.
/// Returns the microseconds until the reserved slot (0: now).
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local next_free = slot + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_free),
  'PX', math.ceil((next_free - now) / 1000) + 1000)
return slot - now
"#;

static RESERVE_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(RESERVE));

/// A table's insert budget in Redis.
#[derive(Clone)]
pub struct Budget {
    client: Client,
    key: String,
    /// Between two slots, in microseconds.
    interval_us: u64,
}

/// The budget key of `db.table` on connection `connection` (`sink.clickhouse`;
/// None or `default`: the default `[clickhouse]`).
pub fn key(connection: Option<&str>, db: &str, table: &str) -> String {
    match connection.filter(|c| *c != DEFAULT) {
        Some(c) => format!("sluice:budget:{{{c}:{db}.{table}}}"),
        None => format!("sluice:budget:{{{db}.{table}}}"),
    }
}

impl Budget {
    pub fn new(client: Client, key: String, inserts_per_second: f64) -> Budget {
        let interval_us = (1_000_000.0 / inserts_per_second).round().max(1.0) as u64;
        Budget {
            client,
            key,
            interval_us,
        }
    }

    /// The time between two slots.
    pub fn interval(&self) -> Duration {
        Duration::from_micros(self.interval_us)
    }

    /// Reserves the next free slot; returns how long until it comes.
    pub async fn reserve(&self) -> Result<Duration, fred::error::Error> {
        let wait_us: i64 = RESERVE_S
            .evalsha_with_reload(
                &self.client,
                vec![self.key.clone()],
                vec![self.interval_us.to_string()],
            )
            .await?;
        Ok(Duration::from_micros(wait_us.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_per_table_in_one_slot() {
        assert_eq!(key(None, "db", "events"), "sluice:budget:{db.events}");
        assert_eq!(key(Some("default"), "db", "t"), "sluice:budget:{db.t}");
        assert_eq!(
            key(Some("cold"), "db", "events"),
            "sluice:budget:{cold:db.events}"
        );
    }
}
