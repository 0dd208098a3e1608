#!/usr/bin/env bash
# One million live connections (issue 6): starts ringmq, connects N subscribers (each to its
# own topic, QoS 1) with ringmq-bench, holds them with keepalive pings, publishes one QoS 1
# message to 1% of them and checks that every one arrived, then prints connects/s, connect
# p99, broker RSS per connection, kernel socket memory and CPU used. Stops what it started,
# by PID.
#
#   scripts/million.sh [--n N] [--hold SECONDS] [--workers W] [--rings R] [--rings-start S] [--rcvbuf BYTES] [--sndbuf BYTES] [--port P]
#                      [--keepalive SECONDS] [--recv-buffers N] [--broker ringmq|mosquitto|rumqttd]
#                      [--connect-timeout SECONDS] [--sources S] [--dests D] [--netns] [--ehash-buckets B]
#                      [--no-build]
#
# Defaults: N = 1000000, hold 300 s, connect budget N / 2500 + 60 s, workers = the cores,
# each with up to R rings of 20000-slot file tables (R = the rings N fills at 17500 each, + 2
# for the uneven spread), S of them set up at start (default R - 1: the rings N fills plus the
# spare a worker keeps from half full; 4 at 100k, 30 at 1M). So every ring N needs is set up
# before the "RSS before" sample: a ring's fixed memory (its SQ/CQ mappings, ~0.6 MiB for a
# further ring; its receive buffers once written) is start-up RSS for the configured
# capacity, not charged to connections (the runtime's slot entries, 48 B, come in chunks on
# first use since session 6, so they count with the connections), and the kernel is not asked
# for rings under memory pressure near a million (it refused with ENOMEM then). The run
# prints how many rings were added while connecting (0 expected), the broker's RSS per
# connection over its RSS at start, without the rings' fixed mappings, and all of its RSS / N.
# `--rings-start 1` charges the rings to the connections instead. 4 KiB
# socket buffers on the broker side, 256 receive buffers of 16 KiB on each worker's first
# ring (64 on each further ring), keepalive 300 s (ringmq-bench pings at half of it, so
# every 150 s: a hold of 300 s sends each subscriber's ping twice). With keepalive 60 s the
# first half-million's pings (~19k/s from 30 s on) compete with the connect storm for the
# same two cores and receive buffers: the rate falls from ~20k/s to ~2k/s, and in session 4
# a few CONNECTs starved past the broker's 10 s connect timeout (docs/BENCHMARKS.md,
# "Density"; first receives have their own buffers since session 5); `--keepalive 60`
# reproduces that load. The host needs `ONLY=net.ipv4.tcp_mem
# scripts/tune-host.sh --apply` for a million: the kernel's default TCP memory limit stops
# connecting at ~640k pairs (docs/BENCHMARKS.md, "Density").
# Clients: 4 source addresses (127.10.0.x) x N/10,000 destination addresses (127.11.x.y),
# ~2,500 connections per pair (below: why). `--netns` runs broker and clients in a private
# network namespace with a 2^21-bucket established hash (`--ehash-buckets`), torn down at the
# end; where that is not permitted it says so and runs in the host's namespace.
# Exit status 0 only if every subscriber connected and subscribed and every published message
# arrived. While connecting it prints a line every 5 s (ready count, the listeners' accept
# queues, kernel TCP counters), so a stall shows where it is; the run directory keeps the
# broker's log (each worker's counters at the stop) and the bench's output. --broker runs the
# same test against Mosquitto (`mosquitto` on the PATH) or rumqttd ($RUMQTTD, default
# compare.sh's cache), with the limits compare.sh gives them. It also prints the connect
# phase's CPU per connection (user and kernel, broker and bench apart) and, at the end, the
# broker's per-worker counters from its /metrics (on --port + 1: closes by reason, receives
# without a buffer); the bench is stopped with SIGTERM first, so its report (errors by
# reason) is in the run's output.
set -euo pipefail

