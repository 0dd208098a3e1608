#!/usr/bin/env bash
# Slow-consumer benchmark (issue 7; not in CI). For each QoS, REPS repetitions of the phases
# (default two) of SECONDS each, interleaved (odd repetitions in the listed order, even ones
# reversed: without, with; with, without; ...), each phase on a fresh ringmq (2 workers, the
# bounds given explicitly):
#   without: ringmq-bench pubsub, PAIRS publisher -> subscriber pairs at full rate;
#   with:    the same, while one more subscriber (scripts/robust/clients.py stalled) on
#            FILTER (default <prefix>/#: every pair's messages) has stopped reading;
#   reader:  the same, with that subscriber reading everything (the control that costs the
#            broker the same routing work and more output; QoS 0 only).
# The bench measures only its own pairs: "others". Each phase has its own broker, so the
# counters in its log are that phase's alone. The broker's RSS (split into the receive-buffer
# pools and the rest, see clients.py `sample`) and the load average are sampled through each
# phase; at its end the broker is stopped and its per-worker counters (drops at each bound,
# closes by reason) are read from its log.
#
# Prints a Markdown table of every phase and the medians per phase, and exits non-zero if a
# check fails: in a "with" phase, the broker's RSS outside the receive-buffer pools grows from
# 10 s into the stall to its end by more than the bounds allow (outbuf_bytes_max +
# max_queued_bytes); the bounds' drops are not counted; or the bench saw QoS 1/2 losses
# between well-behaved clients.
#
#   scripts/slow-consumer.sh [SECONDS]        (default 20)
#
# Environment: SLOW_QOS="0 1 2", SLOW_REPS=3, SLOW_PHASES="without with" (or with reader), SLOW_PAIRS=20, SLOW_FILTER (default
# "ringmq-bench/#"), SLOW_TIMEOUT_SECS (slow_consumer_timeout_secs, default 30),
# SLOW_OUT=dir (default target/slow-consumer/<UTC time>), SLOW_NO_BUILD=1 (use the release
# binaries as they are).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-20}
qos_list=${SLOW_QOS:-"0 1 2"}
reps=${SLOW_REPS:-3}
phases=${SLOW_PHASES:-"without with"}
pairs=${SLOW_PAIRS:-20}
filter=${SLOW_FILTER:-"ringmq-bench/#"}
out=${SLOW_OUT:-$ROOT/target/slow-consumer/$(date -u +%Y%m%dT%H%M%SZ)}
clients="python3 $ROOT/scripts/robust/clients.py"
mkdir -p "$out"

# The bounds that apply to the stalled subscriber: its output buffer, its session queue, and
# how long it may sit at the queue bound without acknowledging anything.
outbuf_bytes_max=4194304
max_queued_messages=1000
max_queued_bytes=16777216
slow_consumer_timeout_secs=${SLOW_TIMEOUT_SECS:-30}
recv_buffers=4096 # the default for 2 workers, given so the pools' size is known
buffer_kib=$((recv_buffers * 16))

log() { printf '==> slow-consumer: %s\n' "$*" >&2; }

# The reader answers nothing, so at QoS 1/2 it would stall at its inflight window.
case " $phases " in
*" reader "*) for qos in $qos_list; do
    if [ "$qos" != 0 ]; then log "the reader phase is for QoS 0 only"; exit 2; fi
done ;;
esac

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

