//! The worker process: opens every flow, runs them until shutdown, and
//! enforces the shutdown deadline.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::flow::Flow;
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
    if config.flows.is_empty() {
        anyhow::bail!("config has no [[flow]]: nothing to do");
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
        flows.push(Flow::open(&config, cfg, consumer.clone(), metrics.clone()).await?);
    }
    let sampler = tokio::spawn(crate::status::sample_loop(
        config.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

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
    shutdown.cancel();
    let _ = sampler.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    result
}