N=1000000
HOLD=300
CONNECT_TIMEOUT=
WORKERS=
RINGS=
RINGS_START=
RCVBUF=4096
SNDBUF=4096
KEEPALIVE=300
BROKER_NAME=ringmq
RUMQTTD=${RUMQTTD:-/tmp/compare-cache/rumqttd/bin/rumqttd}
RECV_BUFFERS=256
RECV_BUFFER_BYTES=16384
BUILD=1
PORT=${RINGMQ_MILLION_PORT:-18830}
SOURCES=
DESTS=
NETNS=0
EHASH_BUCKETS=2097152
ARGS=("$@")
# RINGMQ_MILLION_BROKER_ARGS: extra broker flags (e.g. "--mesh-ring-depth 65536") for experiments.
while (($#)); do
  case $1 in
    --n) N=$2; shift 2 ;;
    --hold) HOLD=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --rings) RINGS=$2; shift 2 ;;
    --rings-start) RINGS_START=$2; shift 2 ;;
    --rcvbuf) RCVBUF=$2; shift 2 ;;
    --sndbuf) SNDBUF=$2; shift 2 ;;
    --keepalive) KEEPALIVE=$2; shift 2 ;;
    --recv-buffers) RECV_BUFFERS=$2; shift 2 ;;
    --broker) BROKER_NAME=$2; shift 2 ;;
    --connect-timeout) CONNECT_TIMEOUT=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --sources) SOURCES=$2; shift 2 ;;
    --dests) DESTS=$2; shift 2 ;;
    --netns) NETNS=1; shift ;;
    --ehash-buckets) EHASH_BUCKETS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if ((BUILD)); then
  cargo build -q --release --bin ringmq
  cargo build -q --release -p ringmq-bench
fi
BROKER_BIN=$TARGET/release/ringmq
BENCH_BIN=$TARGET/release/ringmq-bench

PUBS=$(((N + 99) / 100))
TOTAL=$((N + PUBS))
# One worker per core: every worker holds each other worker's interest in every filter (~49
# bytes per filter per other worker) and each new filter is broadcast to every other worker,
# so more workers cost memory and CPU per connection. A worker holds more connections than
# one 20000-slot file table by owning several rings (`rings_per_worker_max`); it moves new
# connections to another ring at 7/8 full, so plan 17500 per ring, plus two rings for the
# uneven spread (sessions within 2% of even by FNV-1a of the client id; connections not yet
# handed to their session's worker bounded by the bench's 4000 connects in flight).
if [[ -z $WORKERS ]]; then WORKERS=$(nproc); fi
if [[ -z $RINGS ]]; then RINGS=$(((TOTAL / WORKERS + 17499) / 17500 + 2)); fi
# Every ring N needs is set up at start: the rings it fills, and the spare a worker prepares
# once its last ring is half full (rings.rs), so none is added inside the measured span.
if [[ -z $RINGS_START ]]; then RINGS_START=$((RINGS > 1 ? RINGS - 1 : 1)); fi
# Ephemeral ports per (source, destination) pair: the range holds ~28k, but connect() takes
# ports of one parity first (even for connect, odd left to bind) and scans every used one of
# that parity before trying the other: past ~14.1k connections on one pair each connect scans
# ~14k ports (measured: 13000 on one pair set up in 1.6 s with 0.45 s system time; 20000 took
# 24.6 s, 6.9 s system, and only 16142 became ready, the rest late past the broker's connect
# timeout). Below that, each used port of the pair that the search meets costs an established-
# hash lookup (__inet_check_established), so fuller pairs cost more per connect.
# And every connect finds or makes the bind bucket of its (source address, port) in the
# kernel's bhash2 (65,536 buckets here, sized at boot, shared by every namespace): with one
# source per 10,000 connections (100 sources at 1M, session 5) a million connections made ~1M
# such buckets, chains ~15 long, walked on each connect (inet_bind2_bucket_find: 5.0 us per
# connect late in a 1M run against 0.8 us early; docs/BENCHMARKS.md, "The kernel's cost of a
# connect at one million"). A source port can serve one connection per destination address,
# and the broker listens on 0.0.0.0, so the clients spread over a few sources and many
# destinations: 4 sources x ceil(N / 10,000) destinations (127.11.x.y), ~2,500 connections
# per pair, and at most 4 x 28k (source, port) buckets whatever N. --sources and --dests
# override (session 5's layout: --sources 100 --dests 1 at 1M). Mosquitto and rumqttd listen
# on 127.0.0.1 only: for them one destination and a source per 10,000.
PER_PAIR=2500
addr_range() { # first count -> count addresses from 127.<first>.0.1
  local first=$1 last=$2
  printf '127.%d.0.1-127.%d.%d.%d' "$first" "$((first + last / 65536))" "$(((last / 256) % 256))" "$((last % 256))"
}
if [[ $BROKER_NAME == ringmq ]]; then
  [[ -n $SOURCES ]] || SOURCES=$(((N + PER_PAIR - 1) / PER_PAIR < 4 ? (N + PER_PAIR - 1) / PER_PAIR : 4))
  [[ -n $DESTS ]] || DESTS=$(((N + SOURCES * PER_PAIR - 1) / (SOURCES * PER_PAIR)))
  DEST_HOSTS=$(addr_range 11 "$DESTS")