run_phase() { # run_phase QOS PHASE REP: a fresh broker, the bench, with or without the stalled one
    local qos=$1 phase=$2 rep=$3 port broker sampler stalled="" name
    name="$phase-q$qos-r$rep"
    port=$(free_port)
    RUST_LOG="info,ringmq::runtime::output=debug" "$RINGMQ" --bind 127.0.0.1 --port "$port" \
        --workers 2 --sys-interval 1 --outbuf-bytes-max "$outbuf_bytes_max" \
        --max-queued-messages "$max_queued_messages" --max-queued-bytes "$max_queued_bytes" \
        --slow-consumer-timeout-secs "$slow_consumer_timeout_secs" \
        --recv-buffers "$recv_buffers" --recv-buffer-bytes 16384 \
        2>"$out/broker-$name.log" &
    broker=$!
    pids+=("$broker")
    $clients wait-ready "$port"
    echo "$phase" >"$out/phase"
    $clients sample "$broker" "$out/rss-$name.txt" "$out/phase" 0.5 "$buffer_kib" &
    sampler=$!
    pids+=("$sampler")
    if [ "$phase" = with ] || [ "$phase" = reader ]; then
        local role=stalled
        if [ "$phase" = reader ]; then role=reader; fi
        $clients "$role" "$port" "$qos" "$filter" "$role-q$qos" >"$out/stalled-$name.txt" &
        stalled=$!
        pids+=("$stalled")
        sleep 1
    fi
    log "QoS $qos, repetition $rep, $phase the slow consumer: ${seconds}s of $pairs pairs at full rate (ringmq on port $port; load $(cut -d' ' -f1-3 /proc/loadavg))"
    cut -d' ' -f1 /proc/loadavg >"$out/load-$name.txt"
    bench "$port" "$qos" "$name"
    cut -d' ' -f1 /proc/loadavg >>"$out/load-$name.txt"
    if [ -n "$stalled" ]; then kill "$stalled" 2>/dev/null || true; fi
    sleep 1
    kill -TERM "$broker"
    wait "$broker" || true
    wait "$sampler" 2>/dev/null || true
}

for qos in $qos_list; do
    for rep in $(seq 1 "$reps"); do
        order=$phases
        if [ $((rep % 2)) = 0 ]; then order=$(echo "$phases" | tr ' ' '\n' | tac | tr '\n' ' '); fi
        for phase in $order; do run_phase "$qos" "$phase" "$rep"; done
    done
done

python3 - "$out" "$seconds" "$pairs" "$qos_list" "$reps" "$filter" "$outbuf_bytes_max" \
    "$max_queued_bytes" "$max_queued_messages" "$slow_consumer_timeout_secs" "$phases" <<'PY'
import json, re, statistics, sys
from datetime import datetime
out, seconds, pairs, qos_list, reps, filter_ = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(), int(sys.argv[5]), sys.argv[6]
outbuf, queued_bytes, queued_messages, timeout = map(int, sys.argv[7:11])
phases = sys.argv[11].split()
bound_kib = (outbuf + queued_bytes) // 1024
failures = []

def counter(log, name):
    total = 0
    for line in log.splitlines():
        if "worker stopped" in line:
            m = re.search(r"\b" + name + r": (\d+)", line)
            total += int(m.group(1)) if m else 0
    return total

def phase_figures(qos, phase, rep):
    name = f"{phase}-q{qos}-r{rep}"
    report = json.load(open(f"{out}/{name}.json"))
    m, lat = report["messages"], report["latency"] or {}
    # (seconds, RSS, pools' RSS) in KiB
    points = []
    for line in open(f"{out}/rss-{name}.txt"):
        t, _, kib, _, bufs, _ = line.split()
        points.append((float(t), int(kib), int(bufs)))
    start = points[0][0]
    rest = [(t - start, kib - bufs) for t, kib, bufs in points]
    settled = [kib for t, kib in rest if t >= 10]
    log = open(f"{out}/broker-{name}.log").read()
    load = [float(x) for x in open(f"{out}/load-{name}.txt").read().split()]
    figures = {
        "rate": m["delivery_rate_per_sec"], "p50": lat.get("p50_us", 0), "p99": lat.get("p99_us", 0),
        "lost": m["lost"], "peak": max(kib for _, kib, _ in points),
        "pools": max(bufs for _, _, bufs in points), "rest_peak": max(kib for _, kib in rest),
        "rest_growth": (max(settled) - settled[0]) if settled else 0,
        "dropped0": counter(log, "qos0_dropped_outbuf"), "dropped": counter(log, "messages_dropped_queue_full"),
        "slow_closes": counter(log, "slow_consumer"), "load": load,
        "ready": report["connections"]["ready"] == report["connections"]["planned"], "close_after": None,
    }
    if phase != "without":
        closes = [l for l in log.splitlines() if "closing" in l and "slow" in l.lower()]
        stalled = open(f"{out}/stalled-{name}.txt").read().split()
        if closes and stalled:
            when = datetime.fromisoformat(closes[0].split()[0].replace("Z", "+00:00")).timestamp()
            figures["close_after"] = when - float(stalled[0])
    return figures

