//! A headless Chromium (Debian's `chromium` + `chromium-driver`) driven
//! through WebDriver with fantoccini: chromedriver on its own free loopback
//! port, a fresh profile dir per browser, no network but loopback.
//!
//! Browser tests take [`Browser::start`] one at a time (a lock held by the
//! returned value): two Chromiums at once on two shared cores make timing
//! in the page (self-refresh, the live tap) needlessly uncertain.
#![allow(dead_code)]
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use super::process;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The window every page is rendered (and screenshotted) in.
pub const WINDOW: (u32, u32) = (1360, 860);

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: tempfile::TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Browser {
    /// Starts chromedriver and a Chromium session; panics with a hint when
    /// the packages are missing.
    pub async fn start() -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: apt-get install -y chromium chromium-driver (scripts/test.sh does)"
            );
        }
        let turn = ONE_AT_A_TIME.lock().await;
        let profile = tempfile::Builder::new()
            .prefix("sluice-it-chromium-")
            .tempdir()
            .expect("chromium profile dir");
        let port = super::free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!(
                "--log-path={}",
                profile.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let driver = process::spawn(cmd).expect("start chromedriver");
        super::wait_for(Duration::from_secs(20), "chromedriver listening", || {
            process::port_open(port)
        })
        .await;
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--force-device-scale-factor=1".into(),
            format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            format!(
                "--user-data-dir={}",
                profile.path().join("profile").display()
            ),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": CHROMIUM, "args": args }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "WebDriver session: {e}; chromedriver log:\n{}",
                    process::tail(&profile.path().join("chromedriver.log"), 8 << 10)
                )
            });
        Browser {
            client,
            driver,
            profile,
            _turn: turn,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// The text of the first element matching `css`, or None.
    pub async fn text(&self, css: &str) -> Option<String> {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.ok(),
            Err(_) => None,
        }
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Runs `body` as an async script (it calls `done(value)`, the last
    /// argument) and returns the value.
    pub async fn run_async(&self, body: &str) -> serde_json::Value {
        let script = format!("const done = arguments[arguments.length - 1]; {body}");
        self.client
            .execute_async(&script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{body}"))
    }

    pub async fn eval(&self, expr: &str) -> serde_json::Value {
        self.client
            .execute(&format!("return ({expr});"), vec![])
            .await
            .unwrap_or_else(|e| panic!("eval {expr}: {e}"))
    }

    /// Writes a PNG of the window to `path` (directories made as needed).
    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Ends the WebDriver session (Chromium exits) before the driver goes.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        process::kill_and_reap(&mut self.driver);
        // A Chromium the session did not close: find it by our profile dir
        // (unique to this browser) and end it.
        let marker = self.profile.path().to_string_lossy().into_owned();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&marker) {
                    process::signal(pid, libc::SIGKILL);
                }
            }
        }
    }
}