else
  [[ -n $SOURCES ]] || SOURCES=$(((N + 9999) / 10000))
  DESTS=1
  DEST_HOSTS=127.0.0.1
fi
if ((N / (SOURCES * DESTS) > 10000)); then
  echo "warning: $((N / (SOURCES * DESTS))) connections per address pair (over 10,000: connect() slows as the pairs fill; more --sources or --dests)" >&2
fi
SUB_SOURCES=$(addr_range 10 "$SOURCES")
PUB_SOURCES=$(addr_range 60 "$SOURCES")

# --netns: broker and clients in a private network namespace whose established hash has
# EHASH_BUCKETS buckets (net.ipv4.tcp_child_ehash_entries, Linux >= 6.1; the host's hash is
# sized at boot, 262,144 here: 2M sockets make chains ~8 long, walked for every segment and
# every port tried). The sysctl is set only while the namespace is created and restored at
# once (any namespace created meanwhile by others gets the larger hash too: 16 MiB at 2^21).
# Where that is not permitted, the run stays in the host's namespace and says so.
if ((NETNS)) && [[ -z ${RINGMQ_MILLION_NETNS:-} ]]; then
  EHASH_PATH=/proc/sys/net/ipv4/tcp_child_ehash_entries
  NS=ringmq-million-$$
  EHASH_OLD=$(cat "$EHASH_PATH" 2>/dev/null || true)
  CREATED=0
  if [[ -n $EHASH_OLD ]] && (echo "$EHASH_BUCKETS" >"$EHASH_PATH") 2>/dev/null; then
    ip netns add "$NS" 2>/dev/null && CREATED=1
    echo "$EHASH_OLD" >"$EHASH_PATH" || echo "warning: could not restore $EHASH_PATH to $EHASH_OLD" >&2
  fi
  if ((CREATED)); then
    trap 'ip netns del "$NS" 2>/dev/null || true' EXIT
    STATUS=0
    ip netns exec "$NS" env RINGMQ_MILLION_NETNS="$NS" \
      RINGMQ_MILLION_TCP_MEM="$(tr -s '\t ' ' ' </proc/sys/net/ipv4/tcp_mem)" bash -c 'ip link set lo up && exec "$@"' \
      _ "$0" "${ARGS[@]}" --no-build || STATUS=$?
    exit "$STATUS"
  fi
  echo "no private network namespace here (tcp_child_ehash_entries ${EHASH_OLD:-absent} not writable, or ip netns add refused): running in the host's" >&2
