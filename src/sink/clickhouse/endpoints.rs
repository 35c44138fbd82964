//! Several ClickHouse endpoints behind one sink: which one an insert goes
//! to, which are healthy, and how a failed one comes back.
//!
//! - **Modes** (`clickhouse.endpoints`): `failover` tries the healthy
//!   endpoints in `urls` order, so the first healthy one takes every insert;
//!   `round_robin` starts each insert at the next endpoint in turn. Either
//!   way, a transient failure moves the same insert on to the next healthy
//!   endpoint at once; only when every healthy one failed does the caller
//!   back off. When none is healthy, all are tried in order (a last resort
//!   that the caller's backoff paces), so a single endpoint behaves exactly
//!   like the plain `url` did.
//! - **Health**: an insert that fails transiently (connection, timeout,
//!   server trouble: [`classify`] says Retry) marks its endpoint down for a
//!   period that doubles with consecutive failures (from
//!   `health_check_every`, at most [`MAX_DOWN`]). Every `health_check_every`
//!   each endpoint answers `SELECT version()`; a down endpoint is back once
//!   its period is over and a check passes. A refusal (the server answered
//!   with an exception about the insert: Bisect or Escalate, e.g. a view
//!   that fails for a row) says nothing about the endpoint: it stays up and
//!   the insert is not retried elsewhere, since every endpoint would refuse
//!   it the same way.
//! - **Shards** (`shard_by`): the endpoints are shards, addressed by index
//!   ([`Endpoints::insert_at`]); a down shard is retried, never replaced.
//!
//! Per-endpoint metrics (`sluice_clickhouse_endpoint_*`, labels `flow` and
//! `endpoint` = the URL without credentials or query) and [`EndpointStatus`] for
//! `sluice check` / `sluice status` come from here too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use clickhouse::Client;
use prometheus::{IntCounter, IntGauge};
use serde::Serialize;

use crate::config::{ClickHouseConfig, EndpointMode};
use crate::obs::metrics::Metrics;
use crate::sink::clickhouse::classify::classify;
use crate::sink::clickhouse::version_at_least;
use crate::time::Ticker;

/// Longest time an endpoint stays marked down after failed inserts before
/// a passing health check may bring it back.
pub(crate) const MAX_DOWN: Duration = Duration::from_secs(60);

/// Bound on one health check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A URL without its userinfo and query (either may hold a secret): the
/// `endpoint` label and what logs show.
pub(crate) fn endpoint_label(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let query = rest.find(['?', '#']).unwrap_or(rest.len());
    let host = match rest[..query].rsplit_once('@') {
        Some((_, host)) => host,
        None => &rest[..query],
    };
    format!("{scheme}://{}", host.trim_end_matches('/'))
}

/// A client for one endpoint URL. Validation is off: it sends a setting
/// 18.16 rejects.
pub(crate) fn client_for(cfg: &ClickHouseConfig, url: &str) -> Client {
    let client = Client::default()
        .with_url(url)
        .with_database(&cfg.database)
        .with_user(&cfg.user)
        .with_validation(false);
    let client = if cfg.password.is_empty() {
        client
    } else {
        client.with_password(&cfg.password)
    };
    if cfg.compression {
        client.with_compression(clickhouse::Compression::Lz4)
    } else {
        client.with_compression(clickhouse::Compression::None)
    }
}

/// One endpoint's health as `sluice check` / `sluice status` report it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EndpointStatus {
    /// The config key it came from (`clickhouse.urls[1]`).
    pub key: String,
    /// The URL without credentials.
    pub endpoint: String,
    pub up: bool,
    pub version: Option<String>,
    pub error: Option<String>,
}

/// `SELECT version()` on every configured endpoint, concurrently.
pub(crate) async fn probe(cfg: &ClickHouseConfig) -> Vec<EndpointStatus> {
    let checks = cfg.endpoint_urls().into_iter().enumerate().map(|(i, url)| {
        let client = client_for(cfg, url);
        async move {
            let (up, version, error) = match check(&client).await {
                Ok(v) => (true, Some(v), None),
                Err(e) => (false, None, Some(e)),
            };
            EndpointStatus {
                key: cfg.endpoint_key(i),
                endpoint: endpoint_label(url),
                up,
                version,
                error,
            }
        }
    });
    futures_util::future::join_all(checks).await
}

