//! Observability: the shipped dashboard and alert rules against a real
//! Prometheus, OTLP trace export with producer trace context, exact lag
//! gauges after XDEL and trimming, and one sampling replica.
//!
//! How "every expression returns data" is judged:
//! - dashboard panel queries and template-variable queries are read from
//!   `dashboards/sluice.json`; Grafana's variables are substituted the way
//!   an "All" selection does (`$job`, `$flow` → `.*`, always used with `=~`)
//!   and `$__rate_interval` / `$__range` get fixed windows;
//! - alert rules are loaded from `ops/prometheus/alerts.yml` by the test's
//!   Prometheus itself and read back from `/api/v1/rules` (no copy of the
//!   expressions here). An alert's expression is empty while its condition
//!   is false, which is the healthy state, so its *signal* is evaluated: the
//!   comparisons against literal thresholds removed and `absent(x)` replaced
//!   by `x`. The signal has data exactly when the metrics the alert watches
//!   exist. Every rule must also evaluate without error (`health: ok`).
//!
//! "Data" means at least one series with a finite value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::harness::{free_port, unique_name, wait_for, wait_some, TcpProxy, Worker};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A worker config with one flow and a metrics endpoint.
fn worker_config(
    redis_url: &str,
    ch_url: &str,
    metrics_port: u16,
    stream: &str,
    table: &str,
    flow_extra: &str,
) -> String {
    format!(
        r#"
[redis]
url = "{redis_url}"
[clickhouse]
url = "{ch_url}"
[worker]
shutdown_timeout = "10s"
block = "200ms"
[metrics]
listen = "127.0.0.1:{metrics_port}"
sample_every = "200ms"
[[flow]]
name = "f_{stream}"
streams = ["{stream}"]
group = "g"
sink = {{ type = "clickhouse", table = "{table}" }}
dead_letter = "{stream}:dead"
{flow_extra}
"#
    )
}

// ---------------------------------------------------------------- HTTP ----

/// A plain HTTP/1.0 GET on loopback: (status, body).
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .ok()
        .flatten()
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The worker's `/metrics` text.
pub async fn scrape(port: u16) -> String {
    match http_get(port, "/metrics").await {
        Some((200, body)) => body,
        _ => String::new(),
    }
}

/// Value of the sample `name{...}` whose labels include every `label="value"`
/// pair given; None when there is no such series.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let Some(rest) = l.strip_prefix(name) else {
                return false;
            };
            (rest.starts_with('{') || rest.starts_with(' '))
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------- Prometheus ----

/// A private `prometheus` server on a free loopback port, scraping one
/// target every second and evaluating the shipped alert rules every second.
struct Prometheus {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target_port: u16, rule_file: &Path) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("sluice-it-prometheus-")
            .tempdir()
            .unwrap();
        let config = format!(
            r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - "{rules}"
scrape_configs:
  - job_name: sluice
    static_configs:
      - targets: ["127.0.0.1:{target_port}"]
"#,
            rules = rule_file.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let bin = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1h")
            .arg("--log.level=warn")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        die_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {bin}: {e} (apt-get install prometheus; scripts/test.sh does)")
        });
        let mut p = Prometheus { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = http_get(port, "/-/ready").await {
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited at start ({status}):\n{}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str) -> serde_json::Value {
        match http_get(self.port, path).await {
            Some((_, body)) => serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
            None => serde_json::Value::Null,
        }
    }

    /// An instant query: Ok(series as (labels, value)) or Err(error text).
    async fn query(&self, expr: &str) -> Result<Vec<(String, f64)>, String> {
        let v = self
            .api(&format!("/api/v1/query?query={}", url_encode(expr)))
            .await;
        if v["status"] != "success" {
            return Err(format!("{} {}", v["errorType"], v["error"]));
        }
        let data = &v["data"];
        let parse = |s: &serde_json::Value| s[1].as_str().and_then(|x| x.parse::<f64>().ok());
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    (
                        r["metric"].to_string(),
                        parse(&r["value"]).unwrap_or(f64::NAN),
                    )
                })
                .collect()),
            Some("scalar") => Ok(vec![(String::new(), parse(data).unwrap_or(f64::NAN))]),
            other => Err(format!("unexpected result type {other:?}")),
        }
    }

    /// Every alerting rule loaded: (name, query, health, last error).
    async fn rules(&self) -> Vec<(String, String, String, String)> {
        let v = self.api("/api/v1/rules?type=alert").await;
        let mut out = Vec::new();
        for g in v["data"]["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                out.push((s("name"), s("query"), s("health"), s("lastError")));
            }
        }
        out
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- prometheus log -----\n{}\n-----", self.log());
        }
    }
}

