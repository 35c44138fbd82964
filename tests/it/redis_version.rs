//! The Redis version gate: `sluice run` and `sluice check` read every
//! master's version (INFO server) and refuse servers below 7.0. Only 7.0 is
//! installed here, so the refusal itself is unit-tested in
//! `stream::version`; these tests show that real servers are asked and pass.

use crate::common::LONG;
use crate::harness::{wait_for, RedisCluster, RedisServer, Worker};
use crate::schedule::{redis_only_config, Cli};

#[tokio::test]
async fn check_and_run_read_every_masters_version() {
    let cluster = RedisCluster::start(3).await;
    let cfg = redis_only_config(&cluster.url(), "");
    let out = Cli::new(&cfg).ok(&["check"]);
    assert!(
        out.contains("redis cluster:") && out.contains("(version 7."),
        "{out}"
    );
    let w = Worker::spawn(&cfg);
    wait_for(LONG, "three masters' versions logged", || async {
        w.log_contents().matches("redis version supported").count() == 3
    })
    .await;

    let single = RedisServer::start().await;
    let cfg = redis_only_config(&single.url(), "");
    let out = Cli::new(&cfg).ok(&["check"]);
    assert!(
        out.contains("redis:") && out.contains("(version 7."),
        "{out}"
    );
}
