//! A private `redis-server` per test.
#![allow(dead_code)]
use super::process;
use fred::prelude::{ClientLike, Config, ReconnectPolicy};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A `redis-server` on `127.0.0.1:<own port>` with its own temp dir, started
/// with `--save ""` (no RDB snapshots) unless the test's args say otherwise.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server with default args and waits until it answers PING.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra `redis-server` args appended after the
    /// defaults (so they win), e.g. `&["--appendonly", "yes", "--appendfsync", "always"]`.
    pub async fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-it-redis-")
            .tempdir()
            .expect("create redis temp dir");
        let mut server = RedisServer {
            port: super::free_port(),
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--daemonize", "no"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = process::spawn(cmd).unwrap_or_else(|e| {
            panic!(
                "cannot start {bin}: {e} (is redis-server installed? apt-get install redis-server)"
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
                    "redis-server on port {} exited during start-up ({status}); log:\n{}",
                    self.port,
                    self.log_contents()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server on port {} did not answer PING within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log_contents()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True when the server answers `PING` with `+PONG` (not `-LOADING`).
    pub async fn ping(&self) -> bool {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(self.addr()).await.ok()?;
            s.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.ok()?;
            Some(buf[..n].starts_with(b"+PONG"))
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(500), attempt).await,
            Ok(Some(true))
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    pub fn log_contents(&self) -> String {
        process::tail(&self.log_path(), 64 << 10)
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

    /// A connected fred client. It reconnects every 50 ms without limit (so
    /// it survives `stop`/`start_again`), and each command times out after
    /// 10 s instead of hanging while the server is down.
    pub async fn client(&self) -> fred::clients::Client {
        client_for(&self.url()).await
    }

    /// SIGTERM (Redis flushes its AOF if enabled), wait up to 10 s, then SIGKILL.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::terminate(&mut child, STOP_GRACE).await;
        }
    }

    /// SIGKILL: a crash; whatever was not fsynced is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_and_reap(&mut child);
        }
    }

    /// Starts the server again on the same port, dir and args (after `stop`
    /// or `kill`); waits for PING, i.e. until any AOF/RDB is loaded.
    pub async fn start_again(&mut self) {
        self.launch().await;
    }
}

/// A connected fred client for `url` (see [`RedisServer::client`]).
pub async fn client_for(url: &str) -> fred::clients::Client {
    let config = Config::from_url(url).unwrap_or_else(|e| panic!("bad redis url {url}: {e}"));
    let client = fred::types::Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_constant(0, 50))
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(5))
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(10))
        .build()
        .expect("build fred client");
    client
        .init()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    client
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- redis-server :{} log (tail) -----\n{}\n----- end redis log -----",
                self.port,
                process::tail(&self.log_path(), 8 << 10)
            );
        }
        self.kill();
    }
}
