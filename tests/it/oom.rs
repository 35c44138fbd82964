//! Redis at `maxmemory` (policy `noeviction`): XADD is refused with OOM
//! while XACK, XREADGROUP and XCLAIM still work. A dead letter is a write
//! that can be refused while the ack of its source would pass: the source
//! must stay pending until the dead letter is confirmed.

use fred::prelude::*;
use fred::types::Value;

use crate::common::*;
use crate::harness::{unique_name, wait_for, Worker};

/// `CONFIG SET maxmemory <bytes>` with `noeviction` (0 = no limit).
pub async fn set_maxmemory(client: &Client, bytes: u64) {
    raw(
        client,
        "CONFIG",
        vec![
            "SET".into(),
            "maxmemory-policy".into(),
            "noeviction".into(),
            "maxmemory".into(),
            bytes.to_string().into(),
        ],
    )
    .await;
}

/// True while Redis refuses an XADD with OOM.
pub async fn xadd_refused(client: &Client, stream: &str) -> bool {
    let args: Vec<Value> = vec![stream.into(), "*".into(), "probe".into(), "1".into()];
    match client
        .custom::<Value, Value>(
            fred::types::CustomCommand::new_static(
                "XADD",
                fred::types::ClusterHash::FirstKey,
                false,
            ),
            args,
        )
        .await
    {
        Ok(_) => false,
        Err(e) => e.to_string().contains("OOM"),
    }
}

/// Bad rows read while Redis refuses every write: their dead letters are
/// refused, so they stay pending (a replica killed meanwhile loses nothing);
/// once memory frees they are dead-lettered and acked.
#[tokio::test]
async fn dead_letters_refused_at_maxmemory_keep_their_sources_pending() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("oom"), unique_name("oom"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (rec_id UInt64, _id String) ENGINE = MergeTree ORDER BY rec_id"
    ))
    .await;
    let config = s.config(
        &s.ch.url(),
        "oom",
        &stream,
        &table,
        r#"batch = { max_rows = 100, max_wait = "50ms" }
claim = { min_idle = "1s", every = "200ms" }
metadata = { id = "_id" }"#,
    );
    let mut w = Worker::spawn(&config);
    xadd(&s.rc, &stream, &[("rec_id", "1")]).await;
    wait_for(LONG, "first row landed", || async {
        s.ch.count(&table).await == 1
    })
    .await;

    // Stop the worker, queue bad rows (and good ones), then leave Redis no
    // memory for any write before it reads them.
    w.signal(libc::SIGSTOP);
    const BAD: u64 = 5;
    let mut bad_ids = Vec::new();
    for i in 0..BAD {
        bad_ids.push(xadd(&s.rc, &stream, &[("rec_id", &format!("bad-{i}"))]).await);
        xadd(&s.rc, &stream, &[("rec_id", &(100 + i).to_string())]).await;
    }
    set_maxmemory(&s.rc, 1).await;
    assert!(xadd_refused(&s.rc, &format!("{stream}:probe")).await);
    w.signal(libc::SIGCONT);

    let dead = format!("{stream}:dead");
    wait_for(
        LONG,
        "good rows landed while Redis refuses writes",
        || async { s.ch.count(&table).await == 1 + BAD },
    )
    .await;
    wait_for(LONG, "a refused dead letter", || async {
        w.log_contents().contains("writing dead letters failed")
    })
    .await;
    assert_eq!(
        xlen(&s.rc, &dead).await,
        0,
        "Redis took a write at maxmemory"
    );
    let pending_now = pending_ids(&s.rc, &stream, "g", 1000).await;
    // The bad rows' dead letters were refused: they must still be pending.
    assert!(
        bad_ids.iter().all(|id| pending_now.contains(id)),
        "bad rows acked although their dead letters were refused: pending {pending_now:?}, bad {bad_ids:?}"
    );

    // A replica dying now must not lose them: another one takes them over.
    w.kill();
    let w2 = Worker::spawn(&config);
    wait_for(LONG, "the new replica refused too", || async {
        w2.log_contents().contains("writing dead letters failed")
    })
    .await;
    let pending_now = pending_ids(&s.rc, &stream, "g", 1000).await;
    assert!(bad_ids.iter().all(|id| pending_now.contains(id)));

    set_maxmemory(&s.rc, 0).await;
    wait_for(LONG, "bad rows dead-lettered once memory freed", || async {
        xlen(&s.rc, &dead).await >= BAD && pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    let mut reasons: Vec<String> = entries(&s.rc, &dead)
        .await
        .into_iter()
        .map(|(_, f)| field(&f, "rec_id").unwrap_or("?").to_string())
        .collect();
    reasons.sort();
    reasons.dedup();
    assert_eq!(
        reasons,
        (0..BAD).map(|i| format!("bad-{i}")).collect::<Vec<_>>()
    );
    // Good rows may land twice (at-least-once: the killed replica's batch
    // was inserted, not yet acked); none is missing.
    assert_eq!(
        s.ch.query_u64(&format!("SELECT uniqExact(rec_id) FROM {table}"))
            .await,
        1 + BAD
    );
}
