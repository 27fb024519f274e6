//! Helpers for control-plane tests: an in-process control plane on its own runtime
//! (so that it can be killed like a process, connections and all), bootstraps for real
//! Envoy, and readers for its debug endpoints.
#![allow(dead_code)]

use meshgate::controlplane::bootstrap::EnvoyBootstrap;
use meshgate::controlplane::{ControlPlane, Debounce, Options, SnapshotSource, debug};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A control plane serving ADS on `xds_port` and debug on `debug_port`, on a runtime of
/// its own: [`TestControlPlane::kill`] drops every task and socket at once.
pub struct TestControlPlane {
    runtime: Option<tokio::runtime::Runtime>,
    pub cp: ControlPlane,
    pub xds_port: u16,
    pub debug_port: u16,
}

/// Test timings: a short debounce keeps the tests quick.
pub fn test_options() -> Options {
    Options {
        debounce: Debounce {
            after: Duration::from_millis(50),
            max: Duration::from_secs(1),
        },
        ..Options::default()
    }
}

impl TestControlPlane {
    /// Starts on the given ports (0 for any free one).
    pub fn start(
        source: Arc<dyn SnapshotSource>,
        xds_port: u16,
        debug_port: u16,
        options: Options,
    ) -> TestControlPlane {
        // Built and entered on a thread of its own: tests call this from async code.
        std::thread::spawn(move || Self::start_here(source, xds_port, debug_port, options))
            .join()
            .expect("starting the control plane")
    }

    fn start_here(
        source: Arc<dyn SnapshotSource>,
        xds_port: u16,
        debug_port: u16,
        options: Options,
    ) -> TestControlPlane {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("control plane runtime");
        let (cp, xds_port, debug_port) = runtime.block_on(async move {
            let cp = ControlPlane::new(source, options);
            let xds = bind_retrying(xds_port).await;
            let dbg = bind_retrying(debug_port).await;
            let (xp, dp) = (
                xds.local_addr().unwrap().port(),
                dbg.local_addr().unwrap().port(),
            );
            let serving = cp.clone();
            tokio::spawn(async move { serving.serve(xds, std::future::pending()).await });
            tokio::spawn(debug::serve(cp.clone(), dbg, std::future::pending()));
            (cp, xp, dp)
        });
        TestControlPlane {
            runtime: Some(runtime),
            cp,
            xds_port,
            debug_port,
        }
    }

    /// Stops everything abruptly, as a killed process would.
    pub fn kill(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    pub fn xds_addr(&self) -> String {
        format!("127.0.0.1:{}", self.xds_port)
    }

    /// GET on the debug server: (status, body).
    pub fn debug_get(&self, path: &str) -> (u16, String) {
        crate::support::blocking_http_get(("127.0.0.1", self.debug_port), path)
            .expect("debug endpoint")
    }

    /// `/debug/syncz` as JSON.
    pub fn syncz(&self) -> Vec<serde_json::Value> {
        let (status, body) = self.debug_get("/debug/syncz");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("syncz json")
    }

    /// A metric's value from `/metrics` (the whole line after the name and labels).
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let (_, body) = self.debug_get("/metrics");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)
                    .and_then(|v| v.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name_and_labels} not found in:\n{body}"))
    }

    /// Waits until every connected proxy is in sync for every type it subscribed to.
    pub fn wait_synced(&self, proxies: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let syncz = self.syncz();
            let synced = syncz.len() == proxies
                && syncz.iter().all(|p| {
                    p["states"].as_object().is_some_and(|m| {
                        !m.is_empty() && m.values().all(|s| s == "SYNCED" || s == "NOT SENT")
                    })
                });
            if synced {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxies not in sync after {timeout:?}: {}",
                serde_json::to_string_pretty(&syncz).unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Binds 127.0.0.1:`port`, retrying briefly (a just-killed server's port may linger).
async fn bind_retrying(port: u16) -> tokio::net::TcpListener {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("binding {addr}: {e}"),
        }
    }
}

/// Labels from `k=v` pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Writes an Envoy bootstrap for a gateway with `labels` joining `xds_addr`.
pub fn write_bootstrap(
    dir: &Path,
    name: &str,
    xds_addr: &str,
    labels: BTreeMap<String, String>,
    delta: bool,
    admin_port: u16,
) -> PathBuf {
    let b = EnvoyBootstrap {
        xds_address: xds_addr.to_string(),
        node_id: name.to_string(),
        namespace: "edge".into(),
        labels,
        delta,
        admin_port,
        ..Default::default()
    };
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, b.to_yaml().expect("bootstrap")).expect("write bootstrap");
    path
}

/// GET `http://127.0.0.1:port/` with `Host: host`: (status, the answering upstream).
pub async fn get_via(
    client: &reqwest::Client,
    port: u16,
    host: &str,
) -> Result<(u16, String), reqwest::Error> {
    let resp = client
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", host)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let upstream = resp
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let _ = resp.bytes().await;
    Ok((status, upstream))
}

/// Polls until a request for `host` through `port` is answered by `upstream` (bounded).
pub async fn wait_routed(
    client: &reqwest::Client,
    port: u16,
    host: &str,
    upstream: &str,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok((200, u)) = get_via(client, port, host).await
            && u == upstream
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{host} via :{port} not routed to {upstream} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
