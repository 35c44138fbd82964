#!/usr/bin/env bash
# The README's first command: 100,000 jobs through 3 sluice replicas into ClickHouse.
#
#   bash scripts/demo.sh          run the demo (re-runnable; starts clean each time)
#   bash scripts/demo.sh stop     stop the Redis/ClickHouse servers this script started
#
# Uses Redis at $SLUICE_DEMO_REDIS_URL (default redis://127.0.0.1:6379) and
# ClickHouse HTTP at $SLUICE_DEMO_CLICKHOUSE_URL (default http://127.0.0.1:8123).
# If one is not answering and its URL is on loopback, the script installs the
# Debian package when missing (apt-get, as root) and starts a private server
# on that port with its data under target/demo/ (no systemd needed).
#
# Other knobs: SLUICE_DEMO_JOBS (100000), SLUICE_DEMO_REPLICAS (3),
# SLUICE_DEMO_TIMEOUT seconds to wait for the rows (300), SLUICE_DEMO_BIN (a
# prebuilt sluice binary; default: cargo build --release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/servers.sh
source scripts/servers.sh

REDIS_URL=${SLUICE_DEMO_REDIS_URL:-redis://127.0.0.1:6379}
CH_URL=${SLUICE_DEMO_CLICKHOUSE_URL:-http://127.0.0.1:8123}
CH_URL=${CH_URL%/}
JOBS=${SLUICE_DEMO_JOBS:-100000}
REPLICAS=${SLUICE_DEMO_REPLICAS:-3}
TIMEOUT=${SLUICE_DEMO_TIMEOUT:-300}
DEMO_DIR=target/demo
STREAM=sluice:demo:events
DEAD=sluice:demo:events:dead
GROUP=sluice
TABLE=sluice_demo.events

mkdir -p "$DEMO_DIR"
DEMO_DIR=$(cd "$DEMO_DIR" && pwd)

die() {
    echo "demo: $*" >&2
    exit 1
}

is_loopback() {
    [[ $1 == 127.* || $1 == localhost || $1 == "[::1]" || $1 == ::1 ]]
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

ch() { # SQL -> ClickHouse over HTTP; prints the result, fails with the server's message.
    curl -sS --fail-with-body --max-time 120 "$CH_URL/" --data-binary "$1"
}

rcli() {
    redis-cli -u "$REDIS_URL" "$@"
}

redis_ping_url() {
    [[ $(rcli ping 2>/dev/null) == PONG ]]
}

stop_demo_clickhouse() {
    stop_pidfile "$DEMO_DIR/clickhouse/clickhouse.pid" "$DEMO_DIR/clickhouse/config.xml"
}
stop_demo_redis() {
    stop_pidfile "$DEMO_DIR/redis/redis.pid" redis-server
}

if [[ ${1:-} == stop ]]; then
    stop_demo_clickhouse
    stop_demo_redis
    echo "demo servers stopped"
    exit 0
fi

# --- tools -------------------------------------------------------------------
command -v curl >/dev/null || apt_install curl
command -v redis-cli >/dev/null || ensure_redis_installed

# --- Redis -------------------------------------------------------------------
started=()
if redis_ping_url; then
    echo "==> using Redis at $REDIS_URL"
else
    read -r rhost rport < <(url_host_port "$REDIS_URL")
    is_loopback "$rhost" || die "Redis at $REDIS_URL does not answer PING"
    ensure_redis_installed
    if redis_ping_url; then # the package's own service may have started it
        echo "==> using Redis at $REDIS_URL"
    else
        stop_demo_redis # one this script started earlier on another port
        start_redis "${rport:-6379}" "$DEMO_DIR/redis"
        started+=("redis-server on 127.0.0.1:${rport:-6379}")
    fi
fi

# --- ClickHouse --------------------------------------------------------------
if clickhouse_ping "$CH_URL"; then
    echo "==> using ClickHouse at $CH_URL"
else
    read -r chost cport < <(url_host_port "$CH_URL")
    is_loopback "$chost" || die "ClickHouse at $CH_URL does not answer /ping"
    ensure_clickhouse_installed
    if clickhouse_ping "$CH_URL"; then
        echo "==> using ClickHouse at $CH_URL"
    else
        stop_demo_clickhouse # one this script started earlier on another port (same data dir)
        cport=${cport:-8123}
        tcp=${SLUICE_DEMO_CLICKHOUSE_TCP_PORT:-9000}
        while port_in_use "$tcp" || [[ $tcp == "$cport" ]]; do tcp=$((tcp + 1)); done
        start_clickhouse "$DEMO_DIR/clickhouse" "$cport" "$tcp"
        started+=("clickhouse-server on 127.0.0.1:$cport")
    fi
fi
echo "    ClickHouse $(ch 'SELECT version()')"

# --- build -------------------------------------------------------------------
if [[ -n ${SLUICE_DEMO_BIN:-} ]]; then
    BIN=$SLUICE_DEMO_BIN
else
    echo "==> cargo build --release"
    cargo build --release
    BIN=${CARGO_TARGET_DIR:-target}/release/sluice
fi
[[ -x $BIN ]] || die "no sluice binary at $BIN"

# --- stop replicas left by an interrupted earlier run ------------------------
if [[ -f $DEMO_DIR/replicas.pid ]]; then
    while read -r pid; do
        if [[ -n $pid ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "run --config $DEMO_DIR/sluice.toml"; then
            echo "==> stopping replica $pid left by an earlier run"
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done <"$DEMO_DIR/replicas.pid"
    rm -f "$DEMO_DIR/replicas.pid"
fi

# --- clean slate: table, streams, group ----------------------------------------
echo "==> creating $TABLE (dropping the old one) and clearing $STREAM"
ch "CREATE DATABASE IF NOT EXISTS sluice_demo"
ch "DROP TABLE IF EXISTS $TABLE"
ch "CREATE TABLE $TABLE (
        rec_id UInt64,
        task_for String,
        function_type String,
        data String,
        _id String,
        _stream String,
        _enqueued DateTime
    ) ENGINE = MergeTree ORDER BY rec_id"
rcli DEL "$STREAM" "$DEAD" >/dev/null
# The group reads from the start of the stream, whichever replica comes first.
rcli XGROUP CREATE "$STREAM" "$GROUP" 0 MKSTREAM >/dev/null

cat >"$DEMO_DIR/sluice.toml" <<TOML
[redis]
url = "$REDIS_URL"

[clickhouse]
url = "$CH_URL"
database = "sluice_demo"

[[flow]]
name = "events"
streams = ["$STREAM"]
group = "$GROUP"
sink = { type = "clickhouse", table = "events" }
batch = { max_rows = 20000, max_bytes = "16MiB", max_wait = "200ms" }
metadata = { id = "_id", stream = "_stream", enqueued_at = "_enqueued" }
dead_letter = "$DEAD"
TOML
echo "==> config: $DEMO_DIR/sluice.toml"
"$BIN" check --config "$DEMO_DIR/sluice.toml" || die "sluice check rejected the config"

# --- replicas ----------------------------------------------------------------
pids=()
stop_replicas() {
    local pid deadline
    ((${#pids[@]})) || return 0
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + 60))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "    replica $pid ignored SIGTERM for 60 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    pids=()
    rm -f "$DEMO_DIR/replicas.pid"
}
trap stop_replicas EXIT
echo "==> starting $REPLICAS replicas: $BIN run --config $DEMO_DIR/sluice.toml"
: >"$DEMO_DIR/replicas.pid"
for i in $(seq 1 "$REPLICAS"); do
    NO_COLOR=1 "$BIN" run --config "$DEMO_DIR/sluice.toml" >"$DEMO_DIR/worker-$i.log" 2>&1 &
    pids+=($!)
    echo "$!" >>"$DEMO_DIR/replicas.pid"
    echo "    replica $i: pid $!, log $DEMO_DIR/worker-$i.log"
done

# --- enqueue -----------------------------------------------------------------
# XADD sluice:demo:events * rec_id N task_for a|b|c function_type sum|avg data {"x":N}
# as raw RESP, so redis-cli --pipe sends it without any quoting issues.
resp_jobs() {
    awk -v n="$JOBS" -v stream="$STREAM" 'BEGIN {
        split("a b c", tf, " "); split("sum avg", ft, " ")
        hdr = sprintf("*11\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n", length(stream), stream)
        for (i = 1; i <= n; i++) {
            id = i ""; t = tf[i % 3 + 1]; f = ft[i % 2 + 1]; d = "{\"x\":" i "}"
            printf "%s$6\r\nrec_id\r\n$%d\r\n%s\r\n$8\r\ntask_for\r\n$1\r\n%s\r\n", hdr, length(id), id, t
            printf "$13\r\nfunction_type\r\n$3\r\n%s\r\n$4\r\ndata\r\n$%d\r\n%s\r\n", f, length(d), d
        }
    }'
}
now() { date +%s.%N; }
echo "==> enqueueing $JOBS jobs with redis-cli --pipe"
t0=$(now)
pipe_out=$(resp_jobs | rcli --pipe)
t1=$(now)
echo "$pipe_out" | tail -n 1 | sed 's/^/    /'
grep -q "errors: 0, replies: $JOBS" <<<"$pipe_out" || die "redis-cli --pipe reported errors"
awk -v a="$t0" -v b="$t1" -v n="$JOBS" 'BEGIN { printf "    enqueued in %.2f s (%.0f jobs/s)\n", b - a, n / (b - a) }'

# --- wait for the rows ---------------------------------------------------------
echo "==> waiting for $JOBS rows in $TABLE (timeout ${TIMEOUT}s)"
deadline=$((SECONDS + TIMEOUT))
last_print=0
while :; do
    rows=$(ch "SELECT count() FROM $TABLE" 2>/dev/null || echo 0)
    ((rows >= JOBS)) && break
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=$((alive + 1)); done
    if ((alive == 0)); then
        for i in $(seq 1 "$REPLICAS"); do
            echo "--- $DEMO_DIR/worker-$i.log (tail)" >&2
            tail -n 20 "$DEMO_DIR/worker-$i.log" >&2 || true
        done
        die "all replicas exited with $rows of $JOBS rows landed"
    fi
    if ((SECONDS >= deadline)); then
        die "timed out after ${TIMEOUT}s with $rows of $JOBS rows (logs: $DEMO_DIR/worker-*.log)"
    fi
    if ((SECONDS != last_print)); then
        last_print=$SECONDS
        echo "    $rows rows, $(rcli XLEN "$STREAM") in stream, $alive replicas up"
    fi
    sleep 0.1
done
t2=$(now)

echo
echo "==> done: $rows rows in $TABLE"
awk -v a="$t0" -v b="$t2" -v n="$rows" 'BEGIN {
    printf "    end to end (first XADD to last row visible): %.2f s, %.0f rows/s\n", b - a, n / (b - a) }'
echo "    distinct rec_id: $(ch "SELECT uniqExact(rec_id) FROM $TABLE")   distinct _id: $(ch "SELECT uniqExact(_id) FROM $TABLE")"
echo
echo "==> sample rows"
ch "SELECT * FROM $TABLE ORDER BY rec_id LIMIT 5 FORMAT PrettyCompactNoEscapes"
ch "SELECT task_for, function_type, count() AS rows FROM $TABLE GROUP BY task_for, function_type ORDER BY task_for, function_type FORMAT PrettyCompactNoEscapes"

echo "==> stopping the replicas (SIGTERM)"
stop_replicas
echo "    pending in group $GROUP: $(rcli XPENDING "$STREAM" "$GROUP" | head -n 1)   dead letters: $(rcli XLEN "$DEAD")"
echo "    worker logs: $DEMO_DIR/worker-*.log"
if ((${#started[@]})); then
    echo "    left running for you: $(printf '%s; ' "${started[@]}")stop them with: bash scripts/demo.sh stop"
fi
