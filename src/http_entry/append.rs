//! All-or-nothing appends with a capacity check, committed in groups.
//!
//! Each request's length check and XADDs run inside one Lua script, so a
//! refused request leaves the stream unchanged and two requests racing
//! cannot both squeeze past `max_len`. Items are validated before the
//! script runs; the XADDs all target one key, so none can fail after the
//! first succeeded (Redis refuses an out-of-memory write only as a
//! script's first).
//!
//! Group commit: requests for one stream queue up while that stream's
//! previous group is in flight, and the next round trip carries all of
//! them (up to [`GROUP_ITEMS`] items), in arrival order. On a capped
//! stream one script call takes the whole group and handles its requests
//! exactly as one call each would (each all or nothing, each checked
//! against the length its predecessors left). Without a cap there is
//! nothing to check: a one-item request is a plain XADD (atomic by
//! itself, and a fifth of a script's cost in Redis), and runs of
//! multi-item requests share a script call; all go in one pipeline. So
//! answers, ids and order are those of one call per request, while Redis
//! and the worker pay one round trip per group. No timer: a request that
//! finds its stream idle is sent at once.
//!
//! Against a single plain-TCP server a group goes on a connection of
//! sluice's own ([`crate::redis::direct`]), its commands written straight
//! from the items and its replies parsed from the bytes; fred's per-command
//! building, its task hand-offs and value conversions were a fifth of the
//! entry's CPU per request. While another stream's group holds that
//! connection, a group goes through fred instead of waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};
use tokio::sync::oneshot;

use crate::fields::Fields;
use crate::redis::direct::StreamConnection;
use crate::redis::resp::{encode_bulk, encode_header, Cursor};
use crate::redis::{reply, Result, StreamError};

/// Most items one script call adds (a script holds Redis while it runs:
/// 1,000 XADDs take about a millisecond); a larger request goes alone.
pub(crate) const GROUP_ITEMS: usize = 1_000;

/// KEYS[1] = stream; ARGV[1] = request count; then per request: max_len
/// (-1: none), item count, then per item its number of field/value
/// arguments followed by them. Returns per request {1, ids} or {0, length}.
const SCRIPT: &str = r#"
local out = {}
local len = nil
local i = 2
for r = 1, tonumber(ARGV[1]) do
  local max = tonumber(ARGV[i])
  local n = tonumber(ARGV[i + 1])
  i = i + 2
  if max >= 0 and not len then len = redis.call('XLEN', KEYS[1]) end
  if max >= 0 and len + n > max then
    out[r] = {0, len}
    for item = 1, n do i = i + 1 + tonumber(ARGV[i]) end
  else
    local ids = {}
    for item = 1, n do
      local c = tonumber(ARGV[i])
      ids[item] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + c))
      i = i + 1 + c
    end
    if len then len = len + n end
    out[r] = {1, ids}
  end
end
return out
"#;

/// What an append did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Appended {
    /// All items were added; their ids in order.
    Ids(Vec<String>),
    /// Nothing was added: `length` + the items would pass `max_len`.
    Full { length: u64 },
}

/// One request waiting for its group's script call.
struct Job {
    items: Vec<Fields>,
    max_len: Option<u64>,
    answer: oneshot::Sender<Result<Appended>>,
}

/// Appends requests' items to streams, grouping concurrent requests for
/// one stream into one script call.
pub(crate) struct Appender {
    client: Client,
    /// The direct connection, where there is one (else `client` again).
    direct: StreamConnection,
    /// The script's sha, loaded once (and again after a SCRIPT FLUSH or restart).
    sha: Mutex<Option<String>>,
    /// Streams with a flusher running, and the requests it has yet to send.
    queues: Mutex<HashMap<String, VecDeque<Job>>>,
}

/// `name` routed to `stream`'s node (in a cluster each node keeps its own
/// script cache, so SCRIPT LOAD must reach the node that runs EVALSHA).
fn cmd(name: &'static str, stream: &str) -> CustomCommand {
    let slot = fred::util::redis_keyslot(stream.as_bytes());
    CustomCommand::new_static(name, ClusterHash::Custom(slot), false)
}

