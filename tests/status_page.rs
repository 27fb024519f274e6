//! The status pages, as an operator opens them: a control plane serving a folder of
//! Istio YAML to a meshgate gateway (`--xds`) and to a real Envoy 1.40 that NACKs a
//! route, and the gateway serving traffic. The pages are fetched over HTTP and checked
//! for what they must say (proxies with their ACK and NACK states, the NACK's error,
//! services and routes, recent errors, non-zero rates after traffic, hostile names
//! escaped), then rendered in headless Chromium: the screenshots are kept under
//! `target/test-artifacts/` and must show a page, and the DOM Chromium builds must hold
//! the same facts and no injected element.
#[path = "support/controlplane.rs"]
mod cp_support;
mod support;

use cp_support::{TestControlPlane, test_options};
use meshgate::controlplane::config_source::ConfigSource;
use meshgate::controlplane::source::{ShareKey, SourceOverview};
use meshgate::controlplane::{SnapshotSource, SourceError};
use meshgate::xds::{ProxyIdentity, ResourceSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use support::gateway::{GatewayProcess, get};
use support::*;

const HOSTILE_LABEL: &str = "<script>alert(1)</script>";
const HOSTILE_FILE: &str = "bad<img src=x onerror=alert(2)>.yaml";

/// The configuration in force, wrapped: proxies labelled `nack=yes` get a route with an
/// RE2 pattern that does not compile, which Envoy rejects.
struct Nacking(Arc<ConfigSource>);

impl SnapshotSource for Nacking {
    fn resources(&self, proxy: &ProxyIdentity) -> Result<Arc<ResourceSet>, SourceError> {
        let set = self.0.resources(proxy)?;
        if proxy.labels.get("nack").map(String::as_str) != Some("yes") {
            return Ok(set);
        }
        let mut set = (*set).clone();
        if let Some(vh) = set
            .routes
            .first_mut()
            .and_then(|r| r.virtual_hosts.first_mut())
            && let Some(first) = vh.routes.first()
        {
            let mut bad = first.clone();
            bad.r#match = Some(
                meshgate::xds::json::from_json(
                    &serde_json::json!({"safe_regex": {"regex": "(unclosed"}}),
                )
                .unwrap(),
            );
            vh.routes.insert(0, bad);
        }
        Ok(Arc::new(set))
    }
    fn changes(&self) -> tokio::sync::broadcast::Receiver<meshgate::controlplane::Change> {
        self.0.changes()
    }
    fn share_key(&self, proxy: &ProxyIdentity) -> Option<ShareKey> {
        self.0.share_key(proxy)
    }
    fn overview(&self) -> Option<SourceOverview> {
        self.0.overview()
    }
}

/// TLS for shop.example.com on the gateway's second port: a Secret it gets over SDS.
fn tls_config(tls_port: u16) -> String {
    let ca = support::certs::TestCa::new("status test CA");
    let leaf = ca.issue(&["shop.example.com"]);
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop, namespace: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {tls_port}, name: https, protocol: HTTPS}}
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE, credentialName: shop-cert}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: edge}}
spec:
  hosts: [shop.example.com]
  gateways: [shop]
  http:
  - route:
    - destination: {{host: app.internal, port: {{number: 80}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-cert, namespace: edge}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}
  tls.key: |
{}
"#,
        support::certs::yaml_block(&leaf.cert, 4),
        support::certs::yaml_block(&leaf.key, 4)
    )
}

fn config(gateway_port: u16, envoy_port: u16, app: u16, canary: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: envoy-gw, namespace: edge}}
spec:
  selector: {{istio: envoygw}}
  servers:
  - port: {{number: {envoy_port}, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app, namespace: edge}}
spec:
  hosts: ["app.example.com"]
  gateways: [gw, envoy-gw]
  http:
  - match: [{{uri: {{prefix: /split}}}}]
    route:
    - destination: {{host: app.internal, port: {{number: 80}}}}
      weight: 80
    - destination: {{host: canary.internal, port: {{number: 80}}}}
      weight: 20
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
    ports: {{http: {app}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: canary, namespace: edge}}
spec:
  hosts: [canary.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {canary}}}
"#
    )
}

fn meshgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
}

/// A real Envoy joining the control plane as a gateway labelled `labels`.
fn envoy(dir: &Path, xds: &str, labels: &str) -> Envoy {
    let work = dir.join("envoy");
    std::fs::create_dir_all(&work).unwrap();
    let admin = free_port();
    let bootstrap = work.join("envoy.yaml");
    let status = meshgate()
        .args(["bootstrap", "envoy", "--xds", xds, "--node-id", "envoy-gw"])
        .args(["--namespace", "edge", "--labels", labels])
        .args(["--admin-port", &admin.to_string(), "--delta", "--out"])
        .arg(&bootstrap)
        .status()
        .unwrap();
    assert!(status.success());
    Envoy::start(&bootstrap, admin, &work)
}

/// Headless Chromium, or a failure saying how to install it.
fn chromium() -> PathBuf {
    let bin = peer_bin("chromium");
    let ok = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "chromium is missing: install it with scripts/install-peers.sh chromium"
    );
    bin
}

