//! A stream sink's target capacity (`max_len`) against real Redis: what
//! counts toward it (entries still unprocessed downstream, not XLEN), that
//! replicas together never push a target past it, and the bounded registry
//! of templated targets.

use std::collections::BTreeMap;
use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;

use crate::common::*;
use crate::dataflow::config;
use crate::harness::{free_port, unique_name, wait_for, RedisServer, Worker};
use crate::observability::{sample, scrape};

/// A group's entries still to process: its lag (undelivered) + pending.
async fn unprocessed(client: &Client, stream: &str, group: &str) -> u64 {
    let Value::Array(groups) = raw(client, "XINFO", vec!["GROUPS".into(), stream.into()]).await
    else {
        return 0;
    };
    for g in groups {
        let Value::Array(kv) = g else { continue };
        let get = |name: &str| {
            kv.chunks(2)
                .find(|p| p[0].as_string().as_deref() == Some(name))
                .map(|p| p[1].clone())
        };
        if get("name").and_then(|v| v.as_string()).as_deref() != Some(group) {
            continue;
        }
        let lag = get("lag").and_then(|v| v.as_u64()).expect("lag is known");
        let pending = get("pending").and_then(|v| v.as_u64()).unwrap_or(0);
        return lag + pending;
    }
    panic!("no group {group} on {stream}");
}

/// The target's consumer acks what it processed and deletes nothing, so
/// XLEN only grows: the flow must still go on, pacing itself on what the
/// target's group has not processed yet, and never past the cap.
#[tokio::test]
async fn a_target_whose_group_acks_without_deleting_keeps_the_flow_going() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let (src, dst) = (unique_name("cap_src"), unique_name("cap_dst"));
    const N: usize = 400;
    const CAP: u64 = 50;
    xadd_many(&rc, &src, N, seed_job).await;
    raw(
        &rc,
        "XGROUP",
        vec![
            "CREATE".into(),
            dst.as_str().into(),
            "down".into(),
            "$".into(),
            "MKSTREAM".into(),
        ],
    )
    .await;
    let _w = Worker::spawn(&config(
        &redis.url(),
        &format!(
            r#"
[streams."{dst}"]
max_len = {CAP}
[[flow]]
name = "cap"
streams = ["{src}"]
group = "g"
read_count = 50
batch = {{ max_rows = 50, max_wait = "50ms" }}
sink = {{ type = "stream", to = "{dst}", check_every = "20ms" }}
"#
        ),
    ));
    // Downstream: read a few at a time, ack, never delete.
    let mut seen: Vec<u64> = Vec::new();
    let mut most = 0;
    let started = std::time::Instant::now();
    while seen.len() < N {
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "the flow stalled: {} of {N} arrived, XLEN {}",
            seen.len(),
            xlen(&rc, &dst).await
        );
        let now = unprocessed(&rc, &dst, "down").await;
        most = most.max(now);
        let reply = raw(
            &rc,
            "XREADGROUP",
            vec![
                "GROUP".into(),
                "down".into(),
                "c".into(),
                "COUNT".into(),
                Value::Integer(10),
                "BLOCK".into(),
                Value::Integer(100),
                "STREAMS".into(),
                dst.as_str().into(),
                ">".into(),
            ],
        )
        .await;
        let Value::Array(streams) = reply else {
            continue;
        };
        let Value::Array(parts) = &streams[0] else {
            unreachable!()
        };
        let Value::Array(items) = &parts[1] else {
            unreachable!()
        };
        let mut ack: Vec<Value> = vec![dst.as_str().into(), "down".into()];
        for item in items {
            let Value::Array(entry) = item else { continue };
            let Value::Array(flat) = &entry[1] else {
                continue;
            };
            let rec = flat
                .chunks(2)
                .find(|p| p[0].as_string().as_deref() == Some("rec_id"))
                .and_then(|p| p[1].as_string())
                .expect("rec_id");
            seen.push(rec.parse().unwrap());
            ack.push(entry[0].clone());
        }
        raw(&rc, "XACK", ack).await;
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..N as u64).collect::<Vec<_>>(),
        "lost or duplicated"
    );
    assert!(most <= CAP, "unprocessed reached {most} (cap {CAP})");
    assert_eq!(xlen(&rc, &dst).await, N as u64, "nothing was trimmed");
    wait_for(LONG, "source acked", || async {
        pending(&rc, &src, "g").await == 0
    })
    .await;
}