/// The child gets SIGKILL if the test process dies first.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs between fork and exec; only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

// -------------------------------------------- expressions under test ----

/// Every PromQL expression of the dashboard: panel targets and variable
/// queries (`label_values(expr, label)` → `expr`), with Grafana's variables
/// substituted as described in the module docs.
fn dashboard_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_file("dashboards/sluice.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((
                        format!("panel {:?}", p["title"].as_str().unwrap_or("")),
                        e.to_string(),
                    ));
                }
            }
            walk(&p["panels"], out);
        }
    }
    walk(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_default();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map(|(e, _)| e.trim().to_string())
            .unwrap_or_else(|| q.to_string());
        out.push((
            format!("variable ${}", v["name"].as_str().unwrap_or("")),
            inner,
        ));
    }
    out.into_iter()
        .map(|(what, e)| {
            let e = e
                .replace("${job}", ".*")
                .replace("$job", ".*")
                .replace("${flow}", ".*")
                .replace("$flow", ".*")
                .replace("$__rate_interval", "30s")
                .replace("$__range", "5m");
            assert!(!e.contains('$'), "unsubstituted variable in {what}: {e}");
            (what, e)
        })
        .collect()
}

/// An alert expression's signal: comparisons with a literal number removed
/// (outside label matchers) and `absent(x)` replaced by `x`.
fn alert_signal(expr: &str) -> String {
    let mut e = expr.trim().to_string();
    while let Some(inner) = e.strip_prefix("absent(").and_then(|r| r.strip_suffix(')')) {
        e = inner.trim().to_string();
    }
    let b = e.as_bytes();
    let mut out = String::new();
    let (mut i, mut braces, mut quoted) = (0, 0i32, false);
    while i < b.len() {
        let c = b[i] as char;
        if quoted {
            out.push(c);
            if c == '\\' && i + 1 < b.len() {
                out.push(b[i + 1] as char);
                i += 2;
                continue;
            }
            quoted = c != '"';
            i += 1;
            continue;
        }
        match c {
            '"' => quoted = true,
            '{' => braces += 1,
            '}' => braces -= 1,
            _ => {}
        }
        if braces == 0 {
            let op_len = if [">=", "<=", "==", "!="]
                .iter()
                .any(|op| e[i..].starts_with(op))
            {
                2
            } else if c == '>' || c == '<' {
                1
            } else {
                0
            };
            if op_len > 0 {
                let rest = e[i + op_len..].trim_start();
                let rest = rest.strip_prefix("bool ").unwrap_or(rest).trim_start();
                let num_len = rest
                    .find(|ch: char| !(ch.is_ascii_digit() || ".eE+-".contains(ch)))
                    .unwrap_or(rest.len());
                if num_len > 0 && rest[..num_len].parse::<f64>().is_ok() {
                    let consumed = e.len() - rest.len() + num_len;
                    i = consumed;
                    while out.ends_with(' ') {
                        out.pop();
                    }
                    continue;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

#[test]
fn alert_signal_strips_thresholds_but_not_matchers() {
    assert_eq!(
        alert_signal(r#"max by (a) (x{s!="1"}) > 0 and max by (a) (y) > 1e4"#),
        r#"max by (a) (x{s!="1"}) and max by (a) (y)"#
    );
    assert_eq!(
        alert_signal(r#"absent(up{job="sluice"} == 1)"#),
        r#"up{job="sluice"}"#
    );
    assert_eq!(
        alert_signal("sum(rate(x[5m])) > bool 0"),
        "sum(rate(x[5m]))"
    );
    assert_eq!(alert_signal("a > b"), "a > b");
}

#[test]
fn dashboard_and_alerts_are_well_formed() {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("dashboards/sluice.json")).unwrap(),
    )
    .unwrap();
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(vars.contains(&"datasource"), "{vars:?}");
    let mut ids = std::collections::HashSet::new();
    let mut titles = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_i64().unwrap()),
            "duplicate panel id {}",
            p["id"]
        );
        if p["type"] == "row" {
            continue;
        }
        titles.push(p["title"].as_str().unwrap().to_string());
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {}",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
            let e = t["expr"].as_str().unwrap();
            // Multi-value variables expand to regexes: only `=~` can take them.
            for var in ["$job", "$flow"] {
                for (at, _) in e.match_indices(var) {
                    assert!(e[..at].ends_with("=~\""), "{var} not behind =~ in {e}");
                }
            }
        }
        let g = &p["gridPos"];
        assert!(
            g["x"].as_i64().unwrap() + g["w"].as_i64().unwrap() <= 24,
            "{}",
            p["title"]
        );
    }
    for want in [
        "Messages read / acked / inserted",
        "Lag (entries)",
        "Lag (seconds)",
        "Pending",
        "Oldest pending idle",
        "End-to-end latency",
        "Insert latency",
        "Batch size",
        "Insert errors",
        "Retried messages",
        "Dead letters by reason",
        "Consumers per group",
        "Resident memory",
        "CPU",
    ] {
        assert!(
            titles.iter().any(|t| t == want),
            "no panel {want:?} in {titles:?}"
        );
    }
    // Every alert has a runbook section in the ops guide.
    let alerts = std::fs::read_to_string(repo_file("ops/prometheus/alerts.yml")).unwrap();
    let guide = std::fs::read_to_string(repo_file("docs/OPERATIONS.md")).unwrap();
    let names: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(names.len() >= 5, "{names:?}");
    for n in names {
        assert!(
            guide.contains(&format!("### {n}")),
            "no runbook section `### {n}` in docs/OPERATIONS.md"
        );
    }
}

/// `promtool test rules`: each alert fires on the series it is meant for,
/// after its `for:`, with its annotations rendered, and stays quiet otherwise.
#[test]
fn alert_rules_unit_tests_pass() {
    let bin = std::env::var("PROMTOOL_BIN").unwrap_or_else(|_| "promtool".into());
    let out = Command::new(&bin)
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(repo_file("ops/prometheus"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e} (apt-get install prometheus)"));
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// -------------------------------------------------------------- load ----

/// XADDs seed-like rows until stopped (or 3 minutes at most): 50 every 50 ms.
fn start_load(rc: Client, stream: String) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let started = Instant::now();
        let mut i = 0u64;
        while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(180) {
            let pipeline = rc.pipeline();
            for _ in 0..50 {
                let args: Vec<Value> = vec![
                    stream.as_str().into(),
                    "*".into(),
                    "id".into(),
                    i.to_string().into(),
                    "x".into(),
                    ((i % 10) as i64).to_string().into(),
                ];
                let _: Value = pipeline.custom(cmd("XADD"), args).await.unwrap();
                i += 1;
            }
            let _: Vec<Value> = pipeline.all().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        i
    });
    (stop, task)
}

fn cmd(name: &'static str) -> fred::types::CustomCommand {
    fred::types::CustomCommand::new_static(name, fred::types::ClusterHash::FirstKey, false)
}

/// Entries for a "ghost" consumer that reads and never acks: the worker's
/// claim loop takes them over (claimed), finds one deleted (lost) and one
/// delivered too often (dead letter, max_deliveries).
async fn make_ghost_work(rc: &Client, stream: &str) {
    create_group(rc, stream).await;
    let a = xadd(rc, stream, &[("id", "900000001"), ("x", "1")]).await;
    let b = xadd(rc, stream, &[("id", "900000002"), ("x", "2")]).await;
    let c = xadd(rc, stream, &[("id", "900000003"), ("x", "3")]).await;
    raw(
        rc,
        "XREADGROUP",
        vec![
            "GROUP".into(),
            "g".into(),
            "ghost".into(),
            "COUNT".into(),
            Value::Integer(3),
            "STREAMS".into(),
            stream.into(),
            ">".into(),
        ],
    )
    .await;
    raw(rc, "XDEL", vec![stream.into(), b.as_str().into()]).await;
    raw(
        rc,
        "XCLAIM",
        vec![
            stream.into(),
            "g".into(),
            "ghost".into(),
            Value::Integer(0),
            c.as_str().into(),
            "RETRYCOUNT".into(),
            Value::Integer(10),
        ],
    )
    .await;
    let _ = a;
}

// ------------------------------------------------------------- tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_dashboard_and_alert_expression() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("prom"), unique_name("prom"));
    // throwIf in a MATERIALIZED column: passes conversion, refused by the
    // server, so the batch is bisected and the row dead-lettered (rejected).
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt64, x Int32, chk UInt8 MATERIALIZED throwIf(x = 13)) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    make_ghost_work(&s.rc, &stream).await;

    let metrics_port = free_port();
    let prometheus = Prometheus::start(metrics_port, &repo_file("ops/prometheus/alerts.yml")).await;
    let proxy = TcpProxy::start(s.ch.http_addr());
    let config = worker_config(
        &s.redis.url(),
        &proxy.url(),
        metrics_port,
        &stream,
        &table,
        &format!(
            r#"batch = {{ max_rows = 500, max_wait = "100ms" }}
claim = {{ min_idle = "3s", every = "500ms" }}
# The dashboard's source panels: a source copying the table to a stream.
[[source]]
name = "copy"
type = "clickhouse"
table = "{table}"
cursor = "id"
to = "{stream}.copy"
mode = "follow"
poll = "200ms""#
        ),
    );
    let flow = format!("f_{stream}");
    let worker = Worker::spawn(&config);
    let (stop, load) = start_load(s.rc.clone(), stream.clone());

    // Inserts land, then a transient outage makes the worker retry.
    wait_for(LONG, "rows inserted", || async {
        s.ch.count(&table).await > 100
    })
    .await;
    proxy.refuse();
    wait_for(LONG, "an insert retried", || async {
        sample(
            &scrape(metrics_port).await,
            "sluice_sink_errors_total",
            &[("kind", "retry")],
        )
        .unwrap_or(0.0)
            > 0.0
    })
    .await;
    proxy.pass();
    // A row that cannot convert, and one ClickHouse refuses.
    xadd(&s.rc, &stream, &[("id", "1"), ("x", "not a number")]).await;
    xadd(&s.rc, &stream, &[("id", "2"), ("x", "13")]).await;
    let m = |name: &'static str, labels: &'static [(&'static str, &'static str)]| {
        let flow = flow.clone();
        async move {
            let mut l: Vec<(&str, &str)> = labels.to_vec();
            l.push(("flow", flow.as_str()));
            sample(&scrape(metrics_port).await, name, &l).unwrap_or(0.0) > 0.0
        }
    };
    wait_for(LONG, "every counter moved", || async {
        m(
            "sluice_messages_dead_lettered_total",
            &[("reason", "convert")],
        )
        .await
            && m(
                "sluice_messages_dead_lettered_total",
                &[("reason", "rejected")],
            )
            .await
            && m(
                "sluice_messages_dead_lettered_total",
                &[("reason", "max_deliveries")],
            )
            .await
            && m("sluice_sink_errors_total", &[("kind", "bisect")]).await
            && m("sluice_messages_claimed_total", &[]).await
            && m("sluice_messages_lost_total", &[]).await
            && m("sluice_messages_retried_total", &[]).await
            && m("sluice_messages_acked_total", &[]).await
    })
    .await;

    // Every alert rule is loaded and evaluates cleanly.
    let shipped = std::fs::read_to_string(repo_file("ops/prometheus/alerts.yml"))
        .unwrap()
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let rules = wait_some(LONG, || async {
        let rules = prometheus.rules().await;
        (rules.len() == shipped && rules.iter().all(|r| r.2 == "ok")).then_some(rules)
    })
    .await;

    let mut exprs = dashboard_expressions();
    for (name, query, _, _) in &rules {
        exprs.push((format!("alert {name} (signal)"), alert_signal(query)));
    }
    // Poll until every expression has data (rates need a few scrapes).
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing: Vec<&(String, String)> = exprs.iter().collect();
    while !missing.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for item in missing {
            match prometheus.query(&item.1).await {
                Ok(series) if series.iter().any(|(_, v)| v.is_finite()) => {}
                Ok(series) => {
                    last.insert(item.1.clone(), format!("no finite value: {series:?}"));
                    still.push(item);
                }
                Err(e) => {
                    last.insert(item.1.clone(), format!("error: {e}"));
                    still.push(item);
                }
            }
        }
        missing = still;
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let produced = load.await.unwrap();
    let report: Vec<String> = missing
        .iter()
        .map(|(what, e)| {
            format!(
                "{what}: {e}\n    -> {}",
                last.get(e).map(String::as_str).unwrap_or("?")
            )
        })
        .collect();
    assert!(
        report.is_empty(),
        "{} of {} expressions returned no data:\n{}\n(worker log follows on drop: {} lines)",
        report.len(),
        exprs.len(),
        report.join("\n"),
        worker.log_contents().lines().count()
    );
    assert!(produced > 0);
    eprintln!(
        "{} expressions returned data ({} dashboard, {} alerts)",
        exprs.len(),
        exprs.len() - rules.len(),
        rules.len()
    );
}

