//! Uncapped at-least-once writes on a direct connection to the targets'
//! Redis (one plain-TCP server): one plain XADD per entry, written
//! straight into the request and pipelined. Cluster, sentinel and TLS
//! targets go through fred and the `ADD_ALL` script ([`super::commit`]).

use std::sync::Arc;

use bytes::BytesMut;

use crate::redis::direct::DirectConnection;
use crate::redis::resp::{encode_bulk, encode_header, Cursor};
use crate::redis::Message;
use crate::sink::stream::commit::{by_target, Round};
use crate::sink::stream::route::Target;

/// One XADD per (message, target) pair, grouped by target and in order
/// within each, in one pipelined write. Redis runs a plain XADD for about
/// half the time the same XADD costs inside a script (`redis.call`), and
/// each entry gets its own answer: a key of the wrong type refuses just
/// the entries routed to it. A lost connection fails them all (retried;
/// those that landed are written again, as at-least-once allows).
pub(super) async fn write_direct(
    conn: &mut DirectConnection,
    messages: &[Message],
    pairs: Vec<(usize, Arc<Target>)>,
    round: &mut Round,
) {
    let targets = by_target(pairs);
    let sent = conn
        .pipeline(|request| {
            let mut commands = 0;
            for (t, ids) in &targets {
                for &i in ids {
                    encode_xadd(request, &t.key, &messages[i]);
                    commands += 1;
                }
            }
            commands
        })
        .await;
    let mut replies = match sent {
        Ok(replies) => replies.into_iter(),
        Err(e) => {
            let text = e.to_string();
            for (t, ids) in &targets {
                for &i in ids {
                    round.error(i, t, text.clone());
                }
            }
            return;
        }
    };
    for (t, ids) in &targets {
        for &i in ids {
            let reply = replies.next().expect("one reply per XADD sent");
            if let Err(e) = Cursor::new(reply).string_span("XADD") {
                round.error(i, t, e.to_string());
            }
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
