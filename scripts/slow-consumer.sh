#!/usr/bin/env bash
# Slow-consumer benchmark (issue 7; not in CI). For each QoS: a fresh ringmq (2 workers, the
# default bounds given explicitly) for each of two phases of SECONDS, one after the other:
#   without: ringmq-bench pubsub, N publisher -> subscriber pairs at full rate;
#   with:    the same, while one more subscriber (scripts/robust/clients.py stalled), on
#            <prefix>/# so it gets every pair's messages, has stopped reading.
# Each phase has its own broker, so the counters in its log are that phase's alone.
# The broker's RSS and open fds are sampled every 0.2 s; at the end the broker is stopped and
# its per-worker counters (drops at each bound, closes by reason) are read from its log.
# Prints a Markdown table, and exits non-zero if a check fails: RSS grows from 10 s into the
# stall to its end by more than the bounds allow (outbuf_bytes_max + max_queued_bytes), the
# bounds' drops are not counted, or the bench saw QoS 1/2 losses between well-behaved clients.
#
#   scripts/slow-consumer.sh [SECONDS]        (default 60)
#
# Environment: SLOW_QOS="0 1 2" (the runs), SLOW_PAIRS=20, SLOW_OUT=dir (default
# target/slow-consumer/<UTC time>), SLOW_NO_BUILD=1 (use the release binaries as they are).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-60}
qos_list=${SLOW_QOS:-"0 1 2"}
pairs=${SLOW_PAIRS:-20}
out=${SLOW_OUT:-$ROOT/target/slow-consumer/$(date -u +%Y%m%dT%H%M%SZ)}
clients="python3 $ROOT/scripts/robust/clients.py"
mkdir -p "$out"

# The bounds that apply to the stalled subscriber: its output buffer, its session queue, and
# how long it may sit at the queue bound without acknowledging anything.
outbuf_bytes_max=4194304
max_queued_messages=1000
max_queued_bytes=16777216
slow_consumer_timeout_secs=30

log() { printf '==> slow-consumer: %s\n' "$*" >&2; }

