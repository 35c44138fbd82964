//! Schedule state in Redis: the documented keys, and the Lua scripts that
//! change them atomically. Both `sluice schedule …` and plain `redis-cli`
//! work on these keys (see docs/SCHEDULING.md).
//!
//! ```text
//! sluice:schedules                  SET   names of all schedules
//! sluice:schedule:{name}            HASH  definition + state + progress
//! sluice:schedule:{name}:tick:{ms}  STRING  exactly-once guard of one tick
//!                                         (SET NX PX; value = the replica that took it)
//! sluice:schedule:fired:{tag}:{name}:{ms}  STRING  cluster only: the tick's entry
//!                                         ("replica id"), in the target stream's slot
//! ```
//!
//! The braces around the name are literal: a Redis Cluster hash tag, so a
//! schedule's hash and tick keys share one slot. The index is written
//! outside the scripts (it lives in another slot). On a single Redis one
//! script adds the tick's entry together with its guard; on a cluster the
//! target stream is in another slot, so the guard is taken first (as
//! `pending:…`, expiring), the entry added, and the guard then completed.
//! The entry is added by a script on the stream's node that also writes a
//! per-tick marker in the stream's slot, and adds nothing when the marker
//! exists: a command fred sends again after a cut connection, or a replica
//! taking over a tick whose guard expired during a slow XADD, cannot add a
//! second entry.

use fred::prelude::*;
use fred::types::scripts::Script;
use std::collections::HashMap;
use std::sync::LazyLock;

use super::spec::{format_time, Millis, Spec, SpecError};
use crate::config::streams::hash_tag;
use crate::redis::sharder::Sharder;

pub(crate) const INDEX_KEY: &str = "sluice:schedules";

pub fn hash_key(name: &str) -> String {
    format!("sluice:schedule:{{{name}}}")
}

pub fn tick_key(name: &str, tick: Millis) -> String {
    format!("sluice:schedule:{{{name}}}:tick:{tick}")
}

/// Where a schedule's entries go: the stream (a shard of it, when the
/// stream is sharded) and whether Redis is a cluster.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub stream: &'a str,
    pub cluster: bool,
}

/// How long a cluster-mode tick guard stays `pending` before another
/// replica may take the tick over (its taker died before adding the entry).
pub(crate) const PENDING_TTL_MS: u64 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("no schedule named `{0}`")]
    NotFound(String),
    #[error("schedule `{name}` is {from}; cannot {action} it")]
    Transition {
        name: String,
        from: String,
        action: &'static str,
    },
    #[error("schedule `{0}` exists ({1}); pass --replace to overwrite it")]
    Exists(String, String),
    #[error("schedule `{name}` has an invalid definition: {error}")]
    Invalid { name: String, error: SpecError },
    #[error("unexpected script reply: {0}")]
    Reply(String),
}

