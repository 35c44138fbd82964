//! The exec handler: a pool of long-running child processes that speak JSON
//! lines on stdin/stdout, so that the logic can stay in Python (or any
//! language) while sluice does the queueing.
//!
//! Protocol, one exchange per message, one line each way:
//! ```text
//! → {"id":"1700000000000-0","stream":"jobs.in","deliveries":1,"fields":{"rec_id":"7",…}}
//! ← {"id":"1700000000000-0","fields":{"rec_id":"7","result":"42"}}     one output
//! ← {"id":"…","outputs":[{…},{…}]}                                    several (or none: [])
//! ← {"id":"…","error":"what went wrong","retry":false}                 a failure
//! ```
//! Every reply must carry its request's `id`: a reply without it, or for
//! another id, breaks the protocol. `retry` defaults to true (redeliver
//! later); `false` dead-letters at once. A child handles one message at a
//! time; `workers` children run in parallel. Anything the child writes to
//! stderr goes to the worker's log.
//!
//! A child that exits, answers garbage or for another id, or does not
//! answer within `timeout` is killed, the message fails (and is retried by
//! redelivery), and a new child is started for the next message, with a
//! growing pause if children keep dying right after start. A child whose
//! call was abandoned with its request in flight (the flow's outer timeout
//! cancelled it) is killed too, never handed the next message: its late
//! reply would answer the wrong request.

use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use super::{outputs_from_json, request_json, Handler, HandlerError};
use crate::config::ExecHandlerConfig;
use crate::fields::Fields;
use crate::redis::Message;

/// A child that dies sooner than this after starting counts as crashing.
const QUICK_DEATH: Duration = Duration::from_secs(1);
const MAX_RESPAWN_PAUSE: Duration = Duration::from_secs(5);

struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    started: Instant,
    pid: u32,
}

pub struct ExecHandler {
    flow: String,
    cfg: ExecHandlerConfig,
    /// Free slots; `None` = the child is gone and is started on next use.
    idle: Mutex<Vec<Option<Proc>>>,
    permits: Semaphore,
    /// Children that died right after starting, in a row.
    quick_deaths: Mutex<u32>,
}

/// A slot taken from the pool; goes back (with or without a child) on drop,
/// so a cancelled call cannot shrink the pool.
struct Slot<'a> {
    pool: &'a ExecHandler,
    proc: Option<Proc>,
    /// A request was written and its reply not yet read. Still set on drop
    /// means the call was cancelled mid-exchange: the child goes (dropping
    /// it kills it, `kill_on_drop`) and a new one starts on next use.
    in_flight: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut proc = self.proc.take();
        if self.in_flight {
            if let Some(p) = proc.take() {
                tracing::warn!(flow = %self.pool.flow, pid = p.pid, "handler call abandoned with a request in flight; its process is killed so a late reply cannot answer the next message");
            }
        }
        self.pool
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(proc);
    }
}

/// What one exchange ended with.
enum Exchange {
    Reply(String),
    Exited,
}

impl ExecHandler {
    /// Starts `cfg.workers` children; fails if the command cannot be run.
    pub async fn start(flow: &str, cfg: &ExecHandlerConfig) -> anyhow::Result<ExecHandler> {
        let handler = ExecHandler {
            flow: flow.to_string(),
            cfg: cfg.clone(),
            idle: Mutex::new(Vec::with_capacity(cfg.workers)),
            permits: Semaphore::new(cfg.workers),
            quick_deaths: Mutex::new(0),
        };
        for _ in 0..cfg.workers {
            let proc = handler.spawn().map_err(|e| {
                anyhow::anyhow!(
                    "flow `{flow}`: handler.command {:?} cannot be started: {e}",
                    cfg.command
                )
            })?;
            handler.idle.lock().expect("fresh mutex").push(Some(proc));
        }
        tracing::info!(flow, command = ?cfg.command, workers = cfg.workers, "exec handler started");
        Ok(handler)
    }