fi
RUN=$(mktemp -d /tmp/ringmq-million.XXXXXX)
echo "run dir $RUN: $BROKER_NAME, N=$N (+$PUBS publishers), workers=$WORKERS, rings per worker $RINGS_START at start, <= $RINGS, hold ${HOLD}s, sources $SUB_SOURCES, destinations $DEST_HOSTS"
NS_NAME=${RINGMQ_MILLION_NETNS:-host}
echo "network namespace: $NS_NAME; established hash $(cat /proc/sys/net/ipv4/tcp_ehash_entries 2>/dev/null || echo '?') buckets (negative: the host's, shared)"
# net.ipv4.tcp_mem is the host's (one limit for all namespaces; absent inside one).
TCP_MEM_LIMIT=${RINGMQ_MILLION_TCP_MEM:-$(tr -s '\t ' ' ' </proc/sys/net/ipv4/tcp_mem)}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); net.ipv4.tcp_mem $TCP_MEM_LIMIT pages"

PIDS=()
BROKER=
SUBS=
HTTP_PORT=${RINGMQ_MILLION_HTTP_PORT:-$((PORT + 1))}
# The broker's own account, read from its /metrics before anything is stopped: per worker,
# connections accepted and open, closes by reason (connect_timeout, keepalive_timeout, ...)
# and receives that found no buffer.
broker_counters() {
  [[ $BROKER_NAME == ringmq && -n $BROKER ]] && kill -0 "$BROKER" 2>/dev/null || return 0
  curl -s --max-time 10 "http://127.0.0.1:$HTTP_PORT/metrics" | awk '
    /^ringmq_/ && match($0, /worker="[0-9]+"/) {
      w = substr($0, RSTART + 8, RLENGTH - 9); workers[w] = 1; v = $NF
      if ($1 ~ /^ringmq_closes_total/ && v > 0) {
        match($0, /reason="[a-z_]+"/); closes[w] = closes[w] " " substr($0, RSTART + 8, RLENGTH - 9) "=" v
      }
      if ($1 ~ /^ringmq_connections_accepted_total/) accepted[w] = v
      if ($1 ~ /^ringmq_connections\{/) open_[w] = v
      if ($1 ~ /^ringmq_connections_refused_total/) refused[w] = v
      if ($1 ~ /^ringmq_handoffs_total/) handoffs[w] = v
      if ($1 ~ /^ringmq_recv_no_buffers_total/) nobufs[w] = v
    }
    END {
      for (w in workers) printf "  broker worker %s: accepted %s, open %s, refused %s, handed off %s, receives without a buffer %s; closes by reason:%s\n",
        w, accepted[w], open_[w], refused[w], handoffs[w], nobufs[w], closes[w] == "" ? " none" : closes[w]
    }' | sort || echo "  (broker /metrics not readable on port $HTTP_PORT)"
}
cleanup() {
  local pid status=$?
  broker_counters
  # The bench first, with SIGTERM: it prints its report (errors by reason) and exits.
  if [[ -n $SUBS ]] && kill -0 "$SUBS" 2>/dev/null; then
    kill -TERM "$SUBS" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SUBS" 2>/dev/null || break; sleep 0.2; done
    wait "$SUBS" 2>/dev/null || true
    if ((status != 0)); then
      echo "  the subscribers' report at the stop:"
      tr '\r' '\n' <"$RUN/sub.log" | grep -E '^(connections:|  error x|stopped early)' | sed 's/^/    /' || true
    fi
  fi
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# "user system" clock ticks of a process (fields 14 and 15 of /proc/PID/stat).
cpu_split() { awk '{print $14, $15}' "/proc/$1/stat" 2>/dev/null || echo "0 0"; }
tcp_mem_pages() { awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat; }
sockstat() { grep '^TCP:' /proc/net/sockstat; }
# Kernel TCP counters that explain lost or stalled connects (absolute values).
NSTAT_KEYS='TcpExtListenOverflows|TcpExtListenDrops|TcpExtTCPReqQFullDrop|TcpExtTCPReqQFullDoCookies|TcpExtSyncookiesSent|TcpExtSyncookiesFailed|TcpExtTCPAbortOnMemory|TcpExtTCPMemoryPressures|TcpExtTCPBacklogDrop|TcpAttemptFails|TcpEstabResets|TcpExtTCPTimeouts|TcpRetransSegs'
nstat_now() { nstat -asz 2>/dev/null | awk -v keys="^($NSTAT_KEYS)$" '$1 ~ keys {print $1, $2}'; }
nstat_delta() { # nstat_delta BEFORE-FILE: the counters that moved since
  nstat_now | awk 'NR == FNR {before[$1] = $2; next} $2 != before[$1] {printf "%s +%d ", $1, $2 - before[$1]}' "$1" -
}
# The listeners' accept queues: "Recv-Q/Send-Q" per SO_REUSEPORT socket (queued/backlog).
# "state listening", not -l: ss -l also asks for CLOSE sockets, and the kernel then walks its
# whole established hash for them (0.65 s of CPU per call at 1.6M sockets).
accept_queues() { ss -Htn state listening "sport = :$PORT" 2>/dev/null | awk '{printf "%s/%s ", $1, $2}'; }
# Resident kB of the broker's fixed mappings: its receive-buffer mappings (anonymous, each
# exactly RECV_BUFFERS x RECV_BUFFER_BYTES on a worker's first ring, min(RECV_BUFFERS, 64) x
# RECV_BUFFER_BYTES on a further ring, and every ring's first-receive buffers: 64 x 512 B =
# 32 KiB, the default first_recv_buffers), which grow with traffic up to their fixed size, and
# the io_uring queue mappings of every ring; neither grows with connections.
FURTHER_BUFFERS=$((RECV_BUFFERS < 64 ? RECV_BUFFERS : 64))
buffer_rss_kb() {
  [[ $BROKER_NAME == ringmq ]] || { echo 0; return; }
  awk -v first=$((RECV_BUFFERS * RECV_BUFFER_BYTES / 1024)) \
    -v further=$((FURTHER_BUFFERS * RECV_BUFFER_BYTES / 1024)) -v first_recv=32 '
    /^[0-9a-f]+-[0-9a-f]+ / {anon = (NF == 5); uring = ($0 ~ /io_uring/)}
    /^Size:/ {match_size = uring || (anon && ($2 == first || $2 == further || $2 == first_recv))}
    /^Rss:/ && match_size {total += $2}
    END {print total + 0}' "/proc/$1/smaps"
}

# ringmq's listeners use SO_REUSEPORT: a broker already on the port would silently share
# the connections (and falsify every figure), so the port must be free.
for port in "$PORT" "$HTTP_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use: pick another with --port (the broker's /metrics is on --port + 1)" >&2
    exit 1
  fi
done
start_broker() {
  case $BROKER_NAME in
    ringmq)
      exec "$BROKER_BIN" --port "$PORT" --workers "$WORKERS" --file-table-slots 20000 \
        --rings-per-worker-max "$RINGS" --rings-per-worker-start "$RINGS_START" \
        --max-connections $((TOTAL + 1000)) --socket-rcvbuf-bytes "$RCVBUF" \
        --socket-sndbuf-bytes "$SNDBUF" --recv-buffers "$RECV_BUFFERS" \
        --recv-buffer-bytes "$RECV_BUFFER_BYTES" --http-port "$HTTP_PORT" --log-level info ${RINGMQ_MILLION_BROKER_ARGS:-} ;;
    mosquitto)
      # The same limits compare.sh gives it; one process fd per connection, so RLIMIT_NOFILE
      # (20000 here) caps it.
      printf '%s\n' "listener $PORT 127.0.0.1" "allow_anonymous true" "set_tcp_nodelay true" \
        "max_queued_messages 1000" "max_connections -1" "persistence false" \
        "log_dest stderr" "log_type error" "log_type warning" >"$RUN/mosquitto.conf"
      exec mosquitto -c "$RUN/mosquitto.conf" ;;
    rumqttd)
      cat >"$RUN/rumqttd.toml" <<EOF