/// Counts ids in `ids` that sort after `after` (stream ids, numerically).
fn count_after(ids: &[String], after: &str) -> u64 {
    let key = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    };
    let a = key(after);
    ids.iter().filter(|id| key(id) > a).count() as u64
}

/// XINFO GROUPS for group `g`: (last-delivered-id, lag as Redis says it).
async fn group_row(rc: &Client, stream: &str) -> (String, Option<u64>) {
    let Value::Array(groups) = raw(rc, "XINFO", vec!["GROUPS".into(), stream.into()]).await else {
        panic!("XINFO GROUPS shape");
    };
    for g in groups {
        let Value::Array(kv) = g else { continue };
        let mut map = BTreeMap::new();
        for pair in kv.chunks(2) {
            map.insert(pair[0].as_string().unwrap_or_default(), pair[1].clone());
        }
        if map.get("name").and_then(|v| v.as_string()).as_deref() == Some("g") {
            let last = map["last-delivered-id"].as_string().unwrap();
            let lag = match map.get("lag") {
                Some(Value::Null) | None => None,
                Some(v) => v.as_u64(),
            };
            return (last, lag);
        }
    }
    panic!("no group g on {stream}");
}

/// Waits until the group's last-delivered id and pending count have held
/// still for a second (the worker's pipeline is full), and returns the id.
async fn stalled_position(rc: &Client, stream: &str) -> String {
    let deadline = Instant::now() + LONG;
    let mut seen: Option<((String, u64), Instant)> = None;
    loop {
        let now = (
            (group_row(rc, stream).await.0),
            pending(rc, stream, "g").await,
        );
        match &seen {
            Some((prev, since)) if *prev == now => {
                if now.1 > 0 && since.elapsed() >= Duration::from_secs(1) {
                    return now.0;
                }
            }
            _ => seen = Some((now, Instant::now())),
        }
        assert!(Instant::now() < deadline, "reading never stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_gauges_are_exact_after_xdel_and_trim_with_ack_del() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("lag"), unique_name("lag"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt64) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    let proxy = TcpProxy::start(s.ch.http_addr());
    let port = free_port();
    // One entry per read and per batch: with the sink down the pipeline
    // fills after a handful of entries and reading stops, so the rest of the
    // stream stays undelivered while we cut holes into it.
    let config = worker_config(
        &s.redis.url(),
        &proxy.url(),
        port,
        &stream,
        &table,
        r#"read_count = 1
on_success = "ack_del"
batch = { max_rows = 1, max_wait = "50ms" }
claim = { min_idle = "60s", every = "1s" }"#,
    );
    let flow = format!("f_{stream}");
    // (the group is always "g"; sluice_stream_length has no group label)
    let labels = [("flow", flow.as_str()), ("stream", stream.as_str())];
    let gauge = |name: &'static str| async move { sample(&scrape(port).await, name, &labels) };
    let worker = Worker::spawn(&config);

    // 1. Normal operation with ack_del: entries are acked and deleted.
    xadd_many(&s.rc, &stream, 20, |i| {
        vec![("id".into(), i.to_string().into_bytes())]
    })
    .await;
    wait_for(LONG, "20 rows", || async { s.ch.count(&table).await == 20 }).await;
    wait_for(LONG, "stream emptied by ack_del", || async {
        xlen(&s.rc, &stream).await == 0
    })
    .await;
    wait_for(LONG, "lag gauge 0, length 0", || async {
        gauge("sluice_group_lag").await == Some(0.0)
            && gauge("sluice_stream_length").await == Some(0.0)
    })
    .await;

    // 2. The sink goes away; new entries pile up undelivered. Reading stops
    // once the pipeline is full: wait until the group's position holds still.
    proxy.refuse();
    let ids = xadd_many(&s.rc, &stream, 60, |i| {
        vec![("id".into(), (100 + i).to_string().into_bytes())]
    })
    .await;
    let last = stalled_position(&s.rc, &stream).await;
    let delivered = ids.len() - count_after(&ids, &last) as usize;
    assert!(
        delivered > 0 && delivered + 30 < ids.len(),
        "delivered {delivered}"
    );

    // 3. XDEL inside the unread range (delivered entries are still in the
    // stream, pending): Redis reports lag as nil; sluice counts.
    let deleted = [delivered + 3, delivered + 5, delivered + 8].map(|i| ids[i].clone());
    let mut args: Vec<Value> = vec![stream.as_str().into()];
    args.extend(deleted.iter().map(|id| Value::from(id.as_str())));
    raw(&s.rc, "XDEL", args).await;
    let remaining: Vec<String> = ids
        .iter()
        .filter(|id| !deleted.contains(id))
        .cloned()
        .collect();
    let (last, redis_lag) = group_row(&s.rc, &stream).await;
    assert_eq!(
        redis_lag, None,
        "XINFO GROUPS lag is nil after XDEL in the unread range"
    );
    let truth = count_after(&remaining, &last);
    assert_eq!(truth, ids.len() as u64 - delivered as u64 - 3);
    wait_for(LONG, "lag gauge = undelivered after XDEL", || async {
        gauge("sluice_group_lag").await == Some(truth as f64)
            && gauge("sluice_stream_length").await == Some(xlen(&s.rc, &stream).await as f64)
    })
    .await;
    let age = gauge("sluice_group_lag_seconds").await.unwrap();
    assert!(age > 0.0 && age < 600.0, "lag seconds {age}");
    // The library view agrees, and says how it got there.
    let status = sluice::testing::stream_status(&s.rc, &flow, &stream, "g", "unused:dead")
        .await
        .unwrap();
    assert_eq!(
        (status.lag, status.lag_source),
        (truth, sluice::testing::LagSource::Counted)
    );
    assert_eq!(status.redis_lag, None);

    // 4. Trim past the deleted ids, cutting delivered and unread entries:
    // no tombstone is left in the stream, so Redis has a number again, but it
    // still counts the trimmed unread entries (entries-added − entries-read).
    let cut = delivered + 12;
    raw(
        &s.rc,
        "XTRIM",
        vec![
            stream.as_str().into(),
            "MINID".into(),
            ids[cut].as_str().into(),
        ],
    )
    .await;
    let remaining: Vec<String> = ids[cut..].to_vec();
    let (last, redis_lag) = group_row(&s.rc, &stream).await;
    let truth = count_after(&remaining, &last);
    assert_eq!(
        truth,
        xlen(&s.rc, &stream).await,
        "everything left is unread"
    );
    assert!(
        redis_lag.is_some_and(|l| l > truth),
        "Redis over-counts after trimming unread entries: {redis_lag:?} vs {truth}"
    );
    wait_for(LONG, "lag gauge = undelivered after trim", || async {
        gauge("sluice_group_lag").await == Some(truth as f64)
    })
    .await;

    // 5. The sink is back: everything drains, the stream empties (ack_del),
    // the gauges go to zero. Rows: phase 1, the entries delivered before the
    // outage stalled reading (held in the pipeline, even if trimmed since),
    // and the undelivered ones left.
    let (last, _) = group_row(&s.rc, &stream).await;
    let expected =
        20 + (ids.len() as u64 - count_after(&ids, &last)) + count_after(&remaining, &last);
    proxy.pass();
    wait_for(LONG, "all remaining rows", || async {
        s.ch.count(&table).await == expected
    })
    .await;
    wait_for(LONG, "gauges drained", || async {
        gauge("sluice_group_lag").await == Some(0.0)
            && gauge("sluice_group_pending").await == Some(0.0)
            && gauge("sluice_stream_length").await == Some(0.0)
            && gauge("sluice_group_lag_seconds").await == Some(0.0)
    })
    .await;
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_samples_the_stream_gauges() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("lease"), unique_name("lease"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt64) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    let ports = [free_port(), free_port()];
    let mut workers: Vec<Worker> = ports
        .iter()
        .map(|&p| {
            Worker::spawn(&worker_config(
                &s.redis.url(),
                &s.ch.url(),
                p,
                &stream,
                &table,
                "",
            ))
        })
        .collect();
    let exports = |port: u16| {
        let stream = stream.clone();
        async move {
            sample(
                &scrape(port).await,
                "sluice_group_lag",
                &[("stream", stream.as_str())],
            )
            .is_some()
        }
    };
    let holder = wait_some(LONG, || async {
        let (a, b) = (exports(ports[0]).await, exports(ports[1]).await);
        match (a, b) {
            (true, false) => Some(0),
            (false, true) => Some(1),
            _ => None,
        }
    })
    .await;
    // Both serve counters (a replica's flow may start after its metrics
    // endpoint); only the lease holder has gauge series.
    for &p in &ports {
        wait_for(LONG, "counters served", || async {
            scrape(p).await.contains("sluice_messages_read_total")
        })
        .await;
    }
    let other = 1 - holder;
    assert!(!exports(ports[other]).await);
    // The holder dies without releasing the lease: the other takes over
    // once it expires (3 × sample_every).
    workers[holder].kill();
    wait_for(LONG, "the other replica samples", || exports(ports[other])).await;
    drop(workers);
}

// ----------------------------------------------------------- tracing ----

/// Collects OTLP/HTTP trace export requests (protobuf bodies).
async fn otlp_receiver() -> (u16, Arc<Mutex<Vec<bytes::Bytes>>>) {
    use axum::routing::post;
    let got: Arc<Mutex<Vec<bytes::Bytes>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: bytes::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                // An empty ExportTraceServiceResponse is zero bytes.
                (
                    [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, got)
}

struct SpanSeen {
    name: String,
    trace_id: String,
    parent: String,
    links: Vec<(String, String)>,
    attributes: Vec<String>,
    service: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_spans(bodies: &[bytes::Bytes]) -> Vec<SpanSeen> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message as _;
    let mut out = Vec::new();
    for body in bodies {
        let req = ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref().cloned())
                .map(|v| match v {
                    Any::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for sp in ss.spans {
                    out.push(SpanSeen {
                        name: sp.name.clone(),
                        trace_id: hex(&sp.trace_id),
                        parent: hex(&sp.parent_span_id),
                        links: sp
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                        attributes: sp.attributes.iter().map(|a| a.key.clone()).collect(),
                        service: service.clone(),
                    });
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_span_is_exported_over_otlp_and_continues_the_producer_trace() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("otlp"), unique_name("otlp"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (id UInt64) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    let (port, received) = otlp_receiver().await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let config = worker_config(
        &s.redis.url(),
        &s.ch.url(),
        free_port(),
        &stream,
        &table,
        r#"batch = { max_rows = 100, max_wait = "300ms" }"#,
    );
    let mut worker = Worker::spawn_with_env(
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "sluice-it"),
        ],
    );
    // Two producers' traces; a message without one in between.
    let producers = [
        ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
        ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
    ];
    let tp = |i: usize| format!("00-{}-{}-01", producers[i].0, producers[i].1);
    xadd(&s.rc, &stream, &[("id", "1"), ("traceparent", &tp(0))]).await;
    xadd(&s.rc, &stream, &[("id", "2")]).await;
    xadd(&s.rc, &stream, &[("id", "3"), ("traceparent", &tp(1))]).await;
    wait_for(LONG, "3 rows", || async { s.ch.count(&table).await == 3 }).await;

    // Each producer context appears on a batch span: as its parent (same
    // trace, parent span id = the producer's span) or as a link.
    wait_for(LONG, "batch spans linked to both producers", || async {
        let spans = decode_spans(&received.lock().unwrap());
        producers.iter().all(|(trace, span)| {
            spans.iter().any(|sp| {
                sp.name == "batch"
                    && ((sp.trace_id == *trace && sp.parent == *span)
                        || sp.links.iter().any(|(t, s)| t == trace && s == span))
            })
        })
    })
    .await;
    let spans = decode_spans(&received.lock().unwrap());
    let first = spans
        .iter()
        .find(|sp| sp.name == "batch" && sp.trace_id == producers[0].0)
        .expect("the first traced message's batch continues its trace");
    assert_eq!(first.parent, producers[0].1);
    assert!(first.links.iter().any(|(t, _)| t == producers[0].0));
    assert_eq!(first.service, "sluice-it");
    for attr in ["flow", "rows", "inserted", "dead_lettered"] {
        assert!(
            first.attributes.iter().any(|a| a == attr),
            "attribute {attr} missing: {:?}",
            first.attributes
        );
    }
    // SIGTERM: the exporter flushes and the worker still exits cleanly.
    worker.term();
    let status = worker
        .wait_exit(LONG)
        .await
        .expect("worker exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
}
