//! The integration suite: one binary, real servers. Each test starts its own
//! Redis and ClickHouse on free loopback ports (see `harness`) and uses its
//! own stream and table names, so tests run in parallel and can stop,
//! restart and fault-inject their servers.

mod common;
mod delivery;
mod harness;
mod harness_selftest;
mod ingest;
mod lifecycle;
mod outage;
