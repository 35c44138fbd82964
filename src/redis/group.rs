//! Consumer-group housekeeping: unique consumer names, creating groups,
//! pruning consumers left behind by departed replicas, and removing our own
//! consumer on a clean exit.

use std::sync::LazyLock;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;

use crate::redis::{commands, reply, Result};

/// `{prefix}-{pid}-{random}`: unique per process, recognisable per host.
pub(crate) fn consumer_name(prefix: Option<&str>) -> String {
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

pub(crate) async fn consumers(
    client: &Client,
    stream: &str,
    group: &str,
) -> Result<Vec<ConsumerInfo>> {
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
        if c.name != me
            && c.pending == 0
            && c.idle_ms >= idle.as_millis() as u64
            && delete_if_empty(client, stream, group, &c.name).await?
        {
            removed.push(c.name);
        }
    }
    Ok(removed)
}

/// Removes our own consumer if it holds nothing pending. Returns whether it did.
pub(crate) async fn remove_self_if_idle(
    client: &Client,
    stream: &str,
    group: &str,
    me: &str,
) -> Result<bool> {
    delete_if_empty(client, stream, group, me).await
}

/// Checks that `consumer` has nothing pending and deletes it, in one
/// script: an entry delivered to it between a check and a separate
/// DELCONSUMER would be deleted from the pending list, never to be claimed.
const DELETE_IF_EMPTY: &str = r#"
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

static DELETE_IF_EMPTY_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(DELETE_IF_EMPTY));

/// Deletes `consumer` of `group` if it has no pending entry; whether it did.
pub(crate) async fn delete_if_empty(
    client: &Client,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Result<bool> {
    let deleted: i64 = DELETE_IF_EMPTY_S
        .evalsha_with_reload(client, vec![stream], vec![group, consumer])
        .await?;
    Ok(deleted == 1)
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
