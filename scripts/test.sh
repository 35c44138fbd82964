#!/usr/bin/env bash
# THE test command: everything CI runs (.ci/run calls exactly this).
# The integration tests start their own redis-server and clickhouse-server on
# free loopback ports, so no server needs to be running; this script only
# installs the server packages when they are missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/servers.sh
source scripts/servers.sh

missing=()
if [[ ! -x /usr/sbin/clickhouse-server ]] || ! command -v promtool >/dev/null; then
    missing+=(clickhouse-server clickhouse-client prometheus)
fi
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    missing+=(redis-server redis-tools)
fi
# The console's browser tests drive Debian's Chromium through chromedriver.
if [[ ! -x /usr/bin/chromium ]] || [[ ! -x /usr/bin/chromedriver ]]; then
    missing+=(chromium chromium-driver)
fi
if ((${#missing[@]})); then
    apt_install "${missing[@]}"
fi

echo "==> versions"
cargo --version
redis-server --version
/usr/sbin/clickhouse-server --version 2>/dev/null | head -n 1 || true
promtool --version 2>&1 | head -n 1
/usr/bin/chromium --version 2>/dev/null || true

if [[ -f ops/prometheus/prometheus.yml ]]; then
    echo "==> promtool check config ops/prometheus/prometheus.yml"
    promtool check config ops/prometheus/prometheus.yml
fi
if [[ -f ops/prometheus/alerts.yml ]]; then
    echo "==> promtool check rules ops/prometheus/alerts.yml"
    promtool check rules ops/prometheus/alerts.yml
fi

echo "==> cargo fmt --check"
cargo fmt --check

echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

# --no-fail-fast: a failing test binary does not hide the others' results.
echo "==> cargo test --all-targets --no-fail-fast"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --all-targets --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (libtest prints one per binary).
awk '/^test result: /{
        for (i = 1; i <= NF; i++) {
            if ($(i) ~ /^passed;?$/) p += $(i - 1)
            if ($(i) ~ /^failed;?$/) f += $(i - 1)
            if ($(i) ~ /^ignored;?$/) s += $(i - 1)
        }
        n++
     }
     END {
        if (n) printf "summary: %d passed, %d failed, %d skipped\n", p, f, s
        else print "cargo test printed no test results (did the build fail?)"
     }' "$log"
exit "$status"
