//! `sluice enqueue STREAM [FILE]`: bulk-load a stream from JSON lines (one
//! flat object per line) or CSV with a header row, from a file or stdin.
//!
//! Entries are XADDed in pipelined batches (one round trip per batch), a
//! progress bar runs on stderr when it is a terminal, and the final count
//! and rate are printed. With a cap (`--max-len`, or `[streams."name"]` in
//! the config) it never pushes the stream past it: it sends what fits and
//! waits while the stream is full, resuming as consumers drain it.
//!
//! Input rules are the HTTP entry's ([`crate::fields`]); a bad line stops the
//! load with its line number (everything before it has been sent).

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::config::RedisConfig;
use crate::fields::{self, Fields};
use crate::redis::client;
use crate::redis::commands;
use crate::redis::delayed;
use crate::redis::delayed::Due;
use crate::redis::sharder::Sharder;
use crate::schedule::spec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// `.csv` files are CSV, everything else JSON lines.
    Auto,
    Jsonl,
    Csv,
}

#[derive(Debug, clap::Args)]
pub(crate) struct EnqueueArgs {
    /// The stream to add to.
    pub stream: String,
    /// Input file; stdin when absent or `-`.
    pub file: Option<PathBuf>,
    /// Config file: its `redis.url`, and `[streams."STREAM"].max_len`.
    #[arg(long, short, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL (overrides the config's).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub format: Format,
    /// Never let the stream grow past this length: wait while it is full.
    #[arg(long)]
    pub max_len: Option<u64>,
    /// Entries per pipelined round trip.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// How often to re-check a full stream.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Hold the messages back this long (e.g. `30s`): they wait in the
    /// stream's delayed set and join the stream when due (no max_len wait).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "at")]
    pub delay: Option<Duration>,
    /// Hold the messages back until this time (RFC 3339 or Unix ms).
    #[arg(long)]
    pub at: Option<String>,
}

/// A batch read from the input: entries and the input bytes consumed so far.
struct Chunk {
    items: Vec<Fields>,
    read_bytes: u64,
}

/// Gathers parsed entries into chunks of `batch` and sends each, with the
/// input bytes consumed up to its end, to the side that enqueues them.
struct Chunker<'a> {
    items: Vec<Fields>,
    batch: usize,
    tx: &'a mpsc::Sender<anyhow::Result<Chunk>>,
}

impl<'a> Chunker<'a> {
    fn new(batch: usize, tx: &'a mpsc::Sender<anyhow::Result<Chunk>>) -> Self {
        Chunker {
            items: Vec::with_capacity(batch),
            batch,
            tx,
        }
    }

    fn push(&mut self, fields: Fields) {
        self.items.push(fields);
    }

    fn is_full(&self) -> bool {
        self.items.len() >= self.batch
    }

    /// Sends the gathered entries; false if the enqueuing side has stopped.
    fn send(&mut self, read_bytes: u64) -> bool {
        let items = std::mem::replace(&mut self.items, Vec::with_capacity(self.batch));
        self.tx
            .blocking_send(Ok(Chunk { items, read_bytes }))
            .is_ok()
    }

    /// Sends what is left, at the end of the input or before a bad entry
    /// (whose error follows it).
    fn finish(mut self, read_bytes: u64) {
        if !self.items.is_empty() {
            self.send(read_bytes);
        }
    }
}

/// Reads the input on a blocking thread, in batches.
fn reader(
    input: Box<dyn Read + Send>,
    format: Format,
    batch: usize,
    tx: mpsc::Sender<anyhow::Result<Chunk>>,
) {
    let counted = Counting { inner: input, n: 0 };
    let result = match format {
        Format::Csv => read_csv(counted, batch, &tx),
        _ => read_jsonl(counted, batch, &tx),
    };
    if let Err(e) = result {
        let _ = tx.blocking_send(Err(e));
    }
}

struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

