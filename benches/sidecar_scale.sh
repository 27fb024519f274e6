#!/usr/bin/env bash
# Sidecar configuration at scale: S services (each a ServiceEntry with 3 endpoints, a
# DestinationRule with subsets v1/v2 and a VirtualService bound to `mesh` splitting
# 90/10) served by `meshgate control-plane` to P simulated sidecars, measured with an
# xDS load tool that behaves like Envoy 1.40 (xdsload: CDS wildcard, EDS by name, LDS,
# RDS by the connection managers' route names, ACKs).
#
#   XDSLOAD=/path/to/xdsload benches/sidecar_scale.sh [--sotw] [xdsload flags...]
#   PROXIES=1000 SERVICES=1000 CONNS=64 CHANGES=3 MESHGATE=target/release/meshgate ...
#
# Each simulated sidecar has its own pod IP (10.a.b.c from its index) in namespace
# default; none of them is an endpoint of a service. The changes alternate the split of
# svc-0 between 80/20 and 90/10. Prints xdsload's summary, then the control plane's CPU
# time and peak RSS (VmHWM).
set -euo pipefail
cd "$(dirname "$0")/.."
XDSLOAD=${XDSLOAD:?set XDSLOAD to the xdsload binary}
PROXIES=${PROXIES:-1000}
SERVICES=${SERVICES:-1000}
CONNS=${CONNS:-64}
CHANGES=${CHANGES:-3}
BIN=${MESHGATE:-target/release/meshgate}
PORT=${PORT:-25910}
DEBUG_PORT=${DEBUG_PORT:-25914}

BENCH=$(ls -t target/release/deps/controlplane_convergence-* | grep -v '\.d$' | head -1)
DIR=$(mktemp -d)
PID=
cleanup() {
  [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT
"$BENCH" --write-config "$DIR" --services "$SERVICES" --mesh-routes >/dev/null

RUST_LOG=${RUST_LOG:-warn} "$BIN" control-plane --config "$DIR" \
  --xds-addr "127.0.0.1:$PORT" --debug-addr "127.0.0.1:$DEBUG_PORT" 2>"$DIR.cp.log" &
PID=$!
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$DEBUG_PORT/ready" >/dev/null && break
  sleep 0.1
done
cpu() { awk '{print ($14+$15)/100}' "/proc/$PID/stat"; }
echo "control plane CPU before the sidecars: $(cpu) s"

C1="sed -i -e 's/weight: 90/weight: 80/' -e 's/weight: 10/weight: 20/' $DIR/svc-0.yaml"
C2="sed -i -e 's/weight: 80/weight: 90/' -e 's/weight: 20/weight: 10/' $DIR/svc-0.yaml"
rc=0
"$XDSLOAD" --xds "127.0.0.1:$PORT" --proxies "$PROXIES" --conns "$CONNS" \
  --labels app=client --node-template 'sidecar~{ip}~client-{i}.default~default.svc.cluster.local' \
  --change-cmd "$C1" --change-cmd "$C2" --changes "$CHANGES" --timeout 600 "$@" || rc=$?
echo "xdsload exit: $rc"
echo "control plane CPU in all: $(cpu) s; $(grep VmHWM "/proc/$PID/status")"