id = 0
[router]
id = 0
max_connections = $((TOTAL + 1000))
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$PORT"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
EOF
      exec "$RUMQTTD" -c "$RUN/rumqttd.toml" ;;
    *) echo "unknown broker $BROKER_NAME" >&2; exit 2 ;;
  esac
}
start_broker >"$RUN/broker.log" 2>&1 &
BROKER=$!
PIDS+=("$BROKER")
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$BROKER" || { cat "$RUN/broker.log"; exit 1; }
  sleep 0.1
done
sleep 1
RSS_BEFORE=$(rss_kb "$BROKER")
BUF_BEFORE=$(buffer_rss_kb "$BROKER")
# Rings set up so far (each one logs a line, those set up at start included): any set up
# later, while connecting, puts its fixed memory inside the measured span.
rings_set_up() { grep -c 'another ring for more connections' "$RUN/broker.log" || true; }
RINGS_BEFORE=$(rings_set_up)
nstat_now >"$RUN/nstat.before"
TCP_MEM_BEFORE=$(tcp_mem_pages)
CPU_BEFORE=$(cpu_ticks "$BROKER")
echo "broker pid $BROKER: RSS before ${RSS_BEFORE} kB; $(sockstat)"

# Subscribers: subscriber j subscribes to million/<j> at QoS 1. They run for the hold plus
# the time the publishers need, then report how many deliveries arrived.
[[ -n $CONNECT_TIMEOUT ]] || CONNECT_TIMEOUT=$((N / 2500 + 60))
SUB_SECS=$((HOLD + 30))
"$BENCH_BIN" --json sub --subs "$N" --topics "$N" --qos 1 --topic-prefix million \
  --host "$DEST_HOSTS" --port "$PORT" --source "$SUB_SOURCES" --keepalive "$KEEPALIVE" \
  --connect-inflight 4000 --connect-timeout "$CONNECT_TIMEOUT" --duration "$SUB_SECS" \
  --drain 5 --client-id-prefix msub --broker-pid "$BROKER" \
  >"$RUN/sub.json" 2>"$RUN/sub.log" &
