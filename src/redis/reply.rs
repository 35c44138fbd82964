//! Parsing raw RESP frames of stream replies into [`Message`]s.

use std::sync::Arc;

use bytes::Bytes;
use fred::types::Resp3Frame as Frame;
use smallvec::SmallVec;

use crate::redis::{Message, Result, StreamError};

fn shape(command: &'static str, detail: impl Into<String>) -> StreamError {
    StreamError::Shape {
        command,
        detail: detail.into(),
    }
}

/// Turns an error frame into an error; passes other frames through.
pub fn check(frame: Frame) -> Result<Frame> {
    match frame {
        Frame::SimpleError { data, .. } => Err(StreamError::Reply(data.to_string())),
        Frame::BlobError { data, .. } => Err(StreamError::Reply(
            String::from_utf8_lossy(&data).into_owned(),
        )),
        other => Ok(other),
    }
}

/// A short name of a frame's type, for error messages.
fn kind_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::BlobString { .. } | Frame::SimpleString { .. } | Frame::VerbatimString { .. } => {
            "string"
        }
        Frame::BlobError { .. } | Frame::SimpleError { .. } => "error",
        Frame::Number { .. } | Frame::BigNumber { .. } => "integer",
        Frame::Double { .. } => "double",
        Frame::Boolean { .. } => "boolean",
        Frame::Null => "nil",
        Frame::Array { .. } | Frame::Push { .. } | Frame::Set { .. } => "array",
        Frame::Map { .. } => "map",
        _ => "other",
    }
}

pub(crate) fn bytes_of(frame: Frame, command: &'static str) -> Result<Bytes> {
    match frame {
        Frame::BlobString { data, .. } | Frame::SimpleString { data, .. } => Ok(data),
        Frame::VerbatimString { data, .. } => Ok(data),
        Frame::Number { data, .. } => Ok(Bytes::from(data.to_string())),
        other => Err(shape(
            command,
            format!("expected a string, got {:?}", kind_name(&other)),
        )),
    }
}

pub(crate) fn int_of(frame: &Frame, command: &'static str) -> Result<i64> {
    match frame {
        Frame::Number { data, .. } => Ok(*data),
        Frame::BlobString { data, .. } | Frame::SimpleString { data, .. } => {
            std::str::from_utf8(data)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| shape(command, "expected an integer"))
        }
        other => Err(shape(
            command,
            format!("expected an integer, got {:?}", kind_name(other)),
        )),
    }
}

pub(crate) fn array_of(frame: Frame, command: &'static str) -> Result<Vec<Frame>> {
    match frame {
        Frame::Array { data, .. } | Frame::Push { data, .. } => Ok(data),
        Frame::Set { data, .. } => Ok(data.into_iter().collect()),
        Frame::Null => Ok(Vec::new()),
        other => Err(shape(
            command,
            format!("expected an array, got {:?}", kind_name(&other)),
        )),
    }
}

/// `[id, [f1, v1, f2, v2, …]]` → Message. A deleted entry (fields nil) gives None.
fn entry(
    frame: Frame,
    stream: &Arc<str>,
    deliveries: u64,
    command: &'static str,
) -> Result<Option<Message>> {
    let mut parts = array_of(frame, command)?.into_iter();
    let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
        return Err(shape(command, "entry is not [id, fields]"));
    };
    let id = bytes_of(id, command)?;
    if matches!(fields, Frame::Null) {
        return Ok(None);
    }
    let flat = array_of(fields, command)?;
    if flat.len() % 2 != 0 {
        return Err(shape(command, "odd number of field/value items"));
    }
    let mut pairs: SmallVec<[(Bytes, Bytes); 4]> = SmallVec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        pairs.push((bytes_of(k, command)?, bytes_of(v, command)?));
    }
    Ok(Some(Message {
        stream: stream.clone(),
        id,
        fields: pairs.into_iter().collect(),
        deliveries,
    }))
}

/// The caller's shared name for a stream a reply names (a cheap clone for
/// each message).
pub(crate) fn shared_name(streams: &[Arc<str>], name: &[u8]) -> Arc<str> {
    streams
        .iter()
        .find(|s| s.as_bytes() == name)
        .cloned()
        .unwrap_or_else(|| Arc::from(String::from_utf8_lossy(name).as_ref()))
}

/// Parses an XREADGROUP reply (RESP2 array or RESP3 map). `streams` maps the
/// reply's stream names to the shared names the caller uses, so that each
/// message carries a cheap `Arc<str>`.
pub fn read_group(frame: Frame, streams: &[Arc<str>], out: &mut Vec<Message>) -> Result<()> {
    const CMD: &str = "XREADGROUP";
    let per_stream: Vec<(Frame, Frame)> = match check(frame)? {
        Frame::Null => return Ok(()),
        Frame::Map { data, .. } => data.into_iter().collect(),
        other => {
            let mut pairs = Vec::new();
            for item in array_of(other, CMD)? {
                let mut kv = array_of(item, CMD)?.into_iter();
                match (kv.next(), kv.next()) {
                    (Some(k), Some(v)) => pairs.push((k, v)),
                    _ => return Err(shape(CMD, "stream item is not [name, entries]")),
                }
            }
            pairs
        }
    };
    for (name, entries) in per_stream {
        let stream = shared_name(streams, &bytes_of(name, CMD)?);
        let entries = array_of(entries, CMD)?;
        out.reserve(entries.len());
        for e in entries {
            if let Some(m) = entry(e, &stream, 1, CMD)? {
                out.push(m);
            }
        }
    }
    Ok(())
}

