//! Helpers for tests of the mesh's identities: a `meshgate control-plane --ca-dir`
//! process (ADS over mutual TLS on its 15012-style port, serving each verified proxy
//! its workload certificate `default` and trust bundle `ROOTCA` over SDS), certificates
//! of its CA written as files, and a real Envoy "sidecar" bootstrapped by
//! `meshgate bootstrap envoy` that takes its identity from that control plane.
use crate::support::xds_mesh::{CaPorts, ControlPlaneProcess};
use crate::support::{Envoy, free_port};
use meshgate::ca::{Ca, CaOptions, Csr, SpiffeId};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A `meshgate control-plane --config WORK/config --ca-dir CA_DIR` process on fresh
/// ports.
pub struct MeshControlPlane {
    pub process: ControlPlaneProcess,
    pub xds_port: u16,
    pub tls_port: u16,
    pub debug_port: u16,
}

impl MeshControlPlane {
    /// Starts it (the configuration directory is created if missing) and waits until it
    /// serves both ports.
    pub fn start(work: &Path, ca_dir: &Path, extra: &[&str]) -> MeshControlPlane {
        let config = work.join("config");
        std::fs::create_dir_all(&config).unwrap();
        let ports = CaPorts::free();
        let process = ControlPlaneProcess::start_with_ca(&config, work, ca_dir, ports, extra);
        MeshControlPlane {
            process,
            xds_port: ports.xds,
            tls_port: ports.tls,
            debug_port: ports.debug,
        }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// A certificate of the CA in `ca_dir` for `identity`, from a CSR: (chain, key) files
/// `cert-chain.pem` and `key.pem` in `out`.
pub fn issue_files(ca_dir: &Path, identity: &SpiffeId, out: &Path) -> (PathBuf, PathBuf) {
    let ca = Ca::load_or_create(ca_dir, CaOptions::default()).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.uri().try_into().unwrap())];
    let csr = Csr::from_pem(&params.serialize_request(&key).unwrap().pem().unwrap()).unwrap();
    let issued = ca.sign(&csr, identity, None).unwrap();
    std::fs::create_dir_all(out).unwrap();
    let (chain, key_path) = (out.join("cert-chain.pem"), out.join("key.pem"));
    std::fs::write(&chain, issued.chain_pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (chain, key_path)
}

/// Istio's file-mounted mesh certificates for `identity` in `out`: `cert-chain.pem`,
/// `key.pem` and `root-cert.pem` of the CA in `ca_dir` (what `--mesh-certs` reads).
pub fn mesh_cert_dir(ca_dir: &Path, identity: &SpiffeId, out: &Path) -> PathBuf {
    let ca = Ca::load_or_create(ca_dir, CaOptions::default()).unwrap();
    let (issued, key) = ca.issue_workload(identity, None).unwrap();
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("cert-chain.pem"), issued.chain_pem()).unwrap();
    std::fs::write(out.join("key.pem"), key).unwrap();
    std::fs::write(out.join("root-cert.pem"), ca.root_pem()).unwrap();
    out.to_path_buf()
}

/// An SDS reference to a secret on the ADS stream.
pub fn sds(name: &str) -> Value {
    json!({"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}})
}

/// The TLS transport socket of an Envoy server with the mesh identity: `default` served,
/// clients verified against `ROOTCA` and required.
pub fn mesh_downstream_socket() -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [sds("default")],
                "validation_context_sds_secret_config": sds("ROOTCA")
            }
        }
    })
}

/// The TLS transport socket of an Envoy client with the mesh identity, as Istio's
/// ISTIO_MUTUAL: the certificate of `certs` (a [`mesh_cert_dir`]) presented, the server
/// verified against its root (and its SPIFFE id when `san` is given), SNI and the
/// in-mesh ALPN. Files rather than SDS: Envoy 1.40 crashes (SIGSEGV while loading the
/// bootstrap) on a static cluster whose secrets come by SDS over ADS.
pub fn mesh_upstream_socket(certs: &Path, sni: &str, san: Option<&str>) -> Value {
    let mut validation = json!({"trusted_ca": {"filename": certs.join("root-cert.pem")}});
    if let Some(san) = san {
        validation["match_typed_subject_alt_names"] =
            json!([{"san_type": "URI", "matcher": {"exact": san}}]);
    }
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": sni,
            "common_tls_context": {
                "alpn_protocols": ["istio-peer-exchange", "istio"],
                "tls_certificates": [{
                    "certificate_chain": {"filename": certs.join("cert-chain.pem")},
                    "private_key": {"filename": certs.join("key.pem")}
                }],
                "validation_context": validation
            }
        }
    })
}

