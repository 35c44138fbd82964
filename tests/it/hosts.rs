//! Across hosts, stream → stream: a flow reads Redis A and writes a named
//! connection, Redis B (`[redis.remote.edge]`). At-least-once and
//! exactly-once, a worker SIGKILLed mid-run, the target connection cut
//! mid-run, a crash between the target's
//! XADD and the source's XACK, the target's `max_len` checked on the
//! target, a Redis Cluster target, and `sluice check` naming every
//! connection.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;

use crate::common::*;
use crate::harness::{unique_name, wait_for, RedisCluster, RedisServer, TcpProxy, Worker};

/// `[redis]` = A, `[redis.remote.edge]` = B, one flow `share` from `src` on
/// A to `dst` on B. `flow_extra` goes into `[[flow]]`, `sink_extra` into
/// the sink's table.
fn config(a: &str, b: &str, src: &str, dst: &str, flow_extra: &str, sink_extra: &str) -> String {
    format!(
        r#"
[redis]
url = "{a}"
[redis.remote.edge]
url = "{b}"
[worker]
shutdown_timeout = "20s"
block = "200ms"
[[flow]]
name = "share"
streams = ["{src}"]
group = "g"
read_count = 2000
batch = {{ max_rows = 2000, max_wait = "50ms" }}
claim = {{ min_idle = "2s", every = "500ms" }}
{flow_extra}
[flow.sink]
type = "stream"
redis = "edge"
to = "{dst}"
{sink_extra}
"#
    )
}

const EXACTLY_ONCE: &str = "delivery = \"exactly_once\"";

/// Redis 7's own lag of the group (0: everything delivered), or None
/// before the group exists.
async fn group_lag(client: &Client, stream: &str, group: &str) -> Option<u64> {
    let Value::Array(groups) =
        raw_or_nil(client, "XINFO", vec!["GROUPS".into(), stream.into()]).await
    else {
        return None;
    };
    for g in groups {
        let Value::Array(kv) = g else { continue };
        let map: BTreeMap<String, Value> = kv
            .chunks(2)
            .map(|p| (p[0].as_string().unwrap_or_default(), p[1].clone()))
            .collect();
        if map.get("name").and_then(|v| v.as_string()).as_deref() == Some(group) {
            return map.get("lag").and_then(|v| v.as_u64());
        }
    }
    None
}

/// Everything delivered and acked at the source: nothing more can reach
/// the target.
async fn source_done(client: &Client, stream: &str) -> bool {
    group_lag(client, stream, "g").await == Some(0) && pending(client, stream, "g").await == 0
}

/// `rec_id` of every entry of `stream`, read in pages.
async fn rec_ids(client: &Client, stream: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut from = "-".to_string();
    loop {
        let Value::Array(items) = raw(
            client,
            "XRANGE",
            vec![
                stream.into(),
                from.as_str().into(),
                "+".into(),
                "COUNT".into(),
                10_000.into(),
            ],
        )
        .await
        else {
            break;
        };
        let n = items.len();
        for item in items {
            let Value::Array(parts) = item else { continue };
            from = format!("({}", parts[0].as_string().unwrap_or_default());
            if let Value::Array(flat) = &parts[1] {
                for pair in flat.chunks(2) {
                    if pair[0].as_string().as_deref() == Some("rec_id") {
                        out.push(pair[1].as_string().unwrap().parse().unwrap());
                    }
                }
            }
        }
        if n < 10_000 {
            break;
        }
    }
    out
}

/// (ids missing, ids written more than once) against 0..n.
fn lost_and_doubled(mut ids: Vec<u64>, n: u64) -> (usize, usize) {
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    let doubled = before - ids.len();
    let lost = (0..n).filter(|i| ids.binary_search(i).is_err()).count();
    (lost, doubled)
}

