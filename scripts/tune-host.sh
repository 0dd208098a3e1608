#!/usr/bin/env bash
# Shows, and with --apply sets, the host settings that bound how many loopback MQTT
# connections one machine can hold (issue 6: one million live connections).
#
#   scripts/tune-host.sh                 show the current values
#   scripts/tune-host.sh --apply [FILE]  save the current values to FILE (default
#                                        /tmp/ringmq-tune-host.saved), set what this host
#                                        permits, print before and after
#   scripts/tune-host.sh --restore [FILE] write back the values saved by --apply
#
# A setting that cannot be written here (no permission, read-only /proc/sys in a container,
# a missing module) is reported as such; the script never fails because of it.
set -u

SAVED_DEFAULT=/tmp/ringmq-tune-host.saved

# key  wanted-value (for --apply; "-" = show only). Socket buffer sizes are shown, not set:
# the machine is shared, and ringmq sets small buffers per socket (socket_rcvbuf_bytes,
# socket_sndbuf_bytes) where they matter. The port range starts at 10240 so fixed test
# ports below it stay free.
SETTINGS=(
  "net.core.somaxconn 65535"
  "net.ipv4.tcp_max_syn_backlog 65535"
  "net.ipv4.ip_local_port_range 10240 65535"
  "net.ipv4.tcp_mem -"
  "net.ipv4.tcp_rmem -"
  "net.ipv4.tcp_wmem -"
  "net.core.rmem_default -"
  "net.core.wmem_default -"
  "net.ipv4.tcp_tw_reuse 1"
  "net.ipv4.tcp_fin_timeout 10"
  "net.netfilter.nf_conntrack_max 2097152"
  "net.netfilter.nf_conntrack_count -"
  "fs.file-max -"
  "fs.nr_open -"
  "fs.file-nr -"
)

path_of() { echo "/proc/sys/${1//.//}"; }

read_value() {
  local path
  path=$(path_of "$1")
  if [[ -r $path ]]; then tr -s '\t ' ' ' <"$path"; else echo "(absent)"; fi
}

show() {
  local line key
  printf '%-34s %s\n' "setting" "value"
  for line in "${SETTINGS[@]}"; do
    key=${line%% *}
    printf '%-34s %s\n' "$key" "$(read_value "$key")"
  done
  printf '%-34s %s\n' "ulimit -n (soft/hard)" "$(ulimit -Sn)/$(ulimit -Hn)"
  printf '%-34s %s\n' "sockets (/proc/net/sockstat)" \
    "$(grep '^TCP:' /proc/net/sockstat 2>/dev/null || echo '(absent)')"
  printf '%-34s %s\n' "MemAvailable" "$(awk '/MemAvailable/ {print $2 " kB"}' /proc/meminfo)"
}

apply() {
  local file=$1 line key want path now
  : >"$file" || { echo "cannot write $file" >&2; return 0; }
  echo "== before"; show
  echo
  for line in "${SETTINGS[@]}"; do
    key=${line%% *}
    want=${line#* }
    [[ $want == - ]] && continue
    path=$(path_of "$key")
    if [[ ! -e $path ]]; then
      echo "skip  $key: absent on this host"
      continue
    fi
    now=$(read_value "$key")
    echo "$key=$now" >>"$file"
    if [[ $now == "$want" ]]; then
      echo "ok    $key already $want"
    elif (echo "$want" >"$path") 2>/dev/null; then
      echo "set   $key: $now -> $(read_value "$key")"
    else
      echo "DENIED $key (wanted $want, stays $now): not permitted here"
    fi
  done
  # The soft fd limit only lasts for this shell's children; ringmq and ringmq-bench raise
  # their own soft limit to the hard one at start.
  echo "note  RLIMIT_NOFILE hard $(ulimit -Hn): programs raise their soft limit to it themselves"
  echo
  echo "== after"; show
  echo
  echo "saved previous values in $file (restore: $0 --restore $file)"
}

restore() {
  local file=$1 key value path
  if [[ ! -r $file ]]; then
    echo "no saved file $file" >&2
    return 0
  fi
  echo "== before"; show; echo
  while IFS='=' read -r key value; do
    [[ -z $key ]] && continue
    path=$(path_of "$key")
    if (echo "$value" >"$path") 2>/dev/null; then
      echo "restored $key = $(read_value "$key")"
    else
      echo "DENIED   $key (wanted $value): not permitted here"
    fi
  done <"$file"
  echo; echo "== after"; show
}

case ${1:-} in
  "") show ;;
  --apply) apply "${2:-$SAVED_DEFAULT}" ;;
  --restore) restore "${2:-$SAVED_DEFAULT}" ;;
  -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) echo "usage: $0 [--apply [FILE] | --restore [FILE]]" >&2; exit 2 ;;
esac
exit 0
