//! The connections the hot commands go on: a flow's readers' XREADGROUP,
//! its acks (XACK, and XDEL with `ack_del`), an exactly-once flow's
//! XPENDING over each batch it records, and the HTTP entry's appends.
//!
//! Against a single Redis server over plain TCP each is a connection of
//! sluice's own: commands are written straight into one buffer and
//! replies parsed from the bytes, an XREADGROUP reply straight into
//! [`Message`]s, each string a slice of one copy of the reply. Decoding it
//! into fred's frames and then into messages took about two thirds of the
//! worker's CPU; the direct parse halved the worker's CPU per message,
//! and acks sent this way cut it by a further tenth to a third (`cargo
//! bench --bench e2e`, README). Cluster, sentinel and TLS connections go
//! through fred, which routes and encrypts them.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use fred::prelude::*;
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::config::RedisConfig;
use crate::redis::acks::StreamIds;
use crate::redis::resp::{encode_command, Cursor, Scan};
use crate::redis::{
    client, commands, parse_id, reply, Message, MessageFields, Result, StreamError,
};

/// Where a flow's reads, acks or ownership checks go.
pub(crate) enum StreamConnection {
    Direct(Box<Mutex<DirectConnection>>),
    Fred(Client),
}

impl StreamConnection {
    /// A direct connection when `redis` names one plain-TCP server, else a
    /// fred client. Either way the first connection is made here, so a
    /// wrong address or password fails the start.
    pub(crate) async fn connect(redis: &RedisConfig, block: Duration) -> anyhow::Result<Self> {
        match Target::of(redis)? {
            Some(target) => Self::direct(target, redis.command_timeout + block).await,
            None => Ok(StreamConnection::Fred(
                client::connect_blocking(redis, block).await?,
            )),
        }
    }

    async fn direct(target: Target, timeout: Duration) -> anyhow::Result<Self> {
        let mut conn = DirectConnection::new(target, timeout);
        conn.connected().await?;
        Ok(StreamConnection::Direct(Box::new(Mutex::new(conn))))
    }

    /// A direct connection when `redis` names one plain-TCP server (made
    /// here), else `client` itself, for short commands such as acks.
    pub(crate) async fn connect_or(redis: &RedisConfig, client: &Client) -> anyhow::Result<Self> {
        match Target::of(redis)? {
            Some(target) => Self::direct(target, redis.command_timeout).await,
            None => Ok(StreamConnection::Fred(client.clone())),
        }
    }

    /// The direct connection, when there is one and no command is on it
    /// now (a caller with other ways to send then need not wait).
    pub(crate) fn try_direct(&self) -> Option<tokio::sync::MutexGuard<'_, DirectConnection>> {
        match self {
            StreamConnection::Direct(conn) => conn.try_lock().ok(),
            StreamConnection::Fred(_) => None,
        }
    }

    /// The ids (ms, seq) of `consumer`'s pending entries from `start` to
    /// `end` (extended XPENDING), up to `count`, in order.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn pending_ids(
        &self,
        stream: &str,
        group: &str,
        start: &[u8],
        end: &[u8],
        count: usize,
        consumer: &str,
    ) -> Result<Vec<(u64, u64)>> {
        match self {
            StreamConnection::Fred(client) => {
                let page =
                    commands::pending(client, stream, group, start, end, count, Some(consumer))
                        .await?;
                page.into_iter().map(|p| pending_id(&p.id)).collect()
            }
            StreamConnection::Direct(conn) => {
                let args = commands::pending_args(stream, group, start, end, count, Some(consumer));
                let reply = conn.lock().await.round_trip(b"XPENDING", &args).await?;
                pending_ids_reply(reply)
            }
        }
    }

    /// Acks one stream's `ids` (and deletes them when `delete`), in one
    /// pipelined round trip.
    pub(crate) async fn ack(&self, group: &str, ids: &StreamIds, delete: bool) -> Result<()> {
        match self {
            StreamConnection::Fred(client) => {
                commands::ack(client, &ids.stream, group, &ids.to_vec(), delete).await
            }
            StreamConnection::Direct(conn) => {
                let replies = conn
                    .lock()
                    .await
                    .pipeline(|request| ids.encode_ack(request, group, delete))
                    .await?;
                for reply in replies {
                    Cursor::new(reply).string_span("XACK")?;
                }
                Ok(())
            }
        }
    }

    /// XREADGROUP … COUNT n BLOCK ms STREAMS s… > …, appending to `out`.
    pub(crate) async fn read_group(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
        streams: &[Arc<str>],
        out: &mut Vec<Message>,
    ) -> Result<()> {
        match self {
            StreamConnection::Fred(client) => {
                commands::read_group(client, group, consumer, count, block, streams, out).await
            }
            StreamConnection::Direct(conn) => {
                let args = commands::read_group_args(group, consumer, count, block, streams);
                let reply = conn.lock().await.round_trip(b"XREADGROUP", &args).await?;
                read_group_reply(reply, streams, out)
            }
        }
    }
}

