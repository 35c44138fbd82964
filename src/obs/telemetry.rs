//! Logging and tracing.
//!
//! - Logs: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as
//!   text or, with `SLUICE_LOG_FORMAT=json`, as JSON lines.
//! - Traces: OpenTelemetry over OTLP/HTTP (protobuf), configured by the
//!   standard variables. Export is on only when `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   (base URL, `/v1/traces` appended) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//!   (used as is) is set, and off with `OTEL_SDK_DISABLED=true` or
//!   `OTEL_TRACES_EXPORTER=none`. `OTEL_SERVICE_NAME` (default `sluice`),
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//!   `OTEL_EXPORTER_OTLP_TIMEOUT` and `OTEL_BSP_*` work as the spec says.
//!   What is exported: the `sluice` crate's spans at `info` and above, i.e.
//!   one `batch` span per committed batch, whatever `RUST_LOG` says.
//!
//! A message with a W3C `traceparent` field (`00-<32 hex>-<16 hex>-<2 hex>`)
//! continues its producer's trace: the batch span is a child of the first
//! such message in the batch and links to every one (up to [`MAX_LINKS`]),
//! the way OpenTelemetry's messaging conventions treat batch consumers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::redis::Message;

/// The message field carrying a producer's trace context.
pub(crate) const TRACEPARENT_FIELD: &[u8] = b"traceparent";

/// Most links one batch span gets; a batch of 50k messages would otherwise
/// make one span bigger than the batch.
pub(crate) const MAX_LINKS: usize = 128;

/// Set once at start-up: whether spans leave the process at all. The batch
/// path only scans messages for `traceparent` when they do.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// True when an OTLP trace exporter is installed.
pub(crate) fn traces_exported() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Keeps the trace pipeline alive; flushes pending spans when dropped.
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            // Bounded, so an unreachable collector cannot hold up exit past
            // the service manager's stop timeout.
            if let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5)) {
                eprintln!("flushing traces failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber. Call once, inside the Tokio runtime (the
/// OTLP client runs its requests there); keep the result until exit.
#[must_use = "dropping it shuts the trace exporter down"]
pub(crate) fn init() -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SLUICE_LOG_FORMAT")
        .map(|v| v == "json")
        .unwrap_or(false);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };

    let env = |k: &str| std::env::var(k).ok();
    let (otel, provider, otel_error) = if otlp_configured(env) {
        match tracer_provider() {
            Ok(provider) => {
                let tracer = provider.tracer("sluice");
                let only_ours = Targets::new().with_target("sluice", LevelFilter::INFO);
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(only_ours);
                EXPORTING.store(true, Ordering::Relaxed);
                (Some(layer), Some(provider), None)
            }
            Err(e) => (None, None, Some(e)),
        }
    } else {
        (None, None, None)
    };
    tracing_subscriber::registry().with(fmt).with(otel).init();
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "OTLP trace export is configured but could not be set up; traces are off");
    } else if provider.is_some() {
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    Telemetry { provider }
}

/// Whether the environment asks for OTLP trace export.
pub(crate) fn otlp_configured(env: impl Fn(&str) -> Option<String>) -> bool {
    let is = |k: &str, v: &str| env(k).is_some_and(|x| x.trim().eq_ignore_ascii_case(v));
    if is("OTEL_SDK_DISABLED", "true") || is("OTEL_TRACES_EXPORTER", "none") {
        return false;
    }
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|k| env(k).is_some_and(|v| !v.trim().is_empty()))
}

fn tracer_provider() -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    if let Ok(p) = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL") {
        if p != "http/protobuf" {
            tracing::warn!(protocol = %p, "only OTLP over http/protobuf is built in; using it");
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(RuntimeHttpClient::new()?)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder().build();
    let named = resource
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    let resource = if named {
        resource
    } else {
        opentelemetry_sdk::Resource::builder()
            .with_service_name("sluice")
            .build()
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The OTLP HTTP client. The SDK's batch processor exports from its own
/// thread with a plain `block_on`, where hyper has no reactor; each request
/// is therefore spawned onto the worker's Tokio runtime and awaited from
/// there. Plain HTTP/1.1 over hyper, which the ClickHouse client already
/// builds, so no second HTTP stack is compiled in.
#[derive(Debug, Clone)]
struct RuntimeHttpClient {
    runtime: tokio::runtime::Handle,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<Bytes>,
    >,
}

impl RuntimeHttpClient {
    fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("telemetry::init must run inside the Tokio runtime"))?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Ok(RuntimeHttpClient { runtime, client })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for RuntimeHttpClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<Bytes>,
    ) -> Result<opentelemetry_http::Response<Bytes>, opentelemetry_http::HttpError> {
        use http_body_util::BodyExt;
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let request =
                opentelemetry_http::Request::from_parts(parts, http_body_util::Full::new(body));
            // The exporter bounds the whole export (OTEL_EXPORTER_OTLP_TIMEOUT);
            // this only stops a dead collector from holding a task forever.
            let response = tokio::time::timeout(Duration::from_secs(60), client.request(request))
                .await
                .map_err(|_| "OTLP request timed out")??;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(opentelemetry_http::Response::from_parts(
                parts, body,
            ))
        });
        task.await?
    }
}

/// Parses a W3C `traceparent` (version 00, or a later version read as 00).
pub(crate) fn parse_traceparent(value: &[u8]) -> Option<SpanContext> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version) || !hex(trace) || !hex(span) || flags.len() != 2 || !hex(flags) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// Makes `span` (a batch span, not yet entered) continue the producers'
/// traces found in `messages`: child of the first, linked to each. Does
/// nothing, and reads no message, unless traces are exported.
pub(crate) fn continue_producer_traces(span: &tracing::Span, messages: &[Message]) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !traces_exported() {
        return;
    }
    let mut linked: Vec<SpanId> = Vec::new();
    for m in messages {
        let Some(cx) = m.field(TRACEPARENT_FIELD).and_then(parse_traceparent) else {
            continue;
        };
        if linked.is_empty() {
            let parent = opentelemetry::Context::new().with_remote_span_context(cx.clone());
            let _ = span.set_parent(parent);
        }
        if !linked.contains(&cx.span_id()) {
            linked.push(cx.span_id());
            span.add_link(cx);
            if linked.len() >= MAX_LINKS {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses_w3c_format() {
        let cx = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(cx.is_sampled());
        assert!(cx.is_remote());
        let unsampled =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn traceparent_rejects_malformed_values() {
        for bad in [
            &b""[..],
            b"garbage",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A later version may carry more fields; read its first four.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn export_only_when_an_endpoint_is_set() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(!otlp_configured(env(&[])));
        assert!(!otlp_configured(env(&[("OTEL_SERVICE_NAME", "x")])));
        assert!(otlp_configured(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4318"
        )])));
        assert!(otlp_configured(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://127.0.0.1:4318/v1/traces"
        )])));
        assert!(!otlp_configured(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        assert!(!otlp_configured(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ])));
        assert!(!otlp_configured(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])));
    }
}
