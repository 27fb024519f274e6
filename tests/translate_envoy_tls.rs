//! Gateway TLS (tests/testdata/translate/tls.yaml) served by meshgate's own data plane and
//! by a real Envoy 1.40 on what `meshgate translate` makes of it, with certificates made
//! at test time: SNI termination from Kubernetes Secrets and from files, mutual TLS,
//! passthrough, TLS to TCP, plain TCP, AUTO_PASSTHROUGH and TLS origination, the same
//! clients on both and the outcomes compared; and certificate rotation on Envoy without
//! a restart.
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
    echo: EchoUpstream,
    _second: EchoUpstream,
    pass_1: TlsFront,
    pass_2: TlsFront,
    app: TlsFront,
    _secure: TlsFront,
    _msecure: TlsFront,
    gws: BothGateways,
    _files: TempDir,
}

const PORTS: &[&str] = &[
    "HTTPS_PORT",
    "PASS_PORT",
    "TERM_PORT",
    "TCP_PORT",
    "AUTO_PORT",
    "ORIG_PORT",
];

/// tests/testdata/translate/tls.yaml with certificates made now, served by meshgate and
/// by Envoy (each with its own listener ports; backends and certificates shared).
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
    let app = TlsFront::start(&ca.issue(&["app.ns.svc.cluster.local"]), None, echo.port());
    let secure = TlsFront::start(&ca.issue(&["secure.internal"]), None, echo.port());
    let msecure = TlsFront::start(&ca.issue(&["msecure.internal"]), Some(&ca.pem), echo.port());
    let shared = vec![
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
    ];
    let gws = BothGateways::start(PORTS, "istio=ingressgateway", 6, |side| {
        let mut vars = side.vars();
        vars.extend(shared.iter().cloned());
        render(&testdata("tls.yaml"), &vars)
    });
    assert!(
        !gws.envoy.translate_stderr.contains("warning"),
        "translation warnings:\n{}",
        gws.envoy.translate_stderr
    );
    Fixture {
        client_allowed: ca.issue(&["client.example.com", "spiffe://test/allowed"]),
        client_other: ca.issue(&["other.example.com", "spiffe://test/other"]),
        ca,
        echo,
        _second: second,
        pass_1,
        pass_2,
        app,
        _secure: secure,
        _msecure: msecure,
        gws,
        _files: files,
    }
}

/// What an HTTPS request got: `STATUS VERSION upstream=.. proto=.. xfcc=..`, or
/// `refused` when the handshake or the exchange failed.
async fn https_outcome(c: &reqwest::Client, url: String) -> String {
    match c.get(url).send().await {
        Err(_) => "refused".into(),
        Ok(r) => {
            let status = r.status().as_u16();
            let version = format!("{:?}", r.version());
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            format!(
                "{status} {version} upstream={} proto={} xfcc={}",
                body["upstream"],
                body["headers"]["x-forwarded-proto"][0],
                body["headers"]["x-forwarded-client-cert"][0]
            )
        }
    }
}