async fn check(client: &Client) -> Result<String, String> {
    let query = client.query("SELECT version()").fetch_one::<String>();
    match tokio::time::timeout(CHECK_TIMEOUT, query).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

#[derive(Debug, Default)]
struct Health {
    up: bool,
    /// Consecutive failed inserts; reset by a confirmed insert.
    failures: u32,
    /// Not back before this, whatever the health checks say.
    down_until: Option<Instant>,
    version: Option<String>,
    last_error: Option<String>,
}

struct Handles {
    up: IntGauge,
    inserts: IntCounter,
    rows: IntCounter,
    errors_retry: IntCounter,
    errors_bisect: IntCounter,
    errors_check: IntCounter,
}

pub(crate) struct Endpoint {
    /// The config key (`clickhouse.urls[i]` or `clickhouse.url`).
    pub key: String,
    /// The URL without credentials.
    pub label: String,
    pub client: Client,
    health: Mutex<Health>,
    metrics: Option<Handles>,
}

impl Endpoint {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_up(&self) -> bool {
        self.health().up
    }

    fn set_up(&self, h: &mut Health, up: bool) {
        if h.up != up {
            if up {
                tracing::info!(endpoint = %self.label, "ClickHouse endpoint is up");
            } else {
                tracing::warn!(endpoint = %self.label, error = h.last_error.as_deref().unwrap_or(""), "ClickHouse endpoint marked down");
            }
        }
        h.up = up;
        if let Some(m) = &self.metrics {
            m.up.set(up as i64);
        }
    }

    /// A confirmed insert of `rows` rows.
    fn insert_ok(&self, rows: usize) {
        let mut h = self.health();
        h.failures = 0;
        h.down_until = None;
        self.set_up(&mut h, true);
        if let Some(m) = &self.metrics {
            m.inserts.inc();
            m.rows.inc_by(rows as u64);
        }
    }

    /// A transient insert failure: down for a period doubling per
    /// consecutive failure.
    fn insert_failed(&self, base: Duration, error: &str) {
        let mut h = self.health();
        h.failures = h.failures.saturating_add(1);
        let period = base
            .saturating_mul(1 << (h.failures - 1).min(16))
            .min(MAX_DOWN);
        h.down_until = Some(Instant::now() + period);
        h.last_error = Some(error.to_string());
        self.set_up(&mut h, false);
        if let Some(m) = &self.metrics {
            m.errors_retry.inc();
        }
    }

    fn insert_refused(&self) {
        if let Some(m) = &self.metrics {
            m.errors_bisect.inc();
        }
    }

    fn check_passed(&self, version: String) {
        let mut h = self.health();
        h.version = Some(version);
        let waiting = h.down_until.is_some_and(|t| Instant::now() < t);
        if !waiting {
            h.down_until = None;
            self.set_up(&mut h, true);
        }
    }

    fn check_failed(&self, error: String) {
        let mut h = self.health();
        h.last_error = Some(error);
        self.set_up(&mut h, false);
        if let Some(m) = &self.metrics {
            m.errors_check.inc();
        }
    }

    /// Before 19.1 (or not known yet): LowCardinality needs an experimental
    /// setting in DDL, and `DROP … SYNC` does not exist (nor is it needed:
    /// drops are eager there).
    pub(crate) fn is_legacy(&self) -> bool {
        self.health()
            .version
            .as_deref()
            .is_none_or(|v| !version_at_least(v, 19, 1))
    }

    /// `insert_deduplication_token` exists on this endpoint (22.1+); unknown
    /// until a check passed.
    pub(crate) fn has_dedup_token(&self) -> bool {
        self.health()
            .version
            .as_deref()
            .is_some_and(|v| version_at_least(v, 22, 1))
    }

    pub(crate) fn status(&self) -> EndpointStatus {
        let h = self.health();
        EndpointStatus {
            key: self.key.clone(),
            endpoint: self.label.clone(),
            up: h.up,
            version: h.version.clone(),
            error: (!h.up).then(|| h.last_error.clone()).flatten(),
        }
    }
}

/// The endpoints of one sink, their health, and the choice of endpoint.
pub(crate) struct Endpoints {
    list: Vec<Endpoint>,
    mode: EndpointMode,
    next: AtomicUsize,
    check_every: Duration,
}

impl Endpoints {
    /// Endpoints for `cfg`'s URLs, all unknown (down) until
    /// [`check_all`](Self::check_all). `metrics`: per-endpoint series for
    /// `flow`, or None when metrics are off.
    pub(crate) fn new(cfg: &ClickHouseConfig, flow: &str, metrics: Option<&Arc<Metrics>>) -> Self {
        let list = cfg
            .endpoint_urls()
            .into_iter()
            .enumerate()
            .map(|(i, url)| {
                let label = endpoint_label(url);
                let metrics = metrics.map(|m| {
                    let l = [flow, label.as_str()];
                    let error = |kind: &str| {
                        m.endpoint_errors
                            .with_label_values(&[flow, label.as_str(), kind])
                    };
                    Handles {
                        up: m.endpoint_up.with_label_values(&l),
                        inserts: m.endpoint_inserts.with_label_values(&l),
                        rows: m.endpoint_rows.with_label_values(&l),
                        errors_retry: error("retry"),
                        errors_bisect: error("bisect"),
                        errors_check: error("health_check"),
                    }
                });
                Endpoint {
                    key: cfg.endpoint_key(i),
                    label,
                    client: client_for(cfg, url),
                    health: Mutex::new(Health::default()),
                    metrics,
                }
            })
            .collect();
        Endpoints {
            list,
            mode: cfg.endpoints,
            next: AtomicUsize::new(0),
            check_every: cfg.health_check_every,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn get(&self, index: usize) -> &Endpoint {
        &self.list[index]
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.list.iter()
    }

    pub(crate) fn statuses(&self) -> Vec<EndpointStatus> {
        self.list.iter().map(Endpoint::status).collect()
    }

    /// Checks every endpoint once, concurrently.
    pub(crate) async fn check_all(&self) {
        let checks = self.list.iter().map(|e| async move {
            match check(&e.client).await {
                Ok(v) => e.check_passed(v),
                Err(err) => e.check_failed(err),
            }
        });
        futures_util::future::join_all(checks).await;
    }

    /// Checks every endpoint each `health_check_every` until `self` is dropped.
    pub(crate) fn spawn_health_checks(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = self.check_every;
        tokio::spawn(async move {
            let mut tick = Ticker::every(every);
            tick.tick().await; // the first tick is immediate: just checked
            loop {
                tick.tick().await;
                let Some(endpoints) = weak.upgrade() else {
                    return;
                };
                endpoints.check_all().await;
            }
        });
    }

    /// The endpoints one insert tries, in order: the healthy ones in the
    /// mode's order, or all of them when none is healthy.
    pub(crate) fn plan(&self) -> Vec<usize> {
        let healthy: Vec<usize> = (0..self.list.len())
            .filter(|&i| self.list[i].is_up())
            .collect();
        let mut plan = if healthy.is_empty() {
            (0..self.list.len()).collect()
        } else {
            healthy
        };
        if self.mode == EndpointMode::RoundRobin {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % plan.len();
            plan.rotate_left(start);
        }
        plan
    }

    /// One insert pass: `send` (given an endpoint's index) on each endpoint
    /// of [`plan`](Self::plan) until one confirms. A refusal ends the pass at
    /// once (every endpoint would refuse the same rows); a transient error
    /// marks the endpoint down and moves on. Returns the last error when all
    /// failed.
    pub(crate) async fn insert<F, Fut>(
        &self,
        rows: usize,
        mut send: F,
    ) -> Result<(), clickhouse::error::Error>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = Result<(), clickhouse::error::Error>>,
    {
        let plan = self.plan();
        let mut last = None;
        for (n, &i) in plan.iter().enumerate() {
            let endpoint = &self.list[i];
            match self.attempt(endpoint, rows, send(i).await) {
                Ok(()) => return Ok(()),
                Err(e) if classify(&e).is_refusal() => return Err(e),
                Err(e) => {
                    if let Some(next) = plan.get(n + 1) {
                        tracing::warn!(endpoint = %endpoint.label, next = %self.list[*next].label, error = %e, "insert failed; trying the next endpoint");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("plan is never empty"))
    }

    /// One insert on the endpoint at `index` only (a shard): no failover.
    pub(crate) async fn insert_at<Fut>(
        &self,
        index: usize,
        rows: usize,
        send: impl FnOnce(usize) -> Fut,
    ) -> Result<(), clickhouse::error::Error>
    where
        Fut: std::future::Future<Output = Result<(), clickhouse::error::Error>>,
    {
        let result = send(index).await;
        self.attempt(&self.list[index], rows, result)
    }

    /// Records the outcome of an insert made outside [`insert`](Self::insert)
    /// (the exactly-once path) in the endpoint's health.
    pub(crate) fn record(
        &self,
        index: usize,
        rows: usize,
        result: Result<(), clickhouse::error::Error>,
    ) -> Result<(), clickhouse::error::Error> {
        self.attempt(&self.list[index], rows, result)
    }

    /// Records the outcome of one insert on `endpoint`.
    fn attempt(
        &self,
        endpoint: &Endpoint,
        rows: usize,
        result: Result<(), clickhouse::error::Error>,
    ) -> Result<(), clickhouse::error::Error> {
        match &result {
            Ok(()) => endpoint.insert_ok(rows),
            Err(e) if classify(e).is_refusal() => endpoint.insert_refused(),
            Err(e) => endpoint.insert_failed(self.check_every, &e.to_string()),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(mode: EndpointMode, n: usize) -> Endpoints {
        let cfg = ClickHouseConfig {
            urls: (0..n).map(|i| format!("http://u:pw@h{i}:8123/")).collect(),
            endpoints: mode,
            ..serde_json::from_str::<ClickHouseConfig>("{}").unwrap()
        };
        let e = Endpoints::new(&cfg, "f", None);
        for ep in &e.list {
            ep.check_passed("18.16.1".into());
        }
        e
    }

    #[test]
    fn labels_drop_credentials() {
        assert_eq!(endpoint_label("http://u:pw@h:8123/"), "http://h:8123");
        assert_eq!(endpoint_label("https://h:8443"), "https://h:8443");
        assert_eq!(endpoint_label("http://u:p@ss@h/?x=@"), "http://h");
        assert_eq!(endpoint_label("http://h:1/?password=x"), "http://h:1");
    }

    #[test]
    fn failover_prefers_the_first_healthy() {
        let e = endpoints(EndpointMode::Failover, 3);
        assert_eq!(e.plan(), [0, 1, 2]);
        assert_eq!(e.plan(), [0, 1, 2]);
        e.list[0].insert_failed(Duration::from_secs(5), "refused");
        assert_eq!(e.plan(), [1, 2]);
        // A passing check does not end the down period early.
        e.list[0].check_passed("18.16.1".into());
        assert_eq!(e.plan(), [1, 2]);
        e.list[0].health().down_until = Some(Instant::now());
        e.list[0].check_passed("18.16.1".into());
        assert_eq!(e.plan(), [0, 1, 2]);
    }

    #[test]
    fn round_robin_rotates_over_healthy() {
        let e = endpoints(EndpointMode::RoundRobin, 3);
        let firsts: Vec<usize> = (0..6).map(|_| e.plan()[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        e.list[1].check_failed("down".into());
        let plans: Vec<Vec<usize>> = (0..3).map(|_| e.plan()).collect();
        assert_eq!(plans, [vec![0, 2], vec![2, 0], vec![0, 2]]);
    }

    #[test]
    fn all_down_tries_everything_in_order() {
        let e = endpoints(EndpointMode::Failover, 2);
        e.list[0].check_failed("x".into());
        e.list[1].check_failed("x".into());
        assert_eq!(e.plan(), [0, 1]);
    }

    #[test]
    fn down_period_doubles_and_is_capped() {
        let e = endpoints(EndpointMode::Failover, 1);
        let base = Duration::from_secs(5);
        let period = |e: &Endpoints| {
            e.list[0]
                .health()
                .down_until
                .unwrap()
                .saturating_duration_since(Instant::now())
        };
        e.list[0].insert_failed(base, "x");
        assert!(period(&e) <= base);
        e.list[0].insert_failed(base, "x");
        assert!(period(&e) > base && period(&e) <= base * 2);
        for _ in 0..10 {
            e.list[0].insert_failed(base, "x");
        }
        assert!(period(&e) <= MAX_DOWN && period(&e) > MAX_DOWN / 2);
        e.list[0].insert_ok(1);
        assert!(e.list[0].is_up());
        assert!(e.list[0].health().down_until.is_none());
    }

    #[tokio::test]
    async fn transient_errors_fail_over_and_data_errors_do_not() {
        let e = endpoints(EndpointMode::Failover, 2);
        let mut tried = Vec::new();
        let r = e
            .insert(1, |i| {
                tried.push(i);
                let fail = i == 0;
                async move {
                    if fail {
                        Err(clickhouse::error::Error::Network("refused".into()))
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        assert!(r.is_ok());
        assert_eq!(tried, [0, 1]);
        assert!(!e.list[0].is_up() && e.list[1].is_up());

        // A parse error, and a row a materialized view refuses (a code no
        // list names): the same on every endpoint.
        for refusal in [
            "Code: 27, e.displayText() = DB::Exception: Cannot parse input",
            "Code: 153, e.displayText() = DB::Exception: Division by zero: while pushing to view default.mv",
        ] {
            let mut tried = 0;
            let r = e
                .insert(1, |_| {
                    tried += 1;
                    async { Err(clickhouse::error::Error::BadResponse(refusal.into())) }
                })
                .await;
            assert!(r.is_err());
            assert_eq!(tried, 1, "a refusal must not be retried elsewhere: {refusal}");
            assert!(
                e.list[1].is_up(),
                "a refusal does not mark the endpoint down: {refusal}"
            );
        }
    }
}
