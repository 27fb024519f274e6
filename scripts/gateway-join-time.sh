#!/usr/bin/env bash
# Time from `meshgate gateway --xds 127.0.0.1:TLS --ca-root ... --token-file ...` starting
# to the first 200 through it: key, CSR, certificate with a join token, ADS over mutual
# TLS, first full sync, listener bound, request routed. Prints each run and the median.
#   MESHGATE=target/release/meshgate RUNS=7 scripts/gateway-join-time.sh
# PLAIN=1 joins the plaintext port (15010) instead, for comparison.
# MESH=1 routes the request over mesh mTLS (DestinationRule ISTIO_MUTUAL) to a second
# joined gateway acting as the workload's sidecar (a Gateway server with ISTIO_MUTUAL):
# the time to the first request that crosses the mesh with the new identity.
set -euo pipefail
BIN=${MESHGATE:-target/release/meshgate}
RUNS=${RUNS:-5}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
XDS=$(port); DBG=$(port); TLS=$(port); GWP=$(port); UP=$(port)

if [ -n "${MESH:-}" ]; then DEST_HOST=app.edge.svc.cluster.local DEST_PORT=8080; else DEST_HOST=up.internal DEST_PORT=$UP; fi
mkdir -p "$work/config" "$work/www"
echo hello > "$work/www/index.html"
python3 -m http.server "$UP" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
pids+=($!)
cat > "$work/config/mesh.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: edge}
spec:
  selector: {proxy: gw}
  servers:
  - port: {number: $GWP, name: http, protocol: HTTP}
    bind: 127.0.0.1
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: up, namespace: edge}
spec:
  hosts: [up.internal]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: $UP, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: route, namespace: edge}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{destination: {host: $DEST_HOST, port: {number: $DEST_PORT}}}]
YAML
if [ -n "${MESH:-}" ]; then
    SC=$(port)
    cat > "$work/config/sidecar.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: sidecar, namespace: edge}
spec:
  selector: {proxy: sidecar}
  servers:
  - port: {number: $SC, name: https, protocol: HTTPS}
    bind: 127.0.0.1
    hosts: ["*"]
    tls: {mode: ISTIO_MUTUAL}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inbound, namespace: edge}
spec:
  hosts: ["*"]
  gateways: [sidecar]
  http:
  - route: [{destination: {host: up.internal, port: {number: $UP}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: app, namespace: edge}
spec:
  hosts: [app.edge.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: $SC}, serviceAccount: app}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: app, namespace: edge}
spec:
  host: app.edge.svc.cluster.local
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
YAML
fi

"$BIN" control-plane --config "$work/config" --ca-dir "$work/ca" \
    --xds-addr "127.0.0.1:$XDS" --debug-addr "127.0.0.1:$DBG" --xds-tls-addr "127.0.0.1:$TLS" \
    >"$work/cp.log" 2>&1 &
pids+=($!)
cp=$!
until curl -sf "http://127.0.0.1:$DBG/ready" >/dev/null; do
    kill -0 "$cp" 2>/dev/null || { cat "$work/cp.log"; exit 1; }
    sleep 0.05
done

if [ -n "${MESH:-}" ]; then
    "$BIN" token create --ca-dir "$work/ca" --namespace edge --service-account app > "$work/app.token"
    "$BIN" gateway --xds "127.0.0.1:$TLS" --ca-root "$work/ca/root-cert.pem" --token-file "$work/app.token" \
        --service-account app --namespace edge --node-id sidecar --labels proxy=sidecar \
        --concurrency 1 --access-log off --admin-address "127.0.0.1:$(port)" \
        --health-address "127.0.0.1:$(port)" --prometheus-address "127.0.0.1:$(port)" \
        >"$work/sidecar.log" 2>&1 &
    pids+=($!)
    until (exec 3<>"/dev/tcp/127.0.0.1/$SC") 2>/dev/null; do sleep 0.05; done
fi

times=()
for i in $(seq "$RUNS"); do
    "$BIN" token create --ca-dir "$work/ca" --namespace edge --service-account ingress > "$work/token"
    adm=$(port); hlt=$(port); prm=$(port)
    if [ -n "${PLAIN:-}" ]; then
        join=(--xds "127.0.0.1:$XDS")
    else
        join=(--xds "127.0.0.1:$TLS" --ca-root "$work/ca/root-cert.pem" --token-file "$work/token"
              --service-account ingress)
    fi
    start=$(date +%s%N)
    "$BIN" gateway "${join[@]}" \
        --namespace edge --node-id "gw-$i" --labels proxy=gw \
        --concurrency 1 --access-log off --admin-address "127.0.0.1:$adm" \
        --health-address "127.0.0.1:$hlt" --prometheus-address "127.0.0.1:$prm" \
        >"$work/gw-$i.log" 2>&1 &
    gw=$!
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GWP/" || true)" = 200 ]; do
        kill -0 "$gw" || { cat "$work/gw-$i.log"; exit 1; }
        sleep 0.002
    done
    end=$(date +%s%N)
    ms=$(( (end - start) / 1000000 ))
    echo "run $i: ${ms} ms"
    times+=("$ms")
    kill "$gw"; wait "$gw" 2>/dev/null || true
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print "median: " a[int((NR+1)/2)] " ms of " NR " runs"}'
