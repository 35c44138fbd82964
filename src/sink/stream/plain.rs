//! Uncapped at-least-once writes on a direct connection to the targets'
//! Redis (one plain-TCP server): one plain XADD per entry, written
//! straight into the request and pipelined. Cluster, sentinel and TLS
//! targets go through fred and the `ADD_ALL` script ([`super::commit`]).

use std::sync::Arc;

use bytes::BytesMut;

use crate::redis::direct::DirectConnection;
use crate::redis::resp::{encode_bulk, encode_header, Cursor};
use crate::redis::Message;
use crate::sink::stream::route::Target;

/// One XADD per (message, target) pair, in the given order (grouped by
/// target, each target's in order), in one pipelined write; returns the
/// pairs that failed, with the error. Redis runs a plain XADD for about
/// half the time the same XADD costs inside a script (`redis.call`), and
/// each entry gets its own answer: a key of the wrong type refuses just
/// the entries routed to it. A lost connection fails them all (retried;
/// those that landed are written again, as at-least-once allows).
pub(super) async fn write_direct(
    conn: &mut DirectConnection,
    messages: &[Message],
    targets: &[(Arc<Target>, Vec<usize>)],
) -> Vec<(usize, Arc<Target>, String)> {
    let sent = conn
        .pipeline(|request| {
            let mut commands = 0;
            for (t, ids) in targets {
                for &i in ids {
                    encode_xadd(request, &t.key, &messages[i]);
                    commands += 1;
                }
            }
            commands
        })
        .await;
    let pairs = targets
        .iter()
        .flat_map(|(t, ids)| ids.iter().map(move |&i| (i, t)));
    match sent {
        Ok(replies) => pairs
            .zip(replies)
            .filter_map(|((i, t), reply)| {
                let error = Cursor::new(reply).string_span("XADD").err()?;
                Some((i, t.clone(), error.to_string()))
            })
            .collect(),
        Err(e) => {
            let text = e.to_string();
            pairs.map(|(i, t)| (i, t.clone(), text.clone())).collect()
        }
    }
}

/// `XADD <key> * <field> <value> …` for one message.
fn encode_xadd(out: &mut BytesMut, key: &[u8], message: &Message) {
    encode_header(out, 3 + 2 * message.fields.len());
    encode_bulk(out, b"XADD");
    encode_bulk(out, key);
    encode_bulk(out, b"*");
    for (field, value) in message.fields.iter() {
        encode_bulk(out, field);
        encode_bulk(out, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::resp::encode_command;
    use bytes::Bytes;

    #[test]
    fn an_xadd_carries_the_key_an_auto_id_and_every_pair_in_order() {
        let message = Message {
            stream: Arc::from("src"),
            id: Bytes::from_static(b"1-0"),
            fields: vec![
                (Bytes::from_static(b"rec_id"), Bytes::from_static(b"7")),
                (Bytes::from_static(b"data"), Bytes::from_static(b"")),
            ]
            .into(),
            deliveries: 1,
        };
        let mut got = BytesMut::new();
        encode_xadd(&mut got, b"dst", &message);
        let mut want = BytesMut::new();
        encode_command(
            &mut want,
            &[b"XADD", b"dst", b"*", b"rec_id", b"7", b"data", b""],
        );
        assert_eq!(got, want);
    }
}
