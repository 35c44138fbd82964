//! Schedules on a Redis Cluster whose connections are cut mid-fire. On a
//! cluster a tick fires in steps (guard, XADD into the target's slot,
//! completion); a cut connection makes fred send a command again whose
//! first copy already ran. Each tick must still add at most one entry.

use std::collections::BTreeMap;
use std::time::Duration;

use fred::prelude::*;

use crate::common::*;
use crate::harness::{unique_name, wait_for, RedisCluster, TcpProxy, Worker};

/// A one-master cluster that announces a proxy's port, so every connection
/// a cluster client opens (seed and slot owner alike) goes through it.
async fn cluster_behind_proxy() -> (RedisCluster, TcpProxy) {
    let mut cluster = RedisCluster::start(1).await;
    let proxy = TcpProxy::start(cluster.node(0).addr());
    let direct = cluster.node(0).client().await;
    raw(
        &direct,
        "CONFIG",
        vec![
            "SET".into(),
            "cluster-announce-port".into(),
            proxy.port().to_string().into(),
        ],
    )
    .await;
    let want = format!(":{}", proxy.port());
    wait_for(LONG, "the node announces the proxy", || async {
        let nodes: String = direct
            .custom(
                fred::types::CustomCommand::new_static(
                    "CLUSTER",
                    fred::types::ClusterHash::FirstKey,
                    false,
                ),
                vec!["NODES"],
            )
            .await
            .unwrap_or_default();
        nodes.contains(&want)
    })
    .await;
    (cluster, proxy)
}

#[tokio::test]
async fn a_tick_fires_at_most_once_when_connections_are_cut_mid_fire() {
    let (mut cluster, proxy) = cluster_behind_proxy().await;
    let direct = cluster.node(0).client().await;
    let (name, out) = (unique_name("cutsched"), unique_name("cutticks"));
    let cfg = format!(
        r#"
[redis]
url = "redis-cluster://{addr}"
[worker]
block = "200ms"
[scheduler]
refresh = "200ms"
[[schedule]]
name = "{name}"
every = "1s"
stream = "{out}"
fields = {{ tick = "{{tick}}" }}
"#,
        addr = proxy.addr()
    );
    let mut w = Worker::spawn(&cfg);
    wait_for(LONG, "the schedule fires", || async {
        xlen(&direct, &out).await >= 3
    })
    .await;
    // Every chunk through the proxy waits 150 ms, so a reply is held there
    // well after Redis ran its command. Seen from a direct connection, a new
    // entry means an XADD has run and its reply is still in the proxy: cut
    // every connection then. fred sends the command again on a new one.
    proxy.delay(Duration::from_millis(150));
    const CUTS: u64 = 3;
    for _ in 0..CUTS {
        let seen = xlen(&direct, &out).await;
        wait_for(LONG, "a tick's entry added", || async {
            xlen(&direct, &out).await > seen
        })
        .await;
        proxy.cut_all();
    }
    proxy.pass();
    let before = xlen(&direct, &out).await;
    wait_for(LONG, "ticks fire again after the cuts", || async {
        xlen(&direct, &out).await >= before + 5
    })
    .await;
    w.term();
    w.wait_exit(LONG).await.expect("worker exits");

    let mut per_tick: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, f) in entries(&direct, &out).await {
        let tick: u64 = field(&f, "tick").unwrap().parse().unwrap();
        *per_tick.entry(tick).or_default() += 1;
    }
    let twice: Vec<_> = per_tick.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "ticks fired more than once: {twice:?} (of {} ticks)",
        per_tick.len()
    );
    let key = format!("sluice:schedule:{{{name}}}");
    let fired: Option<String> = direct.hget(&key, "fired").await.unwrap();
    let fired: usize = fired.unwrap_or_default().parse().unwrap_or(0);
    assert_eq!(fired, per_tick.len(), "the fired counter");
}

/// The other way a tick fired twice: replica A took the guard, its XADD
/// was slow (held in the proxy), the guard expired (deleted here, as its
/// 30 s would), and replica B fired the tick. When A's XADD finally
/// arrives it must not add a second entry.
#[tokio::test]
async fn a_slow_xadd_after_its_guard_expired_adds_no_second_entry() {
    use sluice::testing::store::{self, FireOutcome, Target};
    let (mut cluster, proxy) = cluster_behind_proxy().await;
    let direct = cluster.node(0).client().await;
    let through_proxy =
        crate::harness::redis_client(&format!("redis-cluster://{}", proxy.addr())).await;
    let (name, out) = (unique_name("slowsched"), unique_name("slowticks"));
    let config: sluice::config::ScheduleConfig = toml::from_str(&format!(
        "name = \"{name}\"\nevery = \"1s\"\nstream = \"{out}\""
    ))
    .unwrap();
    let spec = sluice::config::schedule::Spec::from_config(&config).unwrap();
    let now = sluice::testing::now_ms();
    store::upsert_from_config(&direct, &spec, false, now)
        .await
        .unwrap();
    assert!(store::activate(&direct, &name, now).await.unwrap());
    let tick = now + 1000;

    proxy.delay(Duration::from_millis(300));
    let a = tokio::spawn({
        let (spec, out) = (spec.clone(), out.clone());
        async move {
            store::fire(
                &through_proxy,
                &spec,
                tick,
                now,
                "replica-a",
                Target {
                    stream: &out,
                    cluster: true,
                },
                spec.render(tick, now),
            )
            .await
        }
    });
    let guard = store::tick_key(&name, tick);
    wait_for(LONG, "A holds the tick's guard", || async {
        let v: Option<String> = direct.get(&guard).await.unwrap();
        v.as_deref() == Some("pending:replica-a")
    })
    .await;
    // A's guard reply is on its way; what A sends next (the XADD) is held.
    proxy.stall();
    let _: () = direct.del(&guard).await.unwrap();
    let b = store::fire(
        &direct,
        &spec,
        tick,
        now,
        "replica-b",
        Target {
            stream: &out,
            cluster: true,
        },
        spec.render(tick, now),
    )
    .await
    .unwrap();
    assert!(matches!(b, FireOutcome::Fired(_)), "{b:?}");
    assert_eq!(xlen(&direct, &out).await, 1);

    proxy.pass();
    let a = tokio::time::timeout(LONG, a)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(a, FireOutcome::AlreadyDone);
    assert_eq!(xlen(&direct, &out).await, 1, "the tick fired twice");
    let fired: Option<String> = direct.hget(store::hash_key(&name), "fired").await.unwrap();
    assert_eq!(fired.as_deref(), Some("1"));
}
