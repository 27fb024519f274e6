//! Mesh identity end to end: `meshgate control-plane --ca-dir` as a process, an
//! independent Istio CSR client (Python: grpcio, cryptography; tests/ca_client/) asking
//! it for certificates over TLS on its 15012 port, and real Envoy 1.40 fed ADS over
//! mutual TLS there with a certificate of the CA.
mod support;

use meshgate::ca::{Ca, CaOptions, Csr, SpiffeId};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};
use support::xds_mesh;
use support::*;

fn meshgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
}

/// A `meshgate control-plane --ca-dir` process, logging at debug level (the key
/// checks below read everything it logs).
struct ControlPlane {
    process: xds_mesh::ControlPlaneProcess,
    ca_dir: PathBuf,
    tls_port: u16,
    debug_port: u16,
}

impl ControlPlane {
    fn start(work: &Path, ca_dir: &Path, extra: &[String]) -> ControlPlane {
        let config = work.join("config");
        std::fs::create_dir_all(&config).unwrap();
        let ports = xds_mesh::CaPorts::free();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let process = xds_mesh::ControlPlaneProcess::start_with_ca_logging(
            &config, work, ca_dir, ports, &extra, "debug",
        );
        ControlPlane {
            process,
            ca_dir: ca_dir.to_path_buf(),
            tls_port: ports.tls,
            debug_port: ports.debug,
        }
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn root(&self) -> PathBuf {
        self.ca_dir.join("root-cert.pem")
    }

    fn syncz(&self) -> Vec<Value> {
        self.process.syncz()
    }
}

/// `meshgate token create`.
fn token(ca_dir: &Path, namespace: &str, sa: &str, ttl: &str) -> String {
    let out = meshgate()
        .args(["token", "create", "--ca-dir"])
        .arg(ca_dir)
        .args([
            "--namespace",
            namespace,
            "--service-account",
            sa,
            "--ttl",
            ttl,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// One CreateCertificate call by the Python client; its JSON answer.
fn ca_client(cp: &ControlPlane, work: &Path, args: &[&str]) -> Value {
    let script = repo_root().join("tests/ca_client/ca_client.py");
    let out = Command::new(python_peer())
        .arg(script)
        .args(["--addr", &format!("127.0.0.1:{}", cp.tls_port)])
        .arg("--root")
        .arg(cp.root())
        .arg("--work")
        .arg(work.join("pyclient"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ca_client.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ca_client.py printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("?")
}

fn expect(v: &Value, want: &str, what: &str) {
    assert_eq!(code(v), want, "{what}: {v}");
}

const EDGE: &str = "spiffe://cluster.local/ns/edge/sa/ingress";

/// Checks an issued chain with meshgate's own parser too: the leaf carries exactly
/// `uri`, and the chain ends with the CA's root.
fn check_leaf(v: &Value, uri: &str, chain_len: usize, root: &Path) {
    assert_eq!(v["leaf"]["uris"], serde_json::json!([uri]), "{v}");
    assert_eq!(v["leaf"]["dns"], serde_json::json!([]), "{v}");
    assert_eq!(v["leaf"]["ips"], serde_json::json!([]), "{v}");
    assert_eq!(v["leaf"]["same_public_key"], true, "{v}");
    assert_eq!(v["chain_verified"], true, "{v}");
    let chain = v["cert_chain"].as_array().unwrap();
    assert_eq!(chain.len(), chain_len, "{v}");
    let root_pem = std::fs::read_to_string(root).unwrap();
    assert_eq!(
        chain.last().unwrap().as_str().unwrap().trim(),
        root_pem.trim()
    );
    let leaf_pem = chain[0].as_str().unwrap();
    let der = rustls_pemfile::certs(&mut leaf_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![x509_parser::extensions::GeneralName::URI(uri)]
    );
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
}

/// Seconds since the epoch of a JWT's `exp`.
fn token_exp(token: &str) -> u64 {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["exp"].as_u64().unwrap()
}

/// A JWKS file with one ES256 key, and a signer of Kubernetes-like service-account JWTs.
fn jwt_issuer(dir: &Path) -> (PathBuf, impl Fn(&str, &str, &str) -> String) {
    use base64::Engine;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = key.public_key_raw().to_vec();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "sa-key",
        "use": "sig", "alg": "ES256", "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65])}]});
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    let encoding = jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der());
    let sign = move |ns: &str, sa: &str, aud: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("sa-key".into());
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({
            "iss": "https://kubernetes.default.svc.cluster.local", "aud": [aud],
            "exp": now + 600, "iat": now, "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "1"}}});
        jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
    };
    (path, sign)
}

#[test]
fn an_independent_client_gets_certificates_and_is_refused_what_it_may_not_have() {
    let work = TempDir::new();
    let ca_dir = work.path().join("ca");
    let (jwks, sign_jwt) = jwt_issuer(work.path());
    let jwt_flags = [
        "--jwt-issuer".to_string(),
        "https://kubernetes.default.svc.cluster.local".to_string(),
        "--jwks-file".to_string(),
        jwks.display().to_string(),
    ];
    let cp = ControlPlane::start(work.path(), &ca_dir, &jwt_flags);
    let key_mode = |f: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(ca_dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(key_mode("ca-key.pem"), 0o600);
    assert_eq!(key_mode("token-key"), 0o600);
    let w = work.path();

    // A join token buys exactly its identity, verified over TLS with root-cert.pem.
    let first = token(&ca_dir, "edge", "ingress", "1h");
    let first_out = w.join("first");
    let got = ca_client(
        &cp,
        w,
        &[
            "--token",
            &first,
            "--uri",
            EDGE,
            "--ttl",
            "3600",
            "--out",
            first_out.to_str().unwrap(),
        ],
    );
    expect(&got, "OK", "a join token for its own identity");
    check_leaf(&got, EDGE, 2, &cp.root());
    assert_eq!(
        got["leaf"]["lifetime_s"], 3660,
        "1h asked, plus the minute of clock skew before now"
    );
    expect(
        &ca_client(&cp, w, &["--token", &first, "--uri", EDGE]),
        "UNAUTHENTICATED",
        "a used token",
    );

    // Refusals of the CSR's names do not spend the token.
    let second = token(&ca_dir, "edge", "ingress", "1h");
    let refusals: [(&str, Vec<&str>); 5] = [
        (
            "another identity",
            vec!["--uri", "spiffe://cluster.local/ns/kube-system/sa/ingress"],
        ),
        (
            "another trust domain",
            vec!["--uri", "spiffe://evil.example/ns/edge/sa/ingress"],
        ),
        (
            "an extra DNS name",
            vec!["--uri", EDGE, "--dns", "istiod.istio-system.svc"],
        ),
        ("an IP address", vec!["--uri", EDGE, "--ip", "127.0.0.1"]),
        ("two URIs", vec!["--uri", EDGE, "--uri", EDGE]),
    ];
    for (what, args) in &refusals {
        let mut a = vec!["--token", second.as_str()];
        a.extend(args);
        expect(&ca_client(&cp, w, &a), "PERMISSION_DENIED", what);
    }
    expect(
        &ca_client(
            &cp,
            w,
            &["--token", &second, "--uri", EDGE, "--corrupt-signature"],
        ),
        "INVALID_ARGUMENT",
        "a CSR whose signature does not verify",
    );
    expect(
        &ca_client(
            &cp,
            w,
            &["--token", &second, "--uri", EDGE, "--rsa-bits", "1024"],
        ),
        "INVALID_ARGUMENT",
        "a CSR for a 1024-bit RSA key",
    );
    // Two days is more than the 24h maximum: refused, as istiod does, not cut.
    expect(
        &ca_client(
            &cp,
            w,
            &["--token", &second, "--uri", EDGE, "--ttl", "172800"],
        ),
        "INVALID_ARGUMENT",
        "a lifetime above the maximum",
    );
    // Still good; asks for the maximum (an RSA-2048 key this time).
    let got = ca_client(
        &cp,
        w,
        &[
            "--token",
            &second,
            "--uri",
            EDGE,
            "--ttl",
            "86400",
            "--rsa-bits",
            "2048",
        ],
    );
    expect(&got, "OK", "the token the refusals did not spend");
    let left = got["leaf"]["not_after_from_now_s"].as_i64().unwrap();
    assert!(
        (86400 - 60..=86400).contains(&left),
        "lifetime bound: {got}"
    );

    // No credential; a token made with another CA directory's key; an expired token.
    expect(
        &ca_client(&cp, w, &["--uri", EDGE]),
        "UNAUTHENTICATED",
        "no token",
    );
    let foreign = token(&w.join("other-ca"), "edge", "ingress", "1h");
    expect(
        &ca_client(&cp, w, &["--token", &foreign, "--uri", EDGE]),
        "UNAUTHENTICATED",
        "a token of another CA",
    );
    let short = token(&ca_dir, "edge", "ingress", "1s");
    let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(token_exp(&short));
    wait_until("the token's expiry", Duration::from_secs(5), || {
        SystemTime::now() >= exp
    });
    expect(
        &ca_client(&cp, w, &["--token", &short, "--uri", EDGE]),
        "UNAUTHENTICATED",
        "an expired token",
    );

    // Renewal: the certificate from above, over mutual TLS, no token.
    let (chain, key) = (
        format!("{}.chain", first_out.display()),
        format!("{}.key", first_out.display()),
    );
    let renewal = ["--client-cert", &chain, "--client-key", &key];
    let got = ca_client(&cp, w, &[&renewal[..], &["--uri", EDGE]].concat());
    expect(&got, "OK", "renewal with the current certificate");
    check_leaf(&got, EDGE, 2, &cp.root());
    expect(
        &ca_client(
            &cp,
            w,
            &[
                &renewal[..],
                &["--uri", "spiffe://cluster.local/ns/edge/sa/admin"],
            ]
            .concat(),
        ),
        "PERMISSION_DENIED",
        "renewal into another identity",
    );

    // A Kubernetes service-account JWT of the configured issuer.
    let jwt = sign_jwt("shop", "reviews", "istio-ca");
    let shop = "spiffe://cluster.local/ns/shop/sa/reviews";
    let got = ca_client(&cp, w, &["--token", &jwt, "--uri", shop]);
    expect(&got, "OK", "a service-account JWT");
    check_leaf(&got, shop, 2, &cp.root());
    expect(
        &ca_client(&cp, w, &["--token", &jwt, "--uri", EDGE]),
        "PERMISSION_DENIED",
        "a JWT asking for another identity",
    );
    expect(
        &ca_client(
            &cp,
            w,
            &[
                "--token",
                &sign_jwt("shop", "reviews", "kubernetes"),
                "--uri",
                shop,
            ],
        ),
        "UNAUTHENTICATED",
        "a JWT for another audience",
    );

    // The used-token record survives a restart.
    let log = cp.log();
    drop(cp);
    let cp = ControlPlane::start(work.path(), &ca_dir, &jwt_flags);
    expect(
        &ca_client(&cp, w, &["--token", &first, "--uri", EDGE]),
        "UNAUTHENTICATED",
        "a token used before the restart",
    );
    let third = token(&ca_dir, "edge", "ingress", "1h");
    expect(
        &ca_client(&cp, w, &["--token", &third, "--uri", EDGE]),
        "OK",
        "a new token after the restart",
    );
    // Since the restart: one issued, one refused for a used token.
    let (_, metrics) = blocking_http_get(("127.0.0.1", cp.debug_port), "/metrics").unwrap();
    for line in [
        "citadel_server_csr_count 2",
        "citadel_server_success_cert_issuance_count 1",
        "citadel_server_authentication_failure_count 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in:\n{metrics}"
        );
    }

    // Neither the CA key nor any join token reached the logs (debug level).
    let key_pem = std::fs::read_to_string(ca_dir.join("ca-key.pem")).unwrap();
    let logs = log + &cp.log();
    assert!(logs.contains("certificate issued"), "{logs}");
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!logs.contains(line), "CA key material in the log");
    }
    let token_key = std::fs::read_to_string(ca_dir.join("token-key")).unwrap();
    assert!(!logs.contains(token_key.trim()), "token key in the log");
    for t in [&first, &second, &third] {
        let signature = t.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a join token in the log");
    }
}

/// Istio's plug-in CA layout, made with openssl as Istio's docs do (an RSA root, an
/// intermediate with a PKCS#1 key): leaves are signed by the intermediate.
#[test]
fn istio_plug_in_certificates_from_openssl_sign_as_the_intermediate() {
    let work = TempDir::new();
    let ca_dir = work.path().join("cacerts");
    let keys = work.path().join("root-only");
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::create_dir_all(&keys).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new(peer_bin("openssl"))
            .args(args)
            .current_dir(&ca_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let root_key = keys.join("root-key.pem");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        "/O=Istio/CN=Root CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        root_key.to_str().unwrap(),
        "-out",
        "root-cert.pem",
    ]);
    openssl(&["genrsa", "-traditional", "-out", "ca-key.pem", "2048"]);
    openssl(&[
        "req",
        "-new",
        "-key",
        "ca-key.pem",
        "-subj",
        "/O=Istio/CN=Intermediate CA/L=cluster1",
        "-out",
        "ca.csr",
    ]);
    std::fs::write(
        ca_dir.join("ext.cnf"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "ca.csr",
        "-CA",
        "root-cert.pem",
        "-CAkey",
        root_key.to_str().unwrap(),
        "-CAcreateserial",
        "-days",
        "730",
        "-extfile",
        "ext.cnf",
        "-out",
        "ca-cert.pem",
    ]);
    let chain = std::fs::read_to_string(ca_dir.join("ca-cert.pem")).unwrap()
        + &std::fs::read_to_string(ca_dir.join("root-cert.pem")).unwrap();
    std::fs::write(ca_dir.join("cert-chain.pem"), chain).unwrap();
    for f in ["ca.csr", "ext.cnf", "root-cert.srl"] {
        let _ = std::fs::remove_file(ca_dir.join(f));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            ca_dir.join("ca-key.pem"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }

    let cp = ControlPlane::start(work.path(), &ca_dir, &[]);
    assert!(cp.log().contains("plug-in CA"), "{}", cp.log());
    let w = work.path();
    let t = token(&ca_dir, "edge", "ingress", "10m");
    // The server's own certificate chains through the intermediate too.
    let got = ca_client(
        &cp,
        w,
        &[
            "--token",
            &t,
            "--uri",
            EDGE,
            "--server-name",
            "istiod.istio-system.svc",
        ],
    );
    expect(&got, "OK", "a token, with the plug-in CA");
    check_leaf(&got, EDGE, 3, &cp.root());
    let int = std::fs::read_to_string(ca_dir.join("ca-cert.pem")).unwrap();
    assert_eq!(got["cert_chain"][1].as_str().unwrap().trim(), int.trim());
    // The plug-in directory is used as it is: only the token key and record are added.
    let mut files: Vec<String> = std::fs::read_dir(&ca_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
            "token-key",
            "used-tokens"
        ]
    );
}

/// A certificate of the CA for `identity`, written as Envoy reads it: (chain, key).
fn issue_files(ca_dir: &Path, identity: &SpiffeId, out: &Path) -> (PathBuf, PathBuf) {
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

fn gateway_config(port: u16, upstream: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: edge}}
spec:
  hosts: ["app.example.com"]
  gateways: [gw]
  http:
  - route:
    - destination: {{host: app.internal, port: {{number: 80}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: app, namespace: edge}}
spec:
  hosts: [app.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {upstream}}}
"#
    )
}

/// `meshgate bootstrap envoy` for node `name` in namespace edge, over TLS to the CA port.
fn envoy_over_tls(
    cp: &ControlPlane,
    dir: &Path,
    name: &str,
    sotw: bool,
    client: Option<(&Path, &Path)>,
) -> Envoy {
    let work = dir.join(name);
    std::fs::create_dir_all(&work).unwrap();
    let admin = free_port();
    let bootstrap = work.join("envoy.yaml");
    let mut cmd = meshgate();
    cmd.args(["bootstrap", "envoy", "--xds"])
        .arg(format!("127.0.0.1:{}", cp.tls_port))
        .args(["--node-id", name, "--namespace", "edge"])
        .args(["--labels", "istio=ingressgateway"])
        .args(["--admin-port", &admin.to_string()])
        .arg(if sotw { "--sotw" } else { "--delta" })
        .arg("--xds-root-cert")
        .arg(cp.root());
    if let Some((chain, key)) = client {
        cmd.arg("--xds-cert-chain")
            .arg(chain)
            .arg("--xds-key")
            .arg(key);
    }
    let status = cmd.arg("--out").arg(&bootstrap).status().unwrap();
    assert!(status.success());
    Envoy::spawn(&bootstrap, admin, &work)
}

/// Waits until Envoy's log says its ADS stream was closed with gRPC status `code`.
fn wait_for_refusal(envoy: &Envoy, code: u32) {
    let needle = "gRPC config stream to xds-grpc closed";
    let status = format!(": {code}, ");
    wait_until(
        &format!("Envoy's ADS stream closed with status {code}"),
        Duration::from_secs(20),
        || {
            envoy
                .log()
                .lines()
                .any(|l| l.contains(needle) && l.contains(&status))
        },
    );
}

#[test]
fn envoy_is_served_ads_over_mutual_tls_only_as_its_certificates_namespace() {
    let work = TempDir::new();
    let upstream = EchoUpstream::start("app");
    let port = free_port();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("mesh.yaml"),
        gateway_config(port, upstream.port()),
    )
    .unwrap();
    let ca_dir = work.path().join("ca");
    let cp = ControlPlane::start(work.path(), &ca_dir, &[]);
    let edge = SpiffeId::parse(EDGE).unwrap();
    let (chain, key) = issue_files(&ca_dir, &edge, &work.path().join("edge-cert"));

