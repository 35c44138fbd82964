//! The ids of settled messages, ready to ack: each stream's ids are
//! written once, as the RESP bulk strings XACK and XDEL take, into one
//! buffer of their own. The direct connection sends that buffer as it is
//! ([`crate::redis::direct`]); through fred it cost a `Value` and a frame
//! per id, and copying each id out of its reply was an allocation per
//! message. Holding only this buffer, a landed batch also lets go of its
//! messages (and the replies they point into) as soon as it is inserted.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::redis::resp::{encode_bulk, encode_header};
use crate::redis::{id_millis, Message};

/// Ids per XACK (and XDEL) command, so that no one command grows unbounded.
pub(crate) const ACK_CHUNK: usize = 10_000;

/// `$`, up to two length digits and two `\r\n` around each id.
const ENCODING_OVERHEAD: usize = 7;

/// Stream names compare by pointer first (messages share their flow's `Arc`).
pub(crate) fn same_stream(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// The ids to ack, per stream, in the order they were added.
#[derive(Default)]
pub struct Acks {
    streams: SmallVec<[StreamIds; 1]>,
}

/// One stream's ids, each as `$len\r\nid\r\n`.
pub(crate) struct StreamIds {
    pub stream: Arc<str>,
    encoded: Vec<u8>,
    count: usize,
    /// Where each chunk of [`ACK_CHUNK`] ids starts in `encoded`.
    chunk_starts: SmallVec<[usize; 8]>,
    /// Where the last id lies in `encoded`.
    last: std::ops::Range<usize>,
}

impl Acks {
    /// The ids of `messages`, grouped by stream.
    pub fn of(messages: &[Message]) -> Acks {
        let mut acks = Acks::default();
        if let Some(first) = messages.first() {
            // Sized for all of them: most flows read one stream.
            let mut ids = StreamIds::new(first.stream.clone());
            ids.encoded
                .reserve(messages.len() * (first.id.len() + ENCODING_OVERHEAD));
            acks.streams.push(ids);
        }
        for m in messages {
            acks.push(&m.stream, &m.id);
        }
        acks
    }

    /// Adds one id. A handler's outputs of one source share its id (and
    /// sit together): the source is listed once.
    pub fn push(&mut self, stream: &Arc<str>, id: &[u8]) {
        let at = match self
            .streams
            .iter()
            .position(|s| same_stream(&s.stream, stream))
        {
            Some(at) => at,
            None => {
                self.streams.push(StreamIds::new(stream.clone()));
                self.streams.len() - 1
            }
        };
        self.streams[at].push(id);
    }

    /// How many ids, over all streams.
    pub fn len(&self) -> usize {
        self.streams.iter().map(|s| s.count).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn streams(&self) -> impl Iterator<Item = &StreamIds> {
        self.streams.iter()
    }

    /// Every id (all streams), for the end-to-end latency of what landed.
    pub fn ids(&self) -> impl Iterator<Item = &[u8]> {
        self.streams.iter().flat_map(|s| s.ids())
    }

    /// The milliseconds part of every id.
    pub fn id_millis(&self) -> impl Iterator<Item = u64> + '_ {
        self.ids().filter_map(id_millis)
    }
}

impl StreamIds {
    fn new(stream: Arc<str>) -> StreamIds {
        StreamIds {
            stream,
            encoded: Vec::new(),
            count: 0,
            chunk_starts: SmallVec::new(),
            last: 0..0,
        }
    }

    fn push(&mut self, id: &[u8]) {
        if self.count > 0 && &self.encoded[self.last.clone()] == id {
            return;
        }
        if self.count.is_multiple_of(ACK_CHUNK) {
            self.chunk_starts.push(self.encoded.len());
        }
        encode_bulk(&mut self.encoded, id);
        let end = self.encoded.len() - 2;
        self.last = end - id.len()..end;
        self.count += 1;
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The ids, in order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = self.encoded.as_slice();
        std::iter::from_fn(move || {
            // `$len\r\n` then the id then `\r\n`, as written by `push`.
            let digits_end = rest.iter().position(|&b| b == b'\r')?;
            let len: usize = std::str::from_utf8(&rest[1..digits_end])
                .ok()?
                .parse()
                .ok()?;
            let id = &rest[digits_end + 2..digits_end + 2 + len];
            rest = &rest[digits_end + 2 + len + 2..];
            Some(id)
        })
    }

    /// The ids as `Bytes`, for a fred client.
    pub(crate) fn to_vec(&self) -> Vec<Bytes> {
        self.ids().map(Bytes::copy_from_slice).collect()
    }

    /// The chunks of ids: how many, and their encoded bytes.
    fn chunks(&self) -> impl Iterator<Item = (usize, &[u8])> {
        let ends = self
            .chunk_starts
            .iter()
            .skip(1)
            .copied()
            .chain(std::iter::once(self.encoded.len()));
        self.chunk_starts
            .iter()
            .zip(ends)
            .enumerate()
            .map(move |(i, (&start, end))| {
                let count = (self.count - i * ACK_CHUNK).min(ACK_CHUNK);
                (count, &self.encoded[start..end])
            })
    }

    /// XACK (and XDEL after it when `delete`) for every chunk, one request
    /// to pipeline; returns how many replies it asks for.
    pub(crate) fn encode_ack(&self, out: &mut BytesMut, group: &str, delete: bool) -> usize {
        let mut replies = 0;
        for (count, ids) in self.chunks() {
            encode_header(out, count + 3);
            for arg in [&b"XACK"[..], self.stream.as_bytes(), group.as_bytes()] {
                encode_bulk(out, arg);
            }
            out.put_slice(ids);
            replies += 1;
            if delete {
                encode_header(out, count + 2);
                encode_bulk(out, b"XDEL");
                encode_bulk(out, self.stream.as_bytes());
                out.put_slice(ids);
                replies += 1;
            }
        }
        replies
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::resp::encode_command;

    fn m(stream: &str, id: &'static str) -> Message {
        Message {
            stream: Arc::from(stream),
            id: Bytes::from_static(id.as_bytes()),
            fields: Default::default(),
            deliveries: 1,
        }
    }

    #[test]
    fn ids_grouped_per_stream_in_order_and_siblings_once() {
        let ms = [
            m("a", "1-0"),
            m("b", "1-0"),
            m("a", "2-0"),
            m("a", "2-0"),
            m("a", "3-0"),
        ];
        let acks = Acks::of(&ms);
        let got: Vec<(&str, Vec<&[u8]>)> = acks
            .streams()
            .map(|s| (&*s.stream, s.ids().collect()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", vec![&b"1-0"[..], b"2-0", b"3-0"]),
                ("b", vec![&b"1-0"[..]])
            ]
        );
        assert_eq!(acks.len(), 4);
        assert_eq!(acks.id_millis().collect::<Vec<_>>(), [1, 2, 3, 1]);
    }

    /// The request is the commands `encode_command` writes, chunked.
    #[test]
    fn ack_request_is_xack_then_xdel_per_chunk() {
        let ids: Vec<String> = (0..ACK_CHUNK + 2).map(|i| format!("{i}-0")).collect();
        let stream: Arc<str> = Arc::from("s");
        let mut acks = Acks::default();
        for id in &ids {
            acks.push(&stream, id.as_bytes());
        }
        let one = acks.streams().next().unwrap();
        let mut got = BytesMut::new();
        assert_eq!(one.encode_ack(&mut got, "g", true), 4);

        let mut want = BytesMut::new();
        for chunk in ids.chunks(ACK_CHUNK) {
            let chunk: Vec<&[u8]> = chunk.iter().map(|i| i.as_bytes()).collect();
            let xack = [&[&b"XACK"[..], b"s", b"g"][..], &chunk].concat();
            encode_command(&mut want, &xack);
            let xdel = [&[&b"XDEL"[..], b"s"][..], &chunk].concat();
            encode_command(&mut want, &xdel);
        }
        assert_eq!(got, want);
        let mut plain = BytesMut::new();
        assert_eq!(one.encode_ack(&mut plain, "g", false), 2);
    }
}
