//! The mesh's own secrets over SDS, as Istio names them: a real Envoy 1.40 joined over
//! mutual TLS (15012) gets its workload certificate (`default`) and the trust bundle
//! (`ROOTCA`) from the control plane, serves mTLS with them, and follows their
//! rotation; a plaintext (15010) stream never gets a key.
mod support;

use meshgate::ca::SpiffeId;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::mesh_identity::{MeshControlPlane as ControlPlane, issue_files, rotate_root, sds};
use support::*;

const APP: &str = "spiffe://cluster.local/ns/edge/sa/app";

/// An Envoy whose only listener (on `port`) is a static inbound one requiring client
/// certificates, with `default` and `ROOTCA` from SDS over ADS; ADS goes to `xds_port`,
/// over mutual TLS with `tls` = (root, chain, key) or plaintext without.
fn envoy(work: &Path, xds_port: u16, tls: Option<(&Path, &Path, &Path)>, port: u16) -> Envoy {
    let hello = json!({
        "name": "envoy.filters.network.direct_response",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config",
            "response": {"inline_string": "hello\n"}
        }
    });
    envoy_with(work, xds_port, tls, "app-1", inbound(port, hello), None)
}

/// As [`envoy`], with the inbound listener forwarding to an application on `app`
/// (Envoy's direct response can close a connection before its TLS handshake is done).
fn app_envoy(
    work: &Path,
    xds_port: u16,
    tls: Option<(&Path, &Path, &Path)>,
    port: u16,
    app: u16,
) -> Envoy {
    let forward = json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "inbound",
            "cluster": "app"
        }
    });
    let cluster = json!({
        "name": "app",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": app}}}}
        ]}]}
    });
    envoy_with(
        work,
        xds_port,
        tls,
        "app-1",
        inbound(port, forward),
        Some(cluster),
    )
}

/// A plain TCP application on loopback that says hello to each connection and closes.
fn hello_app() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut conn, b"hello\n");
        }
    });
    port
}

/// A static inbound listener on `port` requiring client certificates, with `default`
/// and `ROOTCA` from SDS over ADS, then `filter`.
fn inbound(port: u16, filter: Value) -> Value {
    json!({
        "name": "inbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "tls_certificate_sds_secret_configs": [sds("default")],
                        "validation_context_sds_secret_config": sds("ROOTCA")
                    }
                }
            },
            "filters": [filter]
        }]
    })
}

/// A secret on its own SDS stream to the control plane, as Istio's sidecars take theirs
/// (Envoy 1.40 crashes at start on a static cluster whose secrets come over ADS).
fn sds_stream(name: &str) -> Value {
    json!({"name": name, "sds_config": {
        "api_config_source": {
            "api_type": "DELTA_GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]
        },
        "resource_api_version": "V3"
    }})
}

/// An Envoy that forwards plain TCP on `port` to `upstream` over mutual TLS with
/// `default` and `ROOTCA` from SDS: a mesh client.
fn client_envoy(
    work: &Path,
    xds_port: u16,
    tls: Option<(&Path, &Path, &Path)>,
    port: u16,
    upstream: u16,
) -> Envoy {
    let outbound = json!({
        "name": "outbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "outbound",
                "cluster": "mesh"
            }
        }]}]
    });
    let mesh = json!({
        "name": "mesh",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": "mesh", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}
        ]}]},
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [sds_stream("default")],
                    "validation_context_sds_secret_config": sds_stream("ROOTCA")
                }
            }
        }
    });
    envoy_with(work, xds_port, tls, "client-1", outbound, Some(mesh))
}

fn envoy_with(
    work: &Path,
    xds_port: u16,
    tls: Option<(&Path, &Path, &Path)>,
    node_id: &str,
    listener: Value,
    cluster: Option<Value>,
) -> Envoy {
    std::fs::create_dir_all(work).unwrap();
    let admin = free_port();
    let mut xds = json!({
        "name": "xds-grpc",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        },
        "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": xds_port}}}}
        ]}]}
    });
    if let Some((root, chain, key)) = tls {
        xds["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "istiod.istio-system.svc",
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [{
                        "certificate_chain": {"filename": chain},
                        "private_key": {"filename": key}
                    }],
                    "validation_context": {"trusted_ca": {"filename": root}}
                }
            }
        });
    }
    let clusters: Vec<Value> = std::iter::once(xds).chain(cluster).collect();
    let bootstrap = json!({
        "node": {"id": node_id, "cluster": "app", "metadata": {"NAMESPACE": "edge", "SERVICE_ACCOUNT": "app"}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "dynamic_resources": {"ads_config": {
            "api_type": "DELTA_GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]
        }},
        "static_resources": {"clusters": clusters, "listeners": [listener]}
    });
    let path = work.join("envoy.json");
    std::fs::write(&path, serde_json::to_string_pretty(&bootstrap).unwrap()).unwrap();
    Envoy::spawn(&path, admin, work)
}

