//! docs/SECURITY.md, proven: the documented Redis ACL and a ClickHouse user
//! limited to one database run the worker; passwords from files never show
//! up in logs or CLI output; `rediss://` and `https://` with a private CA.

use std::path::{Path, PathBuf};
use std::process::Command;

use fred::prelude::*;
use fred::types::Value;

use crate::common::*;
use crate::harness::{free_port, wait_for, ClickHouseServer, RedisServer, Worker};

/// The `ACL SETUSER …` line between the `acl:worker` markers of
/// docs/SECURITY.md.
fn documented_acl() -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/SECURITY.md"))
            .expect("read docs/SECURITY.md");
    let start = doc.find("<!-- acl:worker -->").expect("acl:worker marker");
    let end = doc
        .find("<!-- /acl:worker -->")
        .expect("/acl:worker marker");
    doc[start..end]
        .lines()
        .find(|l| l.starts_with("ACL SETUSER"))
        .expect("an ACL SETUSER line")
        .to_string()
}

fn base64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Writes a secret file readable by its owner only.
fn secret_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `sluice <args…> --config <file>` at `RUST_LOG=trace`: (success, output).
fn sluice(sub: &str, config: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg(sub)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "trace");
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run sluice");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Adds a ClickHouse user in `users.d/` (18.16 reloads users on its own)
/// and waits until it can log in.
async fn add_clickhouse_user(ch: &ClickHouseServer, user: &str, password: &str, database: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("printf %s '{password}' | sha256sum"))
        .output()
        .expect("sha256sum");
    let hash = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let dir = ch.dir().join("users.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{user}.xml")),
        format!(
            r#"<?xml version="1.0"?>
<yandex><users><{user}>
    <password_sha256_hex>{hash}</password_sha256_hex>
    <networks><ip>127.0.0.1</ip></networks>
    <profile>default</profile>
    <quota>default</quota>
    <allow_databases><database>{database}</database></allow_databases>
</{user}></users></yandex>
"#
        ),
    )
    .unwrap();
    let client = crate::harness::clickhouse_client(&ch.url())
        .with_user(user)
        .with_password(password);
    wait_for(LONG, "ClickHouse user loaded", || async {
        client.query("SELECT 1").fetch_one::<u8>().await.is_ok()
    })
    .await;
}

