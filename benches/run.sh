#!/usr/bin/env bash
# meshgate's load benchmark: meshgate, Envoy 1.40, nginx and haproxy proxying the same
# two-host HTTP/1.1 keep-alive workload to the same fast upstream on loopback.
#
#   benches/run.sh                      # all proxies, 3 rounds x 10 s
#   ROUNDS=5 DURATION=20 benches/run.sh
#   benches/run.sh meshgate envoy       # some proxies
#
# Method: one worker per proxy pinned to core $PROXY_CPU; wrk (64 connections, Host
# alternating a.bench.test / b.bench.test) and the upstream (nginx answering a 2-byte
# body on two ports) share core $LOADGEN_CPU. Each round runs every proxy once, the
# order rotating between rounds; every run starts a fresh proxy, measures its idle RSS,
# warms up for 2 s, then measures $DURATION s. Reported: medians over rounds of
# requests/s, p50/p99 latency (wrk), proxy CPU microseconds per request (utime+stime of
# the proxy's processes / requests) and RSS at the end of the run, plus idle RSS.
# Everything runs on 127.0.0.1 and every load loop is bounded by wrk -d and timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
PROXY_CPU=${PROXY_CPU:-1}
LOADGEN_CPU=${LOADGEN_CPU:-0}
PORT=${PORT:-28080}
UP_A=${UP_A:-28081}
UP_B=${UP_B:-28082}
ADMIN=${ADMIN:-28090}
RUN=${RUN:-$ROOT/target/bench-run}
PROXIES=("$@")
((${#PROXIES[@]})) || PROXIES=(meshgate envoy nginx haproxy)

log() { printf 'bench: %s\n' "$*" >&2; }

setup() {
  local missing=()
  for c in wrk nginx haproxy; do command -v "$c" >/dev/null || missing+=("$c"); done
  if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
  [[ " ${PROXIES[*]} " == *" envoy "* ]] && scripts/install-peers.sh envoy
  if [[ " ${PROXIES[*]} " == *" meshgate "* ]]; then
    log "building meshgate (release)"
    cargo build --release --quiet
  fi
  mkdir -p "$RUN"
}

render() { # template -> file, replacing @VARS@
  sed -e "s|@PORT@|$PORT|g" -e "s|@UP_A@|$UP_A|g" -e "s|@UP_B@|$UP_B|g" \
      -e "s|@ADMIN@|$ADMIN|g" -e "s|@RUN@|$RUN|g" "benches/configs/$1" > "$RUN/$2"
}

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  log "port $1 did not open"; return 1
}

# CPU ticks (utime+stime) and RSS (kB) of a process and its children.
tree_pids() { local p=$1; echo "$p"; for c in $(pgrep -P "$p" || true); do tree_pids "$c"; done; }
cpu_ticks() { local t=0; for p in $(tree_pids "$1"); do
    [[ -r /proc/$p/stat ]] && t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
rss_kb() { local t=0; for p in $(tree_pids "$1"); do
    [[ -r /proc/$p/status ]] && t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo $t; }

start_upstream() {
  render upstream-nginx.conf upstream.conf
  taskset -c "$LOADGEN_CPU" nginx -c "$RUN/upstream.conf" -p "$RUN" >/dev/null 2>&1 &
  UPSTREAM_PID=$!
  wait_port "$UP_A"; wait_port "$UP_B"
}

start_proxy() { # name -> sets PROXY_PID
  case $1 in
    meshgate)
      render meshgate.json meshgate.json
      taskset -c "$PROXY_CPU" "$ROOT/target/release/meshgate" gateway --xds-json "$RUN/meshgate.json" \
        --concurrency 1 --access-log off --admin-address "127.0.0.1:$ADMIN" \
        --health-address 127.0.0.1:0 --prometheus-address 127.0.0.1:0 2>"$RUN/meshgate.log" &
      ;;
    envoy)
      render envoy.yaml envoy.yaml
      taskset -c "$PROXY_CPU" "$ROOT/.peers/bin/envoy" -c "$RUN/envoy.yaml" --concurrency 1 \
        --disable-hot-restart --log-level warn --base-id 7 >"$RUN/envoy.log" 2>&1 &
      ;;
    nginx)
      render nginx.conf nginx.conf
      taskset -c "$PROXY_CPU" nginx -c "$RUN/nginx.conf" -p "$RUN" >/dev/null 2>&1 &
      ;;
    haproxy)
      render haproxy.cfg haproxy.cfg
      taskset -c "$PROXY_CPU" haproxy -db -f "$RUN/haproxy.cfg" >"$RUN/haproxy.log" 2>&1 &
      ;;
    *) log "unknown proxy $1"; exit 2 ;;
  esac
  PROXY_PID=$!
  wait_port "$PORT"
  # Smoke check: both hosts routed, anything else 404.
  local a b n
  a=$(curl -s -H 'Host: a.bench.test' "http://127.0.0.1:$PORT/")
  b=$(curl -s -H 'Host: b.bench.test' "http://127.0.0.1:$PORT/")
  n=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: c.bench.test' "http://127.0.0.1:$PORT/")
  if [[ $a != A || $b != B || $n != 404 ]]; then
    log "$1 failed the smoke check (a=$a b=$b other=$n)"; return 1
  fi
}