print(f"Phases of {seconds} s, {pairs} pairs at full rate (`--e2e-window 256`, QoS 1/2 `--window 64`), "
      f"64 B payloads, 2 workers; the stalled subscriber on `{filter_}`; bounds: outbuf_bytes_max {outbuf}, "
      f"max_queued_messages {queued_messages}, max_queued_bytes {queued_bytes}, "
      f"slow_consumer_timeout_secs {timeout}. RSS in MiB; \"rest\" is RSS outside the receive-buffer pools.\n")
print("| QoS | rep | extra subscriber | others msg/s | p50 ms | p99 ms | lost | load avg | RSS peak | pools | rest peak | rest growth after 10 s | qos0_dropped_outbuf | dropped_queue_full | slow-consumer closes |")
print("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
summary = []
for qos in qos_list:
    runs = {phase: [] for phase in phases}
    for rep in range(1, reps + 1):
        order = phases if rep % 2 else phases[::-1]
        for phase in order:
            f = phase_figures(qos, phase, rep)
            runs[phase].append(f)
            close = f" (at {f['close_after']:.1f} s)" if f["close_after"] else ""
            label = {"without": "none", "with": "stalled", "reader": "reading"}[phase]
            print(f"| {qos} | {rep} | {label} | {f['rate']:.0f} | {f['p50'] / 1000:.1f} | "
                  f"{f['p99'] / 1000:.1f} | {f['lost']} | {f['load'][0]:.1f}-{f['load'][-1]:.1f} | {f['peak'] / 1024:.1f} | "
                  f"{f['pools'] / 1024:.1f} | {f['rest_peak'] / 1024:.1f} | {f['rest_growth'] / 1024:.1f} | "
                  f"{f['dropped0']} | {f['dropped']} | {f['slow_closes']}{close} |")
            if f["lost"] and qos != "0":
                failures.append(f"QoS {qos} rep {rep} {phase}: {f['lost']} lost between well-behaved clients")
            if not f["ready"]:
                failures.append(f"QoS {qos} rep {rep} {phase}: not every connection came up")
            if phase == "with":
                if f["rest_growth"] > bound_kib:
                    failures.append(f"QoS {qos} rep {rep}: RSS outside the pools grew {f['rest_growth']} KiB after 10 s of the stall, over the {bound_kib} KiB its bounds allow")
                if qos == "0" and f["dropped0"] == 0:
                    failures.append(f"QoS 0 rep {rep}: no drop counted at outbuf_bytes_max")
                if qos != "0" and f["dropped"] == 0:
                    failures.append(f"QoS {qos} rep {rep}: no drop counted at the queue bound")
                if qos != "0" and float(seconds) > timeout + 2 and f["slow_closes"] == 0:
                    failures.append(f"QoS {qos} rep {rep}: no slow-consumer close after {timeout} s at the bound")
    med = {phase: {k: statistics.median(r[k] for r in rs) for k in ("rate", "p50", "p99", "rest_peak")}
           for phase, rs in runs.items()}
    base = med[phases[0]]["rate"]
    for phase in phases:
        label = {"without": "none", "with": "stalled", "reader": "reading"}[phase]
        m = med[phase]
        summary.append(f"| {qos} | {label} | {m['rate']:.0f} | {m['rate'] / base:.2f} | {m['p50'] / 1000:.1f} | "
                       f"{m['p99'] / 1000:.1f} | {m['rest_peak'] / 1024:.1f} |")
print()
print(f"Medians of {reps} repetitions:\n")
print(f"| QoS | extra subscriber | others msg/s | vs {phases[0]} | p50 ms | p99 ms | RSS outside pools, peak MiB |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
print("\n".join(summary))
if failures:
    print("\nFAILED:\n" + "\n".join(failures))
    sys.exit(1)
PY
log "output in $out"
