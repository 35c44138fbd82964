//! The bad-input matrix: every kind of malformed message gets a row (with
//! defaults where a field is missing) or a dead letter naming its reason;
//! nothing is lost, and the worker keeps running. Hostile names in config
//! and messages inject nothing into SQL or Redis.

use std::collections::BTreeMap;

use fred::prelude::*;
use fred::types::{CustomCommand, Value};

use crate::common::*;
use crate::harness::{unique_name, wait_for, Worker};

/// XADD with binary-safe field names and values; returns the id.
async fn xadd_raw(client: &Client, stream: &str, fields: &[(&[u8], &[u8])]) -> String {
    let mut args: Vec<Value> = vec![stream.into(), "*".into()];
    for (k, v) in fields {
        args.push(Value::Bytes(k.to_vec().into()));
        args.push(Value::Bytes(v.to_vec().into()));
    }
    client
        .custom::<Value, Value>(
            CustomCommand::new_static("XADD", fred::types::ClusterHash::FirstKey, false),
            args,
        )
        .await
        .expect("XADD")
        .as_string()
        .expect("id")
}

/// A message's fields, names and values as bytes.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// (path, body, chunk size for a chunked body, expected status, words the
/// answer must contain).
type HttpCase = (String, Vec<u8>, Option<usize>, u16, &'static str);

/// What a message must become.
enum Expect {
    /// A row; the SQL expression (over the row with this id) must be 1.
    Row(&'static str),
    /// A dead letter whose reason contains every one of these.
    Dead(&'static [&'static str]),
}

const MATRIX_TABLE: &str = "id UInt32, u8 UInt8, i64 Int64, u64 UInt64, f Float64, d Date, \
    dt DateTime, dec Decimal(9, 2), uuid UUID, e Enum8('a' = 1, 'b' = 2), s String, \
    fs FixedString(4), arr Array(UInt16), n Nullable(Int32), _id String";

#[tokio::test]
async fn malformed_messages_get_a_row_or_a_dead_letter_with_the_reason() {
    let s = Stack::start().await;
    let (stream, table) = (unique_name("bad"), unique_name("bad"));
    let (pstream, ptable) = (unique_name("badp"), unique_name("badp"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} ({MATRIX_TABLE}) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    s.ch.exec(&format!(
        "CREATE TABLE {ptable} (id UInt32, s String, arr Array(Int32), _id String) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    let big = vec![b'x'; 100 << 10];
    let fits = vec![b'y'; 60 << 10];
    let long_name = vec![b'k'; 70 << 10];
    let many: Vec<(Vec<u8>, Vec<u8>)> = (0..5000)
        .map(|i| (format!("f{i}").into_bytes(), i.to_string().into_bytes()))
        .collect();
    let deep_json = format!("{}{}", "[".repeat(5000), "]".repeat(5000));

    // (id, fields, expectation). Every id is unique; "id" is added below.
    let mut cases: Vec<(u32, Fields, Expect)> = Vec::new();
    let mut case = |id: u32, fields: &[(&[u8], &[u8])], expect: Expect| {
        let mut f: Vec<(Vec<u8>, Vec<u8>)> = vec![(b"id".to_vec(), id.to_string().into_bytes())];
        f.extend(fields.iter().map(|(k, v)| (k.to_vec(), v.to_vec())));
        cases.push((id, f, expect));
    };
    // Missing fields: type defaults, NULL for Nullable.
    case(1, &[], Expect::Row("u8 = 0 AND s = '' AND d = toDate('1970-01-01') AND isNull(n) AND length(arr) = 0 AND e = 'a' AND uuid = toUUID('00000000-0000-0000-0000-000000000000')"));
    // Fields without a column, and an empty field name, are ignored.
    case(
        2,
        &[(b"", b""), (b"no_such_column", b"1")],
        Expect::Row("u8 = 0"),
    );
    // Wrong types.
    case(
        3,
        &[(b"u8", b"abc")],
        Expect::Dead(&["`u8`", "UInt8", "abc"]),
    );
    case(
        4,
        &[(b"d", b"yesterday")],
        Expect::Dead(&["`d`", "Date", "yesterday"]),
    );
    case(
        5,
        &[(b"dt", b"2020-13-45 25:61:00")],
        Expect::Dead(&["`dt`", "DateTime"]),
    );
    case(
        6,
        &[(b"uuid", b"not-a-uuid")],
        Expect::Dead(&["`uuid`", "UUID"]),
    );
    case(7, &[(b"e", b"c")], Expect::Dead(&["`e`", "Enum8"]));
    case(
        8,
        &[(b"arr", b"[1,\"x\"]")],
        Expect::Dead(&["`arr`", "Array(UInt16)"]),
    );
    case(
        9,
        &[(b"arr", b"not json")],
        Expect::Dead(&["`arr`", "Array(UInt16)"]),
    );
    case(10, &[(b"f", b"1.2.3")], Expect::Dead(&["`f`", "Float64"]));
    case(
        11,
        &[(b"n", b"twelve")],
        Expect::Dead(&["`n`", "Nullable(Int32)"]),
    );
    // Overflows.
    case(20, &[(b"u8", b"300")], Expect::Dead(&["`u8`", "300"]));
    case(21, &[(b"u8", b"-1")], Expect::Dead(&["`u8`", "-1"]));
    case(
        22,
        &[(b"u64", b"18446744073709551616")],
        Expect::Dead(&["`u64`", "18446744073709551616"]),
    );
    case(
        23,
        &[(b"i64", b"-9223372036854775809")],
        Expect::Dead(&["`i64`"]),
    );
    case(
        24,
        &[(b"dec", b"12345678.9")],
        Expect::Dead(&["`dec`", "Decimal(9, 2)"]),
    );
    case(
        25,
        &[(b"fs", b"toolong")],
        Expect::Dead(&["`fs`", "FixedString(4)"]),
    );
    case(
        26,
        &[(b"arr", b"[70000]")],
        Expect::Dead(&["`arr`", "70000"]),
    );
    case(
        27,
        &[(b"d", b"2200-01-01")],
        Expect::Dead(&["`d`", "2200-01-01"]),
    );
    // Edges that are valid.
    case(
        30,
        &[
            (b"u64", b"18446744073709551615"),
            (b"i64", b"-9223372036854775808"),
        ],
        Expect::Row("u64 = 18446744073709551615 AND i64 = -9223372036854775808"),
    );
    case(
        31,
        &[(b"f", b"nan"), (b"n", b"")],
        Expect::Row("isNaN(f) AND isNull(n)"),
    );
    case(
        32,
        &[(b"n", b"\\N"), (b"dec", b"-1234567.895")],
        Expect::Row("isNull(n) AND toString(dec) = '-1234567.90'"),
    );
    // Invalid UTF-8: kept as bytes in a String; a clear error in a number.
    case(
        40,
        &[(b"s", b"\xff\xfe\x00bytes\xc3\x28")],
        Expect::Row("hex(s) = 'FFFE006279746573C328'"),
    );
    case(
        41,
        &[(b"u8", b"\xff\xfe")],
        Expect::Dead(&["`u8`", "UInt8"]),
    );
    case(
        42,
        &[(b"fs", b"\xff\xff\xff\xff")],
        Expect::Row("hex(fs) = 'FFFFFFFF'"),
    );
    // SQL-looking text is data.
    case(
        43,
        &[(b"s", b"'); DROP TABLE victim; --")],
        Expect::Row("s = '\\'); DROP TABLE victim; --'"),
    );
    // Oversized (max_field_bytes = 64KiB here): value, then field name.
    case(
        50,
        &[(b"s", &big)],
        Expect::Dead(&["field `s`", "102400 bytes", "max_field_bytes = 65536"]),
    );
    case(51, &[(b"s", &fits)], Expect::Row("length(s) = 61440"));
    case(
        52,
        &[(&long_name, b"1")],
        Expect::Dead(&["field `kkkk", "71680 bytes", "max_field_bytes"]),
    );
    // Thousands of fields: fine, and kept whole in a dead letter.
    {
        let mut f: Vec<(&[u8], &[u8])> = many
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        case(60, &f, Expect::Row("u8 = 0"));
        f.push((b"u8", b"bad"));
        case(61, &f, Expect::Dead(&["`u8`", "bad"]));
    }
    // An "empty" message: XADD needs one field; this one maps to nothing.
    case(0, &[], Expect::Row("u8 = 0"));
    cases.last_mut().unwrap().1 = vec![(b"x".to_vec(), Vec::new())];

    // Payload (JSON) flow: malformed, not an object, too deep, nested values.
    let mut pcases: Vec<(u32, Vec<u8>, Expect)> = vec![
        (
            100,
            b"{\"s\": \"ok\", \"arr\": [1, 2]}".to_vec(),
            Expect::Row("s = 'ok' AND arr = [1, 2]"),
        ),
        (
            101,
            b"{\"s\": ".to_vec(),
            Expect::Dead(&["payload field `payload`"]),
        ),
        (
            102,
            b"[1, 2, 3]".to_vec(),
            Expect::Dead(&["payload field `payload`"]),
        ),
        (
            103,
            deep_json.into_bytes(),
            Expect::Dead(&["payload field `payload`"]),
        ),
        (
            104,
            b"{\"s\": {\"nested\": [1, {\"x\": null}]}}".to_vec(),
            Expect::Row("s = '{\"nested\":[1,{\"x\":null}]}'"),
        ),
        (
            105,
            b"{\"arr\": [1, 2147483648]}".to_vec(),
            Expect::Dead(&["`arr`", "2147483648"]),
        ),
        (
            106,
            b"\xff\xfe".to_vec(),
            Expect::Dead(&["payload field `payload`"]),
        ),
        (
            107,
            b"{\"s\": \"\\ud800\"}".to_vec(),
            Expect::Dead(&["payload field `payload`"]),
        ),
    ];

    let extra = format!(
        r#"batch = {{ max_rows = 20, max_wait = "100ms" }}
max_field_bytes = "64KiB"
metadata = {{ id = "_id" }}

[[flow]]
name = "badp"
streams = ["{pstream}"]
group = "g"
sink = {{ type = "clickhouse", table = "{ptable}" }}
dead_letter = "{pstream}:dead"
batch = {{ max_rows = 20, max_wait = "100ms" }}
payload = {{ field = "payload", format = "json" }}
metadata = {{ id = "_id" }}"#
    );
    let mut w = Worker::spawn(&s.config(&s.ch.url(), "bad", &stream, &table, &extra));
    for (_, fields, _) in &cases {
        let f: Vec<(&[u8], &[u8])> = fields
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        xadd_raw(&s.rc, &stream, &f).await;
    }
    for (id, payload, _) in &pcases {
        let id = id.to_string();
        xadd_raw(
            &s.rc,
            &pstream,
            &[(b"id", id.as_bytes()), (b"payload", payload)],
        )
        .await;
    }
    // After all of that, a healthy message still goes through.
    xadd_raw(&s.rc, &stream, &[(b"id", b"999"), (b"u8", b"7")]).await;
    cases.push((999, Vec::new(), Expect::Row("u8 = 7")));
    pcases.push((999, Vec::new(), Expect::Row("s = ''")));
    xadd_raw(&s.rc, &pstream, &[(b"id", b"999")]).await;

    for (stream, table, expected) in [
        (
            &stream,
            &table,
            cases.iter().map(|(id, _, e)| (*id, e)).collect::<Vec<_>>(),
        ),
        (
            &pstream,
            &ptable,
            pcases.iter().map(|(id, _, e)| (*id, e)).collect::<Vec<_>>(),
        ),
    ] {
        let rows = expected
            .iter()
            .filter(|(_, e)| matches!(e, Expect::Row(_)))
            .count() as u64;
        let dead = expected.len() as u64 - rows;
        let dead_stream = format!("{stream}:dead");
        wait_for(LONG, "every message accounted for", || async {
            s.ch.count(table).await == rows && xlen(&s.rc, &dead_stream).await == dead
        })
        .await;
        wait_for(LONG, "nothing pending", || async {
            pending(&s.rc, stream, "g").await == 0
        })
        .await;
        let dead_letters: BTreeMap<u32, Vec<(String, String)>> = entries(&s.rc, &dead_stream)
            .await
            .into_iter()
            .map(|(_, f)| {
                (
                    field(&f, "id")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(u32::MAX),
                    f,
                )
            })
            .collect();
        for (id, expect) in expected {
            match expect {
                Expect::Row(check) => {
                    let ok =
                        s.ch.query_tsv(&format!("SELECT {check} FROM {table} WHERE id = {id}"))
                            .await;
                    assert_eq!(
                        ok.trim(),
                        "1",
                        "message {id}: `{check}` on its row; dead letter: {:?}",
                        dead_letters.get(&id).map(|f| field(f, "sluice.reason"))
                    );
                }
                Expect::Dead(words) => {
                    let f = dead_letters
                        .get(&id)
                        .unwrap_or_else(|| panic!("no dead letter for message {id}"));
                    let reason = field(f, "sluice.reason").unwrap_or_default();
                    for w in *words {
                        assert!(
                            reason.contains(w),
                            "message {id}: reason {reason:?} lacks {w:?}"
                        );
                    }
                    assert_eq!(field(f, "sluice.stream"), Some(stream.as_str()));
                }
            }
        }
        // The dead letter keeps every original field (message 61: 5002 of them).
        if let Some(f) = dead_letters.get(&61) {
            assert_eq!(f.len(), 5 + 5002, "fields of dead letter 61");
        }
    }
    assert!(w.is_running(), "{}", w.log_contents());
}

/// A TOML basic string holding `s` (escapes control characters).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Table, column, stream, group and field names built to break out of
/// quoting: nothing is injected into ClickHouse SQL or Redis commands, and
/// the data lands byte for byte.
#[tokio::test]
async fn hostile_names_in_config_and_messages_inject_nothing() {
    let s = Stack::start().await;
    // Victims an injection would hit.
    s.ch.exec("CREATE TABLE victim (x UInt8) ENGINE = TinyLog")
        .await;
    s.ch.exec("INSERT INTO victim VALUES (1)").await;
    raw(&s.rc, "SET", vec!["canary".into(), "alive".into()]).await;

    let table = "we`ird\\; DROP TABLE victim; --";
    let quoted = sluice::testing::quote_identifier(table);
    s.ch.exec(&format!(
        "CREATE TABLE {quoted} (id UInt32, `col'; DROP TABLE victim; --` String, `sp ace` String, \
         `ünï\"` String, `a\\`b` String, _id String) ENGINE = MergeTree ORDER BY id"
    ))
    .await;
    let stream = format!(
        "{} str\"eam\r\n*1\r\n$8\r\nFLUSHALL\r\n{{x}}",
        unique_name("hostile")
    );
    let dead = format!("{stream}:dead\r\nDEL canary");
    let group = "gr oup\r\nFLUSHALL";
    let config = format!(
        r#"[redis]
url = "{}"
[clickhouse]
url = "{}"
[worker]
block = "200ms"
[[flow]]
name = "hostile ; DROP"
streams = [{}]
group = {}
dead_letter = {}
sink = {{ type = "clickhouse", table = {} }}
batch = {{ max_rows = 10, max_wait = "100ms" }}
metadata = {{ id = "_id" }}
"#,
        s.redis.url(),
        s.ch.url(),
        toml_str(&stream),
        toml_str(group),
        toml_str(&dead),
        toml_str(table),
    );
    let mut w = Worker::spawn(&config);
    xadd_raw(
        &s.rc,
        &stream,
        &[
            (b"id", b"1"),
            (
                b"col'; DROP TABLE victim; --",
                b"v1'); DROP TABLE victim; --",
            ),
            (b"sp ace", b"v2"),
            ("ünï\"".as_bytes(), b"v3"),
            (b"a`b", b"v4"),
            (b"\r\nFLUSHALL\r\n", b"\r\nDEL canary\r\n"),
        ],
    )
    .await;
    xadd_raw(
        &s.rc,
        &stream,
        &[(b"id", b"not a number; DROP TABLE victim")],
    )
    .await;
    wait_for(LONG, "row and dead letter", || async {
        s.ch.count(&quoted).await == 1 && xlen(&s.rc, &dead).await == 1
    })
    .await;
    wait_for(LONG, "nothing pending", || async {
        pending(&s.rc, &stream, group).await == 0
    })
    .await;
    let row = s
        .ch
        .query_tsv(&format!(
            "SELECT `col'; DROP TABLE victim; --`, `sp ace`, `ünï\"`, `a\\`b` FROM {quoted} FORMAT TSV"
        ))
        .await;
    assert_eq!(row, "v1\\'); DROP TABLE victim; --\tv2\tv3\tv4\n");
    let letters = entries(&s.rc, &dead).await;
    let reason = field(&letters[0].1, "sluice.reason").unwrap_or_default();
    assert!(reason.contains("`id`"), "{reason}");
    assert_eq!(field(&letters[0].1, "sluice.group"), Some(group));
    // The victims are untouched.
    assert_eq!(s.ch.count("victim").await, 1);
    let canary = raw(&s.rc, "GET", vec!["canary".into()]).await;
    assert_eq!(canary.as_string().as_deref(), Some("alive"));
    assert!(w.is_running(), "{}", w.log_contents());
    w.term();
    assert!(w.wait_exit(LONG).await.expect("exit").success());

    // A hostile table name that does not exist: a clear error at start-up
    // and in `sluice check`, naming it; still nothing dropped.
    let missing = "nope`; DROP TABLE victim; --";
    let config = config.replace(&toml_str(table), &toml_str(missing));
    let mut w = Worker::spawn(&config);
    let status = w.wait_exit(LONG).await.expect("worker exits");
    assert!(!status.success());
    assert!(
        w.log_contents().contains("nope`; DROP TABLE victim; --"),
        "{}",
        w.log_contents()
    );
    let check_file = w.dir().join("check.toml");
    std::fs::write(&check_file, &config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&check_file)
        .env_remove("SLUICE_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success() && text.contains(missing), "{text}");
    assert_eq!(s.ch.count("victim").await, 1);
}

/// One HTTP/1.1 exchange over a fresh connection: (status, body). `body`
/// goes out with Content-Length, or in `chunk`-sized chunks without it.
async fn http(
    port: u16,
    path: &str,
    token: &str,
    body: &[u8],
    chunk: Option<usize>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the HTTP entry");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nConnection: close\r\n"
    )
    .into_bytes();
    match chunk {
        None => {
            req.extend(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            req.extend(body);
        }
        Some(n) => {
            req.extend(b"Transfer-Encoding: chunked\r\n\r\n");
            for c in body.chunks(n) {
                req.extend(format!("{:x}\r\n", c.len()).as_bytes());
                req.extend(c);
                req.extend(b"\r\n");
            }
            req.extend(b"0\r\n\r\n");
        }
    }
    // The server may answer (413) and close before reading everything.
    let _ = conn.write_all(&req).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(LONG, conn.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// The HTTP entry's part of the matrix beyond `http_entry.rs`: odd stream
/// names, bodies that are not UTF-8, nested past any sane depth, chunked
/// past the limit, numbers that do not fit; then valid requests still flow
/// into ClickHouse through a flow, nothing lost, the worker running.
#[tokio::test]
async fn http_entry_odd_input_is_refused_and_the_rest_lands() {
    let s = Stack::start().await;
    let prefix = unique_name("odd");
    let (stream, table) = (format!("{prefix}_main"), unique_name("odd"));
    s.ch.exec(&format!(
        "CREATE TABLE {table} (n UInt32, s String, _id String) ENGINE = MergeTree ORDER BY n"
    ))
    .await;
    let port = crate::harness::free_port();
    let token = "tok-bad-input-0123456789abcdef";
    let http_section = format!(
        r#"
[http]
listen = "127.0.0.1:{port}"
body_limit = "64KiB"
max_items = 100
[[http.tokens]]
token = "{token}"
streams = ["{prefix}*"]
"#
    );
    let config = s.config(
        &s.ch.url(),
        "odd",
        &stream,
        &table,
        "batch = { max_rows = 100, max_wait = \"100ms\" }\nmetadata = { id = \"_id\" }",
    ) + &http_section;
    let mut w = Worker::spawn(&config);
    wait_for(LONG, "HTTP entry listening", || async {
        crate::harness::port_open(port).await
    })
    .await;
    let path = format!("/v1/streams/{stream}/messages");
    let deep = format!(
        "[{{\"a\":{}1{}}}]",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let over = format!("[{{\"s\":\"{}\"}}]", "x".repeat(70 << 10));
    let cases: Vec<HttpCase> = vec![
        // Odd stream names.
        (
            format!("/v1/streams/{prefix}%0Aname/messages"),
            b"[{\"n\":1}]".to_vec(),
            None,
            400,
            "control character",
        ),
        (
            format!("/v1/streams/{prefix}{}/messages", "x".repeat(600)),
            b"[{\"n\":1}]".to_vec(),
            None,
            400,
            "longer than 512",
        ),
        (
            format!("/v1/streams/{prefix}%FF%FE/messages"),
            b"[{\"n\":1}]".to_vec(),
            None,
            400,
            "",
        ),
        (
            "/v1/streams/other%2F..%2F/messages".to_string(),
            b"[{\"n\":1}]".to_vec(),
            None,
            403,
            "may not use stream",
        ),
        // Bodies.
        (
            path.clone(),
            b"[{\"s\":\"\xff\xfe\"}]".to_vec(),
            None,
            400,
            "not valid JSON",
        ),
        (path.clone(), deep.into_bytes(), None, 413, "body_limit"),
        (
            path.clone(),
            format!("[{}]", "[".repeat(10_000)).into_bytes(),
            None,
            400,
            "not valid JSON",
        ),
        (
            path.clone(),
            over.clone().into_bytes(),
            Some(4096),
            413,
            "body_limit",
        ),
        // Valid JSON (no range limit in the grammar): kept as sent, digits
        // and all; a column that cannot hold it dead-letters the row.
        (path.clone(), b"[{\"n\": 1e400}]".to_vec(), None, 200, "ids"),
        (path.clone(), b"[{\"n\":1,\"n\":2}]".to_vec(), None, 200, ""),
        (path.clone(), b"".to_vec(), None, 400, "not valid JSON"),
        (path.clone(), b"[]".to_vec(), None, 200, ""),
    ];
    for (path, body, chunk, status, words) in &cases {
        let (got, text) = http(port, path, token, body, *chunk).await;
        assert_eq!(got, *status, "{}: {text}", &path[..path.len().min(80)]);
        assert!(text.contains(words), "{path}: {text:?} lacks {words:?}");
    }
    // An odd but valid name: spaces, unicode, `..`, `*` are just key bytes.
    let odd = format!("{prefix} späce/../*");
    let (got, text) = http(
        port,
        &format!("/v1/streams/{prefix}%20sp%C3%A4ce%2F..%2F%2A/messages"),
        token,
        b"[{\"n\":5}]",
        None,
    )
    .await;
    assert_eq!(got, 200, "{text}");
    assert_eq!(xlen(&s.rc, &odd).await, 1);

    // Valid traffic after all that lands whole (one message above too: the
    // duplicate-key item, whose last value wins or first, but one entry).
    let items: Vec<String> = (10..60)
        .map(|i| format!("{{\"n\":{i},\"s\":\"v{i}\"}}"))
        .collect();
    let (got, text) = http(
        port,
        &path,
        token,
        format!("[{}]", items.join(",")).as_bytes(),
        None,
    )
    .await;
    assert_eq!(got, 200, "{text}");
    wait_for(LONG, "51 rows", || async { s.ch.count(&table).await == 51 }).await;
    wait_for(LONG, "nothing pending", || async {
        pending(&s.rc, &stream, "g").await == 0
    })
    .await;
    // 51 rows plus `1e400`, which a UInt32 column cannot hold: dead-lettered.
    assert_eq!(xlen(&s.rc, &stream).await, 52);
    assert_eq!(xlen(&s.rc, &format!("{stream}:dead")).await, 1);
    assert!(w.is_running(), "{}", w.log_contents());
}