/// One TLS connection to `port` with a client certificate, trusting `root`: the
/// server's leaf (serial, URI SANs) if the handshake completed and the listener
/// answered, else the reason.
fn connect(
    port: u16,
    root: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(String, Vec<String>), String> {
    connect_with(port, root, cert, key, true)
}

/// As `connect`; without `answer`, a completed, verified handshake is enough (Envoy's
/// direct response sometimes closes before its bytes are read).
fn connect_with(
    port: u16,
    root: &Path,
    cert: &Path,
    key: &Path,
    answer: bool,
) -> Result<(String, Vec<String>), String> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(root)
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .args(["-verify_return_error", "-ign_eof"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // -verify_return_error: a server chain that does not verify fails the handshake.
    let verified = text.contains("Verify return code: 0 (ok)");
    if !verified || (answer && !text.contains("hello")) {
        return Err(format!(
            "no answer: {text}\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or("no certificate")?;
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(&text.as_bytes()[begin..]).map_err(|e| e.to_string())?;
    let leaf = pem.parse_x509().map_err(|e| e.to_string())?;
    let serial = leaf.raw_serial_as_string();
    let uris = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((serial, uris))
}

#[test]
fn envoy_gets_its_workload_certificate_and_roots_over_sds() {
    let work = TempDir::new();
    let ca_dir = work.path().join("ca");
    let cp = ControlPlane::start(work.path(), &ca_dir, &[]);
    let root = ca_dir.join("root-cert.pem");
    let app = SpiffeId::parse(APP).unwrap();
    let (chain, key) = issue_files(&ca_dir, &app, &work.path().join("app-xds"));
    let port = free_port();
    let envoy = envoy(
        &work.path().join("envoy"),
        cp.tls_port,
        Some((&root, &chain, &key)),
        port,
    );
    // Ready: the listener's secrets arrived, the listener is up.
    wait_until(
        "Envoy ready with its secrets",
        Duration::from_secs(20),
        || matches!(envoy.admin_get("/ready"), Ok((200, _))),
    );
    envoy.assert_no_rejections();

    // A client with a certificate of the CA: the served leaf is the proxy's identity.
    let client = SpiffeId::new("cluster.local", "shop", "web").unwrap();
    let (client_chain, client_key) = issue_files(&ca_dir, &client, &work.path().join("client"));
    let mut served = None;
    wait_until(
        "Envoy serving its workload certificate",
        Duration::from_secs(20),
        || {
            served = connect(port, &root, &client_chain, &client_key).ok();
            served.is_some()
        },
    );
    let (_serial, uris) = served.expect("polled");
    assert_eq!(uris, vec![APP.to_string()]);

    // A client certificate of another CA is refused.
    let other_dir = work.path().join("other-ca");
    let (other_chain, other_key) = issue_files(&other_dir, &client, &work.path().join("other"));
    let refused = connect(port, &root, &other_chain, &other_key);
    assert!(refused.is_err(), "{refused:?}");

    envoy.assert_no_rejections();
    assert!(cp.log().contains("issued a workload certificate"));
}

#[test]
fn a_plaintext_stream_never_gets_a_workload_key() {
    let work = TempDir::new();
    let ca_dir = work.path().join("ca");
    let cp = ControlPlane::start(work.path(), &ca_dir, &[]);
    let port = free_port();
    let envoy = envoy(&work.path().join("envoy"), cp.xds_port, None, port);
    // The stream asked for `default`: the control plane said so, and answered it as not
    // existing.
    wait_until(
        "the control plane logged the refused secret",
        Duration::from_secs(20),
        || cp.log().contains("asked for the workload certificate"),
    );
    wait_until("Envoy's SDS answered", Duration::from_secs(20), || {
        envoy
            .stat("control_plane.connected_state")
            .is_some_and(|n| n == 1)
    });
    let (status, dump) = envoy
        .admin_get("/config_dump?include_eds")
        .expect("config dump");
    assert_eq!(status, 200);
    let dump: Value = serde_json::from_str(&dump).unwrap();
    let secrets: Vec<&Value> = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("SecretsConfigDump"))
        })
        .collect();
    for s in &secrets {
        for section in ["dynamic_active_secrets", "static_secrets"] {
            for sec in s[section].as_array().into_iter().flatten() {
                assert_ne!(sec["name"], "default", "{sec}");
                assert!(sec["secret"]["tls_certificate"].is_null(), "{sec}");
            }
        }
    }
    // `default` was answered as not existing: the listener has no certificate to
    // serve, and a handshake with it fails.
    let client = SpiffeId::new("cluster.local", "shop", "web").unwrap();
    let (chain, key) = issue_files(&ca_dir, &client, &work.path().join("client"));
    let refused = connect(port, &ca_dir.join("root-cert.pem"), &chain, &key);
    assert!(refused.is_err(), "{refused:?}");
    assert!(!cp.log().contains("issued a workload certificate"));
}

/// The mesh secrets an Envoy holds (those from SDS, inline): the number of roots it
/// trusts in each, and the serials of its workload certificates.
fn mesh_certs(envoy: &Envoy) -> (Vec<usize>, Vec<String>) {
    let (_, body) = envoy.admin_get("/certs").expect("/certs");
    let certs: Value = serde_json::from_str(&body).unwrap();
    let (mut roots, mut leaves) = (Vec::new(), Vec::new());
    for c in certs["certificates"].as_array().into_iter().flatten() {
        let ca: Vec<&Value> = c["ca_cert"].as_array().into_iter().flatten().collect();
        if ca.iter().any(|r| r["path"] == "<inline>") {
            roots.push(ca.len());
        }
        for leaf in c["cert_chain"].as_array().into_iter().flatten() {
            if leaf["path"] == "<inline>" {
                leaves.push(leaf["serial_number"].as_str().unwrap_or("").to_string());
            }
        }
    }
    (roots, leaves)
}

#[test]
fn a_root_is_rotated_with_no_failed_connection() {
    let work = TempDir::new();
    let ca_dir = work.path().join("ca");
    let cp = ControlPlane::start(work.path(), &ca_dir, &[]);
    let root_path = ca_dir.join("root-cert.pem");
    let app = SpiffeId::parse(APP).unwrap();
    let (chain, key) = issue_files(&ca_dir, &app, &work.path().join("app-xds"));
    let tls = Some((root_path.as_path(), chain.as_path(), key.as_path()));
    let (server_port, client_port) = (free_port(), free_port());
    let server = app_envoy(
        &work.path().join("server"),
        cp.tls_port,
        tls,
        server_port,
        hello_app(),
    );
    let client = client_envoy(
        &work.path().join("client"),
        cp.tls_port,
        tls,
        client_port,
        server_port,
    );
    for e in [&server, &client] {
        wait_until("Envoy ready", Duration::from_secs(20), || {
            matches!(e.admin_get("/ready"), Ok((200, _)))
        });
    }
    // One connection through the client Envoy: mutual TLS between the two proxies with
    // the secrets of the control plane.
    let through = move || -> Result<(), String> {
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", client_port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = String::new();
        std::io::Read::read_to_string(&mut s, &mut got).map_err(|e| e.to_string())?;
        (got == "hello\n")
            .then_some(())
            .ok_or(format!("got {got:?}"))
    };
    wait_until("mTLS between the proxies", Duration::from_secs(20), || {
        through().is_ok()
    });

    // Requests all along, each on a new connection (a new handshake).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match through() {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        })
    };

    // The operator's three steps, with `meshgate ca rotate-root`.
    let step = |step: &str| rotate_root(&ca_dir, step);
    let all_trust = |n: usize| {
        move |e: &Envoy| {
            let (roots, _) = mesh_certs(e);
            !roots.is_empty() && roots.iter().all(|&r| r == n)
        }
    };

    // 1. Both roots are trusted; the old one still signs.
    step("add");
    let new_root = std::fs::read_to_string(ca_dir.join("next-root/root-cert.pem")).unwrap();
    assert_eq!(
        std::fs::read_to_string(&root_path)
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    for e in [&server, &client] {
        wait_until("both roots trusted", Duration::from_secs(20), || {
            all_trust(2)(e)
        });
    }
    // 2. The new key signs: every proxy gets a new workload certificate.
    let (_, leaves_before) = mesh_certs(&server);
    step("sign");
    for e in [&server, &client] {
        wait_until(
            "workload certificates of the new root",
            Duration::from_secs(20),
            || {
                let (_, leaves) = mesh_certs(e);
                !leaves.is_empty() && leaves.iter().all(|l| !leaves_before.contains(l))
            },
        );
    }
    // 3. The old root is removed.
    step("retire");
    assert!(!ca_dir.join("next-root").exists());
    for e in [&server, &client] {
        wait_until("only the new root trusted", Duration::from_secs(20), || {
            all_trust(1)(e)
        });
    }
    // The proxies still talk, on new connections, trusting only the new root.
    for _ in 0..5 {
        through().expect("a connection after the rotation");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(
        ok >= 10,
        "only {ok} connections were made during the rotation"
    );
    // What the proxies hold now verifies against the new root alone.
    let (client_chain, client_key) = issue_files(
        &ca_dir,
        &SpiffeId::new("cluster.local", "shop", "web").unwrap(),
        &work.path().join("web"),
    );
    let only_new = work.path().join("new-root.pem");
    std::fs::write(&only_new, &new_root).unwrap();
    connect(server_port, &only_new, &client_chain, &client_key)
        .expect("the server's certificate chains to the new root");
    server.assert_no_rejections();
    client.assert_no_rejections();
    assert_eq!(
        cp.log().matches("reloaded the CA").count(),
        3,
        "{}",
        cp.log()
    );
}
