#!/usr/bin/env bash
# Persistence benchmarks (issue 10). Not part of CI.
#
#   scripts/bench-persist.sh throughput [--runs N] [--duration SECS] [--pairs N] [--out DIR]
#   scripts/bench-persist.sh restart [--sessions N] [--wave N] [--workers N] [--out DIR]
#
# throughput: QoS 1 unicast between N pairs of persistent-session clients (CleanSession=0,
# ringmq-bench `pubsub --pattern pairs --persistent-sessions`), max rate with the same flow
# control as scripts/compare.sh's unicast_q1, against ringmq with persistence off and with
# each fsync policy (batch, interval 1000 ms, never) and Mosquitto with `persistence true`
# (its default autosave: every 1800 s and at exit; it journals nothing per message; its data
# directory is given to the mosquitto user, which it drops to when started as root), in the
# SAME run, brokers taking turns inside each round; median of N rounds (default 3). Each
# broker run starts on a fresh data directory. Broker pinned to core 0 (ringmq with one
# worker), ringmq-bench to core 1, as in scripts/compare.sh.
#
# restart: creates N persistent sessions (default 1,000,000), each subscribed to its own topic
# at QoS 1, in waves of --wave clients that connect, subscribe and leave (ringmq-bench `sub
# --persistent-sessions`), so 1M sessions never need 1M connections; then kill -9, restart on
# the same journal, and times until a client of the first wave resumes its session (CONNACK
# with session present; the listening sockets exist before recovery ends, so a bare connect
# proves nothing). Reports broker RSS before the kill
# and after the restart, and the journal's size on disk before and after.
#
# Also reports RSS 5 s after the restart was served (SETTLE_SECS). BIN_DIR=<dir> runs the
# binaries there instead of target/release (with SKIP_BUILD=1: a baseline build kept aside);
# KEEP_DATA=<dir> keeps a copy of the journal as it was at the kill (to restart it again).
#
# Writes results.md and results.json to --out (default target/bench-persist/<UTC timestamp>).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-}
[[ $MODE == throughput || $MODE == restart ]] || { sed -n '2,29p' "$0"; exit 2; }
shift
RUNS=3 DURATION=5 PAIRS=100 SESSIONS=1000000 WAVE=15000 WORKERS=2 OUT=
COMMAND="scripts/bench-persist.sh $MODE $*"
while [[ $# -gt 0 ]]; do
  case $1 in
    --runs) RUNS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --pairs) PAIRS=$2; shift ;;
    --sessions) SESSIONS=$2; shift ;;
    --wave) WAVE=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --out) OUT=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-$ROOT/target/bench-persist/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")

if [[ $MODE == throughput ]] && ! command -v mosquitto >/dev/null && [[ ! -x /usr/sbin/mosquitto ]]; then
  SUDO=; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get install -y mosquitto >"$OUT/mosquitto-install.log" 2>&1
fi
[[ -n ${SKIP_BUILD:-} ]] || (cd "$ROOT" && cargo build --release --bins -p ringmq -p ringmq-bench)

export ROOT OUT RUNS DURATION PAIRS SESSIONS WAVE WORKERS COMMAND MODE
exec python3 "$ROOT/scripts/bench_persist.py"
