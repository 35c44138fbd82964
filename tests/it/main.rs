//! The integration suite: one binary, real servers. Each test starts its own
//! Redis and ClickHouse on free loopback ports (see `harness`) and uses its
//! own stream and table names, so tests run in parallel and can stop,
//! restart and fault-inject their servers.

mod bad_input;
mod budget;
mod ch_endpoints;
mod ch_source;
mod chaos;
mod claim;
mod cluster;
mod cold_move;
mod common;
mod console;
mod dataflow;
mod dead;
mod delayed;
mod delivery;
mod escalation;
mod exactly_once;
mod exec_replies;
mod harness;
mod harness_selftest;
mod hosts;
mod http_entry;
mod ingest;
mod ledger;
mod lifecycle;
mod observability;
mod oom;
mod outage;
mod probe;
mod redis_version;
mod schedule;
mod schedule_cuts;
mod schema_change;
mod security;
mod startup;
mod stream_capacity;
