//! Internals that the integration tests, benches and fuzz targets drive
//! directly (a reply parser, the block encoder, a ledger, …). Not a stable
//! API: a program embedding sluice uses the crate root's re-exports.

pub use crate::clickhouse::convert::FieldValue;
pub use crate::clickhouse::native::BlockEncoder;
pub use crate::clickhouse::rows::{OpenBatch, RowMapper};
pub use crate::clickhouse::schema::{ColumnSpec, ColumnType, DefaultKind, TableSchema};
pub use crate::flow::keep_alive::KeepAlive;
pub use crate::handler::exec::ExecHandler;
pub use crate::obs::metrics::Metrics;
pub use crate::obs::status::{stream_status, LagSource};
pub use crate::redis::held::Held;
pub use crate::redis::{client, commands, delayed, group, reply};
pub use crate::schedule::store;
pub use crate::sink::clickhouse::budget::{self, Budget};
pub use crate::sink::clickhouse::exactly_once::ledger::Ledger;
pub use crate::sink::clickhouse::quote_identifier;
pub use crate::sink::clickhouse::shard::city_hash64;
pub use crate::sink::stream::once::{written_key, StreamOnce};
pub use crate::sink::stream::StreamSink;
pub use crate::time::now_ms;
