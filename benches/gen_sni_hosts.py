#!/usr/bin/env python3
"""Writes the configuration folder of the SNI scale measurement (docs/performance.md).

    benches/gen_sni_hosts.py OUT_DIR N [UPSTREAM_PORT]

OUT_DIR gets one Istio Gateway (namespace istio-system, selector istio=ingressgateway,
port 8443) with N servers, one per host h-I.example.com (I = 0..N-1), each `tls.mode:
SIMPLE` with its own `credentialName: h-I-cert`; one VirtualService routing every host to
one ServiceEntry (`bench-upstream.internal`, 127.0.0.1:UPSTREAM_PORT, default 18080); and
N Kubernetes Secrets under secrets/, one file each, with `tls.crt`/`tls.key` (a
self-signed ECDSA P-256 certificate for the host, valid 30 days, made now). It also
writes hosts.txt (the host names, in order).

Needs Python 3 with `cryptography` (Debian: apt-get install python3-cryptography;
pip install cryptography).
"""
import datetime
import os
import sys

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
except ImportError:
    sys.exit("gen_sni_hosts.py needs the `cryptography` package: "
             "apt-get install python3-cryptography (or pip install cryptography)")


def indent(pem: bytes, n: int) -> str:
    pad = " " * n
    return "".join(pad + line + "\n" for line in pem.decode().splitlines())


def main() -> None:
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    out, n = sys.argv[1], int(sys.argv[2])
    port = int(sys.argv[3]) if len(sys.argv) == 4 else 18080
    os.makedirs(os.path.join(out, "secrets"), exist_ok=True)
    hosts = [f"h-{i}.example.com" for i in range(n)]
    now = datetime.datetime.now(datetime.timezone.utc)
    for i, host in enumerate(hosts):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with open(os.path.join(out, "secrets", f"h-{i}-cert.yaml"), "w") as f:
            f.write(
                "apiVersion: v1\nkind: Secret\n"
                f"metadata: {{name: h-{i}-cert, namespace: istio-system}}\n"
                "type: kubernetes.io/tls\nstringData:\n"
                f"  tls.crt: |\n{indent(cert_pem, 4)}"
                f"  tls.key: |\n{indent(key_pem, 4)}"
            )
    with open(os.path.join(out, "gateway.yaml"), "w") as f:
        f.write(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\n"
            "metadata: {name: sni, namespace: istio-system}\n"
            "spec:\n  selector: {istio: ingressgateway}\n  servers:\n"
        )
        for i, host in enumerate(hosts):
            f.write(
                f"  - port: {{number: 8443, name: https-{i}, protocol: HTTPS}}\n"
                f"    hosts: [{host}]\n"
                f"    tls: {{mode: SIMPLE, credentialName: h-{i}-cert}}\n"
            )
    with open(os.path.join(out, "routes.yaml"), "w") as f:
        f.write(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
            "metadata: {name: sni, namespace: istio-system}\n"
            "spec:\n  gateways: [sni]\n  hosts:\n"
        )
        for host in hosts:
            f.write(f"  - {host}\n")
        f.write(
            "  http:\n  - route:\n"
            "    - destination: {host: bench-upstream.internal, port: {number: %d}}\n"
            "---\n"
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
            "metadata: {name: bench-upstream, namespace: istio-system}\n"
            "spec:\n  hosts: [bench-upstream.internal]\n  location: MESH_INTERNAL\n"
            "  resolution: STATIC\n"
            "  ports: [{number: %d, name: http, protocol: HTTP}]\n"
            "  endpoints: [{address: 127.0.0.1}]\n" % (port, port)
        )
    with open(os.path.join(out, "hosts.txt"), "w") as f:
        f.write("".join(h + "\n" for h in hosts))


if __name__ == "__main__":
    main()
