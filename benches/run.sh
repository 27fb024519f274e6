#!/usr/bin/env bash
# meshgate's load benchmark: meshgate, Envoy 1.40, nginx and haproxy proxying the same
# workloads to the same fast upstream on loopback.
#
#   benches/run.sh                          # all scenarios, all proxies, 3 rounds x 10 s
#   ROUNDS=5 DURATION=20 benches/run.sh
#   benches/run.sh meshgate envoy           # some proxies
#   SCENARIOS="S2 S4" benches/run.sh        # some scenarios
#   POLICY=1 SCENARIOS=S1 benches/run.sh meshgate envoy
#                                           # every request also passes an
#                                           # authorization policy and a rate limit
#                                           # (benches/configs/with_policy.py)
#   TRACING=1 SCENARIOS=S1 benches/run.sh meshgate envoy
#                                           # Zipkin tracing on, 1% of requests
#                                           # sampled and reported to a collector on
#                                           # loopback (benches/configs/with_tracing.py;
#                                           # TRACING=off: request ids only, the baseline)
#   UPGRADES=2 SCENARIOS="S1 S2" benches/run.sh meshgate
#                                           # meshgate is upgraded (SIGUSR2, socket
#                                           # hand-off) twice during each measured run:
#                                           # the errors column counts what the clients
#                                           # saw fail; hand-over times are logged
#
# Scenarios (the same for every proxy):
#   S1  HTTP/1.1 keep-alive, cleartext: wrk, 64 connections, Host alternating
#       a.bench.test / b.bench.test request by request (both routes, both upstreams)
#   S2  TLS termination, HTTP/1.1 keep-alive inside: wrk, 64 connections, SNI a.bench.test
#   S3  HTTP/2 over TLS (ALPN h2) to an HTTP/1.1 upstream: h2load, 8 connections x 8 streams
#   S4  one full TLS handshake per request: wrk, 16 connections, `Connection: close`
# TLS: one self-signed ECDSA P-256 certificate per host, chosen by SNI; TLS 1.2/1.3, ALPN
# h2 + http/1.1; session resumption off everywhere (wrk would resume otherwise), which
# the smoke check verifies.
#
# Method: one worker per proxy pinned to core $PROXY_CPU; the load generator and the
# upstream (nginx answering a 2-byte body on two ports) share core $LOADGEN_CPU. Each
# round runs every scenario for every proxy, the proxy order rotating between rounds;
# every run starts a fresh proxy, smoke-checks it, measures its idle RSS, warms up for
# $WARMUP s, then measures $DURATION s. Reported per scenario: medians over rounds of
# requests/s, p50/p99 latency, proxy CPU microseconds per request (utime+stime of the
# proxy's processes / requests) and RSS at the end of the run, plus idle RSS.
# Everything runs on 127.0.0.1 and every load loop is bounded by -d/-D and timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SCENARIOS=${SCENARIOS:-S1 S2 S3 S4}
CONNS=${CONNS:-64}
H2_CONNS=${H2_CONNS:-8}
H2_STREAMS=${H2_STREAMS:-8}
S4_CONNS=${S4_CONNS:-16}
PROXY_CPU=${PROXY_CPU:-1}
LOADGEN_CPU=${LOADGEN_CPU:-0}
PORT=${PORT:-28080}
TLS_PORT=${TLS_PORT:-28443}
UP_A=${UP_A:-28081}
UP_B=${UP_B:-28082}
ADMIN=${ADMIN:-28090}
ZIPKIN=${ZIPKIN:-28083}
RUN=${RUN:-$ROOT/target/bench-run}
CERTS=$RUN/certs
PROXIES=("$@")
((${#PROXIES[@]})) || PROXIES=(meshgate envoy nginx haproxy)

log() { printf 'bench: %s\n' "$*" >&2; }

setup() {
  local missing=()
  for c in wrk nginx haproxy h2load openssl curl; do command -v "$c" >/dev/null || missing+=("$c"); done
  if ((${#missing[@]})); then
    local pkgs=("${missing[@]/h2load/nghttp2-client}")
    log "installing ${pkgs[*]} (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
  fi
  [[ " ${PROXIES[*]} " == *" envoy "* ]] && scripts/install-peers.sh envoy
  if [[ " ${PROXIES[*]} " == *" meshgate "* ]]; then
    log "building meshgate (release)"
    cargo build --release --quiet
  fi
  mkdir -p "$RUN" "$CERTS"
  for h in a.bench.test b.bench.test; do
    [[ -s $CERTS/$h.pem ]] && continue
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
      -subj "/CN=$h" -addext "subjectAltName=DNS:$h" \
      -keyout "$CERTS/$h.key" -out "$CERTS/$h.crt" 2>/dev/null
    chmod 600 "$CERTS/$h.key"
    cat "$CERTS/$h.crt" "$CERTS/$h.key" > "$CERTS/$h.pem"
  done
}

render() { # template -> file, replacing @VARS@
  sed -e "s|@PORT@|$PORT|g" -e "s|@TLS_PORT@|$TLS_PORT|g" -e "s|@UP_A@|$UP_A|g" \
      -e "s|@UP_B@|$UP_B|g" -e "s|@ADMIN@|$ADMIN|g" -e "s|@ZIPKIN@|$ZIPKIN|g" -e "s|@RUN@|$RUN|g" -e "s|@CERTS@|$CERTS|g" \
      "benches/configs/$1" > "$RUN/$2"
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
      [[ ${POLICY:-0} == 1 ]] && python3 benches/configs/with_policy.py "$RUN/meshgate.json"
      [[ -n ${TRACING:-} ]] && python3 benches/configs/with_tracing.py "$TRACING" "$ZIPKIN" "$RUN/meshgate.json"
      local up=()
      ((${UPGRADES:-0} > 0)) && up=(--upgrade-socket "$RUN/upgrade.sock")
      taskset -c "$PROXY_CPU" "$ROOT/target/release/meshgate" gateway --xds-json "$RUN/meshgate.json" \
        --concurrency 1 --access-log off --admin-address "127.0.0.1:$ADMIN" \
        --health-address 127.0.0.1:0 --prometheus-address 127.0.0.1:0 "${up[@]}" 2>"$RUN/meshgate.log" &
      ;;
    envoy)
      render envoy.yaml envoy.yaml
      [[ ${POLICY:-0} == 1 ]] && python3 benches/configs/with_policy.py "$RUN/envoy.yaml"
      [[ -n ${TRACING:-} ]] && python3 benches/configs/with_tracing.py "$TRACING" "$ZIPKIN" "$RUN/envoy.yaml"
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
  wait_port "$PORT" && wait_port "$TLS_PORT"
}

tls_get() { # host [curl args...] -> body
  local h=$1; shift
  curl -sk --max-time 5 --resolve "$h:$TLS_PORT:127.0.0.1" "$@" "https://$h:$TLS_PORT/"
}

# Sends a TLS handshake with SNI $1 (optionally offering the session in $3), saving the
# session to $2; prints the s_client output.
handshake() {
  local in=()
  [[ -n ${3:-} ]] && in=(-sess_in "$3")
  # stdin stays open briefly so TLS 1.3 session tickets, sent after the handshake, arrive.
  (sleep 0.3) | timeout 5 openssl s_client -connect "127.0.0.1:$TLS_PORT" -servername "$1" \
    -sess_out "$2" "${in[@]}" 2>/dev/null || true
}

smoke() { # proxy scenario -> 0 when the proxy does what every proxy must
  local name=$1 s=$2 a b n
  case $s in
    S1)
      a=$(curl -s --max-time 5 -H 'Host: a.bench.test' "http://127.0.0.1:$PORT/")
      b=$(curl -s --max-time 5 -H 'Host: b.bench.test' "http://127.0.0.1:$PORT/")
      n=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' -H 'Host: c.bench.test' "http://127.0.0.1:$PORT/")
      [[ $a == A && $b == B && $n == 404 ]] || { log "$name $s smoke: a=$a b=$b other=$n"; return 1; }
      ;;
    S2|S3|S4)
      a=$(tls_get a.bench.test --http1.1)
      b=$(tls_get b.bench.test --http1.1)
      [[ $a == A && $b == B ]] || { log "$name $s smoke: a=$a b=$b over TLS"; return 1; }
      local cn; cn=$(handshake b.bench.test "$RUN/sess" | openssl x509 -noout -subject 2>/dev/null)
      [[ $cn == *b.bench.test* ]] || { log "$name $s smoke: certificate for SNI b.bench.test is '$cn'"; return 1; }
      if [[ $s == S3 ]]; then
        local v; v=$(tls_get a.bench.test --http2 -o /dev/null -w '%{http_version}')
        [[ $v == 2 ]] || { log "$name $s smoke: ALPN h2 not negotiated (HTTP/$v)"; return 1; }
      fi
      if [[ $s == S4 ]]; then
        handshake a.bench.test "$RUN/sess" >/dev/null
        if handshake a.bench.test "$RUN/sess2" "$RUN/sess" | grep -q '^Reused'; then
          log "$name $s smoke: resumed a TLS session (resumption must be off)"; return 1
        fi
      fi
      ;;
  esac
}

stop() { kill -TERM "$1" 2>/dev/null || true; for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done; kill -KILL "$1" 2>/dev/null || true; }

# wrk latency text (e.g. 1.23ms, 850.00us, 1.2s) -> microseconds
to_us() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us/,"",v); print v+0} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} else print 0 }'; }

