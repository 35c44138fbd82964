//! The command line: `sluice run|check|status|schedule|dead|enqueue|console|tap`.
//! The binary's `main` only calls [`main`]; each command besides `run` and
//! `console` lives in its own file here.

pub(crate) mod check;
pub(crate) mod dead;
pub(crate) mod enqueue;
pub(crate) mod schedule;
mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::console;
use crate::console::tap;
use crate::console::tap::TapArgs;
use crate::obs::telemetry;
use crate::worker;

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
    Schedule(schedule::ScheduleArgs),
    /// Dead letters: list, show, replay to their source stream, purge.
    Dead(dead::DeadArgs),
    /// Add JSON lines or CSV rows (file or stdin) to a stream, pipelined;
    /// waits while the stream is at its max_len.
    Enqueue(enqueue::EnqueueArgs),
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
    Tap(TapArgs),
}

/// Parses the command line and runs the command: all of the `sluice`
/// binary but its `#[tokio::main]`.
pub async fn main() -> anyhow::Result<()> {
    crate::memory::return_large_blocks_when_freed();
    let cli = Cli::parse();
    // Held to the end of main: dropping it flushes exported traces.
    let _telemetry = telemetry::init();
    match cli.command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            worker::run(config, shutdown).await
        }
        Command::Check { config } => {
            let config = Config::load(&config)?;
            let plan = check::check(&config).await?;
            print!("{plan}");
            println!("ok");
            Ok(())
        }
        Command::Status { config, json } => {
            let config = Config::load(&config)?;
            status::main(&config, json).await
        }
        Command::Schedule(args) => schedule::main(args).await,
        Command::Dead(args) => dead::main(args).await,
        Command::Enqueue(args) => enqueue::main(args).await,
        Command::Console { config, listen } => {
            let config = Config::load(&config)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            console::run(config, listen, shutdown).await
        }
        Command::Tap(args) => tap::main(args).await,
    }
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn signal_shutdown(shutdown: CancellationToken) {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
}
