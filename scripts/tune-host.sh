#!/usr/bin/env bash
# Shows, and with --apply sets, the host settings that bound how many loopback MQTT
# connections one machine can hold (issue 6: one million live connections).
#
#   scripts/tune-host.sh                 show the current values
#   scripts/tune-host.sh --apply [FILE]  save the current values to FILE (default
#                                        /tmp/ringmq-tune-host.saved), set what this host
#                                        permits, print before and after
#   scripts/tune-host.sh --tcp-mem        print the net.ipv4.tcp_mem that --apply sets
#   ONLY="key1 key2" scripts/tune-host.sh --apply   set only those keys (e.g. ONLY=net.ipv4.tcp_mem
#                                        on a shared machine, where a wider port range could
#                                        collide with other programs' fixed ports)
#   scripts/tune-host.sh --restore [FILE] write back the values saved by --apply
#
# A setting that cannot be written here (no permission, read-only /proc/sys in a container,
# a missing module) is reported as such; the script never fails because of it.
set -u

SAVED_DEFAULT=/tmp/ringmq-tune-host.saved

# net.ipv4.tcp_mem (pages: no pressure below the first, pressure from the second, refused
# beyond the third) bounds the memory ALL TCP sockets may hold in queued segments. The
# kernel's default is sized from RAM (~9% here: 2.2 GiB of 24 GiB), and a million loopback
# pairs with keepalive traffic need more: a socket with any segment queued is charged at least
# a page, and the 1M run hit the hard limit at ~640k pairs (641,720 pages). --apply raises it
# to 1/8, 3/16 and 1/4 of RAM (24 GiB: 3, 4.5 and 6 GiB), never lowering a larger setting.
# The kernel's socket objects themselves (~7 KB a pair) are slab memory, not counted here.
tcp_mem_wanted() {
  local total_kb pages now_max
  total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
  pages=$((total_kb / ($(getconf PAGESIZE) / 1024)))
  now_max=$(awk '{print $3}' /proc/sys/net/ipv4/tcp_mem 2>/dev/null || echo 0)
  if ((now_max >= pages / 4)); then
    tr -s '\t ' ' ' </proc/sys/net/ipv4/tcp_mem
  else
    echo "$((pages / 8)) $((pages * 3 / 16)) $((pages / 4))"
  fi
}

# key  wanted-value (for --apply; "-" = show only). Socket buffer sizes are shown, not set:
# the machine is shared, and ringmq sets small buffers per socket (socket_rcvbuf_bytes,
# socket_sndbuf_bytes) where they matter. The established hash (tcp_ehash_entries, sized at
# boot) is shown with tcp_child_ehash_entries, the size a network namespace created from this
# one gets (0: it shares the host's); not set here: `scripts/million.sh --netns` sets it only
# while it creates its namespace and restores it at once, since every namespace created while
# it is set (containers, other tests) would get a hash that large. The port range starts at 10240 so fixed test
# ports below it stay free.
SETTINGS=(
  "net.core.somaxconn 65535"
  "net.ipv4.tcp_max_syn_backlog 65535"
  "net.ipv4.ip_local_port_range 10240 65535"
  "net.ipv4.tcp_mem $(tcp_mem_wanted)"
  "net.ipv4.tcp_rmem -"
  "net.ipv4.tcp_wmem -"
  "net.core.rmem_default -"
  "net.core.wmem_default -"
  "net.ipv4.tcp_tw_reuse 1"
  "net.ipv4.tcp_fin_timeout 10"
  "net.ipv4.tcp_ehash_entries -"
  "net.ipv4.tcp_child_ehash_entries -"
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
    if [[ -n ${ONLY:-} && " $ONLY " != *" $key "* ]]; then continue; fi
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
  --tcp-mem) tcp_mem_wanted ;;
  -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) echo "usage: $0 [--apply [FILE] | --restore [FILE] | --tcp-mem]" >&2; exit 2 ;;
esac
exit 0
