//! A Rust handler embedded in a program that runs sluice as a library.
//!
//! ```sh
//! redis-server --port 6379 &          # any Redis 7 will do
//! cargo run --example rust_handler -- redis://127.0.0.1:6379
//! ```
//! The program adds a few jobs to `demo.words.in`, runs one flow that passes
//! each through [`WordCount`] into `demo.words.out`, prints the outputs and
//! stops. In a real program the config comes from a file
//! (`Config::load`) and the worker runs until SIGTERM.

use std::time::Duration;

use sluice::config::Config;
use sluice::Fields;
use sluice::{testing::commands, Message};
use sluice::{Handler, HandlerError, Handlers};
use tokio_util::sync::CancellationToken;

/// Counts the words of the `text` field; refuses messages without one.
struct WordCount;

#[async_trait::async_trait]
impl Handler for WordCount {
    async fn handle(&self, m: &Message) -> Result<Vec<Fields>, HandlerError> {
        let text = m
            .field(b"text")
            .ok_or_else(|| HandlerError::fatal("no `text` field"))?;
        let text = String::from_utf8_lossy(text);
        let words = text.split_whitespace().count();
        // One output; return several to fan out, none to just consume.
        Ok(vec![vec![
            ("text".into(), text.into_owned().into()),
            ("words".into(), words.to_string().into()),
        ]])
    }
}

const CONFIG: &str = r#"
[redis]
url = "REDIS_URL"
[worker]
block = "200ms"

[[flow]]
name = "words"
streams = ["demo.words.in"]
handler = { type = "rust", name = "word_count", concurrency = 4 }
sink = { type = "stream", to = "demo.words.out" }
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let config =
        Config::from_toml_with_env(&CONFIG.replace("REDIS_URL", &url), "example", Vec::new())?;
    let redis = sluice::testing::client::connect(&config.redis).await?;
    let before = commands::len(&redis, "demo.words.out").await?;

    // Producers would use the HTTP entry, `sluice enqueue` or redis-cli.
    for text in [
        "the quick brown fox",
        "jumps over",
        "the lazy dog",
        "sluice moves streams",
    ] {
        let xadd = fred::types::CustomCommand::new_static(
            "XADD",
            fred::types::ClusterHash::FirstKey,
            false,
        );
        let _: fred::types::Value = fred::prelude::ClientLike::custom(
            &redis,
            xadd,
            vec!["demo.words.in", "*", "text", text],
        )
        .await?;
    }

    let shutdown = CancellationToken::new();
    let handlers = Handlers::new().register("word_count", WordCount);
    let worker = tokio::spawn(sluice::run_with_handlers(
        config,
        shutdown.clone(),
        handlers,
    ));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while commands::len(&redis, "demo.words.out").await? < before + 4 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "outputs did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = commands::range(
        &redis,
        &std::sync::Arc::from("demo.words.out"),
        b"-",
        b"+",
        1000,
    )
    .await?;
    for m in out.iter().skip(before as usize) {
        let get = |k: &[u8]| String::from_utf8_lossy(m.field(k).unwrap_or(b"")).into_owned();
        println!("{:>3} words  {}", get(b"words"), get(b"text"));
    }
    shutdown.cancel();
    worker.await??;
    Ok(())
}