/// 200,000 entries from A to B; the worker is SIGKILLed mid-run and a
/// second one finishes. Every id arrives; in exactly-once mode none twice.
async fn killed_mid_run(exactly_once: bool) {
    const N: usize = 200_000;
    let (a, b) = tokio::join!(RedisServer::start(), RedisServer::start());
    let (ra, rb) = (a.client().await, b.client().await);
    let (src, dst) = (unique_name("hosts_src"), unique_name("hosts_dst"));
    xadd_many(&ra, &src, N, seed_job).await;
    let extra = if exactly_once { EXACTLY_ONCE } else { "" };
    let cfg = config(&a.url(), &b.url(), &src, &dst, extra, "");
    let mut first = Worker::spawn(&cfg);
    wait_for(LONG, "a third on the target", || async {
        xlen(&rb, &dst).await >= N as u64 / 3
    })
    .await;
    first.kill();
    let at_kill = xlen(&rb, &dst).await;
    assert!(at_kill < N as u64, "killed too late: everything had moved");
    let mut second = Worker::spawn(&cfg);
    wait_for(
        Duration::from_secs(240),
        "source fully delivered and acked",
        || async { source_done(&ra, &src).await },
    )
    .await;
    assert!(
        second
            .log_contents()
            .contains("claimed idle pending entries"),
        "the second worker took over the first one's pending entries"
    );
    let (lost, doubled) = lost_and_doubled(rec_ids(&rb, &dst).await, N as u64);
    assert_eq!(lost, 0, "killed at {at_kill}; {doubled} written twice");
    if exactly_once {
        assert_eq!(doubled, 0, "killed at {at_kill}");
        // A clean stop drops the records it kept; what stays is what the
        // killed worker kept after its acks (3 × (read_count + max_rows)),
        // swept after ledger_ttl.
        second.term();
        assert!(second.wait_exit(LONG).await.is_some_and(|s| s.success()));
        let key = sluice::testing::written_key("share", &dst, &src);
        let left = raw(&rb, "HLEN", vec![key.into()])
            .await
            .as_u64()
            .unwrap_or(0);
        assert!(left <= 12_000, "{left} ids left in the written set");
    }
}

#[tokio::test]
async fn exactly_once_across_redis_servers_survives_sigkill_mid_run() {
    killed_mid_run(true).await;
}

#[tokio::test]
async fn at_least_once_across_redis_servers_loses_nothing_when_killed() {
    killed_mid_run(false).await;
}

/// At-least-once writes to B go pipelined on a connection of the sink's
/// own; cutting it (three times, mid-run) fails the writes in flight,
/// which are retried on a new connection: every id arrives.
#[tokio::test]
async fn at_least_once_target_connection_cut_mid_run_loses_nothing() {
    const N: usize = 100_000;
    let (a, b) = tokio::join!(RedisServer::start(), RedisServer::start());
    let (ra, rb) = (a.client().await, b.client().await);
    let proxy = TcpProxy::start(b.addr());
    let (src, dst) = (unique_name("cut_src"), unique_name("cut_dst"));
    xadd_many(&ra, &src, N, seed_job).await;
    let cfg = config(&a.url(), &proxy.redis_url(), &src, &dst, "", "");
    let worker = Worker::spawn(&cfg);
    for quarter in 1..=3u64 {
        wait_for(LONG, "the next quarter on the target", || async {
            xlen(&rb, &dst).await >= quarter * N as u64 / 4
        })
        .await;
        proxy.cut_all();
    }
    wait_for(
        Duration::from_secs(240),
        "source fully delivered and acked",
        || async { source_done(&ra, &src).await },
    )
    .await;
    let (lost, _doubled) = lost_and_doubled(rec_ids(&rb, &dst).await, N as u64);
    assert_eq!(lost, 0);
    assert!(
        worker
            .log_contents()
            .contains("XADD to target streams failed"),
        "a cut connection failed a write, which was retried"
    );
}

/// The crash the exactly-once script exists for, made deterministic: the
/// first worker writes everything to B but cannot ack on A (XACK denied),
/// is SIGKILLed, acks are allowed again and a second worker claims the
/// entries. At-least-once writes them all again; exactly-once adds nothing.
async fn crash_between_write_and_ack(exactly_once: bool) -> (u64, usize) {
    // One batch: the committer retries its ack forever and takes no other.
    const N: usize = 2_000;
    let (a, b) = tokio::join!(RedisServer::start(), RedisServer::start());
    let (ra, rb) = (a.client().await, b.client().await);
    let (src, dst) = (unique_name("crash_src"), unique_name("crash_dst"));
    xadd_many(&ra, &src, N, seed_job).await;
    let extra = if exactly_once { EXACTLY_ONCE } else { "" };
    let cfg = config(&a.url(), &b.url(), &src, &dst, extra, "");
    deny_acks(&ra, true).await;
    let mut first = Worker::spawn(&cfg);
    wait_for(
        LONG,
        "everything written to B, nothing acked on A",
        || async {
            xlen(&rb, &dst).await == N as u64 && first.log_contents().contains("XACK failed")
        },
    )
    .await;
    assert_eq!(pending(&ra, &src, "g").await, N as u64);
    first.kill();
    deny_acks(&ra, false).await;
    let _second = Worker::spawn(&cfg);
    wait_for(LONG, "the second worker acked everything", || async {
        source_done(&ra, &src).await
    })
    .await;
    let ids = rec_ids(&rb, &dst).await;
    let (lost, _) = lost_and_doubled(ids.clone(), N as u64);
    assert_eq!(lost, 0);
    (xlen(&rb, &dst).await, ids.len())
}