/// A plain-TCP standalone server, from the URL and overrides.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    database: Option<u8>,
}

impl Target {
    /// None when the connection needs fred (cluster, sentinel, TLS).
    fn of(redis: &RedisConfig) -> Result<Option<Target>, fred::error::Error> {
        if redis.is_cluster() {
            return Ok(None);
        }
        let config = fred::types::config::Config::from_url(&redis.url)?;
        if config.uses_tls() {
            return Ok(None);
        }
        let fred::types::config::ServerConfig::Centralized { server } = &config.server else {
            return Ok(None);
        };
        Ok(Some(Target {
            host: server.host.to_string(),
            port: server.port,
            username: redis.username.clone().or(config.username.clone()),
            password: redis.password.clone().or(config.password.clone()),
            database: config.database,
        }))
    }
}

fn connection_error(target: &Target, what: impl std::fmt::Display) -> StreamError {
    StreamError::Connection(format!("{}:{}: {what}", target.host, target.port))
}

/// One TCP connection to `target`, made again after any failure.
pub(crate) struct DirectConnection {
    target: Target,
    /// For a whole round trip, the BLOCK time included.
    timeout: Duration,
    open: Option<Open>,
    request: BytesMut,
}

struct Open {
    socket: TcpStream,
    /// Bytes received and not yet handed out as a reply.
    received: BytesMut,
    scan: Scan,
}

/// Room made in the receive buffer before each read: a 5,000-entry reply
/// is a few MiB, so small steps would mean many copies as it grows.
const READ_RESERVE: usize = 256 * 1024;

impl DirectConnection {
    fn new(target: Target, timeout: Duration) -> Self {
        DirectConnection {
            target,
            timeout,
            open: None,
            request: BytesMut::with_capacity(512),
        }
    }

    /// Connects (and authenticates) if there is no open connection.
    async fn connected(&mut self) -> Result<()> {
        if self.open.is_none() {
            let open = tokio::time::timeout(self.timeout, self.connect())
                .await
                .map_err(|_| connection_error(&self.target, "connect timed out"))??;
            self.open = Some(open);
        }
        Ok(())
    }

    async fn connect(&mut self) -> Result<Open> {
        let t = &self.target;
        let socket = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| connection_error(t, e))?;
        socket
            .set_nodelay(true)
            .map_err(|e| connection_error(t, e))?;
        let mut open = Open {
            socket,
            received: BytesMut::new(),
            scan: Scan::default(),
        };
        let mut setup: Vec<Vec<&[u8]>> = Vec::new();
        match (&t.username, &t.password) {
            (Some(user), Some(pass)) => setup.push(vec![b"AUTH", user.as_bytes(), pass.as_bytes()]),
            (None, Some(pass)) => setup.push(vec![b"AUTH", pass.as_bytes()]),
            _ => {}
        }
        let database = t.database.map(|db| db.to_string());
        if let Some(db) = &database {
            setup.push(vec![b"SELECT", db.as_bytes()]);
        }
        for args in setup {
            let reply = open
                .round_trip(&mut self.request, &args, t)
                .await
                .and_then(|reply| Cursor::new(reply).ok());
            if let Err(e) = reply {
                return Err(connection_error(
                    t,
                    format!("{} refused: {e}", String::from_utf8_lossy(args[0])),
                ));
            }
        }
        Ok(open)
    }

    /// Sends one command and returns its whole reply. On a connection
    /// failure or timeout the connection is dropped (the next call makes a
    /// new one): no command is sent twice, so entries a lost reply
    /// delivered stay pending until claimed, as with any lost reply.
    async fn round_trip(&mut self, name: &[u8], args: &[Bytes]) -> Result<Bytes> {
        let command: Vec<&[u8]> = std::iter::once(name)
            .chain(args.iter().map(|a| a.as_ref()))
            .collect();
        let mut replies = self
            .pipeline(|request| {
                encode_command(request, &command);
                1
            })
            .await?;
        Ok(replies.pop().expect("one reply asked for"))
    }

    /// Sends the commands `encode` writes (it returns how many) in one
    /// write and returns their replies, as [`Self::round_trip`] does one.
    pub(crate) async fn pipeline(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> usize,
    ) -> Result<Vec<Bytes>> {
        let timeout = self.timeout;
        self.connected().await?;
        let open = self.open.as_mut().expect("connected above");
        let t = &self.target;
        self.request.clear();
        let commands = encode(&mut self.request);
        let request = &self.request;
        let exchange = async {
            open.send(request, t).await?;
            let mut replies = Vec::with_capacity(commands);
            for _ in 0..commands {
                replies.push(open.receive(t).await?);
            }
            Ok(replies)
        };
        let done = tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(connection_error(t, "reply timed out")));
        if done.is_err() {
            self.open = None;
        }
        done
    }
}