fn read_jsonl(
    input: Counting<Box<dyn Read + Send>>,
    batch: usize,
    tx: &mpsc::Sender<anyhow::Result<Chunk>>,
) -> anyhow::Result<()> {
    let mut input = std::io::BufReader::with_capacity(1 << 16, input);
    let mut chunks = Chunker::new(batch, tx);
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .context("reading input")?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bytes = Bytes::copy_from_slice(&line);
        match fields::parse_object(&bytes) {
            Ok(fields) => chunks.push(fields),
            Err(r) => {
                // Send what came before the bad line, then stop.
                chunks.finish(input.get_ref().n);
                anyhow::bail!("line {number}: {}", strip_item(&r.to_string()));
            }
        }
        if chunks.is_full() && !chunks.send(input.get_ref().n - input.buffer().len() as u64) {
            return Ok(());
        }
    }
    chunks.finish(input.get_ref().n);
    Ok(())
}

/// "item 0, field `x`: …" → "field `x`: …" (a line holds one item).
fn strip_item(text: &str) -> &str {
    text.strip_prefix("item 0, ")
        .or_else(|| text.strip_prefix("item 0: "))
        .unwrap_or(text)
}

fn read_csv(
    input: Counting<Box<dyn Read + Send>>,
    batch: usize,
    tx: &mpsc::Sender<anyhow::Result<Chunk>>,
) -> anyhow::Result<()> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let headers = rdr.headers().context("reading the CSV header")?.clone();
    for (i, h) in headers.iter().enumerate() {
        if h.is_empty() {
            anyhow::bail!("CSV header: column {} has an empty name", i + 1);
        }
        if let Err(why) = fields::check_field_name(h) {
            anyhow::bail!("CSV header: column {:?}: {why}", h);
        }
    }
    let mut chunks = Chunker::new(batch, tx);
    let mut record = csv::StringRecord::new();
    let mut line = 1usize;
    loop {
        match rdr.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                chunks.finish(rdr.position().byte());
                return Err(anyhow::Error::new(e).context("reading CSV"));
            }
        }
        line = record
            .position()
            .map(|p| p.line() as usize)
            .unwrap_or(line + 1);
        match fields::from_pairs(headers.iter().zip(record.iter()), 0) {
            Ok(fields) => chunks.push(fields),
            Err(r) => {
                chunks.finish(rdr.position().byte());
                anyhow::bail!("line {line}: {}", strip_item(&r.to_string()));
            }
        }
        if chunks.is_full() && !chunks.send(rdr.position().byte()) {
            return Ok(());
        }
    }
    chunks.finish(rdr.position().byte());
    Ok(())
}

/// `items` grouped by the stream each goes to (its shard when `stream` is
/// sharded), in first-seen order; entries keep their order within a shard.
fn by_shard<'a>(
    sharder: &'a Sharder,
    stream: &'a str,
    items: &'a [Fields],
) -> Vec<(&'a str, std::borrow::Cow<'a, [Fields]>)> {
    if !sharder.is_sharded(stream) {
        return vec![(stream, std::borrow::Cow::Borrowed(items))];
    }
    sharder
        .split(stream, items.iter().cloned())
        .into_iter()
        .map(|(s, g)| (s, std::borrow::Cow::Owned(g)))
        .collect()
}

fn xadd() -> CustomCommand {
    CustomCommand::new_static("XADD", ClusterHash::FirstKey, false)
}

/// XADDs `items` in one pipeline.
pub(crate) async fn xadd_pipelined(
    client: &Client,
    stream: &str,
    items: &[Fields],
) -> anyhow::Result<()> {
    let pipeline = client.pipeline();
    let key = Bytes::copy_from_slice(stream.as_bytes());
    for fields in items {
        let mut args: Vec<Value> = Vec::with_capacity(2 + fields.len() * 2);
        args.push(Value::Bytes(key.clone()));
        args.push(Value::from("*"));
        for (k, v) in fields {
            args.push(Value::Bytes(k.clone()));
            args.push(Value::Bytes(v.clone()));
        }
        let _: Value = pipeline.custom(xadd(), args).await?;
    }
    for r in pipeline.try_all::<Value>().await {
        r.with_context(|| format!("XADD to `{stream}`"))?;
    }
    Ok(())
}

