//! Every example in `gateway-config/` validates without errors, translates, and runs on a
//! real Envoy that rejects nothing and answers as the example's README says.
//!
//! Envoy runs on a copy of each example whose port numbers are swapped for free loopback
//! ports (and whose external DNS name is pinned to localhost), so tests never collide
//! with each other or send traffic off the machine.
mod support;
#[path = "support/translate.rs"]
mod translating;

use std::path::{Path, PathBuf};
use support::*;
use translating::*;

/// Copies an example directory, applying text substitutions to every file.
fn copy_example(name: &str, dest: &Path, substitutions: &[(String, String)]) -> PathBuf {
    let src = repo_root().join("gateway-config").join(name);
    let dir = dest.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let mut text = std::fs::read_to_string(&path).unwrap();
            for (from, to) in substitutions {
                text = text.replace(from, to);
            }
            std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
        }
    }
    dir
}

fn assert_validates(name: &str) {
    let out = meshgate(&["validate", &format!("gateway-config/{name}")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !stdout.contains(": error:"),
        "gateway-config/{name} does not validate:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains(": warning:"),
        "gateway-config/{name} has warnings:\n{stdout}"
    );
}

/// Translates the example exactly as committed.
fn assert_translates(name: &str, labels: &str) {
    let dir = TempDir::new();
    let stderr = translate(
        &repo_root().join("gateway-config").join(name),
        &dir.path().join("out"),
        15000,
        labels,
    );
    assert!(
        !stderr.contains("warning") && !stderr.contains("error"),
        "translating gateway-config/{name}:\n{stderr}"
    );
    for f in ["envoy.yaml", "lds.yaml", "cds.yaml"] {
        assert!(dir.path().join("out").join(f).is_file(), "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart() {
    assert_validates("quickstart");
    assert_translates("quickstart", "istio=ingressgateway");
    let app = EchoUpstream::start("local-app");
    let port = free_port();
    let dir = TempDir::new();
    let config = copy_example(
        "quickstart",
        dir.path(),
        &[
            ("8080".into(), port.to_string()),
            ("8000".into(), app.port().to_string()),
        ],
    );
    let gw = TranslatedEnvoy::start_dir(dir, &config, "istio=ingressgateway", 1);
    let c = http_client();
    let r = get(&c, port, "localhost", "/hello").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello from meshgate\n"));
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    let r = get(&c, port, "anything.example", "/app/items?id=7").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echo()["path"], "/items?id=7");
    assert_eq!(get(&c, port, "localhost", "/other").await.status, 404);
    gw.envoy.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress() {
    assert_validates("ingress");
    assert_translates("ingress", "istio=ingressgateway");
    let productpage = EchoUpstream::start("productpage");
    let v1 = EchoUpstream::start("reviews-v1");
    let v2 = EchoUpstream::start("reviews-v2");
    let v3 = EchoUpstream::start("reviews-v3");
    let ratings = EchoUpstream::start("ratings");
    let port = free_port();
    let dir = TempDir::new();
    let config = copy_example(
        "ingress",
        dir.path(),
        &[
            ("number: 8080".into(), format!("number: {port}")),
            (
                "http: 9080}".into(),
                format!("http: {}}}", productpage.port()),
            ),
            ("http: 9081}".into(), format!("http: {}}}", v1.port())),
            ("http: 9082}".into(), format!("http: {}}}", v2.port())),
            ("http: 9083}".into(), format!("http: {}}}", v3.port())),
            ("http: 9084}".into(), format!("http: {}}}", ratings.port())),
        ],
    );
    let gw = TranslatedEnvoy::start_dir(dir, &config, "istio=ingressgateway", 1);
    let c = http_client();
    let h = "bookinfo.example.com";
    for path in [
        "/productpage",
        "/static/app.css",
        "/login",
        "/api/v1/products/1",
    ] {
        assert_eq!(
            get(&c, port, h, path).await.upstream(),
            "productpage",
            "{path}"
        );
    }
    assert_eq!(get(&c, port, h, "/productpage/extra").await.status, 404);
    assert_eq!(
        get(&c, port, "other.example.com", "/productpage")
            .await
            .status,
        404
    );
    let r = send(&c, "GET", port, h, "/reviews/1", &[("end-user", "jason")]).await;
    assert_eq!(r.upstream(), "reviews-v2");
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..400 {
        *counts
            .entry(get(&c, port, h, "/reviews/1").await.upstream())
            .or_default() += 1;
    }
    let v1_share = counts.get("reviews-v1").copied().unwrap_or(0);
    assert!(
        !counts.contains_key("reviews-v2"),
        "80/20 between v1 and v3: {counts:?}"
    );
    assert_binomial(
        &format!("reviews-v1 at weight 80 ({counts:?})"),
        v1_share as usize,
        400,
        0.8,
        &[0.5, 1.0],
    );
    assert_eq!(get(&c, port, h, "/ratings/1").await.upstream(), "ratings");
    gw.envoy.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress() {
    assert_validates("egress");
    assert_translates("egress", "istio=egressgateway");
    let external = EchoUpstream::start("external");
    let port = free_port();
    let dir = TempDir::new();
    let config = copy_example(
        "egress",
        dir.path(),
        &[
            ("number: 8080".into(), format!("number: {port}")),
            // httpbin.org is resolved as localhost, where the echo server plays it.
            (
                "  resolution: DNS\n".into(),
                format!(
                    "  resolution: DNS\n  endpoints: [{{address: localhost, ports: {{http: {}}}}}]\n",
                    external.port()
                ),
            ),
        ],
    );
    // Without the egress labels nothing is selected.
    let none = TempDir::new();
    let stderr = translate(
        &config,
        &none.path().join("out"),
        15000,
        "istio=ingressgateway",
    );
    assert!(stderr.contains("no Gateway server selects"), "{stderr}");

    let gw = TranslatedEnvoy::start_dir(dir, &config, "istio=egressgateway", 1);
    let c = http_client();
    let r = get(&c, port, "httpbin.org", "/get").await;
    assert_eq!(r.upstream(), "external");
    assert_eq!(r.upstream_header("host").as_deref(), Some("httpbin.org"));
    assert_eq!(
        r.upstream_header("x-egress-gateway").as_deref(),
        Some("egress/egress-gateway")
    );
    let r = get(&c, port, "httpbin.org", "/admin/users").await;
    assert_eq!(r.status, 403);
    assert_eq!(get(&c, port, "example.com", "/get").await.status, 404);
    gw.envoy.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn east_west() {
    assert_validates("east-west");
    assert_translates("east-west", "istio=eastwestgateway");
    let ca = TestCa::new("east-west test CA");
    let workload = EchoUpstream::start("reviews");
    // The workload's mTLS port: a TLS terminator in front of the echo server.
    let sidecar = TlsFront::start(
        &ca.issue(&["reviews.bookinfo.svc.cluster.local"]),
        None,
        workload.port(),
    );
    let port = free_port();
    let dir = TempDir::new();
    let config = copy_example(
        "east-west",
        dir.path(),
        &[
            ("number: 15443".into(), format!("number: {port}")),
            ("http: 15006}".into(), format!("http: {}}}", sidecar.port)),
        ],
    );
    let gw = TranslatedEnvoy::start_dir(dir, &config, "istio=eastwestgateway", 1);
    for sni in [
        "outbound_.9080_._.reviews.bookinfo.svc.cluster.local",
        "outbound_.9080_.v1_.reviews.bookinfo.svc.cluster.local",
    ] {
        let mut s = tls_connect(port, sni, &["istio"], None)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        let resp = http1_over(&mut s, "reviews", "/reviews/1").await.unwrap();
        assert!(resp.contains("\"upstream\":\"reviews\""), "{sni}: {resp}");
    }
    // The TLS was the client's own, end to end: the workload saw the client's SNI.
    assert_eq!(sidecar.snis().len(), 2);
    assert!(
        tls_connect(
            port,
            "outbound_.9080_._.ratings.bookinfo.svc.cluster.local",
            &["istio"],
            None
        )
        .await
        .is_err(),
        "an unknown service is refused"
    );
    gw.envoy.assert_no_rejections();
}