# Runs the load of scenario $1 for $2 seconds; prints "requests rps p50_us p99_us errors".
load() {
  local s=$1 d=$2 out
  local W=(timeout $((d + 15)) taskset -c "$LOADGEN_CPU")
  case $s in
    S1) out=$(HOSTS="a.bench.test b.bench.test" "${W[@]}" wrk -t1 -c"$CONNS" -d"${d}s" --latency -s benches/load.lua "http://127.0.0.1:$PORT/") ;;
    S2) out=$(CONNECT=127.0.0.1 HOSTS=a.bench.test "${W[@]}" wrk -t1 -c"$CONNS" -d"${d}s" --latency -s benches/load.lua "https://a.bench.test:$TLS_PORT/") ;;
    S4) out=$(CLOSE=1 CONNECT=127.0.0.1 HOSTS=a.bench.test "${W[@]}" wrk -t1 -c"$S4_CONNS" -d"${d}s" --latency -s benches/load.lua "https://a.bench.test:$TLS_PORT/") ;;
    S3)
      local lf="$RUN/h2load.log"
      out=$("${W[@]}" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$d" --connect-to="127.0.0.1:$TLS_PORT" \
        --log-file="$lf" "https://a.bench.test:$TLS_PORT/" 2>&1 || true)
      local reqs rps failed pct
      reqs=$(awk '/^requests:/{print $8}' <<<"$out")   # succeeded
      failed=$(awk '/^requests:/{print $10+$12+$14}' <<<"$out")
      rps=$(awk '/^finished in/{print $4}' <<<"$out")
      pct=$(awk -F'\t' '{print $3}' "$lf" 2>/dev/null | sort -n | awk '{a[NR]=$1} END{ if (NR) printf "%d %d", a[int(NR*0.5)+1], a[int(NR*0.99)+1]; else print "0 0" }')
      echo "${reqs:-0} ${rps:-0} $pct ${failed:-0}"
      return
      ;;
  esac
  local reqs rps p50 p99 errors
  reqs=$(awk '/requests in/{print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  p50=$(to_us "$(awk '$1=="50%"{print $2}' <<<"$out")")
  p99=$(to_us "$(awk '$1=="99%"{print $2}' <<<"$out")")
  errors=$(awk '/Non-2xx|Socket errors/{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i} END{print s+0}' <<<"$out")
  echo "${reqs:-0} ${rps:-0} $p50 $p99 $errors"
}

alive() { [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat") != Z ]]; }

# Upgrades meshgate (SIGUSR2) $3 times, evenly spread over $2 seconds, starting from
# process $1; logs each hand-over (signal to the successor serving, to the old process
# gone) and writes the last process id to $RUN/upgraded.pid.
upgrade_during() {
  local pid=$1 d=$2 k=$3 gap u
  gap=$(awk -v d="$d" -v k="$k" 'BEGIN{printf "%.2f", d/(k+1)}')
  for ((u = 1; u <= k; u++)); do
    sleep "$gap"
    local old=$pid t0 t1 t2 new
    t0=$(date +%s%N)
    kill -USR2 "$old"
    # Serving: the old process logs it when the successor says so.
    for _ in $(seq 1 5000); do
      (($(grep -c 'the successor serves' "$RUN/meshgate.log" || true) >= u)) && break
      sleep 0.002
    done
    t1=$(date +%s%N)
    while alive "$old"; do sleep 0.005; done
    t2=$(date +%s%N)
    new=$(pgrep -n -f "$ROOT/target/release/meshgate gateway")
    pid=$new
    log "upgrade $u: successor $new serving after $(((t1 - t0) / 1000000)) ms, old $old gone after $(((t2 - t0) / 1000000)) ms"
    echo -e "$u\t$(((t1 - t0) / 1000000))\t$(((t2 - t0) / 1000000))" >> "$RUN/upgrades.tsv"
  done
  echo "$pid" > "$RUN/upgraded.pid"
}

run_one() { # proxy scenario round -> appends a TSV row
  local name=$1 s=$2 round=$3
  if ! start_proxy "$name" || ! smoke "$name" "$s"; then
    stop "${PROXY_PID:-0}"; echo -e "$s\t$name\t$round\tsmoke-failed" >> "$RUN/raw.tsv"; return
  fi
  sleep 0.5
  local idle; idle=$(rss_kb "$PROXY_PID")
  load "$s" "$WARMUP" >/dev/null
  local t0 t1 m
  t0=$(cpu_ticks "$PROXY_PID")
  if [[ $name == meshgate ]] && ((${UPGRADES:-0} > 0)); then
    upgrade_during "$PROXY_PID" "$DURATION" "$UPGRADES" &
    local upgrader=$!
    m=$(load "$s" "$DURATION")
    wait "$upgrader"
    PROXY_PID=$(cat "$RUN/upgraded.pid")
    t1=$t0 # the CPU of processes that exited is not counted: no CPU figure
  else
    m=$(load "$s" "$DURATION")
    t1=$(cpu_ticks "$PROXY_PID")
  fi
  local rss; rss=$(rss_kb "$PROXY_PID")
  stop "$PROXY_PID"
  local reqs rps p50 p99 errors cpu_us
  read -r reqs rps p50 p99 errors <<<"$m"
  cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$reqs" 'BEGIN{ if (n>0) printf "%.1f", d/hz*1e6/n; else print 0 }')
  echo -e "$s\t$name\t$round\t$rps\t$p50\t$p99\t$cpu_us\t$rss\t$idle\t$errors" >> "$RUN/raw.tsv"
  log "$s $name round $round: $rps req/s, p50 ${p50}us, p99 ${p99}us, ${cpu_us}us CPU/req, RSS ${rss} kB (idle ${idle} kB), errors $errors"
}

median() { sort -g | awk '{a[NR]=$1} END{ if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

setup
: > "$RUN/raw.tsv"
: > "$RUN/upgrades.tsv"
start_upstream
trap 'stop $UPSTREAM_PID' EXIT
n=${#PROXIES[@]}
for ((r = 1; r <= ROUNDS; r++)); do
  for s in $SCENARIOS; do
    for ((i = 0; i < n; i++)); do
      run_one "${PROXIES[$(((i + r - 1) % n))]}" "$s" "$r"
    done
  done
done

mib() { awk -v k="$1" 'BEGIN{ if (k=="-") print "-"; else printf "%.1f", k/1024 }'; }
printf '\n| scenario | proxy | req/s | p50 µs | p99 µs | CPU µs/req | RSS MiB | idle RSS MiB | errors |\n|---|---|---|---|---|---|---|---|---|\n'
for s in $SCENARIOS; do
  for p in "${PROXIES[@]}"; do
    col() { awk -F'\t' -v s="$s" -v p="$p" -v c="$1" '$1==s && $2==p && NF>4 {print $c}' "$RUN/raw.tsv" | median; }
    if ! awk -F'\t' -v s="$s" -v p="$p" '$1==s && $2==p && NF>4 {f=1} END{exit !f}' "$RUN/raw.tsv"; then
      printf '| %s | %s | smoke-failed | | | | | | |\n' "$s" "$p"; continue
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$s" "$p" "$(col 4)" "$(col 5)" "$(col 6)" \
      "$(col 7)" "$(mib "$(col 8)")" "$(mib "$(col 9)")" "$(col 10)"
  done
done
printf '\n%s rounds x %s s; S1/S2 %s connections, S3 %s x %s streams, S4 %s connections;\nproxy on CPU %s, load generator + upstream on CPU %s; raw rows in %s\n' \
  "$ROUNDS" "$DURATION" "$CONNS" "$H2_CONNS" "$H2_STREAMS" "$S4_CONNS" "$PROXY_CPU" "$LOADGEN_CPU" "$RUN/raw.tsv"
