//! Bad input at a TLS listener of `meshgate gateway --config DIR`: garbage, plain text,
//! truncated and oversized ClientHellos, an unknown SNI, untrusted, expired and revoked
//! client certificates, and a TLS 1.2 renegotiation attempt. Each ends that connection
//! only and is counted in `/stats`; a connection opened before keeps working.
mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;
use support::certs::yaml_block;
use support::gateway::GatewayProcess;
use support::*;
use tls_support::{Leaf, TestCa};

fn config(port: u16, echo: u16, server: &Leaf, mtls: &Leaf, ca: &TestCa, crl: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: https-a, protocol: HTTPS}}
    hosts: [a.example.com]
    tls: {{mode: SIMPLE, credentialName: a-cert}}
  - port: {{number: {port}, name: https-m, protocol: HTTPS}}
    hosts: [mtls.example.com]
    tls: {{mode: MUTUAL, credentialName: m-cert}}
---
apiVersion: v1
kind: Secret
metadata: {{name: a-cert, namespace: edge}}
stringData:
  tls.crt: |
{a_cert}
  tls.key: |
{a_key}
---
apiVersion: v1
kind: Secret
metadata: {{name: m-cert, namespace: edge}}
stringData:
  tls.crt: |
{m_cert}
  tls.key: |
{m_key}
  ca.crt: |
{ca}
  ca.crl: |
{crl}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: edge}}
spec:
  hosts: [echo.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {echo}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: edge}}
spec:
  hosts: [a.example.com, mtls.example.com]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: echo.internal}}}}]}}]
"#,
        a_cert = yaml_block(&server.cert, 4),
        a_key = yaml_block(&server.key, 4),
        m_cert = yaml_block(&mtls.cert, 4),
        m_key = yaml_block(&mtls.key, 4),
        ca = yaml_block(&ca.pem, 4),
        crl = yaml_block(crl, 4),
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn client_config(ca: &TestCa, identity: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&ca.pem) {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        Some(l) => b
            .with_client_auth_cert(
                certs(&l.cert),
                rustls_pemfile::private_key(&mut l.key.as_bytes())
                    .unwrap()
                    .unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    })
}

/// A TLS client over a blocking socket; `Ok(status line)` or `Err(reason)`.
fn request(port: u16, sni: &str, config: Arc<rustls::ClientConfig>) -> Result<String, String> {
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) if out.starts_with(b"HTTP/1.1 ") => Ok(String::from_utf8_lossy(&out[..12]).into()),
        Ok(_) => Err("closed without a response".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends raw bytes (then optionally half-closes) and tells whether the gateway closed
/// the connection without answering.
fn raw_closed(port: u16, bytes: &[u8], half_close: bool) -> bool {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => {
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut
        }
    }
}

