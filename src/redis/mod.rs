//! Redis Streams: the message model, reply parsing and the commands sluice
//! issues (one file per concern).
//!
//! Replies are parsed from fred's raw RESP frames: the typed conversions
//! drop XAUTOCLAIM's deleted-ids element and cost more than the parse itself.
//! The hot read, XREADGROUP, goes on a connection of sluice's own where it
//! can ([`direct`], [`resp`]).

pub(crate) mod acks;
pub(crate) mod client;
pub(crate) mod commands;
pub(crate) mod dead_letter;
pub(crate) mod delayed;
pub(crate) mod direct;
pub(crate) mod group;
pub(crate) mod held;
pub(crate) mod lease;
mod message;
pub(crate) mod reply;
pub(crate) mod resp;
pub(crate) mod sharder;
pub(crate) mod version;

pub use message::{Message, MessageFields};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// A failure of a connection of sluice's own (see [`direct`]).
    #[error("redis connection to {0}")]
    Connection(String),
    #[error("redis replied with an error: {0}")]
    Reply(String),
    #[error("unexpected reply shape for {command}: {detail}")]
    Shape {
        command: &'static str,
        detail: String,
    },
}

pub(crate) type Result<T, E = StreamError> = std::result::Result<T, E>;

/// Parses the `ms` part of a `ms-seq` stream id.
pub(crate) fn id_millis(id: &[u8]) -> Option<u64> {
    let end = id.iter().position(|&b| b == b'-').unwrap_or(id.len());
    decimal(&id[..end])
}

/// Parses a full `ms-seq` id into its two numbers (`ms` alone: seq 0).
/// By hand, on bytes: it runs for every member of an exactly-once batch.
pub(crate) fn parse_id(id: &[u8]) -> Option<(u64, u64)> {
    match id.iter().position(|&b| b == b'-') {
        Some(dash) => Some((decimal(&id[..dash])?, decimal(&id[dash + 1..])?)),
        None => Some((decimal(id)?, 0)),
    }
}

/// A `u64` written in decimal digits only.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_millis_parses_ms_part() {
        assert_eq!(id_millis(b"1700000000123-7"), Some(1_700_000_000_123));
        assert_eq!(id_millis(b"42"), Some(42));
        assert_eq!(id_millis(b"x-1"), None);
        assert_eq!(id_millis(b""), None);
        assert_eq!(parse_id(b"5-9"), Some((5, 9)));
        assert_eq!(parse_id(b"5"), Some((5, 0)));
        for bad in [
            &b"5-"[..],
            b"-9",
            b"5-9-1",
            b"a-1",
            b"",
            b"99999999999999999999-0",
        ] {
            assert_eq!(parse_id(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
