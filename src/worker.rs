//! The worker process: opens every flow, runs them until shutdown, and
//! enforces the shutdown deadline.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::connections;
use crate::console;
use crate::flow::{Flow, Opening};
use crate::handler::Handlers;
use crate::http_entry;
use crate::obs::metrics;
use crate::obs::metrics::Metrics;
use crate::obs::readiness::Readiness;
use crate::obs::status;
use crate::redis::client;
use crate::redis::group::consumer_name;
use crate::redis::version;
use crate::schedule;
use crate::source;

/// Refuses to start on a Redis older than the supported minimum (every
/// master of a cluster is asked): see [`crate::redis::version`].
async fn require_redis_version(config: &Config) -> anyhow::Result<()> {
    let client = client::connect(&config.redis)
        .await
        .map_err(|e| anyhow::anyhow!("redis.url: cannot connect: {e}"))?;
    for (server, version) in version::check(&client).await? {
        tracing::info!(%server, %version, "redis version supported");
    }
    let _ = fred::prelude::ClientLike::quit(&client).await;
    Ok(())
}

/// Runs all flows of `config` until `shutdown` is cancelled, then drains.
/// Returns an error if a flow failed to start or could not commit what it
/// held within `worker.shutdown_timeout`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_handlers(config, shutdown, Handlers::new()).await
}

/// Like [`run`]; flows whose config says
/// `handler = { type = "rust", name = "…" }` get their handler from `handlers`.
pub async fn run_with_handlers(
    config: Config,
    shutdown: CancellationToken,
    handlers: Handlers,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    if config.flows.is_empty()
        && config.sources.is_empty()
        && !config.scheduler.enabled
        && config.http.is_none()
    {
        anyhow::bail!(
            "config has no [[flow]], no [[source]], no [http] and [scheduler] is disabled: nothing to do"
        );
    }
    require_redis_version(&config).await?;
    let consumer = consumer_name(config.worker.consumer_prefix.as_deref());
    tracing::info!(%consumer, flows = config.flows.len(), "starting worker");

    // A replica started during a ClickHouse outage serves /healthz and
    // /readyz (not ready, and why), the HTTP entry and the schedules while
    // its flows wait for ClickHouse.
    let readiness = Arc::new(Readiness::default());
    for cfg in &config.flows {
        readiness.opening(&cfg.name);
    }
    let metrics_task = match &config.metrics.listen {
        Some(addr) => {
            let addr = addr.parse().expect("validated address");
            let token = shutdown.clone();
            Some(tokio::spawn(metrics::serve(
                metrics.clone(),
                readiness.clone(),
                addr,
                token,
            )))
        }
        None => None,
    };

    let hard_stop = CancellationToken::new();
    let deadline = config.worker.shutdown_timeout;
    {
        let (shutdown, hard_stop) = (shutdown.clone(), hard_stop.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tracing::info!(deadline = ?deadline, "shutting down: no more reads; committing batches in hand");
            tokio::time::sleep(deadline).await;
            hard_stop.cancel();
        });
    }

    // Each flow opens (waiting for ClickHouse if need be), then runs once
    // the services below have started. A flow that cannot open for good (a
    // missing table, a mapping that does not fit) stops the whole process,
    // as before.
    let config = Arc::new(config);
    let handlers = Arc::new(handlers);
    let services_started = CancellationToken::new();
    let handles: Vec<_> = (0..config.flows.len())
        .map(|i| {
            let (config, handlers, readiness) =
                (config.clone(), handlers.clone(), readiness.clone());
            let (consumer, metrics) = (consumer.clone(), metrics.clone());
            let (shutdown, hard_stop) = (shutdown.clone(), hard_stop.clone());
            let go = services_started.clone();
            tokio::spawn(async move {
                let cfg = &config.flows[i];
                let opening = Opening {
                    consumer,
                    metrics,
                    handlers: &handlers,
                    readiness: &readiness,
                    stop: &shutdown,
                };
                let flow = match Flow::open(&config, cfg, opening).await {
                    Ok(Some(flow)) => flow,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        shutdown.cancel();
                        return Err(e);
                    }
                };
                readiness.running(&cfg.name);
                tokio::select! {
                    _ = go.cancelled() => {}
                    _ = shutdown.cancelled() => {}
                }
                flow.run(shutdown, hard_stop).await
            })
        })
        .collect();

    // The rest starts once every flow is open or waits for ClickHouse, and
    // the open flows run after it: the order of a start with ClickHouse up
    // (flows and their handlers first, then the HTTP entry and schedules,
    // then reads), without waiting for ClickHouse when it is down.
    tokio::select! {
        _ = readiness.settled() => {}
        _ = shutdown.cancelled() => {}
    }
    let started = start_services(&config, &consumer, &metrics, &shutdown).await;
    if started.is_err() {
        shutdown.cancel();
    }
    services_started.cancel();
    let mut result = Ok(());
    for h in handles {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(anyhow::anyhow!("flow task panicked: {e}")),
        }
    }
    if config.flows.is_empty() {
        shutdown.cancelled().await; // schedules / sources only: run until told to stop
    }
    shutdown.cancel();
    let services = match started {
        Ok(services) => services,
        Err(e) => return Err(e),
    };
    for t in services {
        let _ = t.await;
    }
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    result
}

/// The HTTP entry, the console, the gauge sampler, the sources, the schedules and delayed-job
/// promotion (every replica; Redis arbitrates): their tasks. Skipped when
/// shutting down already.
async fn start_services(
    config: &Config,
    consumer: &str,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    if shutdown.is_cancelled() {
        return Ok(Vec::new());
    }
    let mut tasks = Vec::new();
    if config.http.is_some() {
        tasks.push(http_entry::start(config, shutdown.clone()).await?);
    }
    if let Some(listen) = config.console.as_ref().and_then(|c| c.listen.clone()) {
        tasks.push(console::start(config, &listen, shutdown.clone()).await?);
    }
    tasks.push(tokio::spawn(status::sample_loop(
        config.clone(),
        metrics.clone(),
        shutdown.clone(),
    )));
    tasks.extend(schedule::spawn(config, consumer, shutdown.clone()).await?);
    // `[[source]]`s: every replica opens them, the lease holder runs each.
    tasks.extend(source::spawn_all(config, consumer, metrics, shutdown.clone()).await?);
    if config.metrics.listen.is_some() {
        connections::export_info(metrics, config);
    }
    Ok(tasks)
}
