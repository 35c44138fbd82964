# shellcheck shell=bash
# Shared helpers for scripts/*.sh: installing Debian packages on demand and
# running private Redis / ClickHouse servers on loopback without systemd.
# Source it; it defines functions only.

# apt_install PKG... : apt-get update (once per script run) and install.
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "need root to install: $*  (run: sudo apt-get install -y $*)" >&2
        return 1
    fi
    if [[ -z ${_SLUICE_APT_UPDATED:-} ]]; then
        echo "==> apt-get update"
        apt-get update -qq
        _SLUICE_APT_UPDATED=1
    fi
    echo "==> apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# ensure_packages: install what the tests and the demo need, if missing.
ensure_clickhouse_installed() {
    if [[ ! -x /usr/sbin/clickhouse-server ]] || ! command -v clickhouse-client >/dev/null; then
        apt_install clickhouse-server clickhouse-client
    fi
}

ensure_redis_installed() {
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        apt_install redis-server redis-tools
    fi
}

# wait_until SECONDS DESCRIPTION CMD... : poll CMD every 0.1 s until it succeeds.
wait_until() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "timed out after ${secs}s waiting for ${what}" >&2
            return 1
        fi
        sleep 0.1
    done
}

# url_host_port URL : prints "HOST PORT" of http://HOST:PORT or redis://HOST:PORT[/db].
url_host_port() {
    local rest=${1#*://}
    rest=${rest#*@}
    rest=${rest%%/*}
    local host=${rest%:*} port=${rest##*:}
    [[ $host == "$rest" ]] && port=""
    echo "$host ${port}"
}

redis_ping() { # HOST PORT
    [[ $(redis-cli -h "$1" -p "$2" ping 2>/dev/null) == PONG ]]
}

clickhouse_ping() { # URL
    [[ $(curl -fsS --max-time 2 "$1/ping" 2>/dev/null) == "Ok." ]]
}

# start_redis PORT DIR : a redis-server on 127.0.0.1:PORT, daemonized, no persistence.
start_redis() {
    local port=$1 dir=$2
    mkdir -p "$dir"
    echo "==> starting redis-server on 127.0.0.1:$port (log $dir/redis.log)"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" \
        --appendonly no --dir "$dir" --logfile "$dir/redis.log" \
        --pidfile "$dir/redis.pid"
    wait_until 20 "redis-server on port $port" redis_ping 127.0.0.1 "$port"
}

# write_clickhouse_config DIR HTTP_PORT TCP_PORT : config.xml + users.xml for a
# private server listening on 127.0.0.1 only, data under DIR, timezone UTC.
write_clickhouse_config() {
    local dir=$1 http=$2 tcp=$3
    mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas"
    dir=$(cd "$dir" && pwd)
    cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>$dir/server.log</log>
        <errorlog>$dir/err.log</errorlog>
        <size>100M</size>
        <count>2</count>
        <console>0</console>
    </logger>
    <http_port>$http</http_port>
    <tcp_port>$tcp</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>4096</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>$dir/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
</yandex>
XML
    cat >"$dir/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>10000000000</max_memory_usage>
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
XML
}

# start_clickhouse DIR HTTP_PORT TCP_PORT : a private clickhouse-server in the
# background (pid in DIR/clickhouse.pid, output in DIR/stdout.log); waits for /ping.
start_clickhouse() {
    local dir=$1 http=$2 tcp=$3
    write_clickhouse_config "$dir" "$http" "$tcp"
    dir=$(cd "$dir" && pwd)
    echo "==> starting clickhouse-server on 127.0.0.1:$http (http) / :$tcp (native), data in $dir"
    (cd "$dir" && exec nohup /usr/sbin/clickhouse-server --config-file="$dir/config.xml" \
        >"$dir/stdout.log" 2>&1 </dev/null) &
    echo $! >"$dir/clickhouse.pid"
    if ! wait_until 60 "clickhouse-server /ping on port $http" clickhouse_ping "http://127.0.0.1:$http"; then
        tail -n 30 "$dir/err.log" "$dir/stdout.log" >&2 || true
        return 1
    fi
}

# stop_pidfile FILE [MATCH] : SIGTERM the process in FILE (only if its command
# line contains MATCH, when given) and wait up to 30 s, then SIGKILL.
stop_pidfile() {
    local file=$1 match=${2:-} pid
    [[ -f $file ]] || return 0
    pid=$(cat "$file")
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null &&
        { [[ -z $match ]] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$match"; }; then
        kill -TERM "$pid"
        local deadline=$((SECONDS + 30))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    fi
    rm -f "$file"
}