/// The first flight of a real client: a ClientHello for `sni`.
fn client_hello(ca: &TestCa, sni: &str) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(client_config(ca, None), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

fn stat(gw: &GatewayProcess, name: &str) -> u64 {
    let (_, body) = gw.admin("/stats");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stat {name}:\n{body}"))
}

#[test]
fn each_bad_connection_ends_alone_and_is_counted() {
    let ca = TestCa::new("bad input CA");
    let other_ca = TestCa::new("someone else's CA");
    let echo = EchoUpstream::start("echo");
    let port = free_port();
    let server = ca.leaf(&["a.example.com"]);
    let mtls = ca.leaf(&["mtls.example.com"]);
    let good = ca.leaf_serial("spiffe://test/good", 100);
    let revoked = ca.leaf_serial("spiffe://test/revoked", 101);
    let expired = ca.leaf_with("expired", &["expired.client"], &[], -10, -1);
    let untrusted = other_ca.leaf(&["client.example.com"]);
    let dir = TempDir::new();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        config(port, echo.port(), &server, &mtls, &ca, &ca.crl(&[101])),
    )
    .unwrap();
    let gw = GatewayProcess::start_with(
        &[
            "--config",
            dir.path().to_str().unwrap(),
            "--access-log",
            "off",
        ],
        dir.path(),
    );
    wait_for_port(port, Duration::from_secs(10));

    // A healthy keep-alive connection, opened first and used again at the end.
    let name = rustls::pki_types::ServerName::try_from("a.example.com").unwrap();
    let mut kept_conn = rustls::ClientConnection::new(client_config(&ca, None), name).unwrap();
    let mut kept_sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    kept_sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let keep_alive_request = |conn: &mut rustls::ClientConnection, sock: &mut TcpStream| {
        let mut tls = rustls::Stream::new(conn, sock);
        tls.write_all(b"GET /kept HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tls.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(keep_alive_request(&mut kept_conn, &mut kept_sock).starts_with("HTTP/1.1 200"));

    // Garbage that looks like a handshake record, and plain text: no chain, reset.
    assert!(raw_closed(port, b"\x16\x03\x01\x00\x05hello", false));
    assert!(raw_closed(
        port,
        b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n",
        false
    ));
    assert!(stat(&gw, "tls_inspector.client_hello_malformed") >= 1);
    // Truncated: half a ClientHello, then the client's FIN.
    let hello = client_hello(&ca, "a.example.com");
    assert!(raw_closed(port, &hello[..hello.len() / 2], true));
    assert!(stat(&gw, "tls_inspector.read_error") >= 1);
    // Oversized: a ClientHello announcing 128 KiB, sent in full records.
    let mut big = Vec::new();
    let mut body = vec![1u8, 0x02, 0x00, 0x00];
    body.resize(80 * 1024, 0xAB);
    for chunk in body.chunks(16 * 1024) {
        big.extend_from_slice(&[0x16, 0x03, 0x01]);
        big.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        big.extend_from_slice(chunk);
    }
    assert!(raw_closed(port, &big, false));
    assert_eq!(stat(&gw, "tls_inspector.client_hello_too_large"), 1);
    // Unknown SNI: no chain.
    assert!(request(port, "unknown.example.com", client_config(&ca, None)).is_err());
    assert!(stat(&gw, "listener.no_filter_chain_match") >= 3);

    // Client certificates on the MUTUAL host.
    assert_eq!(
        request(port, "mtls.example.com", client_config(&ca, Some(&good))),
        Ok("HTTP/1.1 200".into())
    );
    let rejected_before = stat(&gw, "tls.peer_certificate_rejected");
    for (what, leaf) in [
        ("untrusted", &untrusted),
        ("expired", &expired),
        ("revoked", &revoked),
    ] {
        assert!(
            request(port, "mtls.example.com", client_config(&ca, Some(leaf))).is_err(),
            "{what} client certificate accepted"
        );
    }
    assert_eq!(
        stat(&gw, "tls.peer_certificate_rejected"),
        rejected_before + 3
    );

    // TLS 1.2 renegotiation (openssl s_client's `R` command): the connection ends.
    let mut s_client = std::process::Command::new(peer_bin("openssl"))
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "a.example.com", "-tls1_2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = s_client.stdin.take().unwrap();
    // Once the handshake is done (s_client prints the verification result), ask for a
    // renegotiation.
    let mut out = std::io::BufReader::new(s_client.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "s_client ended before its handshake completed");
        if line.contains("Verify return code") {
            break;
        }
    }
    stdin.write_all(b"R\n").unwrap();
    stdin.flush().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stat(&gw, "tls.renegotiation_refused") == 0 {
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    let status = s_client.wait().unwrap();
    let _ = status;

    // Nothing else was disturbed.
    assert!(keep_alive_request(&mut kept_conn, &mut kept_sock).starts_with("HTTP/1.1 200"));
    assert_eq!(
        request(port, "a.example.com", client_config(&ca, None)),
        Ok("HTTP/1.1 200".into())
    );
}
