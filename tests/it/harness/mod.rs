//! Integration-test harness: every test gets its own servers and names.
//!
//! - [`RedisServer`] / [`ClickHouseServer`]: private server processes on their
//!   own loopback ports and temp dirs, stoppable and restartable in place.
//! - [`RedisCluster`]: N cluster-enabled masters (AOF, fsync always) joined
//!   with `redis-cli --cluster create`; a node restarts in place.
//! - [`TcpProxy`]: a loopback TCP proxy between the worker and a server, for
//!   injecting faults (refuse, stall, cut, delay) at run time.
//! - [`Browser`]: headless Chromium through chromedriver (WebDriver), for
//!   the console's tests.
//! - [`Worker`]: the `sluice` binary as a child process with a test-given
//!   config; its log is printed when the test fails.
//! - [`wait_until`] and friends: poll a condition instead of sleeping.
//! - [`free_port`] / [`unique_name`]: ports and stream/table names that no
//!   other test in the run will get.
//!
//! Every child process is started with `PR_SET_PDEATHSIG = SIGKILL` (see
//! `process.rs`) and killed on drop, so nothing outlives the test binary.
//!
//! Lints: not every test binary (the `it` suite, `benches/` that include this
//! file by `#[path]`) uses every helper, so each submodule allows dead code
//! and each re-export allows being unused. This is done per item, never on
//! the `harness` module itself, so a user's `#[allow(..)] mod harness;`
//! does not trip clippy's `duplicated_attributes`.

mod browser;
mod clickhouse;
mod cluster;
mod process;
mod proxy;
mod redis;
mod wait;
mod worker;

#[allow(unused_imports)]
pub use self::browser::Browser;
#[allow(unused_imports)]
pub use self::clickhouse::{client_for as clickhouse_client, ClickHouseServer};
#[allow(unused_imports)]
pub use self::cluster::RedisCluster;
#[allow(unused_imports)]
pub use self::process::port_open;
#[allow(unused_imports)]
pub use self::proxy::{ProxyMode, TcpProxy};
#[allow(unused_imports)]
pub use self::redis::{client_for as redis_client, RedisServer};
#[allow(unused_imports)]
pub use self::wait::{wait_for, wait_some, wait_until};
#[allow(unused_imports)]
pub use self::worker::Worker;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Ports are handed out from this range, below Linux's default ephemeral
/// range (32768–60999), so outgoing client connections never take a port a
/// server is about to (re)bind.
const PORT_LOW: u32 = 20_000;
const PORT_HIGH: u32 = 32_000;

/// A loopback TCP port that is free now and that no other caller in this
/// process has been given (servers keep theirs across restarts).
#[allow(dead_code)]
pub fn free_port() -> u16 {
    static BASE: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = PORT_HIGH - PORT_LOW;
    // A random start makes two test processes running at once unlikely to
    // walk the same sequence.
    let base = *BASE.get_or_init(|| rand::random_range(0..span));
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (PORT_LOW + (base + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("free_port: no free port in {PORT_LOW}..{PORT_HIGH}");
}

/// A name unique to this call in this run, made of `[A-Za-z0-9_]` so it is
/// valid as a ClickHouse table name and as a Redis key: `prefix_PID_N_RAND`.
#[allow(dead_code)]
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let salt: u16 = rand::random();
    let prefix: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}_{}_{n}_{salt:04x}", std::process::id())
}

/// `Duration::from_secs(n)`, for short timeouts in tests.
#[allow(dead_code)]
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `Duration::from_millis(n)`.
#[allow(dead_code)]
pub fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}
