#!/usr/bin/env bash
# Churn soak (issue 7; not in CI): SECONDS (default 600) of mixed load on one ringmq
# (2 workers, default bounds, `$SYS` every second), the whole run at `nice -n 19`:
#   - churn: RATE (default 1000) connections per second, each CONNECT, then for some a
#     SUBSCRIBE or a QoS 1 PUBLISH, then DISCONNECT, a plain close or a reset; one in ten
#     with CleanSession=0 on one of 100 ids (scripts/robust/clients.py churn);
#   - QoS 1: ringmq-bench, 50 publisher -> subscriber pairs at 2000 msg/s in all;
#   - QoS 0: ringmq-bench, 1 publisher -> 20 subscribers at 500 msg/s.
# Sampled every 5 s: the broker's RSS, split into the receive-buffer pools (one mapping of
# recv_buffers x 16 KiB per worker, whose pages the kernel touches only as receives fill
# them: bounded by the pool size, not by the load's length) and everything else; open fds;
# and `$SYS/broker/clients/*`. After the load, and again in the broker's stop log, everything
# must have returned:
#   - RSS outside the receive-buffer pools after warm-up grows by at most 10 %; the pools' RSS
#     is reported against their size. Warm-up lasts the first WARMUP seconds (default 60)
#     and, beyond that, until the broker's state has built up: the churn's 100 persistent ids
#     collect up to 50 filters each over several minutes, so warm-up ends once
#     `$SYS/broker/subscriptions/count` first reaches 95 % of its highest value in the run
#     (the growth from the end of the first 60 s is printed too);
#   - the broker's process fds are as many as before the load (the connections themselves
#     are direct descriptors: they show as the workers' `live` slots instead);
#   - `$SYS/broker/clients/connected` is back to 1 (the monitor) and clients/total to 1 +
#     the persistent sessions churn left (at most 100);
#   - at stop, each worker reports its live slots (only the monitor's), no receive buffer
#     leased, and as many connections closed as it accepted or adopted.
# Prints a summary and exits non-zero if a check fails. Output in SOAK_OUT (default
# target/soak/<UTC time>). SOAK_RECV_BUFFERS (default 4096, the default for 2 workers) sets
# each worker's receive-buffer count; SOAK_RINGMQ another ringmq binary; the broker's
# environment passes through (e.g. MIMALLOC_PURGE_DELAY=0).
#
#   scripts/soak.sh [SECONDS] [RATE]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-600}
rate=${2:-1000}
warmup=${WARMUP:-60}
recv_buffers=${SOAK_RECV_BUFFERS:-4096}
buffer_kib=$((recv_buffers * 16))
out=${SOAK_OUT:-$ROOT/target/soak/$(date -u +%Y%m%dT%H%M%SZ)}
clients="nice -n 19 python3 $ROOT/scripts/robust/clients.py"
mkdir -p "$out"

log() { printf '==> soak: %s\n' "$*" >&2; }

