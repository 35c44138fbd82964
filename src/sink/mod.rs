//! Sinks: where a flow's batches land, and the commit step that acks only
//! what the sink confirmed.

pub mod ack_gate;
pub mod budget;
pub mod clickhouse;
pub mod commit;
pub mod endpoints;
pub mod eo_table;
pub mod escalation;
pub mod exactly_once;
pub mod fenced;
mod isolate;
pub mod ledger;
pub mod mapping;
pub mod pacing;
pub mod pressure;
pub mod recover;
pub mod retry;
pub mod shard;
pub mod stream;
pub mod stream_once;
pub mod stuck;
