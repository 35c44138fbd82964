//! Admission rules: why a message is dead before anything else looks at
//! it. A field over `max_field_bytes` is dead-lettered by whoever took the
//! message from Redis (reader, claim loop); one delivered more than
//! `max_deliveries` times by the first step after them (the handler stage,
//! or the batcher when there is no handler).

use crate::redis::dead_letter::DeadLetter;
use crate::redis::Message;

/// Why `m` is dead before anything else looks at it: a field name or value
/// longer than `max` bytes (`max_field_bytes`).
pub(crate) fn oversized_field(m: &Message, max: u64) -> Option<String> {
    let (name, len) = m.fields.iter().find_map(|(k, v)| {
        let len = k.len().max(v.len()) as u64;
        (len > max).then_some((k, len))
    })?;
    let shown = String::from_utf8_lossy(&name[..name.len().min(64)]);
    let more = if name.len() > 64 { "…" } else { "" };
    Some(format!(
        "field `{shown}{more}` is {len} bytes, more than max_field_bytes = {max}"
    ))
}

/// Takes the messages with a field over `max` bytes out of `entries`, as
/// dead letters (kind `oversized`).
pub(crate) fn take_oversized(entries: &mut Vec<Message>, max: u64) -> Vec<DeadLetter> {
    if !entries.iter().any(|m| oversized_field(m, max).is_some()) {
        return Vec::new();
    }
    let mut dead = Vec::new();
    for m in std::mem::take(entries) {
        match oversized_field(&m, max) {
            Some(reason) => dead.push(DeadLetter {
                message: m,
                reason,
                kind: "oversized",
            }),
            None => entries.push(m),
        }
    }
    dead
}

/// `m` if it may be delivered once more, else its dead letter (kind
/// `max_deliveries`): delivered more than `max` times.
// The dead letter is a message and its reason: boxing it would save
// nothing on the hot path, which returns the message itself.
#[allow(clippy::result_large_err)]
pub(crate) fn within_max_deliveries(m: Message, max: u64) -> Result<Message, DeadLetter> {
    if m.deliveries <= max {
        return Ok(m);
    }
    Err(DeadLetter {
        reason: format!(
            "delivered {} times, more than max_deliveries = {max}",
            m.deliveries
        ),
        message: m,
        kind: "max_deliveries",
    })
}

/// Whether failure number `failures` (1-based: deliveries of a message,
/// or failures counted across its retried copies) is its last: it is then
/// dead-lettered instead of retried. The other side of
/// [`within_max_deliveries`]: delivery `max` is still handled.
pub(crate) fn is_final_failure(failures: u64, max: u64) -> bool {
    failures >= max
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    fn m(deliveries: u64, value: &'static str) -> Message {
        Message {
            stream: Arc::from("s"),
            id: Bytes::from_static(b"1-0"),
            fields: vec![(
                Bytes::from_static(b"k"),
                Bytes::from_static(value.as_bytes()),
            )]
            .into(),
            deliveries,
        }
    }

    #[test]
    fn max_deliveries_dead_letters_only_past_the_limit() {
        assert!(within_max_deliveries(m(3, "v"), 3).is_ok());
        let dead = within_max_deliveries(m(4, "v"), 3).unwrap_err();
        assert_eq!(dead.kind, "max_deliveries");
        assert_eq!(
            dead.reason,
            "delivered 4 times, more than max_deliveries = 3"
        );
        assert!(is_final_failure(3, 3) && !is_final_failure(2, 3));
    }

    #[test]
    fn oversized_fields_are_taken_out() {
        let mut entries = vec![m(1, "short"), m(1, "much too long")];
        let dead = take_oversized(&mut entries, 8);
        assert_eq!(entries.len(), 1);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].kind, "oversized");
        assert!(dead[0].reason.contains("13 bytes"), "{}", dead[0].reason);
    }
}