/// `ACL LOG` entries other than failed logins (the test makes those).
async fn acl_denials(rc: &fred::prelude::Client) -> Vec<String> {
    match raw(rc, "ACL", vec!["LOG".into()]).await {
        Value::Array(items) => items
            .into_iter()
            .map(|v| format!("{v:?}"))
            .filter(|e| !e.contains("String(\"reason\"), String(\"auth\")"))
            .collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn documented_least_privilege_users_run_the_worker_and_secrets_never_show() {
    let s = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let salt: u32 = rand::random();
    let (redis_pw, ch_pw) = (
        format!("r3dis-S3cret-{salt:08x}"),
        format!("cl1ck-S3cret-{salt:08x}"),
    );

    // Redis: the user exactly as docs/SECURITY.md creates it.
    let acl = documented_acl().replace("PASSWORD", &redis_pw);
    let args: Vec<Value> = acl.split_whitespace().skip(1).map(Value::from).collect();
    raw(&s.rc, "ACL", args).await;
    // ClickHouse: a user limited to one database.
    s.ch.exec("CREATE DATABASE sluice_sec").await;
    s.ch.exec(
        "CREATE TABLE sluice_sec.events (n UInt32, _id String) ENGINE = MergeTree ORDER BY n",
    )
    .await;
    s.ch.exec("CREATE TABLE default.victim (x UInt8) ENGINE = TinyLog")
        .await;
    add_clickhouse_user(&s.ch, "sluice", &ch_pw, "sluice_sec").await;
    let limited = crate::harness::clickhouse_client(&s.ch.url())
        .with_user("sluice")
        .with_password(&ch_pw);
    let denied = limited
        .query("SELECT count() FROM default.victim")
        .fetch_one::<u64>()
        .await;
    assert!(
        denied.is_err(),
        "the ClickHouse user can read another database"
    );

    // A departed consumer's pending entries, for the claim path.
    raw(
        &s.rc,
        "XGROUP",
        vec![
            "CREATE".into(),
            "events".into(),
            "g".into(),
            "0".into(),
            "MKSTREAM".into(),
        ],
    )
    .await;
    xadd_many(&s.rc, "events", 10, |i| {
        vec![("n".into(), (10_000 + i).to_string().into_bytes())]
    })
    .await;
    raw(
        &s.rc,
        "XREADGROUP",
        vec![
            "GROUP".into(),
            "g".into(),
            "ghost".into(),
            "STREAMS".into(),
            "events".into(),
            ">".into(),
        ],
    )
    .await;

    let redis_file = secret_file(dir.path(), "redis.pw", &redis_pw);
    let ch_file = secret_file(dir.path(), "ch.pw", &ch_pw);
    let config = |metrics_port: u16, redis_file: &Path, ch_file: &Path| {
        format!(
            r#"[redis]
url = "redis://sluice@127.0.0.1:{}/0"
password_file = {redis_file:?}
[clickhouse]
url = "{}"
database = "sluice_sec"
user = "sluice"
password_file = {ch_file:?}
[metrics]
listen = "127.0.0.1:{metrics_port}"
sample_every = "200ms"
[worker]
block = "200ms"
[[flow]]
name = "events"
streams = ["events"]
group = "g"
sink = {{ type = "clickhouse", table = "events" }}
dead_letter = "events:dead"
on_success = "ack_del"
batch = {{ max_rows = 100, max_wait = "100ms" }}
claim = {{ min_idle = "1s", every = "300ms" }}
metadata = {{ id = "_id" }}
"#,
            s.redis.port(),
            s.ch.url()
        )
    };
    let trace = [("RUST_LOG", "trace")];
    let mut workers: Vec<Worker> = (0..2)
        .map(|_| Worker::spawn_with_env(&config(free_port(), &redis_file, &ch_file), &trace))
        .collect();
    xadd_many(&s.rc, "events", 500, |i| {
        vec![("n".into(), i.to_string().into_bytes())]
    })
    .await;
    for bad in ["x", "-1", "4294967296"] {
        xadd(&s.rc, "events", &[("n", bad)]).await;
    }
    wait_for(LONG, "every row and dead letter", || async {
        s.ch.count("sluice_sec.events").await == 510 && xlen(&s.rc, "events:dead").await == 3
    })
    .await;
    wait_for(LONG, "acked and deleted (ack_del)", || async {
        pending(&s.rc, "events", "g").await == 0 && xlen(&s.rc, "events").await == 0
    })
    .await;

    // A clean stop removes the consumers (XGROUP DELCONSUMER).
    for w in &workers {
        w.term();
    }
    for w in &mut workers {
        let status = w.wait_exit(LONG).await.expect("worker exits on SIGTERM");
        assert!(status.success(), "{}", w.log_contents());
    }
    assert!(consumer_names(&s.rc, "events", "g")
        .await
        .iter()
        .all(|c| c == "ghost"));

    // The CLI through the same users.
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, config(free_port(), &redis_file, &ch_file)).unwrap();
    let (ok, check) = sluice("check", &file, &[]);
    assert!(ok, "{check}");
    assert!(check.contains("redis://sluice@127.0.0.1"), "{check}");
    let (ok, status) = sluice("status", &file, &[]);
    assert!(ok, "{status}");

    // Wrong passwords: clear errors, and still no secret in the output.
    let wrong = secret_file(dir.path(), "wrong.pw", "wr0ng-S3cret-value");
    std::fs::write(&file, config(free_port(), &wrong, &ch_file)).unwrap();
    let (ok, bad_redis) = sluice("check", &file, &[]);
    assert!(!ok && bad_redis.contains("WRONGPASS"), "{bad_redis}");
    std::fs::write(&file, config(free_port(), &redis_file, &wrong)).unwrap();
    let (ok, bad_ch) = sluice("check", &file, &[]);
    assert!(
        !ok && bad_ch.to_lowercase().contains("password"),
        "{bad_ch}"
    );

    let log = acl_denials(&s.rc).await;
    assert!(
        log.is_empty(),
        "the documented ACL denied commands: {log:#?}"
    );
    // …and it is a fence: other keys and dangerous commands are refused.
    let as_sluice = crate::harness::redis_client(&format!(
        "redis://sluice:{redis_pw}@127.0.0.1:{}",
        s.redis.port()
    ))
    .await;
    let cmd = |name| {
        fred::types::CustomCommand::new_static(name, fred::types::ClusterHash::FirstKey, false)
    };
    for (name, args) in [
        ("GET", vec![Value::from("other")]),
        (
            "XADD",
            vec!["other".into(), "*".into(), "a".into(), "1".into()],
        ),
        ("FLUSHALL", vec![]),
        ("CONFIG", vec!["GET".into(), "*".into()]),
        ("KEYS", vec!["*".into()]),
    ] {
        let r = as_sluice.custom::<Value, Value>(cmd(name), args).await;
        assert!(
            r.as_ref().is_err_and(|e| e.to_string().contains("NOPERM")),
            "{name} was allowed: {r:?}"
        );
    }
    let mut everything = check + &status + &bad_redis + &bad_ch;
    for w in &workers {
        let text = w.log_contents();
        assert!(!text.contains("NOPERM"), "{text}");
        everything.push_str(&text);
    }
    assert!(
        everything.len() > 10_000,
        "trace logging produced little output"
    );
    for secret in [redis_pw.as_str(), ch_pw.as_str(), "wr0ng-S3cret-value"] {
        for form in [
            secret.to_string(),
            base64(secret.as_bytes()),
            base64(format!("sluice:{secret}").as_bytes()),
        ] {
            assert!(
                !everything.contains(&form),
                "{form:?} appears in logs or CLI output"
            );
        }
    }
}

/// `openssl` makes a CA and a server certificate for 127.0.0.1 in `dir`;
/// returns (ca.pem, server.pem, server.key).
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=sluice-test-ca");
    run("openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1");
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run("openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf");
    // ClickHouse runs as this user and reads the key itself.
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[tokio::test]
async fn rediss_and_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(dir.path());
    let tls_port = free_port();
    let tls_port_s = tls_port.to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port_s,
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ])
    .await;
    let rc = redis.client().await;
    // ClickHouse: an HTTPS port from config.d/, picked up on restart.
    let mut ch = ClickHouseServer::start().await;
    let https_port = free_port();
    std::fs::create_dir_all(ch.dir().join("config.d")).unwrap();
    std::fs::write(
        ch.dir().join("config.d/https.xml"),
        format!(
            r#"<?xml version="1.0"?>
<yandex>
    <https_port>{https_port}</https_port>
    <openSSL><server>
        <certificateFile>{}</certificateFile>
        <privateKeyFile>{}</privateKeyFile>
        <verificationMode>none</verificationMode>
        <loadDefaultCAFile>false</loadDefaultCAFile>
        <cacheSessions>true</cacheSessions>
        <disableProtocols>sslv2,sslv3</disableProtocols>
        <preferServerCiphers>true</preferServerCiphers>
    </server></openSSL>
</yandex>
"#,
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    ch.stop().await;
    ch.start_again().await;
    wait_for(LONG, "ClickHouse HTTPS port open", || async {
        crate::harness::port_open(https_port).await
    })
    .await;
    ch.exec("CREATE TABLE tls_events (n UInt32) ENGINE = MergeTree ORDER BY n")
        .await;

    let config = format!(
        r#"[redis]
url = "rediss://127.0.0.1:{tls_port}"
[clickhouse]
url = "https://127.0.0.1:{https_port}"
[worker]
block = "200ms"
[[flow]]
name = "tls"
streams = ["tls_events"]
group = "g"
sink = {{ type = "clickhouse", table = "tls_events" }}
batch = {{ max_rows = 100, max_wait = "100ms" }}
"#
    );
    // Without the CA the certificates are not trusted: no start.
    let mut untrusted = Worker::spawn_with_env(&config, &[("SSL_CERT_FILE", "/dev/null")]);
    let status = untrusted.wait_exit(LONG).await.expect("exits");
    assert!(!status.success());
    let log = untrusted.log_contents().to_lowercase();
    assert!(log.contains("certificate") || log.contains("tls"), "{log}");

    let ca_env = ca.to_str().unwrap().to_string();
    let w = Worker::spawn_with_env(&config, &[("SSL_CERT_FILE", &ca_env)]);
    xadd_many(&rc, "tls_events", 200, |i| {
        vec![("n".into(), i.to_string().into_bytes())]
    })
    .await;
    wait_for(LONG, "rows over TLS", || async {
        ch.count("tls_events").await == 200
    })
    .await;
    wait_for(LONG, "acked over TLS", || async {
        pending(&rc, "tls_events", "g").await == 0
    })
    .await;
    // The plain port was never used by the worker: its clients are on TLS.
    let clients = raw(&rc, "CLIENT", vec!["LIST".into()])
        .await
        .as_string()
        .unwrap_or_default();
    assert!(
        clients
            .lines()
            .filter(|l| l.contains(&format!("laddr=127.0.0.1:{tls_port}")))
            .count()
            >= 2,
        "{clients}\n{}",
        w.log_contents()
    );
}
