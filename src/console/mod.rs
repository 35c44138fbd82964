//! The operator console: web pages and a JSON API to see the fleet
//! (streams, lag, pending, consumers, dead letters, schedules, delayed
//! jobs, ClickHouse endpoints) and act on entries (replay, purge, pause,
//! trigger, move), plus a live tap of new entries.
//!
//! - [`config`]: `[console]` (listen, tokens with roles, sampling).
//! - [`auth`]: tokens, sign-in sessions, CSRF, the guard on every request.
//! - [`sampler`]: the one periodic sampler all pages read.
//! - [`browse`]: bounded reads of a stream (entries, pending, groups).
//! - [`dead_letters`]: dead-letter filters and bulk actions run in windows.
//! - [`tap`]: XREAD from `$` on its own connection (SSE and `sluice tap`).
//! - [`api`]: the JSON API under `/api/v1/…` (the pages use it too).
//! - [`pages`]: the HTML pages' handlers; [`views`]: their templates.
//! - [`assets`]: CSS and JavaScript, embedded in the binary.
//! - [`params`]: query strings and form bodies, errors naming the field.
//!
//! Every Redis call the console makes is bounded: ranges have a COUNT,
//! filtered scans stop after [`browse::SCAN_LIMIT`] entries and hand back a
//! cursor, bulk actions run in windows the page (or a script) drives.

pub(crate) mod api;
pub(crate) mod assets;
pub(crate) mod auth;
pub(crate) mod browse;
pub(crate) mod dead_letters;
pub(crate) mod pages;
pub(crate) mod params;
pub(crate) mod sampler;
pub(crate) mod tap;
pub(crate) mod views;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fred::prelude::*;
use tokio_util::sync::CancellationToken;

pub(crate) use crate::config::console::ConsoleConfig;
use crate::config::Config;
use crate::redis::client;
use crate::redis::delayed::DelayedError;
use crate::redis::sharder::Sharder;
use crate::redis::StreamError;
use crate::schedule::store::StoreError;

/// Most live taps open at once (each holds its own Redis connection).
pub(crate) const MAX_TAPS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsoleError {
    /// A request parameter or body field is wrong (400, names the field).
    #[error("{message}")]
    BadRequest { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    /// The request is fine but the state does not allow it (409).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Redis(#[from] StreamError),
    #[error(transparent)]
    Schedule(#[from] StoreError),
    #[error(transparent)]
    Delayed(#[from] DelayedError),
}

pub(crate) type Result<T, E = ConsoleError> = std::result::Result<T, E>;

impl ConsoleError {
    pub(crate) fn bad(field: &str, message: impl Into<String>) -> ConsoleError {
        ConsoleError::BadRequest {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        use crate::schedule::store::StoreError as S;
        match self {
            ConsoleError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ConsoleError::NotFound(_) | ConsoleError::Schedule(S::NotFound(_)) => {
                StatusCode::NOT_FOUND
            }
            ConsoleError::Conflict(_)
            | ConsoleError::Schedule(S::Transition { .. } | S::Exists(..)) => StatusCode::CONFLICT,
            ConsoleError::Redis(StreamError::Reply(m)) if m.contains("WRONGTYPE") => {
                StatusCode::CONFLICT
            }
            ConsoleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ConsoleError::Redis(_) | ConsoleError::Schedule(_) | ConsoleError::Delayed(_) => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    pub(crate) fn field(&self) -> Option<&str> {
        match self {
            ConsoleError::BadRequest { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// `{"error": …, "field": …}`: every refusal of the API and of the auth
/// layer in one shape.
pub(crate) fn error(status: StatusCode, message: &str, field: Option<&str>) -> Response {
    api::json(
        status,
        &serde_json::json!({ "error": message, "field": field }),
    )
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!(error = %self, "console: request failed");
        }
        error(self.status(), &self.to_string(), self.field())
    }
}

/// What every handler shares.
pub(crate) struct Console {
    pub config: Arc<Config>,
    pub cfg: ConsoleConfig,
    pub redis: Client,
    pub auth: auth::Auth,
    pub sampler: Arc<sampler::Sampler>,
    pub sharder: Sharder,
    pub taps: Arc<tokio::sync::Semaphore>,
    pub shutdown: CancellationToken,
}

impl Console {
    /// Connects to Redis and starts the sampler.
    pub(crate) async fn open(
        config: &Config,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Console>> {
        let cfg = config.console.clone().unwrap_or_default();
        let redis = client::connect(&config.redis)
            .await
            .map_err(|e| anyhow::anyhow!("redis.url: cannot connect for the console: {e}"))?;
        let config = Arc::new(config.clone());
        let sampler = sampler::Sampler::new();
        tokio::spawn(
            sampler
                .clone()
                .run(redis.clone(), config.clone(), shutdown.clone()),
        );
        if cfg.tokens.is_empty() {
            tracing::warn!("console has no tokens: anyone reaching it on loopback is an operator");
        }
        Ok(Arc::new(Console {
            auth: auth::Auth::new(&cfg),
            sharder: Sharder::new(&config),
            config,
            cfg,
            redis,
            sampler,
            taps: Arc::new(tokio::sync::Semaphore::new(MAX_TAPS)),
            shutdown,
        }))
    }

    pub(crate) fn router(self: Arc<Self>) -> axum::Router {
        use axum::routing::{get, post};
        axum::Router::new()
            .merge(pages::routes())
            .merge(api::routes())
            .route("/assets/{file}", get(assets::serve))
            .route("/login", get(pages::login_form).post(pages::login))
            .route("/logout", post(pages::logout))
            .route("/healthz", get(|| async { "ok\n" }))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                auth::guard,
            ))
            .layer(axum::middleware::from_fn(assets::security_headers))
            .with_state(self)
    }
}

/// Binds `listen` and serves the console until `shutdown`; fails at once
/// if Redis or the address cannot be had.
pub(crate) async fn start(
    config: &Config,
    listen: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|_| anyhow::anyhow!("console.listen: {listen:?} is not ip:port"))?;
    let console = Console::open(config, shutdown.clone()).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("console.listen {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, tokens = console.cfg.tokens.len(), "console listening");
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, console.router())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "console stopped");
        }
    }))
}

/// `sluice console`: only the console, until `shutdown`. `listen`
/// overrides `console.listen`; the result is validated like the config.
pub(crate) async fn run(
    mut config: Config,
    listen: Option<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut cfg = config.console.take().unwrap_or_default();
    if listen.is_some() {
        cfg.listen = listen;
    }
    cfg.validate()
        .map_err(|(key, message)| anyhow::anyhow!("config key `{key}`: {message}"))?;
    let addr = cfg.listen_or_default().to_string();
    config.console = Some(cfg);
    let task = start(&config, &addr, shutdown).await?;
    task.await?;
    Ok(())
}