    fn spawn(&self) -> std::io::Result<Proc> {
        let mut cmd = Command::new(&self.cfg.command[0]);
        cmd.args(&self.cfg.command[1..])
            .envs(&self.cfg.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(dir) = &self.cfg.dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let pid = child.id().unwrap_or(0);
        Ok(Proc {
            child,
            stdin,
            stdout,
            started: Instant::now(),
            pid,
        })
    }

    /// Starts a replacement child, pausing first if children keep dying.
    async fn respawn(&self) -> Result<Proc, HandlerError> {
        let deaths = *self.quick_deaths.lock().unwrap_or_else(|e| e.into_inner());
        if deaths > 0 {
            let pause = Duration::from_millis(50)
                .saturating_mul(1 << deaths.min(10))
                .min(MAX_RESPAWN_PAUSE);
            tokio::time::sleep(pause).await;
        }
        let proc = self.spawn().map_err(|e| {
            self.died_quickly(true);
            HandlerError::retry(format!(
                "exec handler {:?} could not be started: {e}",
                self.cfg.command
            ))
        })?;
        tracing::info!(flow = %self.flow, pid = proc.pid, "started a new handler process");
        Ok(proc)
    }

    fn died_quickly(&self, quick: bool) {
        let mut n = self.quick_deaths.lock().unwrap_or_else(|e| e.into_inner());
        *n = if quick { n.saturating_add(1) } else { 0 };
    }

    /// Kills and reaps a child; returns its exit status text.
    async fn end(&self, mut proc: Proc) -> String {
        let _ = proc.child.start_kill();
        let status = match tokio::time::timeout(Duration::from_secs(5), proc.child.wait()).await {
            Ok(Ok(s)) => s.to_string(),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => "did not exit after SIGKILL".into(),
        };
        self.died_quickly(proc.started.elapsed() < QUICK_DEATH);
        status
    }

    async fn exchange(proc: &mut Proc, request: &[u8]) -> std::io::Result<Exchange> {
        if let Err(e) = proc.stdin.write_all(request).await {
            return match e.kind() {
                std::io::ErrorKind::BrokenPipe => Ok(Exchange::Exited),
                _ => Err(e),
            };
        }
        proc.stdin.flush().await?;
        let mut line = String::new();
        if proc.stdout.read_line(&mut line).await? == 0 {
            return Ok(Exchange::Exited);
        }
        Ok(Exchange::Reply(line))
    }
}

/// Interprets one reply line for the message with id `id`.
pub(crate) fn parse_reply(line: &str, id: &[u8]) -> Result<Vec<Fields>, ReplyProblem> {
    let v: serde_json::Value = serde_json::from_str(line.trim_end())
        .map_err(|e| ReplyProblem::Protocol(format!("reply is not JSON ({e}): {}", clip(line))))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ReplyProblem::Protocol(format!("reply is not an object: {}", clip(line))))?;
    // The id is required: a reply that does not name its request cannot be
    // told apart from a late answer to an earlier one.
    match obj.get("id") {
        None => {
            return Err(ReplyProblem::Protocol(format!(
                "reply has no `id` (expected {:?}): {}",
                String::from_utf8_lossy(id),
                clip(line)
            )))
        }
        Some(reply_id) if reply_id.as_str().map(str::as_bytes) != Some(id) => {
            return Err(ReplyProblem::Protocol(format!(
                "reply is for id {reply_id}, expected {:?}",
                String::from_utf8_lossy(id)
            )));
        }
        Some(_) => {}
    }
    if let Some(error) = obj.get("error").filter(|e| !e.is_null()) {
        let text = error
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| error.to_string());
        let retry = obj.get("retry").and_then(|r| r.as_bool()).unwrap_or(true);
        return Err(ReplyProblem::Failed(if retry {
            HandlerError::Retry(text)
        } else {
            HandlerError::Fatal(text)
        }));
    }
    match (obj.get("fields"), obj.get("outputs")) {
        (Some(f @ serde_json::Value::Object(_)), None) => {
            outputs_from_json(f).map_err(ReplyProblem::Protocol)
        }
        (None, Some(o @ serde_json::Value::Array(_))) => {
            outputs_from_json(o).map_err(ReplyProblem::Protocol)
        }
        _ => Err(ReplyProblem::Protocol(format!(
            "reply needs exactly one of `fields` (object), `outputs` (array) or `error`: {}",
            clip(line)
        ))),
    }
}