SUBS=$!
PIDS+=("$SUBS")
read -r B_USER0 B_SYS0 < <(cpu_split "$BROKER")

# Wait until every subscriber is connected and subscribed (the bench's progress line).
START=$(date +%s)
LAST_LINE=$START
LAST_READY=0
read -r B_USER_L B_SYS_L < <(cpu_split "$BROKER")
read -r S_USER_L S_SYS_L < <(cpu_split "$SUBS")
while :; do
  kill -0 "$SUBS" 2>/dev/null || { echo "subscribers exited early"; tail -5 "$RUN/sub.log"; exit 1; }
  READY=$(tr '\r' '\n' <"$RUN/sub.log" | grep -o 'conns [0-9]*' | tail -1 | awk '{print $2}' || true)
  [[ ${READY:-0} -ge $N ]] && break
  if tr '\r' '\n' <"$RUN/sub.log" | tail -1 | grep -q ' running '; then
    # The bench gave up on the connections that failed and moved on: this is where it stops.
    echo "only ${READY:-0}/$N ready when the bench stopped waiting (failed or still connecting): $(tr '\r' '\n' <"$RUN/sub.log" | tail -1)"
    echo "  broker RSS $(rss_kb "$BROKER") kB (before ${RSS_BEFORE} kB); $(sockstat); broker log:"
    grep -v '^$' "$RUN/broker.log" | sort | uniq -c | sort -rn | head -3
    exit 1
  fi
  if (($(date +%s) - START > CONNECT_TIMEOUT)); then
    echo "only ${READY:-0}/$N ready after ${CONNECT_TIMEOUT}s; $(sockstat)"
    echo "  accept queues: $(accept_queues)"
    echo "  kernel: $(nstat_delta "$RUN/nstat.before")"
    tr '\r' '\n' <"$RUN/sub.log" | grep -v '^\[' | tail -5
    exit 1
  fi
  if (($(date +%s) - LAST_LINE >= 5)); then
    NOW=$(date +%s)
    read -r B_USER_N B_SYS_N < <(cpu_split "$BROKER")
    read -r S_USER_N S_SYS_N < <(cpu_split "$SUBS")
    # Cores used since the last line (user+system), and the connect rate over it.
    CORES=$(awk -v t=$((NOW - LAST_LINE)) -v hz="$(getconf CLK_TCK)" -v bu=$((B_USER_N - B_USER_L)) \
      -v bs=$((B_SYS_N - B_SYS_L)) -v su=$((S_USER_N - S_USER_L)) -v ss=$((S_SYS_N - S_SYS_L)) \
      'BEGIN {printf "broker %.2f+%.2f cores, bench %.2f+%.2f (user+sys)", bu/hz/t, bs/hz/t, su/hz/t, ss/hz/t}')
    echo "  [$((NOW - START))s] ready ${READY:-0} (+$(((${READY:-0} - LAST_READY) / (NOW - LAST_LINE)))/s); $CORES; $(sockstat); accept queues $(accept_queues); kernel $(nstat_delta "$RUN/nstat.before")"
    LAST_LINE=$NOW LAST_READY=${READY:-0}
    B_USER_L=$B_USER_N B_SYS_L=$B_SYS_N S_USER_L=$S_USER_N S_SYS_L=$S_SYS_N
  fi
  sleep 1
