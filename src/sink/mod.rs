//! Sinks: where a flow's batches land, and the commit step that acks only
//! what the sink confirmed.

pub mod clickhouse;
pub mod commit;
pub mod endpoints;
pub mod exactly_once;
pub mod fenced;
pub mod ledger;
pub mod recover;
pub mod retry;
pub mod shard;
pub mod stream;
pub mod stream_once;
