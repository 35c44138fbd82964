//! Sinks: where a flow's batches land, and the commit step that acks only
//! what the sink confirmed.

pub mod clickhouse;
pub mod stream;
