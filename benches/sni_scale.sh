#!/usr/bin/env bash
# Start-up at scale: one Gateway with N SNI hosts, each with its own credentialName
# Secret (benches/gen_sni_hosts.py). For each mode, starts the proxy, records the time
# from its start until the LAST host (h-(N-1).example.com) answers an HTTPS request on
# 127.0.0.1:8443, then the proxy's peak RSS (VmHWM) and the log lines written so far.
#
#   benches/gen_sni_hosts.py /tmp/sni/h10000 10000
#   benches/sni_scale.sh /tmp/sni/h10000 standalone xds envoy-xds envoy-files
#   RUNS=3 MESHGATE=target/release/meshgate benches/sni_scale.sh DIR MODE...
#
# Modes:
#   standalone   meshgate gateway --config DIR
#   xds          meshgate control-plane --config DIR, then meshgate gateway --xds
#                (the time starts with the gateway; the control plane is ready first)
#   envoy-xds    the same control plane, Envoy 1.40 (.peers/bin/envoy) bootstrapped by
#                `meshgate bootstrap envoy`
#   envoy-files  meshgate translate --out, then Envoy from those files
# Each mode runs RUNS times (default 3); the median of each figure is printed.
# Everything listens on 127.0.0.1; an upstream (python3 http.server) answers on 18080.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=$(realpath "$1")
shift
MODES=${*:-standalone xds}
RUNS=${RUNS:-3}
BIN=${MESHGATE:-target/release/meshgate}
ENVOY=${ENVOY:-.peers/bin/envoy}
TIMEOUT=${TIMEOUT:-120}
LAST=$(tail -n 1 "$DIR/hosts.txt")
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

python3 -m http.server 18080 --bind 127.0.0.1 >/dev/null 2>&1 &
PIDS+=($!)

now() { date +%s.%N; }
hwm_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

# Polls the last host until it answers (any HTTP status), at most $TIMEOUT s.
wait_last_host() {
  local deadline=$(($(date +%s) + TIMEOUT))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if curl -sk -o /dev/null --max-time 2 --resolve "$LAST:8443:127.0.0.1" \
      -w '%{http_code}' "https://$LAST:8443/" 2>/dev/null | grep -q '^[1-5]'; then
      return 0
    fi
    sleep 0.02
  done
  return 1
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

start_control_plane() {
  "$BIN" control-plane --config "$DIR" --xds-addr 127.0.0.1:15010 \
    --debug-addr 127.0.0.1:15014 >"$WORK/cp.log" 2>&1 &
  CP=$!
  local deadline=$(($(date +%s) + TIMEOUT))
  until curl -sf -o /dev/null http://127.0.0.1:15014/ready; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "control plane not ready" >&2; exit 1; }
    sleep 0.05
  done
}

# One run of MODE: prints "seconds rss_mib log_lines".
run_once() {
  local mode=$1 pid t0 t1 ok=0
  case $mode in
    standalone)
      t0=$(now)
      "$BIN" gateway --config "$DIR" --admin-address 127.0.0.1:15000 \
        --health-address 127.0.0.1:15021 --prometheus-address 127.0.0.1:15090 \
        --access-log off >"$WORK/proxy.log" 2>&1 &
      pid=$!
      ;;
    xds)
      start_control_plane
      t0=$(now)
      "$BIN" gateway --xds 127.0.0.1:15010 --admin-address 127.0.0.1:15000 \
        --health-address 127.0.0.1:15021 --prometheus-address 127.0.0.1:15090 \
        --access-log off >"$WORK/proxy.log" 2>&1 &
      pid=$!
      ;;
    envoy-xds)
      start_control_plane
      "$BIN" bootstrap envoy --xds 127.0.0.1:15010 --namespace istio-system \
        --admin-port 15000 --out "$WORK/bootstrap.yaml"
      t0=$(now)
      "$ENVOY" -c "$WORK/bootstrap.yaml" --concurrency 2 -l warning \
        >"$WORK/proxy.log" 2>&1 &
      pid=$!
      ;;
    envoy-files)
      rm -rf "$WORK/out"
      "$BIN" translate --config "$DIR" --out "$WORK/out" --admin-port 15000 >/dev/null
      t0=$(now)
      "$ENVOY" -c "$WORK/out/envoy.yaml" --concurrency 2 -l warning \
        >"$WORK/proxy.log" 2>&1 &
      pid=$!
      ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  PIDS+=("$pid")
  if wait_last_host; then ok=1; fi
  t1=$(now)
  # Let it settle for a second so that the peak includes the end of start-up.
  sleep 1
  local rss lines
  rss=$(hwm_mib "$pid")
  lines=$(wc -l <"$WORK/proxy.log")
  stop "$pid"
  [ "${CP:-}" ] && { stop "$CP"; CP=; }
  if [ $ok = 1 ]; then
    awk -v a="$t0" -v b="$t1" -v r="$rss" -v l="$lines" 'BEGIN {printf "%.2f %s %s\n", b - a, r, l}'
  else
    echo "timeout $rss $lines"
  fi
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

N=$(wc -l <"$DIR/hosts.txt")
printf '%-12s %6s  %10s %8s %9s   %s\n' mode hosts "seconds" "RSS MiB" "log lines" "runs (s/MiB/lines)"
for mode in $MODES; do
  results=()
  for _ in $(seq "$RUNS"); do results+=("$(run_once "$mode")"); done
  s=$(printf '%s\n' "${results[@]}" | awk '{print $1}' | median)
  r=$(printf '%s\n' "${results[@]}" | awk '{print $2}' | median)
  l=$(printf '%s\n' "${results[@]}" | awk '{print $3}' | median)
  printf '%-12s %6s  %10s %8s %9s   %s\n' "$mode" "$N" "$s" "$r" "$l" "$(IFS=,; echo "${results[*]}")"
done
