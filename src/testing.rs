//! Internals that the integration tests, benches and fuzz targets drive
//! directly (a reply parser, the block encoder, a ledger, …). Not a stable
//! API: a program embedding sluice uses the crate root's re-exports.

pub use crate::clickhouse::convert::FieldValue;
pub use crate::clickhouse::native::BlockEncoder;
pub use crate::clickhouse::rows::{OpenBatch, RowMapper};
pub use crate::clickhouse::schema::{ColumnSpec, ColumnType, DefaultKind, TableSchema};
pub use crate::flow::keep_alive::KeepAlive;
pub use crate::handler::exec::ExecHandler;
pub use crate::memory::return_large_blocks_when_freed;
pub use crate::obs::metrics::Metrics;
pub use crate::obs::status::{stream_status, LagSource};
pub use crate::redis::acks::Acks;
pub use crate::redis::held::Held;
pub use crate::sink::clickhouse::budget::Budget;
pub use crate::sink::clickhouse::exactly_once::ledger::Ledger;
pub use crate::sink::clickhouse::quote_identifier;
pub use crate::sink::clickhouse::shard::city_hash64;
pub use crate::sink::stream::once::{written_key, StreamOnce};
pub use crate::sink::stream::StreamSink;
pub use crate::time::now_ms;

/// Redis connections.
pub mod client {
    pub use crate::redis::client::connect;
}

/// The stream commands sluice issues.
pub mod commands {
    pub use crate::redis::commands::{auto_claim, len, range, read_group, touch};
}

/// Raw reply parsing (the fuzz target's entry points): fred's frames, and
/// the direct connection's bytes.
pub mod reply {
    pub use crate::redis::direct::{pending_ids_reply, read_group_reply};
    pub use crate::redis::reply::{auto_claim, check, key_values, pending_entries, read_group};
    pub use crate::redis::resp::Scan;
}

/// Consumer-group upkeep.
pub mod group {
    pub use crate::redis::group::prune_consumers;
}

/// The delayed set.
pub mod delayed {
    pub use crate::redis::delayed::{
        enqueue, enqueue_at, invalid_key, promote, set_key, waiting, Due, INDEX_KEY,
    };
}

/// Schedules' state in Redis.
pub mod store {
    pub use crate::schedule::store::{
        activate, fire, hash_key, tick_key, upsert_from_config, FireOutcome, Target,
    };
}

/// The fleet-wide insert budget.
pub mod budget {
    pub use crate::sink::clickhouse::budget::key;
}
