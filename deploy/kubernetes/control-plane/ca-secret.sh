#!/bin/sh
# Makes the mesh CA's directory for the control plane's Secret `meshgate-ca`: a
# self-signed ECDSA P-256 root valid 10 years (root-cert.pem, ca-key.pem) and the
# join-token key (token-key), then prints the kubectl commands that create the Secret
# and the ConfigMap of the root that joining gateways trust.
#
#   deploy/kubernetes/control-plane/ca-secret.sh ca [TRUST_DOMAIN]
#
# For Istio's plug-in layout (an intermediate from your own PKI), put ca-cert.pem,
# ca-key.pem, cert-chain.pem and root-cert.pem in the directory instead of running the
# openssl lines; token-key is needed in both layouts (the Secret is read-only).
set -eu
dir=${1:?usage: ca-secret.sh DIR [TRUST_DOMAIN]}
trust_domain=${2:-cluster.local}
umask 077
mkdir -p "$dir"
if [ ! -e "$dir/ca-key.pem" ] && [ ! -e "$dir/ca-cert.pem" ]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca-key.pem"
  openssl req -x509 -new -key "$dir/ca-key.pem" -sha256 -days 3650 \
    -subj "/O=$trust_domain/CN=meshgate mesh root CA" \
    -addext basicConstraints=critical,CA:true \
    -addext keyUsage=critical,keyCertSign,cRLSign \
    -addext subjectKeyIdentifier=hash \
    -out "$dir/root-cert.pem"
  chmod 0644 "$dir/root-cert.pem"
fi
if [ ! -e "$dir/token-key" ]; then
  openssl rand -hex 32 > "$dir/token-key"
fi
cat <<MSG
kubectl create namespace istio-system --dry-run=client -o yaml | kubectl apply -f -
kubectl create secret generic meshgate-ca -n istio-system --from-file=$dir
kubectl create configmap meshgate-ca-root-cert -n istio-system --from-file=root-cert.pem=$dir/root-cert.pem
MSG