#[tokio::test]
async fn exactly_once_adds_nothing_twice_after_a_crash_between_xadd_and_xack() {
    let (len, _) = crash_between_write_and_ack(true).await;
    assert_eq!(len, 2_000);
}

/// The same crash without the script duplicates: what the exactly-once
/// test above guards against does happen.
#[tokio::test]
async fn at_least_once_writes_again_after_a_crash_between_xadd_and_xack() {
    let (len, _) = crash_between_write_and_ack(false).await;
    assert_eq!(len, 4_000);
}

/// Takes EVALSHA away from (or gives it back to) B's default user: the
/// exactly-once writes then fail (and are retried).
async fn allow_scripts(client: &Client, allow: bool) {
    let rule = if allow { "+evalsha" } else { "-evalsha" };
    raw(
        client,
        "ACL",
        vec!["SETUSER".into(), "default".into(), rule.into()],
    )
    .await;
}

/// A dead replica's backlog claimed while the target is slow (each batch
/// takes seconds through a delaying proxy, so the claim pass runs long and
/// interleaves with the worker's own reads): exactly-once still writes
/// every entry once.
#[tokio::test]
async fn exactly_once_with_a_slow_target_and_a_dead_replicas_backlog() {
    const N: usize = 20_000;
    let (a, b) = tokio::join!(RedisServer::start(), RedisServer::start());
    let (ra, rb) = (a.client().await, b.client().await);
    let proxy = TcpProxy::start(b.addr());
    let (src, dst) = (unique_name("self_src"), unique_name("self_dst"));
    xadd_many(&ra, &src, N, seed_job).await;
    let cfg = config(&a.url(), &proxy.redis_url(), &src, &dst, EXACTLY_ONCE, "");
    // The first worker reads ahead while B refuses its writes, then dies
    // holding what it read.
    allow_scripts(&rb, false).await;
    let mut first = Worker::spawn(&cfg);
    wait_for(LONG, "the first worker holds a backlog", || async {
        pending(&ra, &src, "g").await >= 8_000
    })
    .await;
    first.kill();
    allow_scripts(&rb, true).await;
    proxy.delay(Duration::from_millis(150));
    let second = Worker::spawn(&cfg);
    wait_for(
        Duration::from_secs(240),
        "source fully delivered and acked",
        || async { source_done(&ra, &src).await },
    )
    .await;
    assert!(second
        .log_contents()
        .contains("claimed idle pending entries"));
    let (lost, doubled) = lost_and_doubled(rec_ids(&rb, &dst).await, N as u64);
    assert_eq!((lost, doubled), (0, 0));
}

/// The fix for duplicates the SIGKILL test found under load: a second copy
/// of an entry inside one process (its own claim pass took it back while
/// the first copy was being written: a starved process) must find its
/// record after the first copy was acked. Dropping records at the ack
/// (`keep` = 0, the first version) writes the copy again.
#[tokio::test]
async fn a_second_copy_of_an_acked_entry_finds_its_record() {
    use sluice::testing::StreamOnce;
    use sluice::testing::StreamSink;
    use std::sync::Arc;
    let b = RedisServer::start().await;
    let rb = b.client().await;
    let dst = unique_name("copy_dst");
    let cfg: sluice::config::StreamSinkConfig = toml::from_str(&format!("to = \"{dst}\"")).unwrap();
    let sink = Arc::new(StreamSink::new(&cfg, Default::default(), Vec::new()));
    let mut router = sink.router();
    let messages: Vec<sluice::Message> = (0..10)
        .map(|i| sluice::Message {
            stream: Arc::from("src"),
            id: format!("{}-0", i + 1).into(),
            fields: vec![("rec_id".into(), i.to_string().into())].into(),
            deliveries: 1,
        })
        .collect();
    let routes: Vec<_> = messages.iter().map(|m| router.route(m).unwrap()).collect();
    let stop = tokio_util::sync::CancellationToken::new();
    // keep = 0: the two copies are written again (12).
    for (keep, want) in [(100, 10), (0, 12)] {
        raw(&rb, "DEL", vec![dst.as_str().into()]).await;
        let once = StreamOnce::new(&format!("f{keep}"), Duration::from_secs(3600), keep);
        once.write(&rb, &messages, &routes, &stop).await.unwrap();
        once.forget(&rb, &messages, &routes).await; // the first copy acked
        once.write(&rb, &messages[3..5], &routes[3..5], &stop)
            .await
            .unwrap();
        assert_eq!(xlen(&rb, &dst).await, want, "keep = {keep}");
    }
}

