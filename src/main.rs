//! The `sluice` binary: parse the command line, set up logging, load the
//! config, then hand over to the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Redis Streams consumer-group workers that land data in ClickHouse"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker until SIGTERM/SIGINT.
    Run {
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Validate the config, connect, check tables and mapping, print the plan.
    Check {
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Per flow and stream: length, lag, pending, consumers, dead letters.
    Status {
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Schedules (state in Redis): list, pause, resume, trigger, add, remove.
    Schedule(sluice::cli::schedule::ScheduleArgs),
    /// Dead letters: list, show, replay to their source stream, purge.
    Dead(sluice::cli::dead::DeadArgs),
    /// Add JSON lines or CSV rows (file or stdin) to a stream, pipelined;
    /// waits while the stream is at its max_len.
    Enqueue(sluice::cli::enqueue::EnqueueArgs),
    /// Serve the operator console only (no flows run) until SIGTERM/SIGINT.
    Console {
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// `ip:port`; default `console.listen`, else 127.0.0.1:9400.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Print a stream's new entries as they arrive (XREAD; takes nothing
    /// from consumer groups).
    Tap(sluice::console::tap::TapArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Held to the end of main: dropping it flushes exported traces.
    let _telemetry = sluice::obs::telemetry::init();
    match cli.command {
        Command::Run { config } => {
            let config = sluice::config::Config::load(&config)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            sluice::run(config, shutdown).await
        }
        Command::Check { config } => {
            let config = sluice::config::Config::load(&config)?;
            let plan = sluice::cli::check::check(&config).await?;
            print!("{plan}");
            println!("ok");
            Ok(())
        }
        Command::Status { config, json } => {
            let config = sluice::config::Config::load(&config)?;
            let client = sluice::redis::client::connect(&config.redis)
                .await
                .context("redis.url")?;
            let list = sluice::obs::status::all(&client, &config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", sluice::obs::status::render_table(&list));
                // The default ClickHouse, then the named ones.
                for ch in config
                    .clickhouse
                    .iter()
                    .chain(config.clickhouse_remote.values())
                {
                    let endpoints = sluice::sink::clickhouse::endpoints::probe(ch).await;
                    print!("{}", sluice::obs::status::render_endpoints(&endpoints));
                }
                print!("{}", sluice::connections::render_sinks(&config));
                let sources = sluice::source::status::all(&config).await?;
                print!("{}", sluice::source::status::render(&sources));
            }
            Ok(())
        }
        Command::Schedule(args) => sluice::cli::schedule::main(args).await,
        Command::Dead(args) => sluice::cli::dead::main(args).await,
        Command::Enqueue(args) => sluice::cli::enqueue::main(args).await,
        Command::Console { config, listen } => {
            let config = sluice::config::Config::load(&config)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            sluice::console::run(config, listen, shutdown).await
        }
        Command::Tap(args) => sluice::console::tap::main(args).await,
    }
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn signal_shutdown(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
}