pub(crate) async fn main(args: EnqueueArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Some(Config::load(path)?),
        None => None,
    };
    let url = args
        .redis_url
        .clone()
        .or_else(|| config.as_ref().map(|c| c.redis.url.clone()))
        .ok_or_else(|| anyhow::anyhow!("no Redis: pass --redis-url (or REDIS_URL) or --config"))?;
    let max_len = args
        .max_len
        .or_else(|| config.as_ref().and_then(|c| c.stream_max_len(&args.stream)));
    if max_len == Some(0) {
        anyhow::bail!("--max-len must be >= 1");
    }
    if args.batch == 0 {
        anyhow::bail!("--batch must be >= 1");
    }
    let mut due = match (&args.delay, &args.at) {
        (Some(d), _) => Some(Due::After(*d)),
        (None, Some(at)) => Some(Due::At(
            spec::parse_time(at).map_err(|e| anyhow::anyhow!("--at: {e}"))?,
        )),
        (None, None) => None,
    };
    // Credentials (password_file, …) come with the config's Redis only.
    let mut redis_cfg = match config.as_ref().filter(|_| args.redis_url.is_none()) {
        Some(c) => c.redis.clone(),
        None => RedisConfig::from_url(url),
    };
    redis_cfg.command_timeout = Duration::from_secs(30);
    let client = client::connect(&redis_cfg)
        .await
        .context("connecting to Redis")?;

    let stdin = args.file.as_ref().is_none_or(|f| f.as_os_str() == "-");
    let (input, size): (Box<dyn Read + Send>, Option<u64>) = if stdin {
        (Box::new(std::io::stdin()), None)
    } else {
        let path = args.file.as_ref().expect("not stdin");
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let size = file.metadata().ok().map(|m| m.len());
        (Box::new(file), size)
    };
    let format = match args.format {
        Format::Auto => match &args.file {
            Some(p) if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) => Format::Csv,
            _ => Format::Jsonl,
        },
        f => f,
    };

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        match size {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {msg}",
                )
                .expect("valid template"),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .expect("valid template"),
            ),
        }
    };
    bar.enable_steady_tick(Duration::from_millis(200));

    // A sharded stream (`[streams."name"] shards = N`): each entry goes to
    // the shard its `shard_by` field hashes to, or round-robin.
    let sharder = config.as_ref().map(Sharder::new).unwrap_or_default();
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<Chunk>>(4);
    let (batch, fmt) = (args.batch, format);
    let reading = std::thread::spawn(move || reader(input, fmt, batch, tx));

    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut waited = Duration::ZERO;
    let outcome: anyhow::Result<()> = async {
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk?;
            let groups = by_shard(&sharder, &args.stream, &chunk.items);
            if groups.len() > 1 && due.is_none() && max_len.is_none() {
                // Shards on different nodes: write them all at once.
                let writes = groups
                    .iter()
                    .map(|(stream, items)| xadd_pipelined(&client, stream, items));
                futures_util::future::try_join_all(writes).await?;
                sent += chunk.items.len() as u64;
                let rate = sent as f64 / started.elapsed().as_secs_f64().max(1e-6);
                bar.set_message(format!("{sent} sent ({rate:.0}/s)"));
                if size.is_some() {
                    bar.set_position(chunk.read_bytes);
                }
                continue;
            }
            for (stream, items) in groups {
                let mut rest: &[Fields] = &items;
                while !rest.is_empty() {
                    if let Some(when) = due {
                        // Delayed: all batches share the first one's due time.
                        let at = delayed::enqueue(&client, stream, rest, when).await?;
                        due = Some(Due::At(at));
                        sent += rest.len() as u64;
                        bar.set_message(format!("{sent} held back until {at}"));
                        break;
                    }
                    let take = match max_len {
                        None => rest.len(),
                        Some(max) => {
                            let len = commands::len(&client, stream).await?;
                            let room = max.saturating_sub(len) as usize;
                            if room == 0 {
                                bar.set_message(format!(
                                    "{sent} sent; waiting: `{}` is at max_len ({len}/{max})",
                                    stream
                                ));
                                let t = Instant::now();
                                tokio::time::sleep(args.poll).await;
                                waited += t.elapsed();
                                continue;
                            }
                            room.min(rest.len())
                        }
                    };
                    xadd_pipelined(&client, stream, &rest[..take]).await?;
                    sent += take as u64;
                    rest = &rest[take..];
                    let rate = sent as f64 / started.elapsed().as_secs_f64().max(1e-6);
                    bar.set_message(format!("{sent} sent ({rate:.0}/s)"));
                }
            }
            if size.is_some() {
                bar.set_position(chunk.read_bytes);
            }
        }
        Ok(())
    }
    .await;
    drop(rx);
    let _ = reading.join();
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let rate = sent as f64 / secs.max(1e-6);
    let waited = if waited.is_zero() {
        String::new()
    } else {
        format!(", {:.1}s of it waiting at max_len", waited.as_secs_f64())
    };
    println!(
        "enqueued {sent} messages to `{}` in {secs:.2}s ({rate:.0} msgs/s{waited})",
        args.stream
    );
    if let Some(Due::At(at)) = due {
        let set = if sharder.is_sharded(&args.stream) {
            format!("the delayed sets of `{}`'s shards", args.stream)
        } else {
            format!("`{}`", delayed::set_key(&args.stream))
        };
        println!("held back in {set} until {}", spec::format_time(at));
    }
    outcome.map_err(|e| e.context(format!("stopped after {sent} messages")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(format: Format, text: &str, batch: usize) -> Vec<anyhow::Result<Chunk>> {
        let (tx, mut rx) = mpsc::channel(100);
        let input: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(text.as_bytes().to_vec()));
        std::thread::spawn(move || reader(input, format, batch, tx))
            .join()
            .unwrap();
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push(c);
        }
        out
    }

    #[test]
    fn json_lines_in_batches_skipping_blank_lines() {
        let text = "{\"a\":1}\n\n{\"a\":2}\n{\"a\":3}";
        let chunks = run(Format::Jsonl, text, 2);
        assert_eq!(chunks.len(), 2);
        let first = chunks[0].as_ref().unwrap();
        assert_eq!(first.items.len(), 2);
        assert_eq!(chunks[1].as_ref().unwrap().read_bytes, text.len() as u64);
    }

    #[test]
    fn bad_json_line_names_its_number_and_field() {
        let chunks = run(Format::Jsonl, "{\"a\":1}\n{\"a\":{\"b\":1}}\n", 10);
        let err = chunks
            .into_iter()
            .find_map(|c| c.err())
            .unwrap()
            .to_string();
        assert!(err.starts_with("line 2: field `a`"), "{err}");
    }

    #[test]
    fn csv_with_header() {
        let chunks = run(Format::Csv, "rec_id,task_for\n1,a\n2,\"b,c\"\n", 10);
        let items = &chunks[0].as_ref().unwrap().items;
        assert_eq!(items.len(), 2);
        assert_eq!(items[1][1].1.as_ref(), b"b,c");
        let chunks = run(Format::Csv, "a,a2\n1\n", 10);
        assert!(chunks[0].is_err());
        let chunks = run(Format::Csv, "a,\n1,2\n", 10);
        let err = chunks[0].as_ref().err().unwrap().to_string();
        assert!(err.contains("column 2"), "{err}");
    }
}
