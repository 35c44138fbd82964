//! Tests of the test harness itself: real servers started, stopped and
//! restarted; the proxy's fault modes against real ClickHouse HTTP requests
//! and a real Redis client; polling helpers; child-process cleanup.
use crate::harness::{
    clickhouse_client, millis, port_open, redis_client, secs, unique_name, wait_for, wait_some,
    wait_until, ClickHouseServer, ProxyMode, RedisServer, TcpProxy, Worker,
};
use fred::prelude::*;
use std::collections::HashSet;
use std::time::Instant;

#[test]
fn free_ports_and_names_are_unique() {
    let ports: HashSet<u16> = (0..200).map(|_| crate::harness::free_port()).collect();
    assert_eq!(ports.len(), 200);
    let names: HashSet<String> = (0..1000).map(|_| unique_name("t:x-y")).collect();
    assert_eq!(names.len(), 1000);
    let name = names.into_iter().next().unwrap();
    assert!(name.starts_with("t_x_y_"), "{name}");
    assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
}

#[tokio::test]
async fn wait_helpers_poll_until_true() {
    let start = Instant::now();
    wait_until(secs(5), || async move { start.elapsed() > millis(100) }).await;
    let mut n = 0;
    let got = wait_some(secs(5), || {
        n += 1;
        let v = n;
        async move { (v >= 3).then_some(v) }
    })
    .await;
    assert_eq!(got, 3);
}

#[tokio::test]
#[should_panic(expected = "timed out after")]
async fn wait_until_panics_on_timeout() {
    wait_for(millis(100), "something that never happens", || async {
        false
    })
    .await;
}

#[tokio::test]
#[should_panic(expected = "still running at the deadline")]
async fn wait_until_panics_when_check_hangs() {
    wait_until(millis(100), || async {
        std::future::pending::<()>().await;
        true
    })
    .await;
}

#[tokio::test]
async fn redis_start_stop_restart() {
    let mut redis = RedisServer::start().await;
    assert_ne!(redis.port(), 6379);
    let client = redis.client().await;
    let key = unique_name("k");
    let _: () = client.set(&key, "v", None, None, false).await.unwrap();
    let got: String = client.get(&key).await.unwrap();
    assert_eq!(got, "v");

    redis.stop().await;
    assert!(!redis.is_running());
    assert!(!port_open(redis.port()).await, "port still open after stop");
    // `--save ""` by default: nothing is persisted.
    assert!(!redis.dir().join("dump.rdb").exists());

    redis.start_again().await;
    // The old client reconnects by itself.
    wait_until(secs(10), || async {
        client.ping::<String>(None).await.is_ok()
    })
    .await;
    let n: u64 = client.exists(&key).await.unwrap();
    assert_eq!(
        n, 0,
        "data should not survive a restart without persistence"
    );
}

#[tokio::test]
async fn redis_aof_survives_sigkill() {
    let mut redis =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let client = redis.client().await;
    let stream = unique_name("s");
    for i in 0..10 {
        let _: String = client
            .xadd(&stream, false, None, "*", vec![("n", i)])
            .await
            .unwrap();
    }
    redis.kill();
    assert!(!port_open(redis.port()).await);
    redis.start_again().await;
    let fresh = redis.client().await;
    let len: u64 = fresh.xlen(&stream).await.unwrap();
    assert_eq!(len, 10);
}