/// A list of `[id, fields]` entries (XCLAIM, XRANGE); deleted ones
/// (nil fields) left out.
pub(crate) fn entries(
    frame: Frame,
    stream: &Arc<str>,
    command: &'static str,
) -> Result<Vec<Message>> {
    let mut out = Vec::new();
    for e in array_of(check(frame)?, command)? {
        if let Some(m) = entry(e, stream, 0, command)? {
            out.push(m);
        }
    }
    Ok(out)
}

/// XAUTOCLAIM's reply: next cursor, claimed entries, ids deleted meanwhile.
#[derive(Debug, Default)]
pub struct AutoClaim {
    pub cursor: Bytes,
    pub claimed: Vec<Message>,
    /// Entries that were pending but no longer exist in the stream (Redis 7+).
    pub deleted: Vec<Bytes>,
}

pub fn auto_claim(frame: Frame, stream: &Arc<str>) -> Result<AutoClaim> {
    const CMD: &str = "XAUTOCLAIM";
    let mut parts = array_of(check(frame)?, CMD)?.into_iter();
    let cursor = bytes_of(
        parts.next().ok_or_else(|| shape(CMD, "missing cursor"))?,
        CMD,
    )?;
    let mut claimed = Vec::new();
    let mut deleted = Vec::new();
    if let Some(entries) = parts.next() {
        for e in array_of(entries, CMD)? {
            // Redis 6.2 could return nil fields for deleted entries here.
            let probe = e.clone();
            match entry(e, stream, 0, CMD)? {
                Some(m) => claimed.push(m),
                None => {
                    if let Some(id) = array_of(probe, CMD)?.into_iter().next() {
                        deleted.push(bytes_of(id, CMD)?);
                    }
                }
            }
        }
    }
    if let Some(gone) = parts.next() {
        for id in array_of(gone, CMD)? {
            deleted.push(bytes_of(id, CMD)?);
        }
    }
    Ok(AutoClaim {
        cursor,
        claimed,
        deleted,
    })
}

/// One row of the extended XPENDING form.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingEntry {
    pub id: Bytes,
    pub consumer: Bytes,
    pub idle_ms: u64,
    pub deliveries: u64,
}

pub fn pending_entries(frame: Frame) -> Result<Vec<PendingEntry>> {
    const CMD: &str = "XPENDING";
    let mut out = Vec::new();
    for row in array_of(check(frame)?, CMD)? {
        let mut it = array_of(row, CMD)?.into_iter();
        let (Some(id), Some(consumer), Some(idle), Some(count)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(shape(CMD, "row is not [id, consumer, idle, count]"));
        };
        out.push(PendingEntry {
            idle_ms: int_of(&idle, CMD)?.max(0) as u64,
            deliveries: int_of(&count, CMD)?.max(0) as u64,
            id: bytes_of(id, CMD)?,
            consumer: bytes_of(consumer, CMD)?,
        });
    }
    Ok(out)
}

/// XINFO-style replies: a flat `[key, value, …]` array (RESP2) or a map (RESP3).
pub fn key_values(frame: Frame, command: &'static str) -> Result<Vec<(String, Frame)>> {
    let pairs: Vec<(Frame, Frame)> = match check(frame)? {
        Frame::Map { data, .. } => data.into_iter().collect(),
        other => {
            let flat = array_of(other, command)?;
            let mut it = flat.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
    };
    pairs
        .into_iter()
        .map(|(k, v)| {
            let k = bytes_of(k, command)?;
            Ok((String::from_utf8_lossy(&k).into_owned(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Frame {
        Frame::BlobString {
            data: Bytes::copy_from_slice(x.as_bytes()),
            attributes: None,
        }
    }
    fn a(items: Vec<Frame>) -> Frame {
        Frame::Array {
            data: items,
            attributes: None,
        }
    }

    #[test]
    fn parses_resp2_xreadgroup_reply() {
        let streams: Vec<Arc<str>> = vec![Arc::from("events")];
        let reply = a(vec![a(vec![
            s("events"),
            a(vec![
                a(vec![
                    s("1-0"),
                    a(vec![s("rec_id"), s("1"), s("data"), s("{}")]),
                ]),
                a(vec![s("2-0"), a(vec![s("rec_id"), s("2")])]),
            ]),
        ])]);
        let mut out = Vec::new();
        read_group(reply, &streams, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].id.as_ref(), b"1-0");
        assert_eq!(out[0].field(b"data").unwrap(), b"{}");
        assert_eq!(out[1].fields.len(), 1);
        assert!(Arc::ptr_eq(&out[0].stream, &streams[0]));
    }

    #[test]
    fn null_reply_is_empty() {
        let mut out = Vec::new();
        read_group(Frame::Null, &[], &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn odd_fields_are_an_error() {
        let reply = a(vec![a(vec![
            s("x"),
            a(vec![a(vec![s("1-0"), a(vec![s("k")])])]),
        ])]);
        let err = read_group(reply, &[], &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("odd"), "{err}");
    }

    #[test]
    fn autoclaim_reports_deleted_ids() {
        let stream: Arc<str> = Arc::from("s");
        let reply = a(vec![
            s("0-0"),
            a(vec![a(vec![s("3-0"), a(vec![s("k"), s("v")])])]),
            a(vec![s("1-0"), s("2-0")]),
        ]);
        let r = auto_claim(reply, &stream).unwrap();
        assert_eq!(r.cursor.as_ref(), b"0-0");
        assert_eq!(r.claimed.len(), 1);
        assert_eq!(r.deleted, vec![Bytes::from("1-0"), Bytes::from("2-0")]);
    }

    #[test]
    fn error_frames_become_errors() {
        let f = Frame::SimpleError {
            data: "NOGROUP no such group".into(),
            attributes: None,
        };
        assert!(
            matches!(read_group(f, &[], &mut Vec::new()), Err(StreamError::Reply(m)) if m.contains("NOGROUP"))
        );
    }
}