if [ "${SOAK_NO_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && nice -n 19 cargo build --release --bins -p ringmq -p ringmq-bench)
fi
target_dir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
RINGMQ=${SOAK_RINGMQ:-$target_dir/release/ringmq}
BENCH="nice -n 19 $target_dir/release/ringmq-bench"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
cleanup() { # every process this script started, by pid
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

nice -n 19 "$RINGMQ" --bind 127.0.0.1 --port "$port" --workers 2 --sys-interval 1 \
    --recv-buffers "$recv_buffers" --recv-buffer-bytes 16384 2>"$out/broker.log" &
broker=$!
pids+=("$broker")
$clients wait-ready "$port"
echo warmup >"$out/phase"
$clients sample "$broker" "$out/rss.txt" "$out/phase" 5 "$buffer_kib" &
pids+=($!)
$clients sys "$port" "$out/sys.txt" &
pids+=($!)
sleep 3
fds_before=$(ls "/proc/$broker/fd" | wc -l)
log "ringmq pid $broker on port $port; ${seconds}s of load, churn at ${rate}/s; output in $out"

$BENCH pubsub --port "$port" --pattern pairs -n 50 --qos 1 --rate 2000 --duration "$seconds" \
    --drain 5 --topic-prefix soak-pairs --client-id-prefix soak-pairs --json --quiet \
    >"$out/qos1.json" 2>"$out/qos1.txt" &
bench1=$!
pids+=("$bench1")
$BENCH pubsub --port "$port" --pattern fanout -n 20 --qos 0 --rate 500 --duration "$seconds" \
    --drain 5 --topic-prefix soak-fanout --client-id-prefix soak-fanout --json --quiet \
    >"$out/qos0.json" 2>"$out/qos0.txt" &
bench0=$!
pids+=("$bench0")
$clients churn "$port" "$rate" "$seconds" >"$out/churn.txt" 2>&1 &
churn=$!
pids+=("$churn")
(sleep "$warmup" && echo load >"$out/phase") &
pids+=($!)

status=0
wait "$churn" || { log "churn failed"; status=1; }
wait "$bench1" || { log "QoS 1 bench failed"; status=1; }
wait "$bench0" || { log "QoS 0 bench failed"; status=1; }
echo after >"$out/phase"
log "load over; 15 s for the last closes and a few \$SYS intervals"
sleep 15
fds_after=$(ls "/proc/$broker/fd" | wc -l)
kill -TERM "$broker"
wait "$broker" || { log "the broker did not stop cleanly"; status=1; }
sleep 1

python3 - "$out" "$warmup" "$fds_before" "$fds_after" "$buffer_kib" <<'PY' || status=1
import json, re, sys
out, warmup, fds_before, fds_after = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
buffer_kib = int(sys.argv[5])
failures = []
rss = [line.split() for line in open(f"{out}/rss.txt")]
start = float(rss[0][0])
# (seconds, phase, RSS, fds, RSS of the receive-buffer pools, RSS outside them), KiB
points = [(float(t) - start, phase, int(kib), int(fds), int(bufs), int(kib) - int(bufs))
          for t, phase, kib, fds, bufs, _ in rss]
pools = max(int(line[5]) for line in rss)
if pools != 2:
    failures.append(f"{pools} mappings of {buffer_kib} KiB, expected the 2 workers' receive-buffer pools")
load = [p for p in points if p[1] == "load"]
duration = load[-1][0]
marks = sorted({m for m in (60, 120, 300, 600, 900, 1200, 1800) if m < duration} | {round(duration)})
def at(mark, column):
    return next((p[column] for p in load if p[0] >= mark), load[-1][column]) / 1024
for column, name in ((2, "RSS"), (4, "receive-buffer pools"), (5, "RSS outside the pools")):
    print(f"{name} (MiB) at " + ", ".join(f"{m} s {at(m, column):.1f}" for m in marks))
print(f"receive-buffer pools: {pools} x {buffer_kib // 1024} MiB mapped; their RSS is bounded by that")
print("every minute of the load (s: RSS, RSS outside the pools, MiB): " + ", ".join(
    f"{m}: {at(m, 2):.1f} {at(m, 5):.1f}" for m in range(60, round(duration) + 1, 60)))
subscriptions = [(float(t) - start, int(v)) for t, name, v in
                 (line.split() for line in open(f"{out}/sys.txt") if len(line.split()) == 3)
                 if name == "$SYS/broker/subscriptions/count"]
most = max((v for _, v in subscriptions), default=0)
built_up = next((t for t, v in subscriptions if v >= 0.95 * most), 0.0)
warm_end = max(warmup, built_up)
def outside_at(second):
    return [p for p in points if p[0] <= second][-1][5]
peak_load = max(p[5] for p in load)
peak_after = max((p[5] for p in load if p[0] > warm_end), default=peak_load)
print(f"RSS outside the pools (MiB): at {warmup:.0f} s {outside_at(warmup) / 1024:.1f}; warm-up "
      f"until {warm_end:.0f} s (subscriptions/count first at 95 % of its highest, {most}, at "
      f"{built_up:.0f} s) {outside_at(warm_end) / 1024:.1f}; peak after it {peak_after / 1024:.1f}; "
      f"peak under load {peak_load / 1024:.1f}; at the end of the load {load[-1][5] / 1024:.1f}; "
      f"after it {points[-1][5] / 1024:.1f}")
if peak_after > outside_at(warm_end) * 1.10:
    failures.append(f"RSS outside the receive-buffer pools grew after warm-up ({warm_end:.0f} s): "
                    f"{outside_at(warm_end)} -> {peak_after} KiB")
print(f"broker process fds: {fds_before} before the load, {fds_after} after it")
if fds_after != fds_before:
    failures.append(f"fds {fds_before} -> {fds_after}")

sys_values = {}
peak_connected = 0
for line in open(f"{out}/sys.txt"):
    parts = line.split()
    if len(parts) == 3:
        sys_values[parts[1]] = parts[2]
        if parts[1].endswith("clients/connected"):
            peak_connected = max(peak_connected, int(parts[2]))
connected = int(sys_values.get("$SYS/broker/clients/connected", -1))
total = int(sys_values.get("$SYS/broker/clients/total", -1))
print(f"$SYS after the load: clients/connected {connected} (peak during the load {peak_connected}), "
      f"clients/total {total}, subscriptions/count {sys_values.get('$SYS/broker/subscriptions/count')}")
if connected != 1:
    failures.append(f"clients/connected {connected} after the load, expected 1 (the monitor)")
if not 1 <= total <= 101:
    failures.append(f"clients/total {total}, expected 1 + at most 100 persistent sessions")

log = open(f"{out}/broker.log").read()
stopping = [int(next(g for g in groups if g))
            for groups in re.findall(r"live=(\d+)[^\n]*stopping|stopping[^\n]*live=(\d+)", log)]
stopped = [l for l in log.splitlines() if "worker stopped" in l]
def field(line, name):
    m = re.search(r"\b" + name + r"[:=] ?(\d+)", line)
    return int(m.group(1)) if m else None
for line in stopped:
    worker = field(line, "worker")
    accepted, adopted = field(line, "accepted"), field(line, "handoffs_in")
    closed, leased, live = field(line, "closed"), field(line, "buffers_leased"), field(line, "live")
    print(f"worker {worker} at stop: accepted {accepted}, adopted {adopted}, closed {closed}, "
          f"live {live}, buffers leased {leased}, recv_no_buffers {field(line, 'recv_no_buffers')}, "
          f"closes: slow_consumer {field(line, 'slow_consumer')}, peer_closed {field(line, 'peer_closed')}, "
          f"client_disconnect {field(line, 'client_disconnect')}")
    if live != 0 or leased != 0 or accepted + adopted != closed:
        failures.append(f"worker {worker}: live {live}, leased {leased}, accepted+adopted {accepted + adopted} != closed {closed}")
print(f"live slots when the stop began (per worker): {stopping}")
if sum(stopping) != 1:
    failures.append(f"{sum(stopping)} connections live when the stop began, expected 1 (the monitor)")
for name in ("qos1", "qos0"):
    report = json.load(open(f"{out}/{name}.json"))
    m = report["messages"]
    print(f"{name} bench: {m['published']} published, {m['unique']} delivered, lost {m['lost']}, "
          f"p99 {report['latency']['p99_us']:.0f} µs" if report["latency"] else f"{name}: no latency")
    if name == "qos1" and m["lost"]:
        failures.append(f"QoS 1 bench lost {m['lost']}")
print(open(f"{out}/churn.txt").read().strip().splitlines()[-1])
if failures:
    print("FAILED:\n" + "\n".join(failures))
    sys.exit(1)
print("soak passed")
PY
exit "$status"