done
CONNECTED_AT=$(date +%s)
read -r B_USER1 B_SYS1 < <(cpu_split "$BROKER")
read -r S_USER1 S_SYS1 < <(cpu_split "$SUBS")
RSS_AFTER=$(rss_kb "$BROKER")
BUF_AFTER=$(buffer_rss_kb "$BROKER")
RINGS_ADDED=$(($(rings_set_up) - RINGS_BEFORE))
TCP_MEM_AFTER=$(tcp_mem_pages)
SLAB_TCP=$(awk '$1 == "TCP" || $1 == "request_sock_TCP" || $1 == "sock_inode_cache" || $1 == "filp" {printf "%s %d x %d B; ", $1, $2, $4}' /proc/slabinfo 2>/dev/null || true)
echo "kernel: $(nstat_delta "$RUN/nstat.before")"
echo "slabs: ${SLAB_TCP:-/proc/slabinfo not readable}"
echo "all $N subscribed after $((CONNECTED_AT - START)) s; broker RSS ${RSS_AFTER} kB; $(sockstat)"
if [[ $BROKER_NAME == ringmq ]]; then
  echo "rings set up while connecting: $RINGS_ADDED (their fixed memory is inside the RSS per connection below; 0 with the default --rings-start)"
fi
# CPU of the connect phase, per connection, user and kernel apart: the budget on 2 cores at
# R connects/s is 2 / R seconds of CPU per connection for everything (66 us at 30k/s).
awk -v n="$N" -v hz="$(getconf CLK_TCK)" -v bu=$((B_USER1 - B_USER0)) -v bs=$((B_SYS1 - B_SYS0)) \
  -v su="$S_USER1" -v ss="$S_SYS1" 'BEGIN {
  us = 1e6 / hz / n
  printf "connect-phase CPU per connection: broker %.1f us user + %.1f us system; bench %.1f us user + %.1f us system (total %.1f us)\n",
    bu * us, bs * us, su * us, ss * us, (bu + bs + su + ss) * us }'

# Hold, then publish one QoS 1 message on each of topics million/0 .. million/(PUBS-1).
sleep "$HOLD"
RSS_HELD=$(rss_kb "$BROKER")
"$BENCH_BIN" --json pub --pubs "$PUBS" --topics "$N" --count 1 --qos 1 \
  --topic-prefix million --host "$DEST_HOSTS" --port "$PORT" --source "$PUB_SOURCES" \
  --connect-timeout 60 --duration 30 --drain 5 --client-id-prefix mpub \
  >"$RUN/pub.json" 2>"$RUN/pub.log" || { echo "publishers failed"; tail -5 "$RUN/pub.log"; exit 1; }