/// Takes every entry of `stream` out at once (one script: XRANGE, XDEL),
/// returning their rec_ids. As nothing else removes entries, the count a
/// drain takes is the most the stream held since the drain before.
async fn drain_all(client: &Client, stream: &str) -> Vec<u64> {
    const DRAIN: &str = r#"
local items = redis.call('XRANGE', KEYS[1], '-', '+')
local out = {}
for _, e in ipairs(items) do
  redis.call('XDEL', KEYS[1], e[1])
  for i = 1, #e[2], 2 do
    if e[2][i] == 'rec_id' then table.insert(out, e[2][i + 1]) end
  end
end
return out
"#;
    let reply = raw(
        client,
        "EVAL",
        vec![DRAIN.into(), Value::Integer(1), stream.into()],
    )
    .await;
    match reply {
        Value::Array(ids) => ids
            .iter()
            .map(|v| v.as_string().unwrap().parse().unwrap())
            .collect(),
        _ => Vec::new(),
    }
}

/// Three replicas write to one capped target that a consumer drains
/// whenever it is full. Each replica checks the room and writes; without an
/// atomic check-and-add, replicas that check at once all see the same room
/// and together pass the cap by up to (replicas − 1) × batch.
#[tokio::test]
async fn replicas_together_never_push_a_target_past_its_cap() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let (src, dst) = (unique_name("race_src"), unique_name("race_dst"));
    const N: usize = 1500;
    const CAP: u64 = 40;
    xadd_many(&rc, &src, N, seed_job).await;
    let cfg = config(
        &redis.url(),
        &format!(
            r#"
[[flow]]
name = "race"
streams = ["{src}"]
group = "g"
read_count = 40
batch = {{ max_rows = 40, max_wait = "20ms" }}
sink = {{ type = "stream", to = "{dst}", max_len = {CAP}, check_every = "5ms" }}
"#
        ),
    );
    let _workers: Vec<Worker> = (0..3).map(|_| Worker::spawn(&cfg)).collect();
    let mut seen: Vec<u64> = Vec::new();
    let mut most = 0;
    let mut drains = 0;
    while seen.len() < N {
        drains += 1;
        assert!(drains < 10_000, "no progress: {} of {N}", seen.len());
        // Drain once the target is full: the paused replicas then race
        // for the room.
        wait_for(LONG, "the target fills up", || async {
            let len = xlen(&rc, &dst).await;
            len >= CAP || seen.len() as u64 + len >= N as u64
        })
        .await;
        let taken = drain_all(&rc, &dst).await;
        most = most.max(taken.len() as u64);
        seen.extend(taken);
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..N as u64).collect::<Vec<_>>(),
        "lost or duplicated"
    );
    assert!(
        most <= CAP,
        "the target held {most} entries (cap {CAP}); {drains} drains"
    );
}

/// Templated targets beyond `max_targets`: idle ones are evicted from the
/// registry (counted in a metric), nothing is lost or misrouted.
#[tokio::test]
async fn templated_targets_beyond_max_targets_are_evicted_and_nothing_is_lost() {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let src = unique_name("tpl_src");
    const N: usize = 1000;
    // More kinds than the batches in flight can name at once (three of
    // 20 rows), so some targets are idle when the registry is full.
    const KINDS: usize = 200;
    xadd_many(&rc, &src, N, |i| {
        vec![
            ("rec_id".into(), i.to_string().into_bytes()),
            ("kind".into(), format!("k{}", i % KINDS).into_bytes()),
        ]
    })
    .await;
    let port = free_port();
    let _w = Worker::spawn(&config(
        &redis.url(),
        &format!(
            r#"
[metrics]
listen = "127.0.0.1:{port}"
[[flow]]
name = "tpl"
streams = ["{src}"]
group = "g"
read_count = 20
batch = {{ max_rows = 20, max_wait = "20ms" }}
sink = {{ type = "stream", to = "{src}.{{kind}}", max_len = 1000, max_targets = 4 }}
"#
        ),
    ));
    wait_for(LONG, "source acked", || async {
        pending(&rc, &src, "g").await == 0 && {
            let mut total = 0;
            for k in 0..KINDS {
                total += xlen(&rc, &format!("{src}.k{k}")).await;
            }
            total == N as u64
        }
    })
    .await;
    let mut by_kind: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for k in 0..KINDS {
        for (_, f) in entries(&rc, &format!("{src}.k{k}")).await {
            by_kind
                .entry(k)
                .or_default()
                .push(field(&f, "rec_id").unwrap().parse().unwrap());
        }
    }
    for (k, ids) in &by_kind {
        assert!(ids.iter().all(|i| *i as usize % KINDS == *k), "misrouted");
    }
    let text = scrape(port).await;
    let evicted = sample(
        &text,
        "sluice_stream_sink_targets_evicted_total",
        &[("flow", "tpl")],
    )
    .expect("eviction counter");
    let held =
        sample(&text, "sluice_stream_sink_targets", &[("flow", "tpl")]).expect("registry gauge");
    assert!(evicted > 0.0, "no target was evicted:\n{text}");
    // max_targets + the targets of the batches in flight, not all 200.
    assert!(held <= (4 + 3 * 20) as f64, "registry holds {held}");
}
