//! The http handler (the original `make_a_request` task): POST the message
//! as JSON (the same object the exec handler gets) to a URL; the response
//! body's fields are the output.
//!
//! | response | result |
//! |---|---|
//! | 2xx, JSON object | one output: the object's fields |
//! | 2xx, JSON array of objects | one output per object (`[]`: none) |
//! | 204, or 2xx with an empty body | no output: the message is consumed |
//! | 408, 425, 429, 5xx, connection error, timeout | retried by redelivery |
//! | other 4xx (and 3xx) | dead-lettered at once, with status and body |

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method, Request, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::{outputs_from_json, request_json, Handler, HandlerError};
use crate::config::HttpHandlerConfig;
use crate::fields::Fields;
use crate::redis::Message;

/// Largest response body read.
const MAX_RESPONSE: usize = 16 << 20;

pub(crate) struct HttpHandler {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

/// What a response status means for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusClass {
    Success,
    /// The service is unwell or busy: redeliver later.
    Retry,
    /// The service refused this message: dead-letter it.
    Refused,
}

/// Retry or poison, by status code.
pub(crate) fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Success,
        408 | 425 | 429 => StatusClass::Retry,
        500..=599 => StatusClass::Retry,
        _ => StatusClass::Refused,
    }
}

impl HttpHandler {
    pub(crate) fn new(cfg: &HttpHandlerConfig) -> anyhow::Result<HttpHandler> {
        let uri: Uri = cfg
            .url
            .parse()
            .map_err(|e| anyhow::anyhow!("handler.url {:?}: {e}", cfg.url))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(cfg.concurrency)
            .build(connector);
        let headers = cfg
            .headers
            .iter()
            .map(|(k, v)| {
                Ok((
                    HeaderName::from_bytes(k.as_bytes())?,
                    HeaderValue::from_str(v)?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(HttpHandler {
            client,
            uri,
            headers,
            timeout: cfg.timeout,
        })
    }

    async fn call(&self, body: Vec<u8>) -> Result<(u16, Bytes), String> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| {
            // hyper-util's error text is terse; include the source chain.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        })?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the response: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

fn clip(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[async_trait::async_trait]
impl Handler for HttpHandler {
    async fn handle(&self, m: &Message) -> Result<Vec<Fields>, HandlerError> {
        let (status, body) = tokio::time::timeout(self.timeout, self.call(request_json(m)))
            .await
            .map_err(|_| {
                HandlerError::retry(format!(
                    "http handler: no response from {} within {:?}",
                    self.uri, self.timeout
                ))
            })?
            .map_err(|e| HandlerError::retry(format!("http handler: {}: {e}", self.uri)))?;
        match classify_status(status) {
            StatusClass::Success => {
                if status == 204 || body.iter().all(u8::is_ascii_whitespace) {
                    return Ok(Vec::new());
                }
                let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                    HandlerError::retry(format!(
                        "http handler: {status} response is not JSON ({e}): {}",
                        clip(&body)
                    ))
                })?;
                outputs_from_json(&v).map_err(|e| {
                    HandlerError::retry(format!("http handler: {status} response: {e}"))
                })
            }
            StatusClass::Retry => Err(HandlerError::retry(format!(
                "http handler: {} answered {status}: {}",
                self.uri,
                clip(&body)
            ))),
            StatusClass::Refused => Err(HandlerError::fatal(format!(
                "http handler: {} refused the message with {status}: {}",
                self.uri,
                clip(&body)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_retry_or_refuse() {
        assert_eq!(classify_status(200), StatusClass::Success);
        assert_eq!(classify_status(204), StatusClass::Success);
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert_eq!(classify_status(s), StatusClass::Retry, "{s}");
        }
        for s in [301, 400, 401, 403, 404, 413, 422] {
            assert_eq!(classify_status(s), StatusClass::Refused, "{s}");
        }
    }
}
