//! All-or-nothing appends with a capacity check, in one Lua script: the
//! length check and every XADD of a request run atomically, so a refused
//! request leaves the stream unchanged and two requests racing cannot both
//! squeeze past `max_len`. Items are validated before the script runs; the
//! XADDs all target one key, so none can fail after the first succeeded.

use bytes::Bytes;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Resp3Frame as Frame, Value};

use crate::flat::Fields;
use crate::stream::{reply, Result, StreamError};

/// KEYS[1] = stream; ARGV = max_len (-1: none), item count, then per item
/// its number of field/value arguments followed by them.
const SCRIPT: &str = r#"
local max = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local len = redis.call('XLEN', KEYS[1])
if max >= 0 and len + n > max then
  return {0, len}
end
local ids = {}
local i = 3
for item = 1, n do
  local c = tonumber(ARGV[i])
  ids[item] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + c))
  i = i + 1 + c
end
return {1, ids}
"#;

/// What an append did.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// All items were added; their ids in order.
    Ids(Vec<String>),
    /// Nothing was added: `length` + the items would pass `max_len`.
    Full { length: u64 },
}

/// The script, loaded once (and again after a SCRIPT FLUSH or restart).
pub struct Appender {
    sha: std::sync::Mutex<Option<String>>,
}

/// `name` routed to `stream`'s node (in a cluster each node keeps its own
/// script cache, so SCRIPT LOAD must reach the node that runs EVALSHA).
fn cmd(name: &'static str, stream: &str) -> CustomCommand {
    let slot = fred::util::redis_keyslot(stream.as_bytes());
    CustomCommand::new_static(name, ClusterHash::Custom(slot), false)
}

impl Default for Appender {
    fn default() -> Self {
        Self::new()
    }
}

impl Appender {
    pub fn new() -> Appender {
        Appender {
            sha: std::sync::Mutex::new(None),
        }
    }

    async fn load(&self, client: &Client, stream: &str) -> Result<String> {
        let frame = client
            .custom_raw(
                cmd("SCRIPT", stream),
                vec![Value::from("LOAD"), Value::from(SCRIPT)],
            )
            .await?;
        let sha = reply::bytes_of(reply::check(frame)?, "SCRIPT LOAD")?;
        let sha = String::from_utf8_lossy(&sha).into_owned();
        *self.sha.lock().unwrap_or_else(|e| e.into_inner()) = Some(sha.clone());
        Ok(sha)
    }

    /// Adds all `items` to `stream`, or none when `max_len` would be passed.
    pub async fn append(
        &self,
        client: &Client,
        stream: &str,
        items: &[Fields],
        max_len: Option<u64>,
    ) -> Result<Appended> {
        let mut argv: Vec<Value> =
            Vec::with_capacity(5 + items.len() + items.iter().map(|f| f.len() * 2).sum::<usize>());
        argv.push(Value::Integer(1));
        argv.push(Value::Bytes(Bytes::copy_from_slice(stream.as_bytes())));
        argv.push(Value::Integer(max_len.map(|m| m as i64).unwrap_or(-1)));
        argv.push(Value::Integer(items.len() as i64));
        for fields in items {
            argv.push(Value::Integer(fields.len() as i64 * 2));
            for (k, v) in fields {
                argv.push(Value::Bytes(k.clone()));
                argv.push(Value::Bytes(v.clone()));
            }
        }
        let cached = self.sha.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let sha = match cached {
            Some(sha) => sha,
            None => self.load(client, stream).await?,
        };
        let mut args = Vec::with_capacity(argv.len() + 1);
        args.push(Value::from(sha.as_str()));
        args.extend(argv.iter().cloned());
        let frame = client.custom_raw(cmd("EVALSHA", stream), args).await?;
        let frame = match reply::check(frame) {
            Err(StreamError::Reply(m)) if m.starts_with("NOSCRIPT") => {
                let sha = self.load(client, stream).await?;
                let mut args = Vec::with_capacity(argv.len() + 1);
                args.push(Value::from(sha.as_str()));
                args.extend(argv);
                reply::check(client.custom_raw(cmd("EVALSHA", stream), args).await?)?
            }
            other => other?,
        };
        parse(frame)
    }
}

fn parse(frame: Frame) -> Result<Appended> {
    const CMD: &str = "EVALSHA";
    let mut parts = reply::array_of(frame, CMD)?.into_iter();
    let (Some(flag), Some(rest)) = (parts.next(), parts.next()) else {
        return Err(StreamError::Shape {
            command: CMD,
            detail: "expected [flag, value]".into(),
        });
    };
    if reply::int_of(&flag, CMD)? == 0 {
        return Ok(Appended::Full {
            length: reply::int_of(&rest, CMD)?.max(0) as u64,
        });
    }
    reply::array_of(rest, CMD)?
        .into_iter()
        .map(|id| Ok(String::from_utf8_lossy(&reply::bytes_of(id, CMD)?).into_owned()))
        .collect::<Result<Vec<_>>>()
        .map(Appended::Ids)
}