#[tokio::test]
async fn clickhouse_start_query_stop_restart() {
    let mut ch = ClickHouseServer::start().await;
    assert!(!ch.version().await.is_empty());
    let table = unique_name("t");
    ch.exec(&format!(
        "CREATE TABLE {table} (id UInt64, s String) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    ch.exec(&format!("INSERT INTO {table} VALUES (1, 'a'), (2, 'b?')"))
        .await;
    assert_eq!(ch.count(&table).await, 2);
    assert_eq!(
        ch.query_tsv(&format!("SELECT id, s FROM {table} ORDER BY id"))
            .await,
        "1\ta\n2\tb?\n"
    );
    assert_eq!(ch.query_u64("SELECT toUInt8(7)").await, 7);
    let nums = ch
        .client()
        .query("SELECT number FROM system.numbers LIMIT 3")
        .fetch_all::<u64>()
        .await
        .unwrap();
    assert_eq!(nums, vec![0, 1, 2]);
    assert!(ch.try_exec("SELECT * FROM no_such_table").await.is_err());

    ch.stop().await;
    assert!(!ch.ping().await);
    assert!(!port_open(ch.http_port()).await);
    ch.start_again().await;
    assert_eq!(
        ch.count(&table).await,
        2,
        "MergeTree data survives a restart"
    );
    ch.kill();
    ch.start_again().await;
    assert_eq!(ch.count(&table).await, 2);
}

#[tokio::test]
async fn servers_run_side_by_side() {
    let (a, b) = tokio::join!(ClickHouseServer::start(), ClickHouseServer::start());
    let (r1, r2) = tokio::join!(RedisServer::start(), RedisServer::start());
    let ports: HashSet<u16> = [
        a.http_port(),
        a.tcp_port(),
        b.http_port(),
        b.tcp_port(),
        r1.port(),
        r2.port(),
    ]
    .into();
    assert_eq!(ports.len(), 6);
    a.exec("CREATE TABLE only_in_a (x UInt8) ENGINE = Memory")
        .await;
    assert_eq!(
        a.query_u64("SELECT count() FROM system.tables WHERE name = 'only_in_a'")
            .await,
        1
    );
    assert_eq!(
        b.query_u64("SELECT count() FROM system.tables WHERE name = 'only_in_a'")
            .await,
        0
    );
}

async fn ch_sum_via(url: &str) -> clickhouse::error::Result<u64> {
    clickhouse_client(url)
        .query("SELECT sum(number) FROM numbers(1000)")
        .fetch_one::<u64>()
        .await
}

#[tokio::test]
async fn proxy_pass_refuse_pass_with_clickhouse() {
    let ch = ClickHouseServer::start().await;
    let proxy = TcpProxy::start(ch.http_addr());
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    assert_eq!(ch_sum_via(&proxy.url()).await.unwrap(), 499_500);

    proxy.refuse();
    let t = Instant::now();
    let err = ch_sum_via(&proxy.url()).await;
    assert!(err.is_err(), "request went through a refusing proxy");
    assert!(t.elapsed() < secs(2), "refusal took {:?}", t.elapsed());

    proxy.pass();
    assert_eq!(ch_sum_via(&proxy.url()).await.unwrap(), 499_500);
    assert!(proxy.accepted() >= 3);
}

#[tokio::test]
async fn proxy_refuse_cuts_in_flight_request() {
    let ch = ClickHouseServer::start().await;
    let proxy = TcpProxy::start(ch.http_addr());
    let url = proxy.url();
    let t = Instant::now();
    let slow = tokio::spawn(async move {
        clickhouse_client(&url)
            .query("SELECT sleep(2)")
            .fetch_one::<u8>()
            .await
    });
    wait_until(secs(5), || async { proxy.active() == 1 }).await;
    proxy.refuse();
    let res = tokio::time::timeout(secs(5), slow).await.unwrap().unwrap();
    assert!(res.is_err(), "request survived refuse(): {res:?}");
    assert!(t.elapsed() < millis(1800), "cut took {:?}", t.elapsed());
    wait_until(secs(5), || async { proxy.active() == 0 }).await;
}

#[tokio::test]
async fn proxy_cut_all_severs_once() {
    let ch = ClickHouseServer::start().await;
    let proxy = TcpProxy::start(ch.http_addr());
    let url = proxy.url();
    let t = Instant::now();
    let slow = tokio::spawn(async move {
        clickhouse_client(&url)
            .query("SELECT sleep(2)")
            .fetch_one::<u8>()
            .await
    });
    wait_until(secs(5), || async { proxy.active() == 1 }).await;
    proxy.cut_all();
    let res = tokio::time::timeout(secs(5), slow).await.unwrap().unwrap();
    assert!(res.is_err(), "request survived cut_all(): {res:?}");
    assert!(t.elapsed() < millis(1800), "cut took {:?}", t.elapsed());
    // The mode is unchanged: new connections pass.
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    assert_eq!(ch_sum_via(&proxy.url()).await.unwrap(), 499_500);
}

#[tokio::test]
async fn proxy_stall_holds_then_releases() {
    let ch = ClickHouseServer::start().await;
    let proxy = TcpProxy::start(ch.http_addr());
    proxy.stall();
    let url = proxy.url();
    let mut pending = tokio::spawn(async move { ch_sum_via(&url).await });
    wait_until(secs(5), || async { proxy.accepted() == 1 }).await;
    // Accepted but nothing forwarded: the request cannot complete.
    assert!(tokio::time::timeout(millis(300), &mut pending)
        .await
        .is_err());
    proxy.pass();
    let res = tokio::time::timeout(secs(5), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.unwrap(), 499_500);
}

#[tokio::test]
async fn proxy_delay_adds_latency() {
    let ch = ClickHouseServer::start().await;
    let proxy = TcpProxy::start(ch.http_addr());
    proxy.delay(millis(250));
    let t = Instant::now();
    assert_eq!(ch_sum_via(&proxy.url()).await.unwrap(), 499_500);
    // At least one chunk each way.
    assert!(t.elapsed() >= millis(500), "took only {:?}", t.elapsed());
    proxy.pass();
    let t = Instant::now();
    assert_eq!(ch_sum_via(&proxy.url()).await.unwrap(), 499_500);
    assert!(
        t.elapsed() < millis(500),
        "pass still slow: {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn proxy_with_redis_client_reconnects_after_cut() {
    let redis = RedisServer::start().await;
    let proxy = TcpProxy::start(redis.addr());
    let client = redis_client(&proxy.redis_url()).await;
    let key = unique_name("k");
    let _: () = client.set(&key, 1, None, None, false).await.unwrap();
    let before = proxy.accepted();
    proxy.cut_all();
    wait_until(secs(10), || async {
        client.incr::<i64, _>(&key).await.is_ok()
    })
    .await;
    assert!(
        proxy.accepted() > before,
        "client did not reconnect through the proxy"
    );
    let direct = redis.client().await;
    let v: i64 = direct.get(&key).await.unwrap();
    assert!(v >= 2);
}

#[tokio::test]
async fn proxy_stops_on_drop() {
    let redis = RedisServer::start().await;
    let proxy = TcpProxy::start(redis.addr());
    let port = proxy.port();
    assert!(port_open(port).await);
    drop(proxy);
    assert!(!port_open(port).await);
}

#[tokio::test]
async fn worker_with_bad_config_exits_nonzero_and_logs() {
    let mut worker = Worker::spawn("this is not toml [[[ = =");
    assert!(worker.pid() > 0);
    let status = worker
        .wait_exit(secs(30))
        .await
        .expect("worker kept running with an invalid config");
    assert!(!status.success());
    assert!(!worker.log_contents().trim().is_empty(), "no error logged");
}

const CHILD_ENV: &str = "SLUICE_HARNESS_PDEATHSIG_PIDFILE";

/// Helper for `children_die_with_the_test_process`: run as a separate test
/// process, it starts servers, records their ports and exits without running
/// any destructor.
#[tokio::test]
#[ignore = "helper process for children_die_with_the_test_process"]
async fn pdeathsig_child_process() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let redis = RedisServer::start().await;
    let ch = ClickHouseServer::start().await;
    std::fs::write(&path, format!("{} {}", redis.port(), ch.http_port())).unwrap();
    std::process::exit(0);
}

#[tokio::test]
async fn children_die_with_the_test_process() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("ports");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "harness_selftest::pdeathsig_child_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, &pidfile)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let ports: Vec<u16> = std::fs::read_to_string(&pidfile)
        .expect("child wrote no ports")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(ports.len(), 2);
    for port in ports {
        wait_for(
            secs(10),
            &format!("server on port {port} to die with its parent"),
            || async move { !port_open(port).await },
        )
        .await;
    }
}
