//! What the end-to-end benches share: knobs from the environment, the
//! `cargo bench`-only guard, the seed-shaped producer and Redis's own
//! per-command time.
#![allow(dead_code)]

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};

/// A command routed to `key`'s slot (ignored by a single Redis).
pub fn cmd(name: &'static str, key: &str) -> CustomCommand {
    let slot = fred::util::redis_keyslot(key.as_bytes());
    CustomCommand::new_static(name, ClusterHash::Custom(slot), false)
}

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `cargo test --all-targets` runs bench binaries without `--bench`: these
/// take minutes, so they run only under `cargo bench`. False (and says so)
/// when skipped.
pub fn under_cargo_bench(name: &str) -> bool {
    let run = std::env::args().any(|a| a == "--bench");
    if !run {
        println!("{name}: skipped (run with `cargo bench --bench {name}`)");
    }
    run
}

/// XADDs seed-shaped 4-field jobs `rec_id` = `from..from + n`, round-robin
/// over `streams`, pipelined 5,000 at a time.
pub async fn enqueue(client: &Client, streams: &[&str], from: usize, n: usize) {
    let mut i = from;
    while i < from + n {
        let end = (i + 5000).min(from + n);
        let pipeline = client.pipeline();
        for j in i..end {
            let stream = streams[j % streams.len()];
            let args: Vec<Value> = vec![
                stream.into(),
                "*".into(),
                "rec_id".into(),
                j.to_string().into(),
                "task_for".into(),
                ["a", "b", "c"][j % 3].into(),
                "function_type".into(),
                if j % 2 == 0 { "sum" } else { "avg" }.into(),
                "data".into(),
                format!("{{\"x\":{j}}}").into(),
            ];
            let _: Value = pipeline.custom(cmd("XADD", stream), args).await.unwrap();
        }
        let _: Vec<Value> = pipeline.all().await.unwrap();
        i = end;
    }
}

/// `INFO commandstats` of one node: command → (calls, usec).
pub async fn commandstats(client: &Client) -> HashMap<String, (u64, u64)> {
    let info: String = client
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .unwrap();
    let mut out = HashMap::new();
    for line in info.lines() {
        let Some((name, stats)) = line
            .strip_prefix("cmdstat_")
            .and_then(|r| r.split_once(':'))
        else {
            continue;
        };
        let (mut calls, mut usec) = (0, 0);
        for kv in stats.split(',') {
            match kv.split_once('=') {
                Some(("calls", v)) => calls = v.parse().unwrap_or(0),
                Some(("usec", v)) => usec = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        out.insert(name.to_string(), (calls, usec));
    }
    out
}
