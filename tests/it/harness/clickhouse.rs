//! A private `clickhouse-server` per test.
#![allow(dead_code)]
use super::process;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(15);
const DEFAULT_BIN: &str = "/usr/sbin/clickhouse-server";

/// A `clickhouse-server` listening on `127.0.0.1` only, with its own HTTP and
/// native ports, data dir, logs and users file, timezone UTC.
pub struct ClickHouseServer {
    http_port: u16,
    tcp_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ClickHouseServer {
    /// Starts a server and waits until `GET /ping` answers `Ok.`.
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-it-clickhouse-")
            .tempdir()
            .expect("create clickhouse temp dir");
        let mut server = ClickHouseServer {
            http_port: super::free_port(),
            tcp_port: super::free_port(),
            dir,
            child: None,
        };
        server.write_config();
        server.launch().await;
        server
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{d}/server.log</log>
        <errorlog>{d}/err.log</errorlog>
        <size>100M</size>
        <count>1</count>
        <console>0</console>
    </logger>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <mark_cache_size>67108864</mark_cache_size>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>{d}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
</yandex>
"#,
            http = self.http_port,
            tcp = self.tcp_port,
        );
        let users = r#"<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
        </default>
        <readonly>
            <readonly>1</readonly>
        </readonly>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>::1</ip>
                <ip>127.0.0.1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"#;
        std::fs::write(self.config_path(), config).expect("write clickhouse config.xml");
        std::fs::write(self.dir.path().join("users.xml"), users).expect("write users.xml");
    }

    async fn launch(&mut self) {
        assert!(self.child.is_none(), "clickhouse-server is already running");
        let bin = std::env::var("CLICKHOUSE_SERVER_BIN").unwrap_or_else(|_| DEFAULT_BIN.into());
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--config-file={}", self.config_path().display()))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("stderr.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        let child = process::spawn(cmd).unwrap_or_else(|e| {
            panic!(
                "cannot start {bin}: {e} (install it: apt-get install clickhouse-server clickhouse-client, \
                 or run scripts/test.sh)"
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.ping().await {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "clickhouse-server (http {}) exited during start-up ({status}):\n{}",
                    self.http_port,
                    self.logs_tail()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "clickhouse-server (http {}) did not answer /ping within {START_TIMEOUT:?}:\n{}",
                    self.http_port,
                    self.logs_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// True when `GET /ping` answers `Ok.`.
    pub async fn ping(&self) -> bool {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(self.http_addr())
                .await
                .ok()?;
            s.write_all(b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .ok()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.ok()?;
            let text = String::from_utf8_lossy(&buf);
            Some(text.starts_with("HTTP/1.") && text.contains(" 200 ") && text.ends_with("Ok.\n"))
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(1000), attempt).await,
            Ok(Some(true))
        )
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    /// `http://127.0.0.1:HTTP_PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.xml")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Tails of the error log and stderr, for failure messages.
    pub fn logs_tail(&self) -> String {
        format!(
            "--- err.log ---\n{}\n--- stderr ---\n{}",
            process::tail(&self.dir.path().join("err.log"), 8 << 10),
            process::tail(&self.dir.path().join("stderr.log"), 4 << 10)
        )
    }

    /// A `clickhouse` crate client for this server, validation off (the
    /// validation mode sends a setting 18.16 does not know).
    pub fn client(&self) -> ::clickhouse::Client {
        client_for(&self.url())
    }

    /// Runs a statement (DDL, INSERT ... VALUES); panics on error. The SQL
    /// is sent verbatim (no `?` binding).
    pub async fn exec(&self, sql: &str) {
        if let Err(e) = self.try_exec(sql).await {
            panic!("ClickHouse exec failed: {e}\nSQL: {sql}");
        }
    }

    pub async fn try_exec(&self, sql: &str) -> ::clickhouse::error::Result<()> {
        self.client().query_raw(sql).execute().await
    }

    /// The result as TabSeparated text; panics on error.
    pub async fn query_tsv(&self, sql: &str) -> String {
        match self.try_query_tsv(sql).await {
            Ok(s) => s,
            Err(e) => panic!("ClickHouse query failed: {e}\nSQL: {sql}"),
        }
    }

    pub async fn try_query_tsv(&self, sql: &str) -> ::clickhouse::error::Result<String> {
        let bytes = self
            .client()
            .query_raw(sql)
            .fetch_bytes("TSV")?
            .collect()
            .await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A single number (any integer column type, e.g. `SELECT count() FROM t`);
    /// panics on error or if the result is not one unsigned integer.
    pub async fn query_u64(&self, sql: &str) -> u64 {
        let text = self.query_tsv(sql).await;
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("expected one unsigned integer, got {text:?}\nSQL: {sql}"))
    }

    /// `SELECT count() FROM <table>` (table may be `db.table`).
    pub async fn count(&self, table: &str) -> u64 {
        self.query_u64(&format!("SELECT count() FROM {table}"))
            .await
    }

    /// The rows in `table`'s active parts (of the current database), from
    /// `system.parts`: what `count()` returns, without reading a column —
    /// a bench polling a growing table this way leaves the server's CPU
    /// to the work it measures.
    pub async fn rows_in_parts(&self, table: &str) -> u64 {
        self.query_u64(&format!(
            "SELECT sum(rows) FROM system.parts WHERE active AND database = currentDatabase() AND table = '{table}'"
        ))
        .await
    }

    /// The server's `version()`, e.g. `18.16.1`.
    pub async fn version(&self) -> String {
        self.query_tsv("SELECT version()").await.trim().to_string()
    }

    /// SIGTERM, wait up to 15 s for a clean shutdown, then SIGKILL.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::terminate(&mut child, STOP_GRACE).await;
        }
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_and_reap(&mut child);
        }
    }

    /// Starts the server again with the same ports and data dir.
    pub async fn start_again(&mut self) {
        self.launch().await;
    }
}

/// A `clickhouse` crate client for `url`, validation off.
pub fn client_for(url: &str) -> ::clickhouse::Client {
    ::clickhouse::Client::default()
        .with_url(url)
        .with_validation(false)
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- clickhouse-server :{} logs (tail) -----\n{}\n----- end clickhouse logs -----",
                self.http_port,
                self.logs_tail()
            );
        }
        self.kill();
    }
}