if [ "${SLOW_NO_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release --bins -p ringmq -p ringmq-bench)
fi
target_dir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
RINGMQ=$target_dir/release/ringmq
BENCH=$target_dir/release/ringmq-bench

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pids=()
cleanup() { # every process this script started, by pid
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

bench() { # bench PORT QOS NAME
    local window=()
    if [ "$2" != 0 ]; then window=(--window 64); fi
    "$BENCH" pubsub --port "$1" --pattern pairs -n "$pairs" --qos "$2" --rate 0 "${window[@]}" \
        --e2e-window 256 --payload-bytes 64 --duration "$seconds" --drain 3 \
        --client-id-prefix "bench-$3" --json --quiet >"$out/$3.json" 2>"$out/$3.txt"
}

run_phase() { # run_phase QOS PHASE: a fresh broker, the bench, with or without the stalled one
    local qos=$1 phase=$2 port broker sampler stalled=""
    port=$(free_port)
    RUST_LOG="info,ringmq::runtime::output=debug" "$RINGMQ" --bind 127.0.0.1 --port "$port" \
        --workers 2 --sys-interval 1 --outbuf-bytes-max "$outbuf_bytes_max" \
        --max-queued-messages "$max_queued_messages" --max-queued-bytes "$max_queued_bytes" \
        --slow-consumer-timeout-secs "$slow_consumer_timeout_secs" \
        2>"$out/broker-$phase-q$qos.log" &
    broker=$!
    pids+=("$broker")
    $clients wait-ready "$port"
    echo "$phase" >"$out/phase"
    $clients sample "$broker" "$out/rss-$phase-q$qos.txt" "$out/phase" 0.2 &
    sampler=$!
    pids+=("$sampler")
    if [ "$phase" = with ]; then
        $clients stalled "$port" "$qos" "ringmq-bench/#" "stalled-q$qos" >"$out/stalled-q$qos.txt" &
        stalled=$!
        pids+=("$stalled")
        sleep 1
    fi
    log "QoS $qos, $phase the slow consumer: ${seconds}s of $pairs pairs at full rate (ringmq on port $port)"
    bench "$port" "$qos" "$phase-q$qos"
    if [ -n "$stalled" ]; then kill "$stalled" 2>/dev/null || true; fi
    sleep 1
    kill -TERM "$broker"
    wait "$broker" || true
    wait "$sampler" 2>/dev/null || true
}

run_qos() { # run_qos QOS: both phases, each on a fresh broker so its counters are its own
    run_phase "$1" without
    run_phase "$1" with
}

for qos in $qos_list; do run_qos "$qos"; done

python3 - "$out" "$seconds" "$pairs" "$qos_list" "$outbuf_bytes_max" "$max_queued_bytes" \
    "$max_queued_messages" "$slow_consumer_timeout_secs" <<'PY'
import json, re, sys
from datetime import datetime
out, seconds, pairs, qos_list = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
outbuf, queued_bytes, queued_messages, timeout = map(int, sys.argv[5:9])
failures = []

def counter(log, name):
    stopped = [l for l in log.splitlines() if "worker stopped" in l]
    total = 0
    for line in stopped:
        m = re.search(r"\b" + name + r": (\d+)", line)
        total += int(m.group(1)) if m else 0
    return total

def rss(qos):
    peak, series = {}, {}
    for phase in ("without", "with"):
        for line in open(f"{out}/rss-{phase}-q{qos}.txt"):
            t, _, kib, fds = line.split()
            peak[phase] = max(peak.get(phase, 0), int(kib))
            series.setdefault(phase, []).append((float(t), int(kib)))
    return peak, series

print(f"Phases of {seconds} s, {pairs} pairs at full rate (`--e2e-window 256`), 64 B payloads, "
      f"2 workers; bounds: outbuf_bytes_max {outbuf}, max_queued_messages {queued_messages}, "
      f"max_queued_bytes {queued_bytes}, slow_consumer_timeout_secs {timeout}.\n")
print("| QoS | slow consumer | delivered msg/s | p50 µs | p99 µs | lost | broker peak RSS MiB | RSS at 10 s / end of phase MiB |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
notes = []
for qos in qos_list:
    peak, series = rss(qos)
    for phase in ("without", "with"):
        report = json.load(open(f"{out}/{phase}-q{qos}.json"))
        m, lat = report["messages"], report["latency"] or {}
        points = series.get(phase, [])
        start = points[0][0] if points else 0
        at10 = next((kib for t, kib in points if t - start >= 10), 0)
        end = points[-1][1] if points else 0
        print(f"| {qos} | {phase} | {m['delivery_rate_per_sec']:.0f} | {lat.get('p50_us', 0):.0f} | "
              f"{lat.get('p99_us', 0):.0f} | {m['lost']} | {peak.get(phase, 0) / 1024:.1f} | "
              f"{at10 / 1024:.1f} / {end / 1024:.1f} |")
        if m["lost"] and qos != "0":
            failures.append(f"QoS {qos} {phase}: {m['lost']} lost between well-behaved clients")
        if report["connections"]["ready"] != report["connections"]["planned"]:
            failures.append(f"QoS {qos} {phase}: not every connection came up")
    # Each phase has its own broker, whose peak depends on how many receive buffers the load
    # happened to touch; what the bounds promise is that the stalled subscriber's share stops
    # growing once they are reached: RSS from 10 s into the phase to its end.
    points = series.get("with", [])
    start = points[0][0] if points else 0
    settled = [kib for t, kib in points if t - start >= 10]
    growth = (max(settled) - settled[0]) if settled else 0
    bound = (outbuf + queued_bytes) // 1024
    if growth > bound:
        failures.append(f"QoS {qos}: RSS grew {growth} KiB after 10 s of the stall, over the {bound} KiB its bounds allow")
    log = open(f"{out}/broker-with-q{qos}.log").read()
    baseline = open(f"{out}/broker-without-q{qos}.log").read()
    closes = [l for l in log.splitlines() if "closing" in l and "slow" in l.lower()]
    stalled = open(f"{out}/stalled-q{qos}.txt").read().split()
    subscribed_at = float(stalled[0]) if stalled else None
    close_after = ""
    if closes and subscribed_at:
        stamp = closes[0].split()[0]
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        close_after = f", closed as a slow consumer {when - subscribed_at:.1f} s after it stopped reading"
    dropped0 = counter(log, "qos0_dropped_outbuf")
    dropped = counter(log, "messages_dropped_queue_full")
    slow_closes = counter(log, "slow_consumer")
    notes.append(f"- QoS {qos}: without the slow consumer `qos0_dropped_outbuf` "
                 f"{counter(baseline, 'qos0_dropped_outbuf')}, `messages_dropped_queue_full` "
                 f"{counter(baseline, 'messages_dropped_queue_full')}; with it: `qos0_dropped_outbuf` {dropped0}, "
                 f"`messages_dropped_queue_full` {dropped}, `closes.slow_consumer` {slow_closes}"
                 f"{close_after}; RSS growth from 10 s into the stall to its end {growth / 1024:.1f} MiB "
                 f"(bound {bound / 1024:.0f} MiB)")
    if qos == "0" and dropped0 == 0:
        failures.append("QoS 0: no drop counted at outbuf_bytes_max")
    if qos != "0" and (dropped == 0 or slow_closes == 0):
        failures.append(f"QoS {qos}: the queue bound's drops ({dropped}) or the slow-consumer close ({slow_closes}) not counted")
print()
print("\n".join(notes))
if failures:
    print("\nFAILED:\n" + "\n".join(failures))
    sys.exit(1)
PY
log "output in $out"