wait "$SUBS" || true
CPU_AFTER=$(cpu_ticks "$BROKER")

python3 - "$RUN" "$N" "$PUBS" "$RSS_BEFORE" "$RSS_AFTER" "$RSS_HELD" "$TCP_MEM_BEFORE" \
  "$TCP_MEM_AFTER" "$((CPU_AFTER - CPU_BEFORE))" "$(getconf CLK_TCK)" "$BUF_BEFORE" "$BUF_AFTER" <<'PY'
import json, sys
run, n, pubs, rss0, rss1, rss2, mem0, mem1, cpu, hz, buf0, buf1 = sys.argv[1:]
n, pubs = int(n), int(pubs)
sub = json.load(open(f"{run}/sub.json"))
pub = json.load(open(f"{run}/pub.json"))
print(json.dumps({"sub": sub, "pub": pub}, indent=1), file=open(f"{run}/summary.json", "w"))
def find(d, *keys):
    for k in keys:
        d = d.get(k, {}) if isinstance(d, dict) else {}
    return d
c = sub["connections"]
ok = True
def check(what, good):
    global ok
    ok &= good
    print(f"{'ok  ' if good else 'FAIL'} {what}")
page = 4096
print(f"connections: {c['ready']}/{n} ready in {c['setup_secs']:.1f} s = {c['connect_rate_per_sec']:.0f} connects/s")
for name in ("tcp_connect_latency", "mqtt_connect_latency", "ping_latency"):
    l = c.get(name)
    if l:
        print(f"  {name}: p50 {l['p50_us']:.0f} us, p99 {l['p99_us']:.0f} us, max {l.get('max_us', 0):.0f} us")
print(f"broker RSS: {int(rss0)} kB before, {int(rss1)} kB connected, {int(rss2)} kB after hold: "
      f"{(int(rss1) - int(rss0)) * 1024 / n:.0f} B per connection "
      f"({(int(rss2) - int(rss0)) * 1024 / n:.0f} B after hold); all of the broker's RSS / N: "
      f"{int(rss1) * 1024 / n:.0f} B (with the fixed memory of the rings set up at start)")
buffers = int(buf1) - int(buf0)
print(f"  of which receive-buffer and io_uring queue pages (fixed mappings per ring, not per "
      f"connection): {buffers} kB; the rest: "
      f"{(int(rss1) - int(rss0) - buffers) * 1024 / n:.0f} B per connection")
print(f"kernel TCP memory (sockstat, both ends): {int(mem0) * page >> 20} MiB before, "
      f"{int(mem1) * page >> 20} MiB connected = {(int(mem1) - int(mem0)) * page / n:.0f} B per pair")
print(f"broker CPU from connect to end: {int(cpu) / int(hz):.1f} s; bench subscribers "
      f"{sub['cpu']['process']['user_secs'] + sub['cpu']['process']['system_secs']:.1f} s "
      f"over {sub['cpu']['wall_secs']:.0f} s wall")
m, pm = sub["messages"], pub["messages"]
print(f"published {pm['published']}, acked {pm['acked']}; subscribers received {m['delivered']} "
      f"({m['unique']} unique, {m['unexpected']} unexpected); pings sent {c['pings_sent']}")
check(f"all {n} connected and subscribed", c["ready"] == n and c["failed"] == 0)
check("no connection lost during the hold", c["closed_unexpectedly"] == 0 and c["protocol_errors"] == 0)
check(f"all {pubs} publishes acked", pm["published"] == pubs and pm["acked"] == pubs)
check(f"every one of the {pubs} messages arrived once (unique {m['unique']})",
      m["unique"] == pubs and m["unexpected"] == 0)
sys.exit(0 if ok else 1)
PY