/// A reply that is not what the protocol allows, or a reported failure.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReplyProblem {
    Protocol(String),
    Failed(HandlerError),
}

fn clip(s: &str) -> String {
    let s = s.trim_end();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[async_trait::async_trait]
impl Handler for ExecHandler {
    async fn handle(&self, m: &Message) -> Result<Vec<Fields>, HandlerError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        let proc = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .expect("a free slot per permit");
        let mut slot = Slot {
            pool: self,
            proc,
            in_flight: false,
        };
        if slot.proc.is_none() {
            slot.proc = Some(self.respawn().await?);
        }
        let proc = slot.proc.as_mut().expect("just set");
        let pid = proc.pid;
        let mut request = request_json(m);
        request.push(b'\n');
        slot.in_flight = true;
        let outcome = tokio::time::timeout(self.cfg.timeout, Self::exchange(proc, &request)).await;
        slot.in_flight = false;
        let id = String::from_utf8_lossy(&m.id);
        match outcome {
            Ok(Ok(Exchange::Reply(line))) => match parse_reply(&line, &m.id) {
                Ok(outputs) => {
                    self.died_quickly(false);
                    Ok(outputs)
                }
                Err(ReplyProblem::Failed(e)) => Err(e),
                Err(ReplyProblem::Protocol(why)) => {
                    let status = self.end(slot.proc.take().expect("present")).await;
                    tracing::warn!(flow = %self.flow, pid, %status, %why, "handler process broke the protocol; killed, a new one starts for the next message");
                    Err(HandlerError::retry(format!("exec handler: {why}")))
                }
            },
            Ok(Ok(Exchange::Exited)) | Ok(Err(_)) => {
                let status = self.end(slot.proc.take().expect("present")).await;
                tracing::warn!(flow = %self.flow, pid, %status, %id, "handler process exited while handling a message; restarting it");
                Err(HandlerError::retry(format!(
                    "exec handler process exited ({status}) while handling the message"
                )))
            }
            Err(_) => {
                let _ = self.end(slot.proc.take().expect("present")).await;
                tracing::warn!(flow = %self.flow, pid, %id, timeout = ?self.cfg.timeout, "handler process timed out; killed, restarting it");
                Err(HandlerError::retry(format!(
                    "exec handler timed out after {:?}",
                    self.cfg.timeout
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_one_several_none_or_error() {
        let one = parse_reply(r#"{"id":"1-0","fields":{"a":"b"}}"#, b"1-0").unwrap();
        assert_eq!(one.len(), 1);
        let two = parse_reply(r#"{"id":"1-0","outputs":[{"a":1},{"a":2}]}"#, b"1-0").unwrap();
        assert_eq!(two.len(), 2);
        assert!(parse_reply(r#"{"id":"1-0","outputs":[]}"#, b"1-0")
            .unwrap()
            .is_empty());
        assert_eq!(
            parse_reply(r#"{"id":"1-0","error":"bad input","retry":false}"#, b"1-0"),
            Err(ReplyProblem::Failed(HandlerError::Fatal(
                "bad input".into()
            )))
        );
        assert_eq!(
            parse_reply(r#"{"id":"1-0","error":"busy"}"#, b"1-0"),
            Err(ReplyProblem::Failed(HandlerError::Retry("busy".into())))
        );
    }

    #[test]
    fn protocol_errors() {
        for line in [
            "not json",
            "[1]",
            r#"{"id":"2-0","fields":{"a":1}}"#,
            r#"{"fields":{"a":1}}"#,
            r#"{"error":"busy"}"#,
            r#"{"id":1,"fields":{"a":1}}"#,
            r#"{"id":"1-0","fields":{"a":1},"outputs":[]}"#,
            r#"{"id":"1-0","fields":"x"}"#,
            r#"{"id":"1-0"}"#,
        ] {
            assert!(
                matches!(parse_reply(line, b"1-0"), Err(ReplyProblem::Protocol(_))),
                "{line}"
            );
        }
    }
}
