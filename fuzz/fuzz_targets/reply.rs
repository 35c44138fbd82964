//! Redis reply parsing: arbitrary bytes decoded as a RESP2/RESP3 frame and
//! handed to every stream reply parser sluice uses, and the same bytes
//! through the direct connection's path (find the reply's end, parse it).
//! Must never panic.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use redis_protocol::resp3::decode::complete::decode_bytes;
use sluice::testing::reply;

fuzz_target!(|data: &[u8]| {
    let streams: Vec<Arc<str>> = vec![Arc::from("events"), Arc::from("other")];
    if let Ok(Some(len)) = reply::Scan::default().complete(data) {
        assert!(len <= data.len());
        let whole = Bytes::copy_from_slice(&data[..len]);
        let mut out = Vec::new();
        let _ = reply::read_group_reply(whole.clone(), &streams, &mut out);
        let _ = reply::pending_ids_reply(whole);
    }
    let buf = Bytes::copy_from_slice(data);
    let Ok(Some((frame, _))) = decode_bytes(&buf) else {
        return;
    };
    let mut out = Vec::new();
    if reply::read_group(frame.clone(), &streams, &mut out).is_ok() {
        for m in &out {
            let _ = m.id_millis();
            let _ = m.approx_size();
        }
    }
    if let Ok(claim) = reply::auto_claim(frame.clone(), &streams[0]) {
        let _ = claim.claimed.len() + claim.deleted.len();
    }
    let _ = reply::pending_entries(frame.clone());
    let _ = reply::key_values(frame.clone(), "XINFO");
    let _ = reply::check(frame);
});