pub(crate) type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The state machine of the original scheduler: `init → running ⇄ paused`,
/// and any state `→ removed`. Values are stored as these lowercase words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Defined, not yet taken up by a worker (which sets it running and
    /// starts counting ticks from then).
    Init,
    Running,
    /// Ticks pass without entries (each is consumed, so resuming does not
    /// fire the ticks that fell inside the pause).
    Paused,
    /// Never fires again; kept as a tombstone so that a config listing the
    /// schedule does not bring it back. `add` (or DEL of the hash) undoes it.
    Removed,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Init => "init",
            State::Running => "running",
            State::Paused => "paused",
            State::Removed => "removed",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<State> {
        Some(match s {
            "init" => State::Init,
            "running" => State::Running,
            "paused" => State::Paused,
            "removed" => State::Removed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A schedule as stored in Redis.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub name: String,
    /// The raw `state` value (an unknown word is kept as written).
    pub state: String,
    pub spec: std::result::Result<Spec, SpecError>,
    /// The last tick dealt with (fired, or passed while paused).
    pub last_tick: Option<Millis>,
    pub last_fired_at: Option<Millis>,
    pub last_id: Option<String>,
    pub fired: u64,
    pub triggered: u64,
    pub source: Option<String>,
}

impl Stored {
    fn from_hash(name: &str, raw: HashMap<String, String>) -> Stored {
        let num = |k: &str| raw.get(k).and_then(|v| v.trim().parse::<u64>().ok());
        Stored {
            name: name.to_string(),
            state: raw.get("state").cloned().unwrap_or_default(),
            spec: Spec::from_hash(name, &raw),
            last_tick: num("last_tick"),
            last_fired_at: num("last_fired_at"),
            last_id: raw.get("last_id").cloned(),
            fired: num("fired").unwrap_or(0),
            triggered: num("triggered").unwrap_or(0),
            source: raw.get("source").cloned(),
        }
    }

    pub(crate) fn state(&self) -> Option<State> {
        State::parse(&self.state)
    }
}

/// The checks both ways of firing a tick start with (KEYS[1] = the
/// schedule's hash, ARGV[1] = the tick): gone, removed, or already past.
macro_rules! tick_checks {
    () => {
        r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'gone' end
if state == 'removed' then return 'removed' end
local tick = tonumber(ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[1], 'last_tick'))
if last and tick <= last then return 'done' end
"#
    };
}

/// Fires one tick: exactly once across replicas, atomically with its entry.
/// KEYS: hash, tick key, stream. ARGV: tick, ttl ms, owner, now, fields….
const FIRE: &str = concat!(
    tick_checks!(),
    r#"if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then return 'done' end
if state ~= 'running' then
  redis.call('HSET', KEYS[1], 'last_tick', ARGV[1])
  return 'passed:' .. state
end
local id = redis.call('XADD', KEYS[3], '*', unpack(ARGV, 5))
redis.call('HSET', KEYS[1], 'last_tick', ARGV[1], 'last_fired_at', ARGV[4], 'last_id', id)
redis.call('HINCRBY', KEYS[1], 'fired', 1)
return 'fired:' .. id
"#
);

/// Cluster mode, step 1: takes the tick's guard as `pending:<owner>`.
/// The owner's own pending guard (a reply lost on a cut, a retry) is taken
/// again: step 2 cannot add the entry twice.
/// KEYS: hash, tick key. ARGV: tick, pending ttl ms, owner, ttl ms.
const FIRE_GUARD: &str = concat!(
    tick_checks!(),
    r#"if not redis.call('SET', KEYS[2], 'pending:' .. ARGV[3], 'NX', 'PX', ARGV[2]) then
  local v = redis.call('GET', KEYS[2])
  if v == 'pending:' .. ARGV[3] then
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  elseif v and string.sub(v, 1, 8) == 'pending:' then
    return 'pending'
  else
    return 'done'
  end
end
if state ~= 'running' then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
  redis.call('HSET', KEYS[1], 'last_tick', ARGV[1])
  return 'passed:' .. state
end
return 'go'
"#
);

/// Cluster mode, step 2, on the target stream's node: adds the tick's
/// entry unless its marker says it was added. KEYS: stream, marker (same
/// slot). ARGV: marker ttl ms, owner, fields…. Returns `added:<id>` or
/// `had:<owner> <id>`.
const FIRE_ADD: &str = r#"
local had = redis.call('GET', KEYS[2])
if had then return 'had:' .. had end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[2], ARGV[2] .. ' ' .. id, 'PX', ARGV[1])
return 'added:' .. id
"#;

/// Cluster mode, step 3 (after the XADD): completes the guard and the
/// schedule's progress, once: a guard already completed (this step sent
/// again, or run by both a slow replica and the one that took over) is left
/// alone. KEYS: hash, tick key. ARGV: tick, ttl ms, owner, now, entry id.
const FIRE_DONE: &str = r#"
local v = redis.call('GET', KEYS[2])
if v and string.sub(v, 1, 8) ~= 'pending:' then return 'done' end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[1], 'last_tick'))
if not last or tonumber(ARGV[1]) > last then redis.call('HSET', KEYS[1], 'last_tick', ARGV[1]) end
redis.call('HSET', KEYS[1], 'last_fired_at', ARGV[4], 'last_id', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'fired', 1)
return 'ok'
"#;

/// init → running, starting the tick count at ARGV[1]. KEYS: hash.
const ACTIVATE: &str = r#"
if redis.call('HGET', KEYS[1], 'state') == 'init' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'last_tick', ARGV[1], 'activated_at', ARGV[1])
  return 1
end
return 0
"#;

