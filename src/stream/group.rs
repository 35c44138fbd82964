//! Consumer-group housekeeping: unique consumer names, creating groups,
//! pruning consumers left behind by departed replicas, and removing our own
//! consumer on a clean exit.

use std::time::Duration;

use fred::prelude::*;

use super::{commands, reply, Result};

/// `{prefix}-{pid}-{random}`: unique per process, recognisable per host.
pub fn consumer_name(prefix: Option<&str>) -> String {
    let host = prefix
        .map(str::to_string)
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    let suffix: u32 = rand::random();
    format!("{host}-{}-{suffix:08x}", std::process::id())
}

/// One consumer as XINFO CONSUMERS reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
}

pub async fn consumers(client: &Client, stream: &str, group: &str) -> Result<Vec<ConsumerInfo>> {
    let frame = commands::info(client, "CONSUMERS", &[stream, group]).await?;
    let mut out = Vec::new();
    for item in reply::array_of(frame, "XINFO CONSUMERS")? {
        let mut c = ConsumerInfo {
            name: String::new(),
            pending: 0,
            idle_ms: 0,
        };
        for (k, v) in reply::key_values(item, "XINFO CONSUMERS")? {
            match k.as_str() {
                "name" => {
                    c.name = String::from_utf8_lossy(&reply::bytes_of(v, "XINFO CONSUMERS")?)
                        .into_owned()
                }
                "pending" => c.pending = reply::int_of(&v, "XINFO CONSUMERS")?.max(0) as u64,
                "idle" => c.idle_ms = reply::int_of(&v, "XINFO CONSUMERS")?.max(0) as u64,
                _ => {}
            }
        }
        out.push(c);
    }
    Ok(out)
}

/// Deletes consumers idle longer than `idle` that hold nothing pending; their
/// pending entries would be lost to XAUTOCLAIM otherwise, so those are kept
/// until the claim loop has moved their work. Returns the names removed.
pub async fn prune_consumers(
    client: &Client,
    stream: &str,
    group: &str,
    idle: Duration,
    me: &str,
) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for c in consumers(client, stream, group).await? {
        if c.name != me && c.pending == 0 && c.idle_ms >= idle.as_millis() as u64 {
            // Re-check right before deleting: the consumer may have read meanwhile.
            let still_empty =
                commands::pending(client, stream, group, b"-", b"+", 1, Some(&c.name))
                    .await?
                    .is_empty();
            if still_empty {
                commands::delete_consumer(client, stream, group, &c.name).await?;
                removed.push(c.name);
            }
        }
    }
    Ok(removed)
}

/// Removes our own consumer if it holds nothing pending. Returns whether it did.
pub async fn remove_self_if_idle(
    client: &Client,
    stream: &str,
    group: &str,
    me: &str,
) -> Result<bool> {
    let pending = commands::pending(client, stream, group, b"-", b"+", 1, Some(me)).await?;
    if !pending.is_empty() {
        return Ok(false);
    }
    commands::delete_consumer(client, stream, group, me).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_unique_and_carry_pid() {
        let a = consumer_name(Some("web1"));
        let b = consumer_name(Some("web1"));
        assert_ne!(a, b);
        assert!(
            a.starts_with(&format!("web1-{}-", std::process::id())),
            "{a}"
        );
    }
}
