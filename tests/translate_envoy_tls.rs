//! Gateway TLS translated by meshgate and served by a real Envoy 1.40, with certificates
//! made at test time: SNI termination from Kubernetes Secrets and from files, mutual
//! TLS, passthrough, TLS to TCP, plain TCP, AUTO_PASSTHROUGH, TLS origination, and
//! certificate rotation without a restart.
mod support;
#[path = "support/translate.rs"]
mod translating;

use std::time::{Duration, Instant};
use support::*;
use translating::*;

struct Fixture {
    ca: TestCa,
    client_allowed: Leaf,
    client_other: Leaf,
    ports: Ports,
    echo: EchoUpstream,
    pass_1: TlsFront,
    pass_2: TlsFront,
    app: TlsFront,
    _secure: TlsFront,
    _msecure: TlsFront,
    gw: TranslatedEnvoy,
    _files: TempDir,
}

struct Ports {
    https: u16,
    pass: u16,
    term: u16,
    tcp: u16,
    auto: u16,
    orig: u16,
}

fn start() -> Fixture {
    let ca = TestCa::new("meshgate test CA");
    let echo = EchoUpstream::start("echo");
    let files = TempDir::new();
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let b = ca.issue(&["b.example.com"]);
    let o = ca.issue(&["optional.example.com"]);
    let a = ca.issue(&["a.example.com"]);
    let m = ca.issue(&["mtls.example.com"]);
    let w = ca.issue(&["*.wild.example.com"]);
    let t = ca.issue(&["term.example.com"]);
    let client = ca.issue(&["gateway-client", "spiffe://test/gateway"]);
    let pass_1 = TlsFront::start(
        &ca.issue(&["one.pass.example.com", "split.pass.example.com"]),
        None,
        echo.port(),
    );
    let second = EchoUpstream::start("second");
    let pass_2 = TlsFront::start(&ca.issue(&["split.pass.example.com"]), None, second.port());
    std::mem::forget(second); // lives as long as the process; pass_2 forwards to it
    let app = TlsFront::start(&ca.issue(&["app.ns.svc.cluster.local"]), None, echo.port());
    let secure = TlsFront::start(&ca.issue(&["secure.internal"]), None, echo.port());
    let msecure = TlsFront::start(&ca.issue(&["msecure.internal"]), Some(&ca.pem), echo.port());
    let ports = Ports {
        https: free_port(),
        pass: free_port(),
        term: free_port(),
        tcp: free_port(),
        auto: free_port(),
        orig: free_port(),
    };
    let yaml = render(
        &testdata("tls.yaml"),
        &[
            ("HTTPS_PORT", ports.https.to_string()),
            ("PASS_PORT", ports.pass.to_string()),
            ("TERM_PORT", ports.term.to_string()),
            ("TCP_PORT", ports.tcp.to_string()),
            ("AUTO_PORT", ports.auto.to_string()),
            ("ORIG_PORT", ports.orig.to_string()),
            ("ECHO", echo.port().to_string()),
            ("PASS_1", pass_1.port.to_string()),
            ("PASS_2", pass_2.port.to_string()),
            ("APP_TLS", app.port.to_string()),
            ("SECURE", secure.port.to_string()),
            ("MSECURE", msecure.port.to_string()),
            ("B_CERT", write("b.crt", &b.cert)),
            ("B_KEY", write("b.key", &b.key)),
            ("O_CERT", write("o.crt", &o.cert)),
            ("O_KEY", write("o.key", &o.key)),
            ("CA_FILE", write("ca.crt", &ca.pem)),
            ("A_CERT_PEM", yaml_block(&a.cert, 4)),
            ("A_KEY_PEM", yaml_block(&a.key, 4)),
            ("M_CERT_PEM", yaml_block(&m.cert, 4)),
            ("M_KEY_PEM", yaml_block(&m.key, 4)),
            ("W_CERT_PEM", yaml_block(&w.cert, 4)),
            ("W_KEY_PEM", yaml_block(&w.key, 4)),
            ("T_CERT_PEM", yaml_block(&t.cert, 4)),
            ("T_KEY_PEM", yaml_block(&t.key, 4)),
            ("C_CERT_PEM", yaml_block(&client.cert, 4)),
            ("C_KEY_PEM", yaml_block(&client.key, 4)),
            ("CA_PEM", yaml_block(&ca.pem, 4)),
        ],
    );
    let gw = TranslatedEnvoy::start(&yaml, "istio=ingressgateway", 6);
    assert!(
        !gw.translate_stderr.contains("warning"),
        "translation warnings:\n{}",
        gw.translate_stderr
    );
    Fixture {
        client_allowed: ca.issue(&["client.example.com", "spiffe://test/allowed"]),
        client_other: ca.issue(&["other.example.com", "spiffe://test/other"]),
        ca,
        ports,
        echo,
        pass_1,
        pass_2,
        app,
        _secure: secure,
        _msecure: msecure,
        gw,
        _files: files,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_by_sni_mutual_and_versions() {
    let f = start();
    let hosts = [
        "a.example.com",
        "b.example.com",
        "mtls.example.com",
        "optional.example.com",
        "x.wild.example.com",
        "unknown.example.com",
    ];
    let port = f.ports.https;
    let c = https_client(&f.ca.pem, &hosts, port, None);
    // Each SNI gets its own certificate (the client checks the name against it).
    for host in ["a.example.com", "b.example.com", "x.wild.example.com"] {
        let r = c
            .get(format!("https://{host}:{port}/p"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "{host}: ALPN h2");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["upstream"], "echo");
        assert_eq!(body["headers"]["x-forwarded-proto"][0], "https");
    }
    // No certificate for an unknown SNI: the connection is refused.
    assert!(
        c.get(format!("https://unknown.example.com:{port}/"))
            .send()
            .await
            .is_err()
    );
    // minProtocolVersion TLSV1_3 on b.example.com only.
    let tls12 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(f.ca.pem.as_bytes()).unwrap()])
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .resolve("a.example.com", ([127, 0, 0, 1], port).into())
        .resolve("b.example.com", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    assert_eq!(
        tls12
            .get(format!("https://a.example.com:{port}/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        tls12
            .get(format!("https://b.example.com:{port}/"))
            .send()
            .await
            .is_err()
    );

    // MUTUAL: no client certificate, or one without the required SAN, is refused.
    assert!(
        c.get(format!("https://mtls.example.com:{port}/"))
            .send()
            .await
            .is_err()
    );
    let other = https_client(&f.ca.pem, &hosts, port, Some(&f.client_other));
    assert!(
        other
            .get(format!("https://mtls.example.com:{port}/"))
            .send()
            .await
            .is_err()
    );
    let allowed = https_client(&f.ca.pem, &hosts, port, Some(&f.client_allowed));
    let r = allowed
        .get(format!("https://mtls.example.com:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let xfcc = body["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .unwrap_or("");
    assert!(
        xfcc.contains("Hash=") && xfcc.contains("URI=spiffe://test/allowed"),
        "x-forwarded-client-cert: {xfcc}"
    );

    // OPTIONAL_MUTUAL: both work; only a client with a certificate is described upstream.
    let r = c
        .get(format!("https://optional.example.com:{port}/"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["headers"]["x-forwarded-client-cert"].is_null());
    let r = other
        .get(format!("https://optional.example.com:{port}/"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["headers"]["x-forwarded-client-cert"][0]
            .as_str()
            .unwrap()
            .contains("spiffe://test/other")
    );
    f.gw.envoy.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_tcp_auto_passthrough_and_origination() {
    let f = start();

    // PASSTHROUGH: the client's TLS reaches the backend untouched, chosen by SNI.
    let mut s = tls_connect(f.ports.pass, "one.pass.example.com", &[], Some(&f.ca.pem))
        .await
        .expect("handshake with the backend through the gateway");
    let resp = http1_over(&mut s, "one.pass.example.com", "/through")
        .await
        .unwrap();
    assert!(resp.contains("\"upstream\":\"echo\""), "{resp}");
    assert!(
        f.pass_1
            .snis()
            .contains(&Some("one.pass.example.com".into()))
    );
    // Weights between two backends, per connection.
    let mut to_first = 0;
    for _ in 0..200 {
        let mut s = tls_connect(f.ports.pass, "split.pass.example.com", &[], Some(&f.ca.pem))
            .await
            .unwrap();
        let resp = http1_over(&mut s, "split.pass.example.com", "/")
            .await
            .unwrap();
        if resp.contains("\"upstream\":\"echo\"") {
            to_first += 1;
        } else {
            assert!(resp.contains("\"upstream\":\"second\""), "{resp}");
        }
    }
    assert!(
        (110..=170).contains(&to_first),
        "{to_first}/200 at weight 70"
    );
    assert!(!f.pass_2.snis().is_empty());
    // An SNI no route claims: the connection is closed.
    assert!(
        tls_connect(f.ports.pass, "nope.pass.example.com", &[], Some(&f.ca.pem))
            .await
            .is_err()
    );

    // TLS terminated at the gateway, forwarded as TCP.
    let mut s = tls_connect(f.ports.term, "term.example.com", &[], Some(&f.ca.pem))
        .await
        .expect("gateway certificate for term.example.com");
    let resp = http1_over(&mut s, "term.example.com", "/term")
        .await
        .unwrap();
    assert!(resp.contains("\"path\":\"/term\""), "{resp}");

    // Plain TCP.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", f.ports.tcp))
        .await
        .unwrap();
    let resp = http1_over(&mut tcp, "anything", "/tcp").await.unwrap();
    assert!(resp.contains("\"path\":\"/tcp\""), "{resp}");

    // AUTO_PASSTHROUGH: the SNI names the cluster; Istio's mTLS ALPN is required.
    let sni = "outbound_.8443_._.app.ns.svc.cluster.local";
    let mut s = tls_connect(f.ports.auto, sni, &["istio"], None)
        .await
        .expect("auto passthrough");
    let resp = http1_over(&mut s, "app", "/auto").await.unwrap();
    assert!(resp.contains("\"path\":\"/auto\""), "{resp}");
    assert!(f.app.snis().contains(&Some(sni.to_string())));
    let subset = "outbound_.8443_.v1_.app.ns.svc.cluster.local";
    let mut s = tls_connect(f.ports.auto, subset, &["istio-http/1.1"], None)
        .await
        .expect("subset");
    assert!(
        http1_over(&mut s, "app", "/v1")
            .await
            .unwrap()
            .contains("\"path\":\"/v1\"")
    );
    assert!(
        tls_connect(f.ports.auto, sni, &["h2"], None).await.is_err(),
        "non-mesh ALPN"
    );

    // TLS origination: plain HTTP in, TLS (verified; and mutual) to the upstream.
    let c = http_client();
    let r = get(&c, f.ports.orig, "orig.example.com", "/o").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echo()["path"], "/o");
    let r = get(&c, f.ports.orig, "morig.example.com", "/m").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echo()["path"], "/m");
    assert!(f.echo.requests() > 0);
    f.gw.envoy.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_restart() {
    let ca = TestCa::new("rotation CA");
    let echo = EchoUpstream::start("echo");
    let files = TempDir::new();
    let cert_path = files.path().join("file.crt");
    let key_path = files.path().join("file.key");
    let first = ca.issue(&["file.example.com"]);
    std::fs::write(&cert_path, &first.cert).unwrap();
    std::fs::write(&key_path, &first.key).unwrap();
    let secret_first = ca.issue(&["secret.example.com"]);
    let port = free_port();
    let config = |secret: &Leaf| {
        file_and_secret_gateway_yaml(port, echo.port(), &cert_path, &key_path, secret)
    };
    let gw = TranslatedEnvoy::start(&config(&secret_first), "istio=ingressgateway", 1);
    let hosts = ["file.example.com", "secret.example.com"];
    let served = |host: &'static str| {
        let ca = ca.pem.clone();
        async move {
            // A fresh client per call: a new connection, a new handshake.
            let c = https_client(&ca, &hosts, port, None);
            let r = c
                .get(format!("https://{host}:{port}/"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            peer_certificate(&r)
        }
    };
    assert_eq!(served("file.example.com").await, der(&first.cert));
    assert_eq!(served("secret.example.com").await, der(&secret_first.cert));

    // Files: replace key and certificate (each atomically); new handshakes see the new one.
    let second = ca.issue(&["file.example.com"]);
    for (path, text) in [(&key_path, &second.key), (&cert_path, &second.cert)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while served("file.example.com").await != der(&second.cert) {
        assert!(
            Instant::now() < deadline,
            "file certificate not rotated:\n{}",
            gw.envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Secrets: translate again with a new Secret; Envoy reloads the SDS file.
    let secret_second = ca.issue(&["secret.example.com"]);
    let config_file = gw.dir.path().join("config/config.yaml");
    std::fs::write(&config_file, config(&secret_second)).unwrap();
    translate(
        &config_file,
        &gw.out_dir(),
        gw.envoy.admin_port,
        "istio=ingressgateway",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while served("secret.example.com").await != der(&secret_second.cert) {
        assert!(
            Instant::now() < deadline,
            "secret not rotated:\n{}",
            gw.envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The file certificate kept serving throughout.
    assert_eq!(served("file.example.com").await, der(&second.cert));
}
