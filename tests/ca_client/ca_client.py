#!/usr/bin/env python3
"""An Istio CSR client written without meshgate's code: grpcio for the call, grpcio-tools
for the messages (compiled from istio_ca.proto at run time), cryptography for the key,
the CSR and the checks of what comes back.

One request per run. Prints one JSON object:
  {"code": "OK" | gRPC status name, "details": str,
   "cert_chain": [PEM...], "leaf": {"uris": [...], "dns": [...], "ips": [...],
   "lifetime_s": int, "not_after_from_now_s": int}, "chain_verified": bool}
and, with --out PREFIX and an OK answer, writes PREFIX.key and PREFIX.chain.
"""
import argparse
import datetime
import json
import os
import sys


def compile_proto(work):
    """Compiles istio_ca.proto into `work` (once) and imports it."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(work, "pb")
    if not os.path.exists(os.path.join(out, "istio_ca_pb2_grpc.py")):
        import grpc_tools
        from grpc_tools import protoc

        os.makedirs(out, exist_ok=True)
        well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        rc = protoc.main(
            [
                "protoc",
                f"-I{here}",
                f"-I{well_known}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                os.path.join(here, "istio_ca.proto"),
            ]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed: {rc}")
    sys.path.insert(0, out)
    import istio_ca_pb2
    import istio_ca_pb2_grpc

    return istio_ca_pb2, istio_ca_pb2_grpc


def make_csr(uris, dns, ips, corrupt, rsa_bits):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    if rsa_bits:
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ca-client")])
    )
    names = (
        [x509.UniformResourceIdentifier(u) for u in uris]
        + [x509.DNSName(d) for d in dns]
        + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    if corrupt:
        # The last byte belongs to the signature.
        der[-1] ^= 0x01
    import base64
    import textwrap

    pem = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + "\n".join(textwrap.wrap(base64.b64encode(bytes(der)).decode(), 64))
        + "\n-----END CERTIFICATE REQUEST-----\n"
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem, key_pem, key.public_key()


def describe(chain, root_pem, public_key):
    """Facts about the returned chain, checked with cryptography alone."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certs = [x509.load_pem_x509_certificate(c.encode()) for c in chain]
    leaf = certs[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    now = datetime.datetime.now(datetime.timezone.utc)
    info = {
        "uris": san.get_values_for_type(x509.UniformResourceIdentifier),
        "dns": san.get_values_for_type(x509.DNSName),
        "ips": [str(i) for i in san.get_values_for_type(x509.IPAddress)],
        "lifetime_s": int(
            (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds()
        ),
        "not_after_from_now_s": int((leaf.not_valid_after_utc - now).total_seconds()),
        "same_public_key": leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    verified = True
    try:
        for child, parent in zip(certs, certs[1:]):
            child.verify_directly_issued_by(parent)
        root = x509.load_pem_x509_certificate(root_pem)
        verified = certs[-1] == root
        root.verify_directly_issued_by(root)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        info["verify_error"] = repr(e)
        verified = False
    return info, verified


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--root", required=True, help="root-cert.pem to verify the server with")
    p.add_argument("--work", required=True, help="directory for the compiled messages")
    p.add_argument("--server-name", help="TLS name to verify instead of the address")
    p.add_argument("--token")
    p.add_argument("--uri", action="append", default=[])
    p.add_argument("--dns", action="append", default=[])
    p.add_argument("--ip", action="append", default=[])
    p.add_argument("--ttl", type=int, default=0)
    p.add_argument("--corrupt-signature", action="store_true")
    p.add_argument("--rsa-bits", type=int, help="an RSA key of this size instead of P-256")
    p.add_argument("--client-cert", help="PEM chain for mutual TLS (renewal)")
    p.add_argument("--client-key")
    p.add_argument("--out", help="write PREFIX.key and PREFIX.chain on success")
    a = p.parse_args()

    import grpc
    from google.protobuf import struct_pb2

    pb, pb_grpc = compile_proto(a.work)
    root = open(a.root, "rb").read()
    cert = open(a.client_cert, "rb").read() if a.client_cert else None
    key = open(a.client_key, "rb").read() if a.client_key else None
    creds = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )
    options = []
    if a.server_name:
        options.append(("grpc.ssl_target_name_override", a.server_name))
    csr, key_pem, public_key = make_csr(a.uri, a.dns, a.ip, a.corrupt_signature, a.rsa_bits)
    metadata = struct_pb2.Struct()
    metadata.update({"WorkloadName": "ca-client", "ClusterID": "Kubernetes"})
    req = pb.IstioCertificateRequest(csr=csr, validity_duration=a.ttl, metadata=metadata)
    call_metadata = [("authorization", f"Bearer {a.token}")] if a.token else []
    result = {}
    with grpc.secure_channel(a.addr, creds, options=options) as channel:
        stub = pb_grpc.IstioCertificateServiceStub(channel)
        try:
            resp = stub.CreateCertificate(req, metadata=call_metadata, timeout=20)
        except grpc.RpcError as e:
            result = {"code": e.code().name, "details": e.details()}
        else:
            chain = list(resp.cert_chain)
            leaf, verified = describe(chain, root, public_key)
            result = {
                "code": "OK",
                "details": "",
                "cert_chain": chain,
                "leaf": leaf,
                "chain_verified": verified,
            }
            if a.out:
                with open(a.out + ".key", "w") as f:
                    f.write(key_pem)
                os.chmod(a.out + ".key", 0o600)
                with open(a.out + ".chain", "w") as f:
                    f.write("".join(c if c.endswith("\n") else c + "\n" for c in chain))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