async fn termination_scenario(f: &Fixture, t: &mut Transcript) {
    let who = t.who();
    let hosts = [
        "a.example.com",
        "b.example.com",
        "mtls.example.com",
        "optional.example.com",
        "x.wild.example.com",
        "unknown.example.com",
    ];
    let port = t.port("HTTPS_PORT");
    let c = https_client(&f.ca.pem, &hosts, port, None);
    let url = |host: &str| format!("https://{host}:{port}/p");
    // Each SNI gets its own certificate (the client checks the name against it), over h2.
    for host in ["a.example.com", "b.example.com", "x.wild.example.com"] {
        let seen = https_outcome(&c, url(host)).await;
        assert_eq!(
            seen, "200 HTTP/2.0 upstream=\"echo\" proto=\"https\" xfcc=null",
            "{who}: {host}"
        );
        t.note(format!("sni {host}"), seen);
    }
    // No certificate for an unknown SNI: the connection is refused.
    let seen = https_outcome(&c, url("unknown.example.com")).await;
    assert_eq!(seen, "refused", "{who}: unknown SNI");
    t.note("sni unknown", seen);
    // minProtocolVersion TLSV1_3 on b.example.com only.
    let tls12 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(f.ca.pem.as_bytes()).unwrap()])
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .resolve("a.example.com", ([127, 0, 0, 1], port).into())
        .resolve("b.example.com", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let seen = https_outcome(&tls12, url("a.example.com")).await;
    assert!(seen.starts_with("200 "), "{who}: TLS 1.2 to a: {seen}");
    t.note("tls 1.2 a", seen);
    let seen = https_outcome(&tls12, url("b.example.com")).await;
    assert_eq!(seen, "refused", "{who}: TLS 1.2 to b (min 1.3)");
    t.note("tls 1.2 b", seen);

    // MUTUAL: no client certificate, or one without the required SAN, is refused.
    let seen = https_outcome(&c, url("mtls.example.com")).await;
    assert_eq!(seen, "refused", "{who}: mutual without a certificate");
    t.note("mutual no cert", seen);
    let other = https_client(&f.ca.pem, &hosts, port, Some(&f.client_other));
    let seen = https_outcome(&other, url("mtls.example.com")).await;
    assert_eq!(seen, "refused", "{who}: mutual with the wrong SAN");
    t.note("mutual other san", seen);
    let allowed = https_client(&f.ca.pem, &hosts, port, Some(&f.client_allowed));
    let seen = https_outcome(&allowed, url("mtls.example.com")).await;
    assert!(
        seen.starts_with("200 HTTP/2.0 upstream=\"echo\"")
            && seen.contains("Hash=")
            && seen.contains("URI=spiffe://test/allowed"),
        "{who}: mutual allowed: {seen}"
    );
    t.note("mutual allowed", seen);

    // OPTIONAL_MUTUAL: both work; only a client with a certificate is described upstream.
    let seen = https_outcome(&c, url("optional.example.com")).await;
    assert!(
        seen.starts_with("200 ") && seen.ends_with("xfcc=null"),
        "{who}: optional without a certificate: {seen}"
    );
    t.note("optional no cert", seen);
    let seen = https_outcome(&other, url("optional.example.com")).await;
    assert!(
        seen.starts_with("200 ") && seen.contains("spiffe://test/other"),
        "{who}: optional with a certificate: {seen}"
    );
    t.note("optional with cert", seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_by_sni_mutual_and_versions() {
    let f = start();
    let mut runs = Vec::new();
    for side in &f.gws.sides {
        let mut t = Transcript::new(side);
        termination_scenario(&f, &mut t).await;
        runs.push(t);
    }
    assert_same_answers(&runs[0], &runs[1], &[]);
    f.gws.envoy.envoy.assert_no_rejections();
}

async fn passthrough_scenario(f: &Fixture, t: &mut Transcript) {
    let who = t.who();
    let ca = Some(f.ca.pem.as_str());
    let upstream_of = |resp: &str| {
        resp.split("\r\n\r\n")
            .nth(1)
            .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .map(|v| format!("{} {}", v["upstream"], v["path"]))
            .unwrap_or_else(|| "no answer".into())
    };

    // PASSTHROUGH: the client's TLS reaches the backend untouched, chosen by SNI.
    let pass = t.port("PASS_PORT");
    let handshakes = f.pass_1.snis().len();
    let mut s = tls_connect(pass, "one.pass.example.com", &[], ca)
        .await
        .unwrap_or_else(|e| panic!("{who}: handshake with the backend through the gateway: {e}"));
    let resp = http1_over(&mut s, "one.pass.example.com", "/through")
        .await
        .unwrap();
    let seen = upstream_of(&resp);
    assert_eq!(seen, "\"echo\" \"/through\"", "{who}: {resp}");
    t.note("passthrough one", seen);
    assert_eq!(
        f.pass_1.snis()[handshakes..],
        [Some("one.pass.example.com".to_string())],
        "{who}: the backend terminated the client's TLS"
    );
    // Weights between two backends, per connection: 70/30.
    let n = 400;
    let before_second = f.pass_2.snis().len();
    let mut to_first = 0;
    for _ in 0..n {
        let mut s = tls_connect(pass, "split.pass.example.com", &[], ca)
            .await
            .unwrap();
        let resp = http1_over(&mut s, "split.pass.example.com", "/")
            .await
            .unwrap();
        match upstream_of(&resp).as_str() {
            "\"echo\" \"/\"" => to_first += 1,
            "\"second\" \"/\"" => {}
            other => panic!("{who}: split: {other}: {resp}"),
        }
    }
    assert_binomial(
        &format!("{who}: passthrough to the first at weight 70"),
        to_first,
        n,
        0.7,
        &[0.5, 1.0],
    );
    assert_eq!(f.pass_2.snis().len() - before_second, n - to_first, "{who}");
    // An SNI no route claims: the connection is closed.
    let refused = tls_connect(pass, "nope.pass.example.com", &[], ca)
        .await
        .is_err();
    assert!(refused, "{who}: an unclaimed SNI");
    t.note("passthrough unclaimed sni refused", refused);

    // TLS terminated at the gateway, forwarded as TCP.
    let mut s = tls_connect(t.port("TERM_PORT"), "term.example.com", &[], ca)
        .await
        .unwrap_or_else(|e| panic!("{who}: gateway certificate for term.example.com: {e}"));
    let resp = http1_over(&mut s, "term.example.com", "/term")
        .await
        .unwrap();
    let seen = upstream_of(&resp);
    assert_eq!(seen, "\"echo\" \"/term\"", "{who}: {resp}");
    t.note("terminated to tcp", seen);

    // Plain TCP.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", t.port("TCP_PORT")))
        .await
        .unwrap();
    let resp = http1_over(&mut tcp, "anything", "/tcp").await.unwrap();
    let seen = upstream_of(&resp);
    assert_eq!(seen, "\"echo\" \"/tcp\"", "{who}: {resp}");
    t.note("plain tcp", seen);

    // AUTO_PASSTHROUGH: the SNI names the cluster; Istio's mTLS ALPN is required.
    let auto = t.port("AUTO_PORT");
    let sni = "outbound_.8443_._.app.ns.svc.cluster.local";
    let handshakes = f.app.snis().len();
    let mut s = tls_connect(auto, sni, &["istio"], None)
        .await
        .unwrap_or_else(|e| panic!("{who}: auto passthrough: {e}"));
    let resp = http1_over(&mut s, "app", "/auto").await.unwrap();
    let seen = upstream_of(&resp);
    assert_eq!(seen, "\"echo\" \"/auto\"", "{who}: {resp}");
    t.note("auto passthrough", seen);
    assert_eq!(f.app.snis()[handshakes..], [Some(sni.to_string())], "{who}");
    let subset = "outbound_.8443_.v1_.app.ns.svc.cluster.local";
    let mut s = tls_connect(auto, subset, &["istio-http/1.1"], None)
        .await
        .unwrap_or_else(|e| panic!("{who}: auto passthrough to a subset: {e}"));
    let seen = upstream_of(&http1_over(&mut s, "app", "/v1").await.unwrap());
    assert_eq!(seen, "\"echo\" \"/v1\"", "{who}");
    t.note("auto passthrough subset", seen);
    let refused = tls_connect(auto, sni, &["h2"], None).await.is_err();
    assert!(refused, "{who}: non-mesh ALPN");
    t.note("auto passthrough non-mesh alpn refused", refused);

    // TLS origination: plain HTTP in, TLS (verified; and mutual) to the upstream.
    let before = f.echo.requests();
    let r = t.get("ORIG_PORT", "orig.example.com", "/o").await;
    assert_eq!(r.status, 200, "{who}: {r:?}");
    assert_eq!(r.echo()["path"], "/o", "{who}");
    let r = t.get("ORIG_PORT", "morig.example.com", "/m").await;
    assert_eq!(r.status, 200, "{who}: {r:?}");
    assert_eq!(r.echo()["path"], "/m", "{who}");
    assert_eq!(f.echo.requests() - before, 2, "{who}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_tcp_auto_passthrough_and_origination() {
    let f = start();
    let mut runs = Vec::new();
    for side in &f.gws.sides {
        let mut t = Transcript::new(side);
        passthrough_scenario(&f, &mut t).await;
        runs.push(t);
    }
    assert_same_answers(&runs[0], &runs[1], &[]);
    f.gws.envoy.envoy.assert_no_rejections();
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

/// Many `credentialName` certificates on one port, as `meshgate translate --out` lays
/// them out for Envoy: no path-based SDS or RDS subscription per secret or per HTTPS
/// server's route table (Envoy opens an inotify instance for each, and thousands exceed
/// the default limits), the material inline in the listener file, written for its owner
/// only. A real Envoy loads it and
/// serves each host its own certificate; translating a changed Secret again rotates
/// that host's certificate without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_credential_certificates_load_in_envoy_without_sds_files() {
    use std::os::unix::fs::PermissionsExt;
    let ca = TestCa::new("sni CA");
    let echo = EchoUpstream::start("echo");
    let port = free_port();
    let hosts: Vec<String> = (0..4).map(|i| format!("h-{i}.example.com")).collect();
    let config = |leaves: &[Leaf]| {
        let mut y = String::from(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: sni, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n",
        );
        for (i, h) in hosts.iter().enumerate() {
            y.push_str(&format!(
                "  - port: {{number: {port}, name: https-{i}, protocol: HTTPS}}\n    hosts: [{h}]\n    tls: {{mode: SIMPLE, credentialName: h-{i}-cert}}\n"
            ));
        }
        for (i, leaf) in leaves.iter().enumerate() {
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: h-{i}-cert, namespace: istio-system}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n",
                yaml_block(&leaf.cert, 4),
                yaml_block(&leaf.key, 4)
            ));
        }
        y.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: echo, namespace: istio-system}}\nspec:\n  hosts: [echo.internal]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: istio-system}}\nspec:\n  hosts: [{}]\n  gateways: [sni]\n  http: [{{route: [{{destination: {{host: echo.internal}}}}]}}]\n",
            echo.port(),
            hosts.join(", ")
        ));
        y
    };
    let mut leaves: Vec<Leaf> = hosts.iter().map(|h| ca.issue(&[h.as_str()])).collect();
    let gw = TranslatedEnvoy::start(&config(&leaves), "istio=ingressgateway", 1);
    let out = gw.out_dir();
    for per_resource in ["sds", "rds"] {
        assert!(
            !out.join(per_resource).exists(),
            "one {per_resource} file per resource: {:?}",
            std::fs::read_dir(out.join(per_resource)).map(|d| d.count())
        );
    }
    let lds = out.join("lds.yaml");
    assert_eq!(
        std::fs::metadata(&lds).unwrap().permissions().mode() & 0o777,
        0o600,
        "lds.yaml holds private keys"
    );
    let served = |host: String| {
        let ca = ca.pem.clone();
        async move {
            let s = tls_connect(port, &host, &[], Some(&ca)).await.ok()?;
            s.get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec())
        }
    };
    for (h, leaf) in hosts.iter().zip(&leaves) {
        assert_eq!(served(h.clone()).await, Some(der(&leaf.cert)), "{h}");
    }
    let c = https_client(
        &ca.pem,
        &hosts.iter().map(String::as_str).collect::<Vec<_>>(),
        port,
        None,
    );
    let r = c
        .get(format!("https://{}:{port}/", hosts[3]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", gw.envoy.log());

    // One Secret changes: translated again, Envoy reloads lds.yaml and serves it.
    leaves[2] = ca.issue(&[hosts[2].as_str()]);
    let config_file = gw.dir.path().join("config/config.yaml");
    std::fs::write(&config_file, config(&leaves)).unwrap();
    translate(
        &config_file,
        &out,
        gw.envoy.admin_port,
        "istio=ingressgateway",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(hosts[2].clone()).await != Some(der(&leaves[2].cert)) {
        assert!(
            Instant::now() < deadline,
            "secret not rotated:\n{}",
            gw.envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (h, leaf) in hosts.iter().zip(&leaves) {
        assert_eq!(served(h.clone()).await, Some(der(&leaf.cert)), "{h}");
    }
    gw.envoy.assert_no_rejections();
}
