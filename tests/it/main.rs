//! The integration suite: one binary, real servers. Each test starts its own
//! Redis and ClickHouse on free loopback ports (see `harness`) and uses its
//! own stream and table names, so tests run in parallel and can stop,
//! restart and fault-inject their servers.

mod bad_input;
mod ch_endpoints;
mod chaos;
mod cluster;
mod common;
mod dataflow;
mod dead;
mod delayed;
mod delivery;
mod exactly_once;
mod harness;
mod harness_selftest;
mod http_entry;
mod ingest;
mod ledger;
mod lifecycle;
mod observability;
mod outage;
mod schedule;
mod security;