impl Appender {
    pub(crate) fn new(client: Client, direct: StreamConnection) -> Arc<Appender> {
        Arc::new(Appender {
            client,
            direct,
            sha: Mutex::new(None),
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// Adds all `items` to `stream`, or none when `max_len` would be passed.
    pub(crate) async fn append(
        self: &Arc<Self>,
        stream: &str,
        items: Vec<Fields>,
        max_len: Option<u64>,
    ) -> Result<Appended> {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            items,
            max_len,
            answer,
        };
        let start = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            match queues.get_mut(stream) {
                Some(queue) => {
                    queue.push_back(job);
                    false
                }
                None => {
                    queues.insert(stream.to_string(), VecDeque::from([job]));
                    true
                }
            }
        };
        if start {
            // A task of its own: a request dropped by its client must not
            // cancel the calls that answer the others.
            tokio::spawn(self.clone().flush(stream.to_string()));
        }
        answered.await.unwrap_or_else(|_| {
            Err(StreamError::Reply(
                "the append was abandoned (worker shutting down)".into(),
            ))
        })
    }

    /// Sends `stream`'s queued requests, a group per call, until none is left.
    async fn flush(self: Arc<Self>, stream: String) {
        loop {
            let jobs = {
                let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
                let Some(queue) = queues.get_mut(&stream) else {
                    return;
                };
                if queue.is_empty() {
                    queues.remove(&stream);
                    return;
                }
                take_group(queue)
            };
            let result = self.call(&stream, &jobs).await;
            answer(jobs, result);
        }
    }

    async fn load(&self, stream: &str) -> Result<String> {
        let frame = self
            .client
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

    async fn sha(&self, stream: &str) -> Result<String> {
        let cached = self.sha.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match cached {
            Some(sha) => Ok(sha),
            None => self.load(stream).await,
        }
    }

    /// One round trip for a group: each request's answer, in order.
    async fn call(&self, stream: &str, jobs: &[Job]) -> Result<Vec<Result<Appended>>> {
        let sha = self.sha(stream).await?;
        let runs = runs(jobs);
        let mut answers = Vec::with_capacity(jobs.len());
        if let Some(mut conn) = self.direct.try_direct() {
            let replies = conn
                .pipeline(|out| encode_group(out, &sha, stream, jobs, &runs))
                .await?;
            drop(conn);
            for ((script, range), reply) in runs.into_iter().zip(replies) {
                let n = range.len();
                let answered = match script {
                    false => Cursor::new(reply)
                        .string("XADD")
                        .map(|id| vec![Appended::Ids(vec![text(&id)])]),
                    true => parse_reply(reply, n),
                };
                self.collect(stream, jobs, range, answered, &mut answers)
                    .await;
            }
            return Ok(answers);
        }
        let pipeline = self.client.pipeline();
        for (script, range) in &runs {
            let (name, args) = command(*script, &sha, stream, &jobs[range.clone()]);
            let (command, args) = fred_command(name, stream, args);
            let _: Value = pipeline.custom(command, args).await?;
        }
        let replies = pipeline.try_all::<Value>().await;
        for ((script, range), reply) in runs.into_iter().zip(replies) {
            let n = range.len();
            let answered = match (script, reply) {
                (false, Ok(id)) => id_of(id).map(|id| vec![Appended::Ids(vec![id])]),
                (true, Ok(v)) => parse(v, n),
                (_, Err(e)) => Err(StreamError::from(e)),
            };
            self.collect(stream, jobs, range, answered, &mut answers)
                .await;
        }
        Ok(answers)
    }

    /// Adds one command's answers (for the requests `range` of `jobs`) to
    /// `answers`. A script flushed from Redis's cache is loaded again and
    /// this run resent alone (a refused call added nothing); an error is
    /// this run's alone: the others landed.
    async fn collect(
        &self,
        stream: &str,
        jobs: &[Job],
        range: Range<usize>,
        answered: Result<Vec<Appended>>,
        answers: &mut Vec<Result<Appended>>,
    ) {
        let n = range.len();
        let answered = match answered {
            Err(e) if is_noscript(&e) => {
                async {
                    let sha = self.load(stream).await?;
                    let (name, args) = command(true, &sha, stream, &jobs[range]);
                    let (command, args) = fred_command(name, stream, args);
                    let v: Value = self.client.custom(command, args).await?;
                    parse(v, n)
                }
                .await
            }
            other => other,
        };
        match answered {
            Ok(a) => answers.extend(a.into_iter().map(Ok)),
            Err(e) => answers.extend((0..n).map(|_| Err(e.clone()))),
        }
    }
}

/// Splits a group into commands: a plain XADD answers one uncapped
/// one-item request, a script call a run of the others. Whether each is a
/// script call, and the requests it answers.
fn runs(jobs: &[Job]) -> Vec<(bool, Range<usize>)> {
    let plain = |j: &Job| j.max_len.is_none() && j.items.len() == 1;
    let mut runs = Vec::new();
    let mut start = 0;
    while start < jobs.len() {
        let script = !plain(&jobs[start]);
        let end = if script {
            start + jobs[start..].iter().take_while(|j| !plain(j)).count()
        } else {
            start + 1
        };
        runs.push((script, start..end));
        start = end;
    }
    runs
}

/// Redis's refusal of a script it no longer has cached.
fn is_noscript(e: &StreamError) -> bool {
    match e {
        StreamError::Reply(text) => text.starts_with("NOSCRIPT"),
        StreamError::Redis(e) => e.details().starts_with("NOSCRIPT"),
        _ => false,
    }
}

/// One argument of a group's commands, borrowed from its requests.
enum Arg<'a> {
    Text(&'a [u8]),
    Field(&'a Bytes),
    Number(i64),
}

impl Arg<'_> {
    fn value(&self) -> Value {
        match self {
            Arg::Text(t) => Value::Bytes(Bytes::copy_from_slice(t)),
            Arg::Field(f) => Value::Bytes((*f).clone()),
            Arg::Number(n) => Value::Integer(*n),
        }
    }
}

/// The command that answers `run` (see [`runs`]), its name and arguments:
/// a plain XADD, or EVALSHA of [`SCRIPT`] laid out as its comment says.
/// The one place that layout is written, for both connections.
fn command<'a>(
    script: bool,
    sha: &'a str,
    stream: &'a str,
    run: &'a [Job],
) -> (&'static str, Vec<Arg<'a>>) {
    let fields = |args: &mut Vec<Arg<'a>>, fields: &'a Fields| {
        for (k, v) in fields {
            args.extend([Arg::Field(k), Arg::Field(v)]);
        }
    };
    let mut args = Vec::new();
    if !script {
        args.extend([Arg::Text(stream.as_bytes()), Arg::Text(b"*")]);
        fields(&mut args, &run[0].items[0]);
        return ("XADD", args);
    }
    args.extend([
        Arg::Text(sha.as_bytes()),
        Arg::Number(1),
        Arg::Text(stream.as_bytes()),
        Arg::Number(run.len() as i64),
    ]);
    for job in run {
        let max = job.max_len.map(|m| m.min(i64::MAX as u64) as i64);
        args.push(Arg::Number(max.unwrap_or(-1)));
        args.push(Arg::Number(job.items.len() as i64));
        for item in &job.items {
            args.push(Arg::Number(2 * item.len() as i64));
            fields(&mut args, item);
        }
    }
    ("EVALSHA", args)
}

/// The group's commands as RESP (see [`runs`]); returns how many.
fn encode_group(
    out: &mut BytesMut,
    sha: &str,
    stream: &str,
    jobs: &[Job],
    runs: &[(bool, Range<usize>)],
) -> usize {
    let mut number = itoa::Buffer::new();
    for (script, range) in runs {
        let (name, args) = command(*script, sha, stream, &jobs[range.clone()]);
        encode_header(out, 1 + args.len());
        encode_bulk(out, name.as_bytes());
        for arg in &args {
            match arg {
                Arg::Text(t) => encode_bulk(out, t),
                Arg::Field(f) => encode_bulk(out, f),
                Arg::Number(n) => encode_bulk(out, number.format(*n).as_bytes()),
            }
        }
    }
    runs.len()
}

/// A command of [`command`] for fred.
fn fred_command(
    name: &'static str,
    stream: &str,
    args: Vec<Arg<'_>>,
) -> (CustomCommand, Vec<Value>) {
    (cmd(name, stream), args.iter().map(Arg::value).collect())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// [`parse`] over the reply's bytes (the direct connection).
fn parse_reply(reply: Bytes, requests: usize) -> Result<Vec<Appended>> {
    let mut c = Cursor::new(reply);
    if c.array("the append script's reply")? != Some(requests) {
        return Err(shape("expected one answer per request"));
    }
    (0..requests)
        .map(|_| {
            if c.array("an answer")? != Some(2) {
                return Err(shape("expected [flag, value]"));
            }
            let flag = c.string("the flag")?;
            match &flag[..] {
                b"0" => {
                    let length = c.string("the length")?;
                    Ok(Appended::Full {
                        length: text(&length).parse().unwrap_or(0),
                    })
                }
                b"1" => {
                    let ids = c.array("the ids")?.unwrap_or(0);
                    (0..ids)
                        .map(|_| c.string("an id").map(|id| text(&id)))
                        .collect::<Result<Vec<_>>>()
                        .map(Appended::Ids)
                }
                _ => Err(shape("expected [1, ids] or [0, length]")),
            }
        })
        .collect()
}

/// Takes the next group off `queue`: requests in arrival order up to
/// [`GROUP_ITEMS`] items, at least one request.
fn take_group(queue: &mut VecDeque<Job>) -> Vec<Job> {
    let mut items = 0;
    let mut group = Vec::new();
    while let Some(job) = queue.front() {
        if !group.is_empty() && items + job.items.len() > GROUP_ITEMS {
            break;
        }
        items += job.items.len();
        group.extend(queue.pop_front());
    }
    group
}

/// Hands each request of a group its answer (a failed call fails them all:
/// the script adds nothing when it fails).
fn answer(jobs: Vec<Job>, result: Result<Vec<Result<Appended>>>) {
    match result {
        Ok(answers) => {
            for (job, a) in jobs.into_iter().zip(answers) {
                let _ = job.answer.send(a);
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.answer.send(Err(e.clone()));
            }
        }
    }
}

fn shape(detail: &str) -> StreamError {
    StreamError::Shape {
        command: "XADD",
        detail: detail.into(),
    }
}

fn id_of(v: Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.to_string()),
        Value::Bytes(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        other => Err(shape(&format!("expected an entry id, got {other:?}"))),
    }
}

/// The script's reply: one {flag, ids or length} per request.
fn parse(reply: Value, requests: usize) -> Result<Vec<Appended>> {
    let Value::Array(answers) = reply else {
        return Err(shape("expected an array from the append script"));
    };
    if answers.len() != requests {
        return Err(shape("expected one answer per request"));
    }
    answers
        .into_iter()
        .map(|answer| {
            let Value::Array(parts) = answer else {
                return Err(shape("expected [flag, value]"));
            };
            let mut parts = parts.into_iter();
            match (parts.next().and_then(|f| f.as_i64()), parts.next()) {
                (Some(0), Some(length)) => Ok(Appended::Full {
                    length: length.as_u64().unwrap_or(0),
                }),
                (Some(1), Some(Value::Array(ids))) => ids
                    .into_iter()
                    .map(id_of)
                    .collect::<Result<Vec<_>>>()
                    .map(Appended::Ids),
                _ => Err(shape("expected [1, ids] or [0, length]")),
            }
        })
        .collect()
}
