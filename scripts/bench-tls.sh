#!/usr/bin/env bash
# TLS handshakes per second and MQTT throughput over TLS, against plain TCP, for ringmq and
# Mosquitto in the same run, with the same client (`ringmq-bench tls`, blocking threads with
# rustls; every handshake is a full one; throughput with end-to-end flow control, QoS $QOS,
# window $WINDOW). Certificates are made with openssl in a temporary directory. Both brokers
# listen on loopback only and are stopped (by PID) at the end.
#
# usage: scripts/bench-tls.sh [DURATION_SECS] [THREADS] [PAYLOAD_BYTES] [ROUNDS]
#   env: QOS (1), WINDOW (512), RINGMQ_WORKERS (2), BASE_PORT (27000)
# Each round runs every (broker, transport, mode) once, brokers alternating, so both see the
# same load; the table gives the median over the rounds of each figure (and the load average
# before and after). Raw JSON lines go to stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration=${1:-5}
threads=${2:-2}
payload=${3:-64}
rounds=${4:-3}
qos=${QOS:-1}
window=${WINDOW:-512}
ringmq_workers=${RINGMQ_WORKERS:-2}
base_port=${BASE_PORT:-27000}
ports=(ringmq_tcp=$base_port ringmq_tls=$((base_port + 1)) mosquitto_tcp=$((base_port + 2)) mosquitto_tls=$((base_port + 3)))
declare -A port
for entry in "${ports[@]}"; do port[${entry%%=*}]=${entry#*=}; done

cargo build --release --quiet --bin ringmq && cargo build --release --quiet -p ringmq-bench
target_dir=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
ringmq=$target_dir/release/ringmq
bench=$target_dir/release/ringmq-bench

dir=$(mktemp -d)
chmod 755 "$dir" # mosquitto drops to its own user and must read the files
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

ssl() { openssl "$@" >/dev/null 2>&1; }
( cd "$dir"
  ssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
      -out ca.pem -subj /CN=bench-ca -days 2
  ssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key \
      -out server.csr -subj /CN=localhost
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >server.ext
  ssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
      -days 2 -extfile server.ext
  chmod 644 server.key )

for name in "${!port[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/${port[$name]}") 2>/dev/null; then
        echo "port ${port[$name]} ($name) is in use: set BASE_PORT" >&2
        exit 1
    fi
done

"$ringmq" --bind 127.0.0.1 --port "${port[ringmq_tcp]}" --tls-bind "127.0.0.1:${port[ringmq_tls]}" \
    --certfile "$dir/server.pem" --keyfile "$dir/server.key" --workers "$ringmq_workers" \
    --log-level warn 2>"$dir/ringmq.log" &
pids+=($!)
cat >"$dir/mosquitto.conf" <<CONF
per_listener_settings false
allow_anonymous true
# As in scripts/compare.sh: without it, Nagle + delayed ACKs stall each handshake flight ~40 ms.
set_tcp_nodelay true
# Debian's Mosquitto 2.0.11 drops QoS 1 messages for the subscriber ("Outgoing messages are
# being dropped") with far fewer than its default 1000 queued: its count drifts. The end-to-end
# window bounds what any broker holds (WINDOW + 2 batches), so no bound is lost by this.
max_queued_messages 0
log_dest none
listener ${port[mosquitto_tcp]} 127.0.0.1
listener ${port[mosquitto_tls]} 127.0.0.1
certfile $dir/server.pem
keyfile $dir/server.key
CONF
mosquitto -c "$dir/mosquitto.conf" 2>"$dir/mosquitto.log" &
pids+=($!)

for name in "${!port[@]}"; do
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/${port[$name]}") 2>/dev/null && break
        sleep 0.05
    done
done

declare -A pid_of=([ringmq]=${pids[0]} [mosquitto]=${pids[1]})
ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime of a process

run() { # run BROKER TRANSPORT MODE: one JSON line, tagged, with the broker's CPU seconds added
    local args=(--json tls "$3" --port "${port[$1_$2]}" --threads "$threads" --duration "$duration"
        --payload-bytes "$payload" --qos "$qos" --window "$window")
    if [ "$2" = tcp ]; then args+=(--plain); else args+=(--cafile "$dir/ca.pem"); fi
    local before after line
    before=$(cpu_ticks "${pid_of[$1]}")
    line=$("$bench" "${args[@]}")
    after=$(cpu_ticks "${pid_of[$1]}")
    python3 -c 'import json, sys; d = json.loads(sys.argv[1]); d.update(broker=sys.argv[4], cpu=int(sys.argv[2]) / int(sys.argv[3])); print(json.dumps(d))' \
        "$line" "$((after - before))" "$ticks" "$1"
}

results=$dir/results.jsonl
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$rounds"); do
    # Alternate which broker goes first, so neither always runs on a cooler machine.
    if [ $((round % 2)) = 1 ]; then order=(ringmq mosquitto); else order=(mosquitto ringmq); fi
    for transport in tcp tls; do
        for mode in handshakes throughput; do
            for broker in "${order[@]}"; do
                line=$(run "$broker" "$transport" "$mode")
                echo "$line" | tee -a "$results" >&2
            done
        done
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo "ringmq $(git rev-parse --short HEAD) (--workers $ringmq_workers) vs $(mosquitto -h 2>/dev/null | head -1 || true); $rounds rounds of ${duration} s, $threads threads, $payload B payloads, QoS $qos, window $window; load average before: $load_before, after: $load_after"
echo
python3 - "$results" "$payload" "$threads" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def cell(broker, transport, mode):
    return [r for r in rows if r["broker"] == broker and r["transport"] == transport
            and r["mode"].lower() == mode]
def median(values):
    return statistics.median(values) if values else float("nan")
print(f"| broker | transport | sessions/s | p50 / p99 µs | sessions per broker CPU-s "
      f"| msgs/s delivered ({sys.argv[2]} B, {sys.argv[3]} pubs) | MiB/s | msgs per broker CPU-s "
      f"| most in flight at the end |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for broker in ("ringmq", "mosquitto"):
    for transport in ("tcp", "tls"):
        hs, tp = cell(broker, transport, "handshakes"), cell(broker, transport, "throughput")
        per_cpu = lambda rs, key: median([r[key] / max(r["cpu"], 0.01) for r in rs])
        print(f"| {broker} | {transport} | {median([r['per_sec'] for r in hs]):.0f} "
              f"| {median([r['p50_us'] for r in hs]):.0f} / {median([r['p99_us'] for r in hs]):.0f} "
              f"| {per_cpu(hs, 'sessions'):.0f} | {median([r['msgs_per_sec'] for r in tp]):.0f} "
              f"| {median([r['mib_per_sec'] for r in tp]):.1f} | {per_cpu(tp, 'received'):.0f} "
              f"| {max(r['sent'] - r['received'] for r in tp) if tp else 0} |")
PY