stop() { kill -TERM "$1" 2>/dev/null || true; for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done; kill -KILL "$1" 2>/dev/null || true; }

# wrk latency text (e.g. 1.23ms, 850.00us, 1.2s) -> microseconds
to_us() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us/,"",v); print v+0} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} else print 0 }'; }

run_one() { # name round -> appends a TSV row
  local name=$1 round=$2
  start_proxy "$name" || { stop "${PROXY_PID:-0}"; echo -e "$name\t$round\tsmoke-failed" >> "$RUN/raw.tsv"; return; }
  sleep 0.5
  local idle; idle=$(rss_kb "$PROXY_PID")
  timeout $((WARMUP + 10)) taskset -c "$LOADGEN_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s benches/alternate.lua "http://127.0.0.1:$PORT/" >/dev/null 2>&1 || true
  local t0 t1 out
  t0=$(cpu_ticks "$PROXY_PID")
  out=$(timeout $((DURATION + 15)) taskset -c "$LOADGEN_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s benches/alternate.lua "http://127.0.0.1:$PORT/")
  t1=$(cpu_ticks "$PROXY_PID")
  local rss; rss=$(rss_kb "$PROXY_PID")
  stop "$PROXY_PID"
  local reqs rps p50 p99 errors hz cpu_us
  reqs=$(awk '/requests in/{print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  p50=$(to_us "$(awk '$1=="50%"{print $2}' <<<"$out")")
  p99=$(to_us "$(awk '$1=="99%"{print $2}' <<<"$out")")
  errors=$(awk '/Non-2xx|Socket errors/{s+=$NF} END{print s+0}' <<<"$out")
  hz=$(getconf CLK_TCK)
  cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN{ if (n>0) printf "%.1f", d/hz*1e6/n; else print 0 }')
  echo -e "$name\t$round\t$rps\t$p50\t$p99\t$cpu_us\t$rss\t$idle\t$errors" >> "$RUN/raw.tsv"
  log "$name round $round: $rps req/s, p50 ${p50}us, p99 ${p99}us, ${cpu_us}us CPU/req, RSS ${rss} kB (idle ${idle} kB), errors $errors"
}

median() { sort -g | awk '{a[NR]=$1} END{ if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

setup
: > "$RUN/raw.tsv"
start_upstream
trap 'stop $UPSTREAM_PID' EXIT
n=${#PROXIES[@]}
for ((r = 1; r <= ROUNDS; r++)); do
  for ((i = 0; i < n; i++)); do
    run_one "${PROXIES[$(((i + r - 1) % n))]}" "$r"
  done
done

printf '\n| proxy | req/s | p50 µs | p99 µs | CPU µs/req | RSS MiB | idle RSS MiB |\n|---|---|---|---|---|---|---|\n'
for p in "${PROXIES[@]}"; do
  col() { awk -F'\t' -v p="$p" -v c="$1" '$1==p && NF>3 {print $c}' "$RUN/raw.tsv" | median; }
  mib() { awk -v k="$1" 'BEGIN{ if (k=="-") print "-"; else printf "%.1f", k/1024 }'; }
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$p" "$(col 3)" "$(col 4)" "$(col 5)" "$(col 6)" "$(mib "$(col 7)")" "$(mib "$(col 8)")"
done
printf '\n%s rounds x %s s, %s connections, proxy on CPU %s, wrk + upstream on CPU %s; raw rows in %s\n' \
  "$ROUNDS" "$DURATION" "$CONNS" "$PROXY_CPU" "$LOADGEN_CPU" "$RUN/raw.tsv"
