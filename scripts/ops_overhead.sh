#!/usr/bin/env bash
# Does the HTTP side slow the workers? A/B on one release broker (2 workers, HTTP listener on):
# QoS 1 pairs at a fixed rate with ringmq-bench, alone and while a client requests /metrics,
# /api/v1/clients, /api/v1/subscriptions and /api/v1/stats back to back as fast as they are
# answered; RUNS interleaved runs of each. Prints each run's latency and the request rates.
#
# usage: scripts/ops_overhead.sh [RUNS]   (builds the release binaries first)
#   BENCH=path  a ringmq-bench binary to use instead of building one
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${1:-3}
cargo build --release --bin ringmq >&2
if [ -z "${BENCH:-}" ]; then
    cargo build --release -p ringmq-bench >&2
    BENCH=target/release/ringmq-bench
fi
BIN=target/release/ringmq
MQTT=18931
HTTP=18932
TOKEN=overhead-token-0123456789
SCRAPER=$(mktemp)
trap 'rm -f "$SCRAPER"; [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null || true' EXIT
cat >"$SCRAPER" <<'PY'
import sys, time, http.client
port, token, duration = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
paths = ["/metrics", "/api/v1/clients?limit=1000", "/api/v1/subscriptions?limit=1000", "/api/v1/stats"]
answered, end, i = 0, time.time() + duration, 0
while time.time() < end:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", paths[i % len(paths)], headers={"Authorization": "Bearer " + token})
    response = connection.getresponse(); response.read(); connection.close()
    answered += response.status == 200; i += 1
print(f"  HTTP requests answered: {answered / duration:.0f}/s")
PY
"$BIN" --bind 127.0.0.1 -p "$MQTT" --workers 2 --http-port "$HTTP" --admin-token "$TOKEN" \
    --log-level warn &
PID=$!
sleep 1
summary='import json, sys
d = json.load(sys.stdin)["latency"]
print("  p50 %.0f us  p99 %.0f us  p99.9 %.0f us  max %.0f us" % (d["p50_us"], d["p99_us"], d["p999_us"], d["max_us"]))'
for run in $(seq "$RUNS"); do
    for mode in alone scraped; do
        echo "run $run, $mode:"
        scraper=
        if [ "$mode" = scraped ]; then
            python3 "$SCRAPER" "$HTTP" "$TOKEN" 6 &
            scraper=$!
            sleep 0.5
        fi
        "$BENCH" pubsub --port "$MQTT" --pattern pairs -n 50 --qos 1 --rate 20000 --duration 5 \
            --quiet --json 2>/dev/null | python3 -c "$summary"
        if [ -n "$scraper" ]; then wait "$scraper"; fi
    done
done