/// Writes a config-defined schedule, keeping its state and progress; a
/// removed one stays removed. KEYS: hash. ARGV: name, initial
/// state, now, then definition field/value pairs (empty value = delete).
const UPSERT_CONFIG: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'removed' then return 'removed' end
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('HSET', KEYS[1], 'source', 'config', 'updated_at', ARGV[3])
if not state then
  redis.call('HSET', KEYS[1], 'state', ARGV[2], 'created_at', ARGV[3])
  return 'created'
end
return 'kept:' .. state
"#;

/// Creates (or with ARGV[3] = 1 replaces) a schedule at run time.
/// KEYS: hash. ARGV: name, state, replace, now, definition pairs.
const ADD: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= 'removed' and ARGV[3] ~= '1' then return 'exists:' .. state end
redis.call('DEL', KEYS[1])
for i = 5, #ARGV, 2 do
  if ARGV[i + 1] ~= '' then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'source', 'cli', 'created_at', ARGV[4], 'updated_at', ARGV[4])
return 'ok'
"#;

/// Moves to ARGV[1] if the current state is listed in ARGV[3] (comma
/// separated). Entering `running` without a tick count starts it at ARGV[2].
/// KEYS: hash.
const SET_STATE: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if not string.find(',' .. ARGV[3] .. ',', ',' .. state .. ',', 1, true) then return 'from:' .. state end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_at', ARGV[2])
if ARGV[1] == 'running' and not redis.call('HGET', KEYS[1], 'last_tick') then
  redis.call('HSET', KEYS[1], 'last_tick', ARGV[2])
end
return 'ok:' .. state
"#;

/// Fires once now, outside the tick sequence. KEYS: hash, stream. ARGV: now, fields….
const TRIGGER: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'removed' then return 'removed' end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
redis.call('HSET', KEYS[1], 'last_triggered_at', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'triggered', 1)
return 'fired:' .. id
"#;

static FIRE_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(FIRE));
static FIRE_GUARD_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(FIRE_GUARD));
static FIRE_ADD_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(FIRE_ADD));
static FIRE_DONE_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(FIRE_DONE));
static ACTIVATE_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(ACTIVATE));
static UPSERT_CONFIG_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(UPSERT_CONFIG));
static ADD_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(ADD));
static SET_STATE_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(SET_STATE));
static TRIGGER_S: LazyLock<Script> = LazyLock::new(|| Script::from_lua(TRIGGER));

async fn eval(
    client: &Client,
    script: &Script,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<String> {
    let v: fred::types::Value = script.evalsha_with_reload(client, keys, args).await?;
    Ok(match v {
        fred::types::Value::Integer(i) => i.to_string(),
        other => other.as_string().unwrap_or_default(),
    })
}

/// Reads one schedule.
pub(crate) async fn load(client: &Client, name: &str) -> Result<Option<Stored>> {
    let raw: HashMap<String, String> = client.hgetall(hash_key(name)).await?;
    Ok((!raw.is_empty()).then(|| Stored::from_hash(name, raw)))
}

/// Reads every schedule named in the index, sorted by name.
pub(crate) async fn load_all(client: &Client) -> Result<Vec<Stored>> {
    let mut names: Vec<String> = client.smembers(INDEX_KEY).await?;
    names.sort();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let pipeline = client.pipeline();
    for n in &names {
        let _: () = pipeline.hgetall(hash_key(n)).await?;
    }
    let hashes: Vec<HashMap<String, String>> = pipeline.all().await?;
    Ok(names
        .into_iter()
        .zip(hashes)
        .filter(|(_, h)| !h.is_empty())
        .map(|(n, h)| Stored::from_hash(&n, h))
        .collect())
}

/// What happened to one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    /// This replica fired it; the entry id.
    Fired(String),
    /// Another replica (or an earlier pass) dealt with it.
    AlreadyDone,
    /// Cluster mode: another replica took the tick and is adding its entry
    /// (or died doing so: the guard expires and the tick is tried again).
    InProgress,
    /// Consumed without an entry: the schedule is in this (non-running) state.
    Passed(String),
    /// The schedule was removed, or its hash deleted.
    Removed,
}