fn chromium_cmd(bin: &Path, profile: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// Renders `url` (loopback only) at `size` into `png`, checks the picture is a page
/// (large enough, many colours), and returns the DOM Chromium built.
fn render(bin: &Path, work: &Path, url: &str, size: (u32, u32), png: &Path) -> String {
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let profile = work.join("chromium-profile");
    let _ = std::fs::remove_file(png);
    let out = chromium_cmd(bin, &profile)
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={},{}", size.0, size.1))
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(
        out.status.success() && png.exists(),
        "chromium made no screenshot of {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::metadata(png).unwrap().len();
    assert!(bytes > 20_000, "{} is only {bytes} bytes", png.display());
    let stats = Command::new("python3")
        .arg(repo_root().join("tests/support/png_stats.py"))
        .arg(png)
        .output()
        .expect("python3 reads the PNG");
    let stats = String::from_utf8_lossy(&stats.stdout).to_string();
    let v: Vec<u32> = stats
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    assert_eq!(v.len(), 3, "png_stats: {stats}");
    assert_eq!((v[0], v[1]), size, "{} has another size", png.display());
    assert!(
        v[2] >= 20,
        "{} has {} colours: not a rendered page",
        png.display(),
        v[2]
    );
    let dom = chromium_cmd(bin, &profile)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(dom.status.success());
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

fn artifacts() -> PathBuf {
    let dir = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The numeric cells of the table row whose first cell holds `key` (escaped text).
fn row_numbers(page: &str, key: &str) -> Vec<f64> {
    let start = page
        .find(&format!(">{key}</b>"))
        .unwrap_or_else(|| panic!("no row {key} in:\n{page}"));
    let row = &page[start..];
    let row = &row[..row.find("</tr>").unwrap()];
    row.split("<td class=\"num\"")
        .skip(1)
        .filter_map(|c| c.split_once('>')?.1.split('<').next()?.parse().ok())
        .collect()
}

#[test]
fn status_pages_show_proxies_config_errors_and_rates() {
    let app = EchoUpstream::start("app");
    let canary = EchoUpstream::start("canary");
    let dir = TempDir::new();
    let cfg = dir.path().join("config");
    std::fs::create_dir_all(&cfg).unwrap();
    let (gw_port, envoy_port, tls_port) = (free_port(), free_port(), free_port());
    std::fs::write(cfg.join("shop.yaml"), tls_config(tls_port)).unwrap();
    std::fs::write(
        cfg.join("edge.yaml"),
        config(gw_port, envoy_port, app.port(), canary.port()),
    )
    .unwrap();

    let watcher = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let source = Arc::new(ConfigSource::load(&cfg).expect("the configuration loads"));
    let _watch = {
        let _entered = watcher.enter();
        source.watch(Duration::from_millis(20))
    };
    let cp = TestControlPlane::start(Arc::new(Nacking(source.clone())), 0, 0, test_options());

    let gateway = GatewayProcess::start_with(
        &[
            "--xds",
            &cp.xds_addr(),
            "--node-id",
            "edge-gw-1",
            "--namespace",
            "edge",
            "--labels",
            &format!("istio=ingressgateway,note={HOSTILE_LABEL}"),
            "--access-log",
            "off",
        ],
        dir.path(),
    );
    let _envoy = envoy(dir.path(), &cp.xds_addr(), "istio=envoygw,nack=yes");

    // Traffic through the meshgate gateway: successes, a split, 5xx and no-route 404s.
    wait_until("the gateway routes", Duration::from_secs(20), || {
        get(gw_port, "app.example.com", "/", &[]).status == 200
    });
    for _ in 0..30 {
        assert_eq!(get(gw_port, "app.example.com", "/", &[]).status, 200);
    }
    for _ in 0..10 {
        assert_eq!(get(gw_port, "app.example.com", "/split", &[]).status, 200);
    }
    for _ in 0..5 {
        let r = get(gw_port, "app.example.com", "/", &[("x-echo-status", "503")]);
        assert_eq!(r.status, 503);
        assert_eq!(get(gw_port, "nothing.example.com", "/", &[]).status, 404);
    }

    // Envoy NACKs the route; the gateway is in sync; a rejected file is kept as an error.
    wait_until("Envoy NACKs RDS", Duration::from_secs(20), || {
        cp.syncz().iter().any(|p| p["states"]["rds"] == "NACKED")
    });
    // A valid change is pushed and converges; then a file that does not validate is
    // rejected, and kept among the recent errors.
    std::fs::write(
        cfg.join("edge.yaml"),
        config(gw_port, envoy_port, app.port(), canary.port())
            .replace("weight: 80", "weight: 70")
            .replace("weight: 20", "weight: 30"),
    )
    .unwrap();
    wait_until("the change converges", Duration::from_secs(20), || {
        cp.metric("pilot_proxy_convergence_time_count") >= 1.0
    });
    std::fs::write(
        cfg.join(HOSTILE_FILE),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: broken, namespace: edge}\nspec:\n  hosts: [x.example.com]\n  nonsense: true\n",
    )
    .unwrap();
    let hostile_file = meshgate::html::escape(HOSTILE_FILE);
    wait_until(
        "the rejected file among the errors",
        Duration::from_secs(20),
        || cp.debug_get("/").1.contains(&hostile_file),
    );

    let (status, cp_page) = cp.debug_get("/status");
    assert_eq!(status, 200);
    assert!(cp.debug_get("/").1.starts_with("<!DOCTYPE html>"));
    for want in [
        // Proxies, with type, labels, protocol and states.
        "edge-gw-1",
        "envoy-gw",
        "badge neutral\">gateway<",
        " · delta",
        "istio=ingressgateway",
        "badge good\">ACK<",
        "badge bad\">NACK<",
        // Envoy's reason for the NACK.
        "(unclosed",
        // Services and routes.
        "app.internal",
        "canary.internal",
        "edge/app",
        "uri prefix /split",
        "70%",
        "30%",
        "edge/gw",
        // Errors: the NACK and the rejected file.
        ">NACK<",
        ">config<",
        "nonsense",
        // Push figures: the change was pushed and converged.
        "responses pushed",
        "changes converged",
        "convergence p50",
    ] {
        assert!(cp_page.contains(want), "missing {want:?} in:\n{cp_page}");
    }
    let escaped_label = meshgate::html::escape(HOSTILE_LABEL);
    assert!(cp_page.contains(&escaped_label), "{cp_page}");
    assert!(!cp_page.contains(HOSTILE_LABEL), "unescaped label");
    assert!(!cp_page.contains("<img"), "unescaped file name");
    // The gateway's types are all ACKed, Envoy's RDS is not.
    let syncz = cp.syncz();
    let gw = syncz
        .iter()
        .find(|p| {
            p["proxy_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("edge-gw-1"))
        })
        .expect("the gateway is connected");
    for t in ["cds", "eds", "lds", "rds"] {
        assert_eq!(gw["states"][t], "SYNCED", "{gw}");
    }

    // The gateway's page: rates are counted from the traffic above (measured once the
    // counters have been sampled for a moment).
    wait_until(
        "rates and the certificate on the gateway's page",
        Duration::from_secs(10),
        || {
            let (_, page) = gateway.admin("/");
            row_numbers(&page, "outbound|80||app.internal").len() > 2
                && page.contains("terminate (SIMPLE)")
                && (page.contains(">in 29 d<") || page.contains(">in 30 d<"))
        },
    );
    let (status, gw_page) = gateway.admin("/");
    assert_eq!(status, 200);
    for want in [
        "outbound|80||app.internal",
        "outbound|80||canary.internal",
        "app.example.com",
        "prefix /split",
        "badge good\">connected<",
        "delta xDS",
        "badge good\">ACK<",
        "badge good\">healthy<",
        &format!("0.0.0.0:{gw_port}"),
        // The TLS server: its SNI name, mode, certificate secret and expiry.
        &format!("0.0.0.0:{tls_port}"),
        "shop.example.com",
        "CN=shop.example.com",
    ] {
        assert!(gw_page.contains(want), "missing {want:?} in:\n{gw_page}");
    }
    let app_rates = row_numbers(&gw_page, "outbound|80||app.internal");
    assert!(
        app_rates.first().is_some_and(|rps| *rps > 0.0),
        "no request rate for app.internal: {app_rates:?}\n{gw_page}"
    );
    assert!(
        app_rates.get(1).is_some_and(|e| *e > 0.0),
        "no 5xx rate for app.internal: {app_rates:?}"
    );
    let canary_rates = row_numbers(&gw_page, "outbound|80||canary.internal");
    assert!(
        canary_rates.first().is_some_and(|rps| *rps > 0.0),
        "no request rate for canary.internal: {canary_rates:?}"
    );

    // Rendered by a browser, on a desktop and on a phone.
    let bin = chromium();
    let out = artifacts();
    let cp_url = format!("http://127.0.0.1:{}/", cp.debug_port);
    let gw_url = format!("http://127.0.0.1:{}/", gateway.admin_port);
    let dom = render(
        &bin,
        dir.path(),
        &cp_url,
        (1280, 1250),
        &out.join("status-controlplane.png"),
    );
    for want in ["edge-gw-1", "(unclosed", "canary.internal", "NACK"] {
        assert!(dom.contains(want), "missing {want:?} in the DOM:\n{dom}");
    }
    assert!(dom.contains(&escaped_label), "{dom}");
    assert!(
        !dom.contains("<script") && !dom.contains("<img"),
        "an element was injected:\n{dom}"
    );
    let dom = render(
        &bin,
        dir.path(),
        &gw_url,
        (1280, 1250),
        &out.join("status-gateway.png"),
    );
    for want in [
        "outbound|80||app.internal",
        "connected",
        "requests/s (1 min)",
    ] {
        assert!(dom.contains(want), "missing {want:?} in the DOM:\n{dom}");
    }
    render(
        &bin,
        dir.path(),
        &cp_url,
        (412, 900),
        &out.join("status-controlplane-phone.png"),
    );
    cp.kill();
}