/// The target's cap is checked on the target (B), not on A: the flow
/// pauses at B's `max_len` and nothing is trimmed on either side.
#[tokio::test]
async fn remote_target_max_len_pauses_the_flow_and_nothing_is_trimmed() {
    const N: usize = 1_000;
    const CAP: u64 = 100;
    let (a, b) = tokio::join!(RedisServer::start(), RedisServer::start());
    let (ra, rb) = (a.client().await, b.client().await);
    let (src, dst) = (unique_name("cap_src"), unique_name("cap_dst"));
    xadd_many(&ra, &src, N, seed_job).await;
    // A stream of the same name on A is far from the cap: only B's counts.
    let cfg = config(
        &a.url(),
        &b.url(),
        &src,
        &dst,
        "",
        &format!("max_len = {CAP}\ncheck_every = \"50ms\""),
    );
    let w = Worker::spawn(
        &cfg.replace("read_count = 2000", "read_count = 50")
            .replace("max_rows = 2000", "max_rows = 50"),
    );
    wait_for(LONG, "B at its cap and the flow paused", || async {
        xlen(&rb, &dst).await == CAP && w.log_contents().contains("flow paused")
    })
    .await;
    assert_eq!(xlen(&ra, &dst).await, 0, "nothing written to A");
    assert_eq!(xlen(&ra, &src).await, N as u64, "source trimmed");
    // Drain B as its consumer would; it never holds more than the cap.
    let seen = drain_capped(&rb, &dst, CAP, N, "rec_id").await;
    assert_eq!(lost_and_doubled(seen, N as u64), (0, 0));
    wait_for(LONG, "source acked", || async {
        source_done(&ra, &src).await
    })
    .await;
    assert!(w.log_contents().contains("flow resumed"));
}

/// Exactly-once into a 3-master Redis Cluster target with a sharded
/// stream (one script per shard, each on its node), after the same crash
/// between write and ack.
#[tokio::test]
async fn exactly_once_into_a_sharded_cluster_target() {
    const N: usize = 2_000; // one batch, as in crash_between_write_and_ack
    let (a, cluster) = tokio::join!(RedisServer::start(), RedisCluster::start(3));
    let (ra, rc) = (a.client().await, cluster.client().await);
    let (src, dst) = (unique_name("ring_src"), unique_name("ring_dst"));
    xadd_many(&ra, &src, N, seed_job).await;
    let cfg = format!(
        "{}\n[streams.\"{dst}\"]\nshards = 3\n",
        config(&a.url(), &cluster.url(), &src, &dst, EXACTLY_ONCE, "")
    );
    let shards: Vec<String> = (0..3).map(|i| format!("{dst}:{{{i}}}")).collect();
    let total = |rc: Client, shards: Vec<String>| async move {
        let mut n = 0;
        for s in &shards {
            n += xlen(&rc, s).await;
        }
        n
    };
    deny_acks(&ra, true).await;
    let mut first = Worker::spawn(&cfg);
    wait_for(LONG, "everything on the cluster, nothing acked", || async {
        total(rc.clone(), shards.clone()).await == N as u64
    })
    .await;
    first.kill();
    deny_acks(&ra, false).await;
    let _second = Worker::spawn(&cfg);
    wait_for(LONG, "acked", || async { source_done(&ra, &src).await }).await;
    let mut ids = Vec::new();
    for s in &shards {
        let part = rec_ids(&rc, s).await;
        assert!(!part.is_empty(), "{s} got nothing: the shards are used");
        ids.extend(part);
    }
    assert_eq!(lost_and_doubled(ids, N as u64), (0, 0));
    assert_eq!(total(rc.clone(), shards.clone()).await, N as u64);
}

#[tokio::test]
async fn check_connects_to_every_named_connection_and_names_them() {
    let (a, b) = tokio::join!(RedisServer::start(), RedisServer::start());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    let (src, dst) = (unique_name("chk_src"), unique_name("chk_dst"));
    let text = config(&a.url(), &b.url(), &src, &dst, EXACTLY_ONCE, "");
    std::fs::write(&path, &text).unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("redis `edge`: {} (version", b.url())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "stream `{src}` on redis `default` → stream sink on redis `edge` (exactly-once)"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("targets on redis `edge`"), "{stdout}");

    // A named connection that is down fails the check, naming it.
    let down = text.replace(&b.url(), "redis://127.0.0.1:1");
    std::fs::write(&path, down).unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("redis.remote.edge.url"),
        "{err}"
    );

    // An unknown name is refused by validation, naming the key.
    std::fs::write(&path, text.replace("redis = \"edge\"", "redis = \"egde\"")).unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("flow[0].sink.redis") && err.contains("\"egde\""),
        "{err}"
    );
}