/// Fires `tick`; `fields` is its entry, rendered by the caller (which
/// picked the target's shard from them).
pub async fn fire(
    client: &Client,
    spec: &Spec,
    tick: Millis,
    now: Millis,
    owner: &str,
    target: Target<'_>,
    fields: Vec<(String, String)>,
) -> Result<FireOutcome> {
    let ttl = (spec.tick_key_ttl().as_millis() as u64).to_string();
    if target.cluster {
        return fire_in_steps(client, spec, tick, now, owner, target.stream, &ttl, fields).await;
    }
    let mut args = vec![tick.to_string(), ttl, owner.to_string(), now.to_string()];
    for (k, v) in fields {
        args.push(k);
        args.push(v);
    }
    let reply = eval(
        client,
        &FIRE_S,
        vec![
            hash_key(&spec.name),
            tick_key(&spec.name, tick),
            target.stream.to_string(),
        ],
        args,
    )
    .await?;
    outcome(reply)
}

/// Cluster mode: guard, XADD, complete (see the module doc). A replica that
/// dies between the guard and the XADD leaves a `pending` guard, which
/// expires so another replica fires the tick. The XADD is idempotent per
/// tick (its marker, in the stream's slot): re-sent after a cut, or run
/// again by a replica taking over an expired guard, it adds no second
/// entry, so a tick adds at most one entry. Never lost.
#[allow(clippy::too_many_arguments)]
async fn fire_in_steps(
    client: &Client,
    spec: &Spec,
    tick: Millis,
    now: Millis,
    owner: &str,
    stream: &str,
    ttl: &str,
    fields: Vec<(String, String)>,
) -> Result<FireOutcome> {
    let keys = vec![hash_key(&spec.name), tick_key(&spec.name, tick)];
    let reply = eval(
        client,
        &FIRE_GUARD_S,
        keys.clone(),
        vec![
            tick.to_string(),
            PENDING_TTL_MS.to_string(),
            owner.to_string(),
            ttl.to_string(),
        ],
    )
    .await?;
    if reply != "go" {
        return outcome(reply);
    }
    // The marker outlives every guard of the tick.
    let marker_ttl = ttl.parse::<u64>().unwrap_or(0).max(PENDING_TTL_MS) * 2;
    let mut args = vec![marker_ttl.to_string(), owner.to_string()];
    for (k, v) in fields {
        args.push(k);
        args.push(v);
    }
    let added = eval(
        client,
        &FIRE_ADD_S,
        vec![stream.to_string(), fired_key(stream, &spec.name, tick)],
        args,
    )
    .await?;
    let (by, id) = match (added.strip_prefix("added:"), added.strip_prefix("had:")) {
        (Some(id), _) => (owner, id),
        (None, Some(had)) => had
            .split_once(' ')
            .ok_or_else(|| StoreError::Reply(added.clone()))?,
        _ => return Err(StoreError::Reply(added)),
    };
    eval(
        client,
        &FIRE_DONE_S,
        keys,
        vec![
            tick.to_string(),
            ttl.to_string(),
            owner.to_string(),
            now.to_string(),
            id.to_string(),
        ],
    )
    .await?;
    Ok(if by == owner {
        FireOutcome::Fired(id.to_string())
    } else {
        FireOutcome::AlreadyDone
    })
}

/// The marker of `tick`'s entry: a key in the slot of `stream` (its hash
/// tag, else its whole name, as this key's tag), so one script on the
/// stream's node can check it and add the entry together.
pub(crate) fn fired_key(stream: &str, name: &str, tick: Millis) -> String {
    let slot = fred::util::redis_keyslot(stream.as_bytes());
    let tag = hash_tag(stream).unwrap_or(stream);
    let key = format!("sluice:schedule:fired:{{{tag}}}:{name}:{tick}");
    if fred::util::redis_keyslot(key.as_bytes()) == slot {
        return key;
    }
    // A name whose braces defeat the tag above (e.g. `a}b`): any tag of the
    // same slot will do; one is found within a few tens of thousands of tries.
    let tag = (0u32..)
        .map(|n| format!("s{n}"))
        .find(|t| fred::util::redis_keyslot(t.as_bytes()) == slot)
        .expect("every slot has a short tag");
    format!("sluice:schedule:fired:{{{tag}}}:{name}:{tick}")
}

