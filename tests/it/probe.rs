//! Looking at a running worker from outside: its HTTP endpoints
//! (`/metrics`, `/healthz`, `/readyz`) and `sluice status`.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on `127.0.0.1:port`: the status code and body, or None when
/// nothing answers within 5 s.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()?
}

/// The value of the sample `name{…}` whose labels include every given
/// `label="value"`, from the worker's `/metrics`.
pub async fn metric(port: u16, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (_, text) = http_get(port, "/metrics").await?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (labels_text, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| labels_text.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

/// `sluice status --config <config>`: stdout, or stderr on failure.
pub async fn sluice_status(config: &Path) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("status")
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run sluice status");
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        format!("FAILED: {}", String::from_utf8_lossy(&out.stderr))
    }
}