    // Delta and state of the world, each with a certificate of its namespace: served.
    let delta = envoy_over_tls(&cp, work.path(), "gw-delta", false, Some((&chain, &key)));
    let sotw = envoy_over_tls(&cp, work.path(), "gw-sotw", true, Some((&chain, &key)));
    for envoy in [&delta, &sotw] {
        envoy.wait_for_stat(
            "listener_manager.total_listeners_active",
            |n| n >= 1,
            Duration::from_secs(20),
        );
        envoy.assert_no_rejections();
    }
    wait_until(
        "a request routed through the gateway",
        Duration::from_secs(20),
        || blocking_http_host(port, "app.example.com").is_ok_and(|s| s == 200),
    );
    assert!(upstream.requests() > 0);
    let synced = cp.syncz();
    assert_eq!(synced.len(), 2, "{synced:?}");

    // A certificate of another namespace than the node's: PERMISSION_DENIED.
    let shop = SpiffeId::new("cluster.local", "shop", "ingress").unwrap();
    let (shop_chain, shop_key) = issue_files(&ca_dir, &shop, &work.path().join("shop-cert"));
    let foreign = envoy_over_tls(
        &cp,
        work.path(),
        "gw-foreign",
        false,
        Some((&shop_chain, &shop_key)),
    );
    wait_for_refusal(&foreign, 7);
    // No client certificate at all: UNAUTHENTICATED.
    let anonymous = envoy_over_tls(&cp, work.path(), "gw-anonymous", true, None);
    wait_for_refusal(&anonymous, 16);
    for envoy in [&foreign, &anonymous] {
        assert_eq!(
            envoy.stat("listener_manager.total_listeners_active"),
            Some(0)
        );
    }
    let nodes: Vec<String> = cp
        .syncz()
        .iter()
        .map(|p| p["node_id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(
        nodes
            .iter()
            .all(|n| n.contains("gw-delta") || n.contains("gw-sotw")),
        "{nodes:?}"
    );
    assert!(cp.log().contains("xDS stream refused"), "{}", cp.log());
}

/// GET http://127.0.0.1:port/ with a Host header.
fn blocking_http_host(port: u16, host: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))
}
