#!/usr/bin/env bash
# ringmq vs Mosquitto (and rumqttd), side by side in one run. Not part of CI.
#
#   scripts/compare.sh [--quick] [--runs N] [--brokers ringmq,mosquitto,rumqttd]
#                      [--only unicast_q0,...] [--out DIR] [--baseline RINGMQ_BINARY]
#
# --baseline adds a broker "ringmq-base" (that binary, same settings, its own port): an A/B
# of two ringmq builds in the same run, turn about, with the same load generator.
#
# Installs (cached, idempotent) Debian's mosquitto and rumqttd 0.20 (cargo install into
# $COMPARE_CACHE, default ~/.cache/ringmq-compare), builds ringmq and ringmq-bench (release),
# then runs scripts/compare/run.py: every scenario against every broker, N rounds (default 3),
# medians, broker CPU seconds from /proc/PID/stat, RSS; writes results.md, results.json and
# compare.svg to the output dir (default target/compare/<UTC timestamp>).
#
# Core placement (2-core machine): each broker is pinned to core 0 with taskset, ringmq with
# one worker, rumqttd's tokio runtime sees one CPU through its affinity mask, Mosquitto is
# single-threaded; ringmq-bench (one io_uring worker thread) is pinned to core 1. The relay
# ceiling runs in the bench process on both cores (relay thread + bench worker).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${COMPARE_CACHE:-$HOME/.cache/ringmq-compare}
RUNS=3
QUICK=
BROKERS=ringmq,mosquitto,rumqttd
ONLY=
OUT=
BASELINE=
BROKER_CPU=0
BENCH_CPU=1
COMMAND="scripts/compare.sh $*"
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) QUICK=--quick; RUNS=1 ;;
    --runs) RUNS=$2; shift ;;
    --brokers) BROKERS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --out) OUT=$2; shift ;;
    --baseline) BASELINE=$(realpath "$2"); shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-$ROOT/target/compare/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$CACHE" "$OUT"
if [[ -n $BASELINE ]]; then
  [[ -x $BASELINE ]] || { echo "--baseline $BASELINE is not an executable" >&2; exit 2; }
  BROKERS=$BROKERS,ringmq-base
fi
has() { [[ ",$BROKERS," == *",$1,"* ]]; }

# ---- install (cached) -----------------------------------------------------------------------
RUMQTTD=$CACHE/rumqttd/bin/rumqttd
rumqttd_pid=
if has rumqttd && [[ ! -x $RUMQTTD ]]; then
  # WITHOUT --locked: rumqttd 0.20's lock pins metrics 0.22.1, which no longer builds on
  # current rustc. Started first, in the background and niced: it takes minutes.
  echo "installing rumqttd 0.20 into $CACHE/rumqttd (log: $CACHE/rumqttd-install.log)"
  nice -n 10 cargo install rumqttd --version '^0.20' --root "$CACHE/rumqttd" \
    >"$CACHE/rumqttd-install.log" 2>&1 &
  rumqttd_pid=$!
fi
if has mosquitto && ! command -v mosquitto >/dev/null && [[ ! -x /usr/sbin/mosquitto ]]; then
  echo "installing Debian's mosquitto"
  SUDO=; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get install -y mosquitto >"$CACHE/mosquitto-install.log" 2>&1
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

# ---- build ----------------------------------------------------------------------------------
(cd "$ROOT" && cargo build --release --bins -p ringmq -p ringmq-bench)
RINGMQ=$ROOT/target/release/ringmq
BENCH=$ROOT/target/release/ringmq-bench
if [[ -n $rumqttd_pid ]]; then
  wait "$rumqttd_pid" || { echo "rumqttd install failed; see $CACHE/rumqttd-install.log" >&2; exit 1; }
fi

# ---- broker configs -------------------------------------------------------------------------
PORT_RINGMQ=18830 PORT_MOSQUITTO=18831 PORT_RUMQTTD=18832 PORT_BASE=18833
# Generous limits alike: queues far larger than a run needs, 100 QoS 1/2 in flight per
# client, no connection caps under 20000 (the fd limit here), TCP_NODELAY on (Mosquitto's
# default off adds Nagle delays to small deliveries).
cat >"$OUT/mosquitto.conf" <<EOF
listener $PORT_MOSQUITTO 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_queued_messages 1000000
max_inflight_messages 100
max_connections -1
persistence false
log_dest stderr
log_type error
log_type warning
EOF
cat >"$OUT/rumqttd.toml" <<EOF
id = 0

[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$PORT_RUMQTTD"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
EOF
RINGMQ_SETTINGS=(--workers 1 --max-connections 20000
  --max-inflight-messages 100 --max-queued-messages 1000000 --max-queued-bytes 1073741824
  --log-level warn)
RINGMQ_ARGS=(--bind 127.0.0.1 --port "$PORT_RINGMQ" "${RINGMQ_SETTINGS[@]}")
BASE_ARGS=(--bind 127.0.0.1 --port "$PORT_BASE" "${RINGMQ_SETTINGS[@]}")

python3 - "$OUT/brokers.json" <<EOF
import json, sys
b = []
def add(name, argv, port, version, settings):
    b.append(dict(name=name, argv=["taskset", "-c", "$BROKER_CPU"] + argv, port=port,
                  version=version, settings=settings))
brokers = "$BROKERS".split(",")
for name in brokers:
    if name == "ringmq":
        add(name, ["$RINGMQ"] + """${RINGMQ_ARGS[*]}""".split(), $PORT_RINGMQ,
            "ringmq $(cd "$ROOT" && git rev-parse --short HEAD)", """${RINGMQ_ARGS[*]}""")
    elif name == "ringmq-base":
        add(name, ["$BASELINE"] + """${BASE_ARGS[*]}""".split(), $PORT_BASE,
            "ringmq baseline $BASELINE", """${BASE_ARGS[*]}""")
    elif name == "mosquitto":
        add(name, ["$MOSQUITTO", "-c", "$OUT/mosquitto.conf"], $PORT_MOSQUITTO,
            "$(dpkg-query -W -f='mosquitto ${Version}' mosquitto 2>/dev/null || echo mosquitto)",
            open("$OUT/mosquitto.conf").read())
    elif name == "rumqttd":
        add(name, ["$RUMQTTD", "-c", "$OUT/rumqttd.toml"], $PORT_RUMQTTD,
            "$(cargo install --list --root "$CACHE/rumqttd" 2>/dev/null | head -n 1 | tr -d :)", open("$OUT/rumqttd.toml").read())
    else:
        sys.exit(f"unknown broker {name}")
json.dump(b, open(sys.argv[1], "w"), indent=1)
EOF

# ---- run --------------------------------------------------------------------------------
python3 "$ROOT/scripts/compare/run.py" --bench "$BENCH" --brokers-json "$OUT/brokers.json" \
  --runs "$RUNS" $QUICK ${ONLY:+--only "$ONLY"} --out "$OUT" --bench-cpu "$BENCH_CPU" \
  --command "$COMMAND"
python3 "$ROOT/scripts/compare/plot.py" "$OUT/results.json" "$OUT/compare.svg"
echo "results: $OUT/results.md $OUT/results.json $OUT/compare.svg"