fn outcome(reply: String) -> Result<FireOutcome> {
    Ok(if let Some(id) = reply.strip_prefix("fired:") {
        FireOutcome::Fired(id.to_string())
    } else if let Some(state) = reply.strip_prefix("passed:") {
        FireOutcome::Passed(state.to_string())
    } else {
        match reply.as_str() {
            "done" => FireOutcome::AlreadyDone,
            "pending" => FireOutcome::InProgress,
            "removed" | "gone" => FireOutcome::Removed,
            _ => return Err(StoreError::Reply(reply)),
        }
    })
}

/// init → running from `now`. Returns whether this call made the change.
pub async fn activate(client: &Client, name: &str, now: Millis) -> Result<bool> {
    let r = eval(
        client,
        &ACTIVATE_S,
        vec![hash_key(name)],
        vec![now.to_string()],
    )
    .await?;
    Ok(r == "1")
}

fn definition_args(spec: &Spec) -> Vec<String> {
    let mut args = Vec::new();
    for (k, v) in spec.hash_fields() {
        args.push(k.to_string());
        args.push(v);
    }
    args
}

/// What writing a config-defined schedule did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upserted {
    Created,
    /// Definition updated; state and progress kept (the state given).
    Kept(String),
    /// It was removed at run time and stays removed.
    Removed,
}

pub async fn upsert_from_config(
    client: &Client,
    spec: &Spec,
    paused: bool,
    now: Millis,
) -> Result<Upserted> {
    let initial = if paused { State::Paused } else { State::Init };
    let mut args = vec![
        spec.name.clone(),
        initial.as_str().to_string(),
        now.to_string(),
    ];
    args.extend(definition_args(spec));
    // The index first: a name listed without a hash is skipped by readers.
    let _: () = client.sadd(INDEX_KEY, spec.name.as_str()).await?;
    let r = eval(client, &UPSERT_CONFIG_S, vec![hash_key(&spec.name)], args).await?;
    Ok(match r.as_str() {
        "created" => Upserted::Created,
        "removed" => Upserted::Removed,
        other => Upserted::Kept(other.trim_start_matches("kept:").to_string()),
    })
}

/// `sluice schedule add`.
pub(crate) async fn add(
    client: &Client,
    spec: &Spec,
    paused: bool,
    replace: bool,
    now: Millis,
) -> Result<()> {
    let state = if paused { State::Paused } else { State::Init };
    let mut args = vec![
        spec.name.clone(),
        state.as_str().to_string(),
        if replace { "1" } else { "0" }.to_string(),
        now.to_string(),
    ];
    args.extend(definition_args(spec));
    let _: () = client.sadd(INDEX_KEY, spec.name.as_str()).await?;
    let r = eval(client, &ADD_S, vec![hash_key(&spec.name)], args).await?;
    match r.strip_prefix("exists:") {
        Some(state) => Err(StoreError::Exists(spec.name.clone(), state.to_string())),
        None => Ok(()),
    }
}

/// A state change asked for by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Pause,
    Resume,
    Remove,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Remove => "remove",
        }
    }

    fn target(self) -> State {
        match self {
            Action::Pause => State::Paused,
            Action::Resume => State::Running,
            Action::Remove => State::Removed,
        }
    }

    /// States the action may start from (repeating an action is allowed).
    fn allowed_from(self) -> &'static str {
        match self {
            Action::Pause => "init,running,paused",
            Action::Resume => "init,running,paused",
            Action::Remove => "init,running,paused,removed",
        }
    }
}

/// Applies `action`; returns the state it left.
pub(crate) async fn set_state(
    client: &Client,
    name: &str,
    action: Action,
    now: Millis,
) -> Result<String> {
    let r = eval(
        client,
        &SET_STATE_S,
        vec![hash_key(name)],
        vec![
            action.target().as_str().to_string(),
            now.to_string(),
            action.allowed_from().to_string(),
        ],
    )
    .await?;
    if r == "missing" {
        return Err(StoreError::NotFound(name.to_string()));
    }
    if let Some(from) = r.strip_prefix("from:") {
        return Err(StoreError::Transition {
            name: name.to_string(),
            from: from.to_string(),
            action: action.verb(),
        });
    }
    Ok(r.trim_start_matches("ok:").to_string())
}

