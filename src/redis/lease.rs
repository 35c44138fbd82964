//! A lease in one Redis key: whoever holds it does the work it guards (a
//! source's reader, an exactly-once batch's inserter), renewing it before it
//! expires; when the holder stops renewing, another takes it over.

use std::sync::LazyLock;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scripts::Script;

/// Renews the lease if ARGV[1] holds it, takes it if nobody does.
/// KEYS: lease. ARGV: holder, ms. 1 = held (taken or renewed), 0 = another
/// holder has it.
const HOLD: &str = r#"
local h = redis.call('GET', KEYS[1])
if not h or h == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Deletes the lease if ARGV[1] holds it. KEYS: lease. ARGV: holder.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

static HOLD_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(HOLD));
static RELEASE_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(RELEASE));

/// Takes the lease at `key` for `lease`, or renews it if `holder` has it;
/// true if `holder` holds it now.
pub(crate) async fn hold(
    client: &Client,
    key: &str,
    holder: &str,
    lease: Duration,
) -> Result<bool, fred::error::Error> {
    let held: i64 = HOLD_S
        .evalsha_with_reload(
            client,
            vec![key.to_string()],
            vec![holder.to_string(), lease.as_millis().to_string()],
        )
        .await?;
    Ok(held == 1)
}

/// Gives the lease at `key` up if `holder` has it, so another takes over at
/// once rather than after it expires.
pub(crate) async fn release(
    client: &Client,
    key: &str,
    holder: &str,
) -> Result<(), fred::error::Error> {
    let _: i64 = RELEASE_S
        .evalsha_with_reload(client, vec![key.to_string()], vec![holder.to_string()])
        .await?;
    Ok(())
}
