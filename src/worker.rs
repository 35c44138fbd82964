//! The worker process: opens every flow, runs them until shutdown, and
//! enforces the shutdown deadline.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::flow::Flow;
use crate::handler::Handlers;
use crate::metrics::Metrics;
use crate::stream::group::consumer_name;

/// Runs all flows of `config` until `shutdown` is cancelled, then drains.
/// Returns an error if a flow failed to start or could not commit what it
/// held within `worker.shutdown_timeout`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_metrics(config, shutdown, Metrics::new()).await
}

pub async fn run_with_metrics(
    config: Config,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    run_with_handlers(config, shutdown, metrics, Handlers::new()).await
}

/// Like [`run_with_metrics`]; flows whose config says
/// `handler = { type = "rust", name = "…" }` get their handler from `handlers`.
pub async fn run_with_handlers(
    config: Config,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    handlers: Handlers,
) -> anyhow::Result<()> {
    if config.flows.is_empty()
        && config.sources.is_empty()
        && !config.scheduler.enabled
        && config.http.is_none()
    {
        anyhow::bail!(
            "config has no [[flow]], no [[source]], no [http] and [scheduler] is disabled: nothing to do"
        );
    }
    let consumer = consumer_name(config.worker.consumer_prefix.as_deref());
    tracing::info!(%consumer, flows = config.flows.len(), "starting worker");

    let metrics_task = match &config.metrics.listen {
        Some(addr) => {
            let addr = addr.parse().expect("validated address");
            let token = shutdown.clone();
            Some(tokio::spawn(crate::metrics::serve(
                metrics.clone(),
                addr,
                token,
            )))
        }
        None => None,
    };

    let mut flows = Vec::new();
    for cfg in &config.flows {
        flows.push(
            Flow::open_with_handlers(&config, cfg, consumer.clone(), metrics.clone(), &handlers)
                .await?,
        );
    }
    let http_entry = match &config.http {
        Some(_) => Some(crate::http_entry::start(&config, shutdown.clone()).await?),
        None => None,
    };
    let sampler = tokio::spawn(crate::status::sample_loop(
        config.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    // Schedules and delayed-job promotion (every replica; Redis arbitrates).
    let scheduling = crate::schedule::spawn(&config, &consumer, shutdown.clone()).await?;
    // `[[source]]`s: every replica opens them, the lease holder runs each.
    let sources = crate::source::spawn_all(&config, &consumer, &metrics, shutdown.clone()).await?;
    if config.metrics.listen.is_some() {
        crate::connections::export_info(&metrics, &config);
    }

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

    let handles: Vec<_> = flows
        .into_iter()
        .map(|f| tokio::spawn(f.run(shutdown.clone(), hard_stop.clone())))
        .collect();
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
    if let Some(t) = http_entry {
        let _ = t.await;
    }
    for t in scheduling.into_iter().chain(sources) {
        let _ = t.await;
    }
    let _ = sampler.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    result
}