/// `sluice schedule trigger`: one entry now, with `{tick}` = now; the tick
/// sequence is not touched. Returns the entry id.
pub(crate) async fn trigger(
    client: &Client,
    name: &str,
    now: Millis,
    sharder: &Sharder,
    cluster: bool,
) -> Result<String> {
    let stored = load(client, name)
        .await?
        .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
    let spec = stored.spec.map_err(|error| StoreError::Invalid {
        name: name.to_string(),
        error,
    })?;
    let fields = spec.render(now, now);
    let stream = pick_stream(sharder, &spec.stream, &fields);
    if cluster {
        // The stream is in another slot: check, add, count — in steps.
        if stored.state == "removed" {
            return Err(StoreError::Transition {
                name: name.to_string(),
                from: "removed".into(),
                action: "trigger",
            });
        }
        let id: String = client.xadd(stream, false, None, "*", fields).await?;
        let pipeline = client.pipeline();
        let _: () = pipeline
            .hset(hash_key(name), ("last_triggered_at", now.to_string()))
            .await?;
        let _: () = pipeline.hincrby(hash_key(name), "triggered", 1).await?;
        let _: Vec<fred::types::Value> = pipeline.all().await?;
        return Ok(id);
    }
    let mut args = vec![now.to_string()];
    for (k, v) in fields {
        args.push(k);
        args.push(v);
    }
    let r = eval(
        client,
        &TRIGGER_S,
        vec![hash_key(name), stream.to_string()],
        args,
    )
    .await?;
    match r.as_str() {
        "missing" => Err(StoreError::NotFound(name.to_string())),
        "removed" => Err(StoreError::Transition {
            name: name.to_string(),
            from: "removed".into(),
            action: "trigger",
        }),
        _ => r
            .strip_prefix("fired:")
            .map(str::to_string)
            .ok_or(StoreError::Reply(r)),
    }
}

/// The stream (or, for a sharded stream, the shard) an entry with these
/// fields goes to.
pub(crate) fn pick_stream<'a>(
    sharder: &'a Sharder,
    stream: &'a str,
    fields: &[(String, String)],
) -> &'a str {
    if !sharder.is_sharded(stream) {
        return stream;
    }
    let fields: Vec<(bytes::Bytes, bytes::Bytes)> = fields
        .iter()
        .map(|(k, v)| (bytes::Bytes::from(k.clone()), bytes::Bytes::from(v.clone())))
        .collect();
    sharder.pick(stream, &fields)
}

/// One line of `sluice schedule list`.
pub(crate) fn describe(s: &Stored, now: Millis) -> serde_json::Value {
    let (trigger, stream, next) = match &s.spec {
        Ok(spec) => {
            let from = s.last_tick.unwrap_or(now).max(now);
            let next = if matches!(s.state(), Some(State::Running | State::Init)) {
                spec.next_after(from).map(format_time)
            } else {
                None
            };
            (spec.trigger.describe(), spec.stream.clone(), next)
        }
        Err(e) => (format!("invalid: {e}"), String::new(), None),
    };
    serde_json::json!({
        "name": s.name,
        "state": s.state,
        "trigger": trigger,
        "stream": stream,
        "next": next,
        "last_tick": s.last_tick.map(format_time),
        "last_fired_at": s.last_fired_at.map(format_time),
        "fired": s.fired,
        "triggered": s.triggered,
        "source": s.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fired_marker_shares_the_stream_slot() {
        for stream in [
            "jobs", "jobs:{0}", "{t}x", "a}b", "a{}b", "x{", "{}", "a{b}{c}", "ü{ß}",
        ] {
            let key = fired_key(stream, "nightly", 1700000000000);
            assert_eq!(
                fred::util::redis_keyslot(key.as_bytes()),
                fred::util::redis_keyslot(stream.as_bytes()),
                "{stream} → {key}"
            );
            assert!(key.ends_with(":nightly:1700000000000"), "{key}");
        }
        assert_eq!(
            fired_key("jobs:{0}", "n", 5),
            "sluice:schedule:fired:{0}:n:5"
        );
        assert_eq!(
            fired_key("jobs", "n", 5),
            "sluice:schedule:fired:{jobs}:n:5"
        );
        assert_eq!(hash_tag("a{}b"), None);
        assert_eq!(hash_tag("a{b}c"), Some("b"));
    }
}
