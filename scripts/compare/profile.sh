#!/usr/bin/env bash
# Profiles ringmq under one scenario of scripts/compare/run.py, placed as compare.sh places
# it (broker on core 0 with one worker, ringmq-bench on core 1). Not part of CI.
#
#   scripts/compare/profile.sh SCENARIO [--ringmq BIN] [--bench BIN] [--out DIR] [--record]
#
# Always: `perf stat` on the broker process while the bench runs: its CPU time, context
# switches, io_uring_enter calls, io_uring submissions and completions (tracepoints), and the
# bench's JSON report; prints them per delivered message. With --record: `perf record` of the
# broker too (cpu-clock samples with call graphs: this VM has no hardware counters), and
# `perf report` sorted by symbol into DIR/report.txt.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SCENARIO=${1:?scenario id, e.g. unicast_q0}
shift
RINGMQ=$ROOT/target/release/ringmq
BENCH=$ROOT/target/release/ringmq-bench
OUT=/tmp/ringmq-profile-$SCENARIO
RECORD=
PORT=${PORT:-18840}
while [[ $# -gt 0 ]]; do
  case $1 in
    --ringmq) RINGMQ=$2; shift ;;
    --bench) BENCH=$2; shift ;;
    --out) OUT=$2; shift ;;
    --record) RECORD=1 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
mapfile -t ARGS < <(cd "$ROOT/scripts/compare" && python3 -c "
import run, sys
for s in run.scenarios(False):
    if s['id'] == sys.argv[1]:
        print('\n'.join(s['args']))
        break
else:
    sys.exit('unknown scenario ' + sys.argv[1])
" "$SCENARIO")

taskset -c 0 "$RINGMQ" --bind 127.0.0.1 --port "$PORT" --workers 1 --max-connections 20000 \
  --max-inflight-messages 100 --max-queued-messages 1000000 --max-queued-bytes 1073741824 \
  --log-level warn >"$OUT/ringmq.log" 2>&1 &
BROKER=$!
trap 'kill $BROKER 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break
  sleep 0.1
done

EVENTS=task-clock,context-switches,syscalls:sys_enter_io_uring_enter,io_uring:io_uring_submit_req,io_uring:io_uring_complete
perf stat -x, -e "$EVENTS" -p "$BROKER" -o "$OUT/stat.csv" &
STAT=$!
RECORDER=
if [[ -n $RECORD ]]; then
  perf record -e cpu-clock -F 4999 -g -p "$BROKER" -o "$OUT/perf.data" 2>"$OUT/record.log" &
  RECORDER=$!
fi
sleep 0.2
taskset -c 1 "$BENCH" --json --quiet "${ARGS[@]}" --port "$PORT" >"$OUT/bench.json"
kill -INT "$STAT"
[[ -n $RECORDER ]] && kill -INT "$RECORDER"
wait "$STAT" || true
[[ -n $RECORDER ]] && { wait "$RECORDER" || true; }

python3 - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
bench = json.load(open(f"{out}/bench.json"))
delivered = bench["messages"]["unique"]
published = bench["messages"]["published"]
lat = bench.get("latency") or {}
print(f"published {published}, delivered {delivered}, "
      f"rate {bench['messages']['delivery_rate_per_sec']:.0f}/s, "
      f"p50 {lat.get('p50_us')} us, p99 {lat.get('p99_us')} us")
for line in open(f"{out}/stat.csv"):
    parts = line.strip().split(",")
    if len(parts) < 3 or not parts[0].replace(".", "").isdigit():
        continue
    value, event = float(parts[0]), parts[2]
    unit = "ns" if event == "task-clock" else ""
    scale = 1e6 if event == "task-clock" else 1  # task-clock is in ms
    print(f"{event:40} {value:16.0f}  per delivered message: {value * scale / max(delivered, 1):10.3f} {unit}")
EOF
if [[ -n $RECORD ]]; then
  perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio 2>/dev/null \
    | grep -v '^$' | head -400 >"$OUT/report.txt"
  perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -20 >"$OUT/report-dso.txt"
  echo "report: $OUT/report.txt $OUT/report-dso.txt"
fi