impl Open {
    async fn round_trip(
        &mut self,
        request: &mut BytesMut,
        args: &[&[u8]],
        target: &Target,
    ) -> Result<Bytes> {
        request.clear();
        encode_command(request, args);
        self.send(request, target).await?;
        self.receive(target).await
    }

    async fn send(&mut self, request: &[u8], target: &Target) -> Result<()> {
        self.socket
            .write_all(request)
            .await
            .map_err(|e| connection_error(target, e))
    }

    /// The next whole reply.
    async fn receive(&mut self, target: &Target) -> Result<Bytes> {
        loop {
            if let Some(len) = self.scan.complete(&self.received)? {
                // Copied out, so that the messages hold an allocation of
                // the reply's own size and the receive buffer is reused
                // (its pages stay mapped) rather than kept alive by them.
                let reply = Bytes::copy_from_slice(&self.received[..len]);
                self.received.advance(len);
                return Ok(reply);
            }
            self.received.reserve(READ_RESERVE);
            let read = self
                .socket
                .read_buf(&mut self.received)
                .await
                .map_err(|e| connection_error(target, e))?;
            if read == 0 {
                return Err(connection_error(target, "connection closed by the server"));
            }
        }
    }
}

/// Parses an XREADGROUP reply (RESP2) into messages.
pub fn read_group_reply(reply: Bytes, streams: &[Arc<str>], out: &mut Vec<Message>) -> Result<()> {
    let shape = |detail: &str| StreamError::Shape {
        command: "XREADGROUP",
        detail: detail.to_string(),
    };
    let mut c = Cursor::new(reply);
    let Some(per_stream) = c.array("the reply")? else {
        return Ok(()); // BLOCK timed out
    };
    // One entry's (name, value) spans, reused.
    let mut spans: SmallVec<[(Range<usize>, Range<usize>); 8]> = SmallVec::new();
    for _ in 0..per_stream {
        if c.array("a stream")? != Some(2) {
            return Err(shape("stream item is not [name, entries]"));
        }
        let stream = reply::shared_name(streams, &c.string("a stream name")?);
        let entries = c.array("the entries")?.unwrap_or(0);
        // Counts come from the wire: reserve no more than the bytes left
        // could hold (an element takes at least 4).
        out.reserve(entries.min(c.remaining() / 4));
        for _ in 0..entries {
            if c.array("an entry")? != Some(2) {
                return Err(shape("entry is not [id, fields]"));
            }
            let id = c.string("an entry id")?;
            let Some(flat) = c.array("an entry's fields")? else {
                continue; // deleted while pending
            };
            if flat % 2 != 0 {
                return Err(shape("odd number of field/value items"));
            }
            spans.clear();
            for _ in 0..flat / 2 {
                spans.push((
                    c.string_span("a field name")?,
                    c.string_span("a field value")?,
                ));
            }
            out.push(Message {
                stream: stream.clone(),
                id,
                fields: MessageFields::in_buffer(c.reply(), spans.drain(..)),
                deliveries: 1,
            });
        }
    }
    Ok(())
}

/// An XPENDING entry's id as (ms, seq).
fn pending_id(id: &[u8]) -> Result<(u64, u64)> {
    parse_id(id).ok_or_else(|| StreamError::Shape {
        command: "XPENDING",
        detail: "an entry id is not ms-seq".into(),
    })
}

