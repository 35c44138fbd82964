//! The exec handler's reply matching, against real child processes
//! (`tests/fixtures/handler.py`): a reply must carry its request's `id`, and
//! a child that was left with a request in flight (its call cancelled by the
//! flow's outer timeout) never answers the next message with the old reply.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice::config::ExecHandlerConfig;
use sluice::testing::ExecHandler;
use sluice::Message;
use sluice::{Handler, HandlerError};

fn fixture() -> String {
    format!("{}/tests/fixtures/handler.py", env!("CARGO_MANIFEST_DIR"))
}

fn exec_config(timeout: &str) -> ExecHandlerConfig {
    toml::from_str(&format!(
        "command = [\"python3\", {:?}]\nworkers = 1\ntimeout = \"{timeout}\"",
        fixture()
    ))
    .expect("exec handler config")
}

fn message(id: &str, fields: &[(&str, &str)]) -> Message {
    Message {
        stream: Arc::from("exec_replies"),
        id: Bytes::copy_from_slice(id.as_bytes()),
        fields: fields
            .iter()
            .map(|(k, v)| {
                (
                    Bytes::copy_from_slice(k.as_bytes()),
                    Bytes::copy_from_slice(v.as_bytes()),
                )
            })
            .collect(),
        deliveries: 1,
    }
}

/// The `rec_id` and `pid` of a single output.
fn rec_id_and_pid(outputs: &[sluice::Fields]) -> (String, String) {
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    let get = |name: &str| {
        outputs[0]
            .iter()
            .find(|(k, _)| k.as_ref() == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    (get("rec_id"), get("pid"))
}

#[tokio::test]
async fn a_reply_without_id_is_refused_and_its_child_replaced() {
    let h = ExecHandler::start("exec_noid", &exec_config("10s"))
        .await
        .unwrap();
    let (_, first_pid) =
        rec_id_and_pid(&h.handle(&message("1-0", &[("rec_id", "1")])).await.unwrap());
    let err = h
        .handle(&message("2-0", &[("rec_id", "2"), ("action", "noid")]))
        .await
        .expect_err("a reply without id must not be taken as the message's output");
    match &err {
        HandlerError::Retry(why) => assert!(why.contains("`id`"), "{why}"),
        other => panic!("expected a retry, got {other:?}"),
    }
    let (rec, pid) = rec_id_and_pid(&h.handle(&message("3-0", &[("rec_id", "3")])).await.unwrap());
    assert_eq!(rec, "3");
    assert_ne!(pid, first_pid, "the child that broke the protocol was kept");
}

#[tokio::test]
async fn a_late_reply_never_reaches_the_next_message() {
    let h = ExecHandler::start("exec_late", &exec_config("10s"))
        .await
        .unwrap();
    // The flow gives up on the call (its outer timeout) while the child is
    // still working on the request.
    let late = message(
        "1-0",
        &[("rec_id", "1"), ("action", "late"), ("delay", "0.5")],
    );
    let cancelled = tokio::time::timeout(Duration::from_millis(100), h.handle(&late)).await;
    assert!(cancelled.is_err(), "the call should still be running");
    // The next message gets its own answer, not the late one.
    let outputs = h
        .handle(&message("2-0", &[("rec_id", "2")]))
        .await
        .expect("the next message is handled");
    assert_eq!(rec_id_and_pid(&outputs).0, "2");
}