/// A real Envoy with the mesh identity `identity`: its bootstrap is written by
/// `meshgate bootstrap envoy` (ADS over mutual TLS to the control plane's `xds_tls_port`, with a certificate of the
/// CA in `ca_dir` for the connection), and `listeners`/`clusters` are added as static
/// resources (they may use `default`/`ROOTCA` by SDS). Returns once Envoy is ready
/// (its secrets arrived).
pub fn mesh_envoy(
    xds_tls_port: u16,
    ca_dir: &Path,
    identity: &SpiffeId,
    work: &Path,
    listeners: Vec<Value>,
    clusters: Vec<Value>,
) -> Envoy {
    std::fs::create_dir_all(work).unwrap();
    let (chain, key) = issue_files(ca_dir, identity, &work.join("xds-cert"));
    let admin = free_port();
    let generated = work.join("bootstrap.json");
    let status = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["bootstrap", "envoy", "--xds"])
        .arg(format!("127.0.0.1:{xds_tls_port}"))
        .args(["--node-id", &format!("{}-1", identity.service_account)])
        .args(["--namespace", &identity.namespace])
        .args(["--labels", &format!("app={}", identity.service_account)])
        .args(["--admin-port", &admin.to_string(), "--format", "json"])
        .arg("--xds-root-cert")
        .arg(ca_dir.join("root-cert.pem"))
        .arg("--xds-cert-chain")
        .arg(&chain)
        .arg("--xds-key")
        .arg(&key)
        .args(["--xds-server-name", "istiod.istio-system.svc"])
        .arg("--out")
        .arg(&generated)
        .status()
        .unwrap();
    assert!(status.success(), "meshgate bootstrap envoy failed");
    let mut bootstrap: Value =
        serde_json::from_str(&std::fs::read_to_string(&generated).unwrap()).unwrap();
    let statics = &mut bootstrap["static_resources"];
    if statics["listeners"].is_null() {
        statics["listeners"] = json!([]);
    }
    statics["listeners"]
        .as_array_mut()
        .unwrap()
        .extend(listeners);
    statics["clusters"].as_array_mut().unwrap().extend(clusters);
    let path = work.join("envoy.json");
    std::fs::write(&path, serde_json::to_string_pretty(&bootstrap).unwrap()).unwrap();
    let envoy = Envoy::spawn(&path, admin, work);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !matches!(envoy.admin_get("/ready"), Ok((200, _))) {
        assert!(
            std::time::Instant::now() < deadline,
            "Envoy not ready with its mesh secrets:\n{}",
            envoy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    envoy
}

/// An HTTP connection manager that answers every request from the `echo` cluster,
/// with Istio's XFCC settings and an access log of the TLS facts to `log`.
pub fn echo_hcm(log: &Path) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "inbound",
            "forward_client_cert_details": "SANITIZE_SET",
            "set_current_client_cert_details": {"subject": true, "uri": true, "dns": true},
            "access_log": [{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": log,
                    "log_format": {"text_format_source": {"inline_string":
                        "sni=%REQUESTED_SERVER_NAME% peer=%DOWNSTREAM_PEER_URI_SAN%\n"}}
                }
            }],
            "route_config": {"virtual_hosts": [{
                "name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]
            }]},
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
            }]
        }
    })
}

/// A static cluster of one loopback endpoint, with `transport_socket` if given.
pub fn static_cluster(name: &str, port: u16, transport_socket: Option<Value>) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        ]}]}
    });
    if let Some(ts) = transport_socket {
        c["transport_socket"] = ts;
    }
    c
}

/// One step of a root rotation of the CA directory, with `meshgate ca rotate-root`
/// (`add`, `sign`, `retire`). After `add`, the new root is `next-root/root-cert.pem`.
pub fn rotate_root(ca_dir: &Path, step: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["ca", "rotate-root", "--ca-dir"])
        .arg(ca_dir)
        .args(["--step", step])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rotate-root --step {step}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