/// Parses an extended XPENDING reply (`[id, consumer, idle, deliveries]`
/// per entry) into its ids as numbers (cheaper to keep and compare than
/// 50,000 slices of the reply).
pub fn pending_ids_reply(reply: Bytes) -> Result<Vec<(u64, u64)>> {
    let mut c = Cursor::new(reply);
    let entries = c.array("the reply")?.unwrap_or(0);
    let mut ids = Vec::with_capacity(entries.min(c.remaining() / 4));
    for _ in 0..entries {
        if c.array("an entry")? != Some(4) {
            return Err(StreamError::Shape {
                command: "XPENDING",
                detail: "entry is not [id, consumer, idle, deliveries]".into(),
            });
        }
        let span = c.string_span("an entry id")?;
        ids.push(pending_id(&c.reply()[span])?);
        for what in ["the consumer", "the idle time", "the delivery count"] {
            c.string_span(what)?; // checked, not kept: no reference count taken
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(reply: &'static [u8]) -> Result<Vec<Message>> {
        let mut out = Vec::new();
        read_group_reply(Bytes::from_static(reply), &[Arc::from("s")], &mut out).map(|()| out)
    }

    #[test]
    fn parses_entries_and_skips_deleted_ones() {
        let out = parse(
            b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n\
              *2\r\n$3\r\n1-0\r\n*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$0\r\n\r\n\
              *2\r\n$3\r\n2-0\r\n*-1\r\n",
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, "1-0");
        assert_eq!(&*out[0].stream, "s");
        assert_eq!(out[0].deliveries, 1);
        assert_eq!(out[0].field(b"a").unwrap(), b"1");
        assert_eq!(out[0].field(b"b").unwrap(), b"");
    }

    #[test]
    fn any_cut_or_changed_byte_of_a_reply_gives_a_result_not_a_panic() {
        let valid: &[u8] =
            b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\na\r\n$1\r\n1\r\n";
        assert_eq!(parse(valid).unwrap().len(), 1);
        let streams = [Arc::from("s")];
        let mut tried = 0;
        for cut in 0..valid.len() {
            let mut out = Vec::new();
            let _ = read_group_reply(Bytes::copy_from_slice(&valid[..cut]), &streams, &mut out);
            tried += 1;
        }
        for at in 0..valid.len() {
            for byte in [b'*', b'$', b'-', b'9', b'\r', b'\n', 0xff] {
                let mut changed = valid.to_vec();
                changed[at] = byte;
                let mut scan = Scan::default();
                let whole = scan.complete(&changed);
                if let Ok(Some(len)) = whole {
                    assert!(len <= changed.len());
                }
                let mut out = Vec::new();
                let _ = read_group_reply(Bytes::from(changed), &streams, &mut out);
                tried += 1;
            }
        }
        // A huge count on the wire reserves nothing like it.
        let mut out = Vec::new();
        assert!(read_group_reply(
            Bytes::from_static(b"*1\r\n*2\r\n$1\r\ns\r\n*999999999999999\r\n"),
            &streams,
            &mut out
        )
        .is_err());
        assert!(out.capacity() < 1_000);
        assert_eq!(tried, valid.len() * 8);
    }

    #[test]
    fn pending_replies_give_their_ids() {
        let ids = pending_ids_reply(Bytes::from_static(
            b"*2\r\n*4\r\n$3\r\n1-0\r\n$1\r\nc\r\n:5\r\n:1\r\n\
              *4\r\n$3\r\n2-0\r\n$1\r\nc\r\n:7\r\n:2\r\n",
        ))
        .unwrap();
        assert_eq!(ids, [(1, 0), (2, 0)]);
        assert!(pending_ids_reply(Bytes::from_static(b"*0\r\n"))
            .unwrap()
            .is_empty());
        let err = pending_ids_reply(Bytes::from_static(b"*1\r\n*2\r\n$3\r\n1-0\r\n$1\r\nc\r\n"))
            .unwrap_err();
        assert!(err.to_string().contains("XPENDING"), "{err}");
    }

    #[test]
    fn a_timed_out_block_reads_nothing() {
        assert!(parse(b"*-1\r\n").unwrap().is_empty());
    }

    #[test]
    fn names_what_is_wrong_with_a_bad_reply() {
        let err = parse(b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*1\r\n$1\r\na\r\n")
            .unwrap_err();
        assert!(err.to_string().contains("odd number"), "{err}");
        let err = parse(b"-NOGROUP No such key\r\n").unwrap_err();
        assert!(err.to_string().contains("NOGROUP"), "{err}");
    }
}
