//! The exactly-once ledger's scripts against a real Redis: a claim page
//! reads only the records overlapping it (not every open record), a
//! bisected part takes its members out of its parent, only the lease holder
//! drops a record, and records that expired are swept out of the index.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use sluice::testing::Ledger;
use sluice::Message;

use crate::harness::{unique_name, wait_for, RedisServer};

fn msg(stream: &Arc<str>, ms: u64, seq: u64) -> Message {
    Message {
        stream: stream.clone(),
        id: Bytes::from(format!("{ms}-{seq}")),
        fields: Default::default(),
        deliveries: 1,
    }
}

/// A ledger of a new flow reading `stream`, on `redis`.
fn open_ledger(
    rc: &fred::prelude::Client,
    flow: &str,
    stream: &Arc<str>,
    ttl: Duration,
    lease: Duration,
) -> Ledger {
    Ledger::new(rc.clone(), flow, ttl, lease, std::slice::from_ref(stream))
}

/// A private Redis and the ledger of a new flow reading one new stream.
async fn start(lease: Duration) -> (RedisServer, fred::prelude::Client, String, Arc<str>, Ledger) {
    let redis = RedisServer::start().await;
    let rc = redis.client().await;
    let (flow, stream) = (
        unique_name("ledger"),
        Arc::<str>::from(unique_name("ledger")),
    );
    let ledger = open_ledger(&rc, &flow, &stream, Duration::from_secs(3600), lease);
    (redis, rc, flow, stream, ledger)
}

fn ids(messages: &[Message]) -> Vec<(Arc<str>, Bytes)> {
    messages
        .iter()
        .map(|m| (m.stream.clone(), m.id.clone()))
        .collect()
}

/// Item 15 of issue 11: `split()` used to fetch every open record for each
/// claim page. With 2000 records open, a page reads the one or two it
/// overlaps.
#[tokio::test]
async fn a_claim_page_reads_only_the_records_it_overlaps() {
    let (_redis, _, _, stream, ledger) = start(Duration::from_secs(30)).await;
    // Record k holds entries (1000k + j)-0, j < 10.
    const RECORDS: u64 = 2000;
    for k in 0..RECORDS {
        let members: Vec<Message> = (0..10).map(|j| msg(&stream, 1000 * k + j, 0)).collect();
        assert!(ledger
            .record(&format!("b{k}"), None, "w#commit", &members)
            .await
            .unwrap());
    }
    // A page inside record 1234.
    let page = vec![msg(&stream, 1_234_002, 0), msg(&stream, 1_234_007, 0)];
    let found = ledger.records_for(&page).await.unwrap();
    assert_eq!(
        found.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["b1234"]
    );
    assert_eq!(found[0].members.len(), 10);
    // A page over records 10 to 12; a page between records finds none.
    let page = vec![msg(&stream, 10_005, 0), msg(&stream, 12_001, 0)];
    let mut found: Vec<String> = ledger
        .records_for(&page)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    found.sort();
    assert_eq!(found, ["b10", "b11", "b12"]);
    let page = vec![msg(&stream, 5_500, 0)];
    assert!(ledger.records_for(&page).await.unwrap().is_empty());
    // The sweep reports the open records.
    assert_eq!(ledger.sweep(Duration::ZERO).await.unwrap(), Some(RECORDS));
}

#[tokio::test]
async fn a_bisected_part_takes_its_members_out_of_its_parent() {
    let (_redis, _, _, stream, ledger) = start(Duration::from_secs(30)).await;
    let all: Vec<Message> = (0..4).map(|i| msg(&stream, 100, i)).collect();
    assert!(ledger.record("p", None, "w#commit", &all).await.unwrap());
    assert!(ledger
        .record("l", Some("p"), "w#commit", &all[..2])
        .await
        .unwrap());
    assert_eq!(
        ledger.members("p").await.unwrap(),
        Some(ids(&all[2..])),
        "the parent keeps only what no part took"
    );
    // Another task holds the parent's lease: no part of it is recorded.
    assert!(ledger.renew_lease("p", "w#commit").await.unwrap());
    assert!(!ledger
        .record("r", Some("p"), "other#recover-1", &all[2..])
        .await
        .unwrap());
    assert_eq!(ledger.members("r").await.unwrap(), None);
    assert!(ledger
        .record("r", Some("p"), "w#commit", &all[2..])
        .await
        .unwrap());
    assert_eq!(
        ledger.members("p").await.unwrap(),
        None,
        "emptied parent dropped"
    );
    let page = all.clone();
    let mut found: Vec<(String, usize)> = ledger
        .records_for(&page)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.members.len()))
        .collect();
    found.sort();
    assert_eq!(found, [("l".to_string(), 2), ("r".to_string(), 2)]);
}

#[tokio::test]
async fn only_the_lease_holder_drops_a_record_and_expired_ones_are_swept() {
    let (_redis, rc, flow, stream, ledger) = start(Duration::from_millis(200)).await;
    let members = vec![msg(&stream, 7, 0)];
    assert!(ledger
        .record("a", None, "w1#commit", &members)
        .await
        .unwrap());
    // The committer's lease lapses and a recovery takes the batch over.
    wait_for(Duration::from_secs(10), "lease taken over", || async {
        ledger.renew_lease("a", "w2#recover-1").await.unwrap()
    })
    .await;
    assert!(!ledger.forget("a", "w1#commit").await.unwrap());
    assert_eq!(ledger.members("a").await.unwrap(), Some(ids(&members)));
    assert!(ledger.forget("a", "w2#recover-1").await.unwrap());
    assert_eq!(ledger.members("a").await.unwrap(), None);

    // A record whose key expired (ledger_ttl) without being dropped.
    let short = open_ledger(
        &rc,
        &flow,
        &stream,
        Duration::from_millis(100),
        Duration::from_millis(100),
    );
    assert!(short
        .record("b", None, "w1#commit", &members)
        .await
        .unwrap());
    assert_eq!(short.sweep(Duration::ZERO).await.unwrap(), Some(1));
    wait_for(Duration::from_secs(10), "expired record swept", || async {
        short.sweep(Duration::ZERO).await.unwrap() == Some(0)
    })
    .await;
    assert!(short.records_for(&members).await.unwrap().is_empty());
}

/// A record written before the index existed (older version, same keys
/// otherwise) is indexed by a process's first sweep, so a claim page finds it.
#[tokio::test]
async fn records_left_by_an_older_version_are_indexed_on_the_first_sweep() {
    let (_redis, rc, flow, stream, ledger) = start(Duration::from_secs(30)).await;
    let prefix = format!("sluice:eo:{{{flow}}}");
    let members = format!("[[\"{stream}\",\"5000-0\"],[\"{stream}\",\"5001-3\"]]");
    let _: () = rc
        .set(format!("{prefix}:batch:old"), members, None, None, false)
        .await
        .unwrap();
    let _: () = rc.sadd(format!("{prefix}:open"), "old").await.unwrap();
    let page = vec![msg(&stream, 5001, 3)];
    assert!(ledger.records_for(&page).await.unwrap().is_empty());
    assert_eq!(ledger.sweep(Duration::ZERO).await.unwrap(), Some(1));
    let found = ledger.records_for(&page).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, "old");
}
