//! The outbound side of a sidecar, judged by real Envoy 1.40: `meshgate control-plane`
//! (with its CA, mutual TLS and SDS) serves an Envoy bootstrapped as Istio's sidecar
//! (`meshgate bootstrap envoy --kind sidecar`, plus the `sds-grpc` cluster the pod's
//! agent would serve, here the control plane's own SDS service over mutual TLS). Envoy
//! must accept every resource, and its `/config_dump` must hold istiod's listeners,
//! route tables and clusters, the mesh mTLS clusters active with their secrets.
mod support;

use meshgate::ca::SpiffeId;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::mesh_identity::{MeshControlPlane, issue_files};
use support::xds_mesh::write_atomically;
use support::*;

/// The services and routes of namespace `shop` (and `other`) every test starts from.
const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  addresses: [10.96.0.5]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 10.1.0.1, labels: {version: v1, security.istio.io/tlsMode: istio}, serviceAccount: reviews}
  - {address: 10.1.0.2, labels: {version: v2, security.istio.io/tlsMode: istio}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy: {connectionPool: {http: {http2MaxRequests: 100}}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v2}}]
  - retries: {attempts: 3, retryOn: 5xx}
    timeout: 5s
    route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: other}
spec:
  hosts: [ratings.other.svc.cluster.local]
  addresses: [10.96.0.9]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.1.0.6}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: other}
spec:
  host: ratings.other.svc.cluster.local
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.shop.svc.cluster.local]
  addresses: [10.96.0.7]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  endpoints: [{address: 10.1.0.3}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db2, namespace: shop}
spec:
  hosts: [db2.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  endpoints: [{address: 10.1.0.8}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: shop}
spec:
  hosts: [db]
  tcp:
  - route:
    - {destination: {host: db}, weight: 80}
    - {destination: {host: db2}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  tls:
  - match: [{sniHosts: [api.example.com]}]
    route: [{destination: {host: api.example.com, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cache, namespace: shop}
spec:
  hosts: [cache.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: NONE
  ports: [{number: 6379, name: redis, protocol: REDIS}]
  workloadSelector: {labels: {app: cache}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: cache-1, namespace: shop}
spec: {address: 10.1.0.4, labels: {app: cache}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: cache-2, namespace: shop}
spec: {address: 10.1.0.5, labels: {app: cache}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: shop}
spec:
  hosts: [legacy.shop.svc.cluster.local]
  addresses: [10.96.0.11]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 7000, name: legacy}]
  endpoints: [{address: 10.1.0.7}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: range, namespace: shop}
spec:
  hosts: [range.example.com]
  addresses: [10.200.0.0/16]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 8443, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: shop}
spec:
  hosts: ["*.wild.example.com"]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 80, name: http, protocol: HTTP}]
"#;

/// A sidecar Envoy for pod `pod` of namespace `namespace` with service account
/// `account`: ADS over mutual TLS to the control plane, and `sds-grpc` (the agent's
/// cluster in Istio's bootstrap) to the control plane's SDS service with the same
/// certificate.
fn sidecar_envoy(
    cp: &MeshControlPlane,
    ca_dir: &Path,
    work: &Path,
    namespace: &str,
    pod: &str,
    account: &str,
) -> Envoy {
    std::fs::create_dir_all(work).unwrap();
    let identity = SpiffeId::new("cluster.local", namespace, account).unwrap();
    let (chain, key) = issue_files(ca_dir, &identity, &work.join("certs"));
    let admin = free_port();
    let generated = work.join("bootstrap.json");
    let status = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["bootstrap", "envoy", "--kind", "sidecar", "--xds"])
        .arg(format!("127.0.0.1:{}", cp.tls_port))
        .args([
            "--node-id",
            pod,
            "--namespace",
            namespace,
            "--ip",
            "10.1.0.9",
        ])
        .args(["--labels", &format!("app={account}")])
        .args(["--admin-port", &admin.to_string(), "--format", "json"])
        .arg("--xds-root-cert")
        .arg(ca_dir.join("root-cert.pem"))
        .arg("--xds-cert-chain")
        .arg(&chain)
        .arg("--xds-key")
        .arg(&key)
        .arg("--out")
        .arg(&generated)
        .status()
        .unwrap();
    assert!(status.success(), "meshgate bootstrap envoy failed");
    let mut bootstrap: Value =
        serde_json::from_str(&std::fs::read_to_string(&generated).unwrap()).unwrap();
    assert_eq!(
        bootstrap["node"]["id"],
        format!("sidecar~10.1.0.9~{pod}.{namespace}~{namespace}.svc.cluster.local")
    );
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap();
    let mut sds = clusters[0].clone();
    sds["name"] = json!("sds-grpc");
    sds["load_assignment"]["cluster_name"] = json!("sds-grpc");
    clusters.push(sds);
    let path = work.join("envoy.json");
    std::fs::write(&path, serde_json::to_string_pretty(&bootstrap).unwrap()).unwrap();
    Envoy::spawn(&path, admin, work)
}

/// A control plane with its CA serving `config`, in a mesh with `mesh` settings plus
/// `proxyListenPort` and `proxyInboundListenPort` on free ports (the virtual listeners
/// bind them).
fn control_plane(work: &Path, config: &str, mesh: &str) -> (MeshControlPlane, u16) {
    let listen = free_port();
    std::fs::create_dir_all(work.join("config")).unwrap();
    std::fs::write(work.join("config/mesh-services.yaml"), config).unwrap();
    let mesh_file = work.join("mesh.yaml");
    std::fs::write(
        &mesh_file,
        format!(
            "proxyListenPort: {listen}\nproxyInboundListenPort: {}\n{mesh}",
            free_port()
        ),
    )
    .unwrap();
    let mesh_arg = mesh_file.display().to_string();
    let cp = MeshControlPlane::start(work, &work.join("ca"), &["--mesh-config", &mesh_arg]);
    (cp, listen)
}

/// `/config_dump` (with EDS) as JSON, `Null` while the admin API is not up.
fn config_dump(envoy: &Envoy) -> Value {
    match envoy.admin_get("/config_dump?include_eds") {
        Ok((200, body)) => serde_json::from_str(&body).expect("config_dump json"),
        _ => Value::Null,
    }
}

/// The section of a config dump of type `kind` (`ListenersConfigDump`, ...).
fn section<'a>(dump: &'a Value, kind: &str) -> &'a Value {
    dump["configs"]
        .as_array()
        .and_then(|c| {
            c.iter().find(|s| {
                s["@type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with(&format!(".{kind}")))
            })
        })
        .unwrap_or_else(|| panic!("no {kind} in config dump"))
}

fn active_listeners(dump: &Value) -> BTreeSet<String> {
    if dump.is_null() {
        return BTreeSet::new();
    }
    section(dump, "ListenersConfigDump")["dynamic_listeners"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .filter(|l| !l["active_state"].is_null())
                .filter_map(|l| l["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn listener<'a>(dump: &'a Value, name: &str) -> &'a Value {
    section(dump, "ListenersConfigDump")["dynamic_listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == name))
        .map(|l| &l["active_state"]["listener"])
        .unwrap_or_else(|| panic!("no listener {name}"))
}

/// The outbound side's clusters in `state` (the inbound side's are tested in
/// sidecar_inbound).
fn clusters(dump: &Value, state: &str) -> BTreeSet<String> {
    section(dump, "ClustersConfigDump")[state]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_string))
                .filter(|n| n != "InboundPassthroughCluster" && !n.starts_with("inbound|"))
                .collect()
        })
        .unwrap_or_default()
}

fn route_config<'a>(dump: &'a Value, name: &str) -> &'a Value {
    section(dump, "RoutesConfigDump")["dynamic_route_configs"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["route_config"]["name"] == name))
        .map(|r| &r["route_config"])
        .unwrap_or_else(|| panic!("no route configuration {name}"))
}

fn vhost_names(rc: &Value) -> Vec<String> {
    rc["virtual_hosts"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|vh| vh["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Waits until Envoy has active listeners `want`, and its warming clusters are done.
fn wait_configured(envoy: &Envoy, want: &BTreeSet<String>) -> Value {
    let mut dump = Value::Null;
    wait_until(
        "Envoy has the sidecar's listeners and no warming cluster",
        Duration::from_secs(30),
        || {
            dump = config_dump(envoy);
            // The inbound side is tested in sidecar_inbound.
            let mut have = active_listeners(&dump);
            have.remove("virtualInbound");
            have == *want && clusters(&dump, "dynamic_warming_clusters").is_empty()
        },
    );
    dump
}

#[test]
fn envoy_accepts_the_outbound_side_with_istios_names() {
    let work = TempDir::new();
    let (cp, listen) = control_plane(
        work.path(),
        CONFIG,
        "accessLogFile: /dev/stdout\naccessLogEncoding: TEXT\n",
    );
    let envoy = sidecar_envoy(
        &cp,
        &work.path().join("ca"),
        &work.path().join("productpage"),
        "shop",
        "productpage-1",
        "productpage",
    );
    let dump = wait_configured(
        &envoy,
        &set(&[
            "virtualOutbound",
            "0.0.0.0_9080",
            "0.0.0.0_80",
            "10.96.0.7_5432",
            "0.0.0.0_5432",
            "0.0.0.0_443",
            "10.1.0.4_6379",
            "10.1.0.5_6379",
            "10.96.0.11_7000",
            "0.0.0.0_8443",
        ]),
    );
    wait_until("Envoy ready", Duration::from_secs(20), || {
        matches!(envoy.admin_get("/ready"), Ok((200, _)))
    });
    envoy.assert_no_rejections();

    // The virtual listener on proxyListenPort, forwarding by original destination.
    let v = listener(&dump, "virtualOutbound");
    assert_eq!(v["address"]["socket_address"]["port_value"], listen);
    assert_eq!(v["use_original_dst"], true);
    let chains: Vec<&str> = v["filter_chains"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        chains,
        ["virtualOutbound-blackhole", "virtualOutbound-catchall-tcp"]
    );
    assert_eq!(
        v["filter_chains"][1]["filters"][0]["typed_config"]["cluster"],
        "PassthroughCluster"
    );

    // Port listeners are not bound; HTTP ones read RDS by port.
    let http = listener(&dump, "0.0.0.0_9080");
    assert_eq!(http["bind_to_port"], false);
    assert_eq!(
        http["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["route_config_name"],
        "9080"
    );
    // The unknown-protocol port: a TCP default chain and an HTTP chain with its own table.
    let legacy = listener(&dump, "10.96.0.11_7000");
    assert_eq!(
        legacy["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["route_config_name"],
        "legacy.shop.svc.cluster.local:7000"
    );
    assert_eq!(
        legacy["default_filter_chain"]["filters"][0]["typed_config"]["cluster"],
        "outbound|7000||legacy.shop.svc.cluster.local"
    );
    // A CIDR address: on 0.0.0.0 with a prefix match.
    let range = listener(&dump, "0.0.0.0_8443");
    assert_eq!(
        range["filter_chains"][0]["filter_chain_match"]["prefix_ranges"],
        json!([{"address_prefix": "10.200.0.0", "prefix_len": 16}])
    );

    // Route tables by port, each ending with allow_any.
    let rc = route_config(&dump, "9080");
    assert_eq!(
        vhost_names(rc),
        [
            "ratings.other.svc.cluster.local:9080",
            "reviews.shop.svc.cluster.local:9080",
            "allow_any"
        ]
    );
    let reviews = &rc["virtual_hosts"][1];
    assert_eq!(
        reviews["domains"],
        json!([
            "reviews.shop.svc.cluster.local",
            "reviews.shop.svc.cluster.local.",
            "reviews",
            "reviews.shop.svc",
            "reviews.shop",
            "10.96.0.5"
        ])
    );
    assert_eq!(
        reviews["routes"][1]["route"]["weighted_clusters"]["clusters"][0]["name"],
        "outbound|9080|v1|reviews.shop.svc.cluster.local"
    );
    // Port 80 takes every mesh VirtualService with HTTP routes, even for hosts with no
    // service on 80 (istiod's exception for hosts outside the registry).
    assert_eq!(
        vhost_names(route_config(&dump, "80")),
        [
            "*.wild.example.com:80",
            "reviews.shop.svc.cluster.local:80",
            "allow_any"
        ]
    );
    assert_eq!(
        vhost_names(route_config(&dump, "legacy.shop.svc.cluster.local:7000")),
        ["legacy.shop.svc.cluster.local:7000"]
    );

    // Clusters, all active: ISTIO_MUTUAL and auto mTLS ones got their secrets from
    // sds-grpc.
    let active = clusters(&dump, "dynamic_active_clusters");
    for name in [
        "PassthroughCluster",
        "BlackHoleCluster",
        "outbound|9080||reviews.shop.svc.cluster.local",
        "outbound|9080|v1|reviews.shop.svc.cluster.local",
        "outbound|9080|v2|reviews.shop.svc.cluster.local",
        "outbound|9080||ratings.other.svc.cluster.local",
        "outbound|5432||db.shop.svc.cluster.local",
        "outbound|5432||db2.shop.svc.cluster.local",
        "outbound|443||api.example.com",
        "outbound|6379||cache.shop.svc.cluster.local",
        "outbound|7000||legacy.shop.svc.cluster.local",
        "outbound|8443||range.example.com",
        "outbound|80||*.wild.example.com",
    ] {
        assert!(active.contains(name), "{name} not active in {active:?}");
    }
    let secrets: BTreeSet<String> = section(&dump, "SecretsConfigDump")["dynamic_active_secrets"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(secrets, set(&["ROOTCA", "default"]));
    envoy.assert_no_rejections();
    for stat in [
        "listener_manager.lds.update_rejected",
        "cluster_manager.cds.update_rejected",
    ] {
        assert_eq!(envoy.stat(stat), Some(0), "{stat}");
    }
}

#[test]
fn registry_only_from_mesh_config_reaches_envoy() {
    let work = TempDir::new();
    let (cp, _) = control_plane(
        work.path(),
        CONFIG,
        "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
    );
    let envoy = sidecar_envoy(
        &cp,
        &work.path().join("ca"),
        &work.path().join("productpage"),
        "shop",
        "productpage-1",
        "productpage",
    );
    let mut dump = Value::Null;
    wait_until(
        "Envoy has the virtual listener",
        Duration::from_secs(30),
        || {
            dump = config_dump(&envoy);
            active_listeners(&dump).contains("virtualOutbound")
                && envoy.admin_get("/ready").is_ok_and(|(s, _)| s == 200)
                && section(&dump, "RoutesConfigDump")["dynamic_route_configs"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["route_config"]["name"] == "9080"))
        },
    );
    envoy.assert_no_rejections();
    let v = listener(&dump, "virtualOutbound");
    assert_eq!(
        v["filter_chains"][1]["filters"][0]["typed_config"]["cluster"],
        "BlackHoleCluster"
    );
    let rc = route_config(&dump, "9080");
    let last = rc["virtual_hosts"]
        .as_array()
        .and_then(|v| v.last())
        .unwrap();
    assert_eq!(last["name"], "block_all");
    assert_eq!(last["routes"][0]["direct_response"]["status"], 502);
}

#[test]
fn a_sidecar_resource_narrows_what_envoy_has() {
    let work = TempDir::new();
    let (cp, _) = control_plane(work.path(), CONFIG, "");
    let envoy = sidecar_envoy(
        &cp,
        &work.path().join("ca"),
        &work.path().join("productpage"),
        "shop",
        "productpage-1",
        "productpage",
    );
    let dump = wait_configured(
        &envoy,
        &set(&[
            "virtualOutbound",
            "0.0.0.0_9080",
            "0.0.0.0_80",
            "10.96.0.7_5432",
            "0.0.0.0_5432",
            "0.0.0.0_443",
            "10.1.0.4_6379",
            "10.1.0.5_6379",
            "10.96.0.11_7000",
            "0.0.0.0_8443",
        ]),
    );
    assert!(
        clusters(&dump, "dynamic_active_clusters")
            .contains("outbound|9080||ratings.other.svc.cluster.local")
    );

    // The namespace's sidecars now import their own namespace, without the external
    // services (whose ServiceEntries live there too) and with REGISTRY_ONLY; the
    // control plane takes the change up and pushes it.
    write_atomically(
        &work.path().join("config/sidecar.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: shop}\nspec:\n  egress:\n  - hosts: [\"./*\", \"~shop/api.example.com\", \"~shop/range.example.com\", \"~shop/*.wild.example.com\"]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
    );
    let dump = wait_configured(
        &envoy,
        &set(&[
            "virtualOutbound",
            "0.0.0.0_9080",
            "10.96.0.7_5432",
            "0.0.0.0_5432",
            "10.1.0.4_6379",
            "10.1.0.5_6379",
            "10.96.0.11_7000",
        ]),
    );
    envoy.assert_no_rejections();
    assert_eq!(
        clusters(&dump, "dynamic_active_clusters"),
        set(&[
            "BlackHoleCluster",
            "PassthroughCluster",
            "outbound|5432||db.shop.svc.cluster.local",
            "outbound|5432||db2.shop.svc.cluster.local",
            "outbound|6379||cache.shop.svc.cluster.local",
            "outbound|7000||legacy.shop.svc.cluster.local",
            "outbound|9080||reviews.shop.svc.cluster.local",
            "outbound|9080|v1|reviews.shop.svc.cluster.local",
            "outbound|9080|v2|reviews.shop.svc.cluster.local",
        ])
    );
    let rc = route_config(&dump, "9080");
    assert_eq!(
        vhost_names(rc),
        ["reviews.shop.svc.cluster.local:9080", "block_all"]
    );
    let v = listener(&dump, "virtualOutbound");
    assert_eq!(
        v["filter_chains"][1]["filters"][0]["typed_config"]["cluster"],
        "BlackHoleCluster"
    );
}

// ---------------------------------------------------------------------------------------
// Traffic: pods in network namespaces, iptables REDIRECT to the sidecar's 15001
// ---------------------------------------------------------------------------------------

mod pods_e2e {
    use super::*;
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::os::unix::fs::PermissionsExt;
    use support::pods::{PROXY_UID, Pod, PodNet, PodProcess};

    /// Makes `dir` and everything under it readable by the proxy's uid.
    fn share(dir: &Path) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(p) = stack.pop() {
            let meta = std::fs::metadata(&p).unwrap();
            let mode = if meta.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            if meta.is_dir() {
                stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
            }
        }
    }

    /// One HTTP/1.1 request from inside `pod` (as root, so the pod's iptables send it to
    /// its sidecar) to `to` with `Host: host` and `headers`: (status, body), or the error
    /// when no response came.
    fn request(
        pod: &Pod,
        to: SocketAddr,
        host: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<(u16, String)> {
        let mut head = format!("GET /hello HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        pod.in_ns(move || {
            let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(head.as_bytes())?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)?;
            let text = String::from_utf8_lossy(&buf).into_owned();
            let status = text
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("no HTTP response: {text:?}")))?;
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
            Ok((status, body.unwrap_or_default()))
        })
    }

    /// GET `path` on a loopback port inside `pod` (admin and debug APIs).
    fn local_get(pod: &Pod, port: u16, path: &str) -> Option<(u16, String)> {
        let path = path.to_string();
        pod.in_ns(move || blocking_http_get(("127.0.0.1", port), &path).ok())
    }

    fn pod_config_dump(pod: &Pod) -> Value {
        match local_get(pod, 15000, "/config_dump") {
            Some((200, body)) => serde_json::from_str(&body).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// The catch-all cluster of the sidecar's virtual listener, once it has one.
    fn catch_all(dump: &Value) -> Option<String> {
        if dump.is_null() || !active_listeners(dump).contains("virtualOutbound") {
            return None;
        }
        listener(dump, "virtualOutbound")["filter_chains"][1]["filters"][0]["typed_config"]
            ["cluster"]
            .as_str()
            .map(str::to_string)
    }

    /// `meshgate control-plane` in pod `cp`, its CA in `ca_dir`, on Istio's ports.
    fn control_plane_in(cp: &Pod, work: &Path, ca_dir: &Path) -> PodProcess {
        let mut cmd = cp.command(env!("CARGO_BIN_EXE_meshgate"));
        cmd.arg("control-plane")
            .arg("--config")
            .arg(work.join("config"))
            .arg("--ca-dir")
            .arg(ca_dir)
            .arg("--mesh-config")
            .arg(work.join("mesh.yaml"))
            .args(["--xds-addr", "127.0.0.1:15010"])
            .args(["--xds-tls-addr", "0.0.0.0:15012"])
            .args(["--debug-addr", "127.0.0.1:15014"])
            .args(["--debounce-after-ms", "50", "--debounce-max-ms", "1000"])
            .env("RUST_LOG", "info");
        let mut process = cp.spawn("control plane", &mut cmd, &work.join("control-plane.log"));
        wait_until("the control plane serves", Duration::from_secs(30), || {
            process.assert_running();
            matches!(local_get(cp, 15014, "/ready"), Some((200, _)))
        });
        process
    }

    /// Envoy as the sidecar of `pod` (uid 1337, iptables applied), ADS and sds-grpc to
    /// the control plane in `cp` over mutual TLS.
    fn sidecar_in(pod: &Pod, cp: &Pod, ca_dir: &Path, work: &Path) -> PodProcess {
        std::fs::create_dir_all(work).unwrap();
        let identity = SpiffeId::new("cluster.local", "shop", "productpage").unwrap();
        let (chain, key) = issue_files(ca_dir, &identity, &work.join("certs"));
        // The proxy's uid reads its own copy of the root; the CA's directory stays private.
        let root = work.join("root-cert.pem");
        std::fs::copy(ca_dir.join("root-cert.pem"), &root).unwrap();
        let generated = work.join("bootstrap.json");
        let status = Command::new(env!("CARGO_BIN_EXE_meshgate"))
            .args(["bootstrap", "envoy", "--kind", "sidecar", "--xds"])
            .arg(format!("{}:15012", cp.ip))
            .args(["--node-id", "productpage-1", "--namespace", "shop"])
            .args(["--ip", &pod.ip.to_string(), "--labels", "app=productpage"])
            .args(["--format", "json"])
            .arg("--xds-root-cert")
            .arg(&root)
            .arg("--xds-cert-chain")
            .arg(&chain)
            .arg("--xds-key")
            .arg(&key)
            .arg("--out")
            .arg(&generated)
            .status()
            .unwrap();
        assert!(status.success(), "meshgate bootstrap envoy failed");
        let mut bootstrap: Value =
            serde_json::from_str(&std::fs::read_to_string(&generated).unwrap()).unwrap();
        let clusters = bootstrap["static_resources"]["clusters"]
            .as_array_mut()
            .unwrap();
        let mut sds = clusters[0].clone();
        sds["name"] = json!("sds-grpc");
        sds["load_assignment"]["cluster_name"] = json!("sds-grpc");
        clusters.push(sds);
        let path = work.join("envoy.json");
        std::fs::write(&path, serde_json::to_string_pretty(&bootstrap).unwrap()).unwrap();
        share(work);
        // Only traversal for the others in the test's scratch directory above.
        if let Some(parent) = work.parent() {
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711)).unwrap();
        }
        pod.iptables(&[]);
        let mut cmd = pod.command_as(PROXY_UID, peer_bin("envoy"));
        cmd.arg("-c")
            .arg(&path)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args(["--log-level", "warning"]);
        // Its standard output is the access log file (`/dev/stdout`), which it opens
        // again as the proxy's uid: the file is the proxy's.
        let log = work.join("envoy.log");
        std::fs::write(&log, "").unwrap();
        std::os::unix::fs::chown(&log, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
        pod.spawn("envoy", &mut cmd, &log)
    }

    /// The reviews service on the pods `v1` and `v2` (no sidecar, so plain text), routed
    /// by a mesh VirtualService: a fault for one user, a weight split with retries.
    fn config(v1: &Pod, v2: &Pod) -> String {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  addresses: [10.96.0.5]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: {v1}, labels: {{version: v1}}}}
  - {{address: {v2}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    fault: {{abort: {{httpStatus: 418, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - retries: {{attempts: 3, retryOn: 5xx}}
    route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 75}}
    - {{destination: {{host: reviews, subset: v2}}, weight: 25}}
"#,
            v1 = v1.ip,
            v2 = v2.ip
        )
    }

    #[test]
    fn an_application_reaches_services_through_its_sidecar_and_registry_only_blocks() {
        let net = PodNet::new();
        let cp = net.pod("istiod");
        let client = net.pod("productpage");
        let (v1, v2) = (net.pod("reviews-v1"), net.pod("reviews-v2"));
        let outside = net.pod("outside");
        let reviews_v1 = v1.echo(9080, "reviews-v1");
        let reviews_v2 = v2.echo(9080, "reviews-v2");
        let outside_app = outside.echo(8080, "outside-8080");
        let outside_http = outside.echo(9080, "outside-9080");

        let work = TempDir::new();
        let ca_dir = work.path().join("ca");
        std::fs::create_dir_all(work.path().join("config")).unwrap();
        std::fs::write(work.path().join("config/reviews.yaml"), config(&v1, &v2)).unwrap();
        std::fs::write(
            work.path().join("mesh.yaml"),
            "accessLogFile: /dev/stdout\naccessLogEncoding: TEXT\n",
        )
        .unwrap();
        // The CA exists before the control plane starts, so that the sidecar's
        // certificate can be issued first.
        issue_files(
            &ca_dir,
            &SpiffeId::new("cluster.local", "shop", "warmup").unwrap(),
            &work.path().join("warmup"),
        );
        let _cp_process = control_plane_in(&cp, work.path(), &ca_dir);
        let mut envoy = sidecar_in(&client, &cp, &ca_dir, &work.path().join("envoy"));
        wait_until(
            "the sidecar is configured (ALLOW_ANY)",
            Duration::from_secs(30),
            || {
                envoy.assert_running();
                catch_all(&pod_config_dump(&client)).as_deref() == Some("PassthroughCluster")
                    && matches!(local_get(&client, 15000, "/ready"), Some((200, _)))
            },
        );
        let vip: SocketAddr = "10.96.0.5:9080".parse().unwrap();
        let host = "reviews.shop.svc.cluster.local";

        // The weight split: 75 / 25 between the subsets, by the pods that answered.
        let n = 200;
        let mut v1_hits = 0;
        for _ in 0..n {
            let (status, body) = request(&client, vip, host, &[]).expect("reviews answers");
            assert_eq!(status, 200, "{body}");
            let answer: Value = serde_json::from_str(&body).expect("echo JSON");
            match answer["upstream"].as_str() {
                Some("reviews-v1") => v1_hits += 1,
                Some("reviews-v2") => {}
                other => panic!("answered by {other:?}"),
            }
            // The sidecar forwarded with the mesh's headers and Envoy's own user agent
            // untouched.
            assert_eq!(answer["headers"]["host"][0], host);
            assert!(answer["headers"].get("x-request-id").is_some(), "{answer}");
        }
        assert_eq!(reviews_v1.requests() + reviews_v2.requests(), n);
        assert_binomial("requests to v1", v1_hits, n, 0.75, &[0.5, 1.0]);

        // Short names and the VIP reach the same virtual host.
        for name in ["reviews", "reviews.shop", "10.96.0.5:9080"] {
            let (status, _) = request(&client, vip, name, &[]).expect("reviews answers");
            assert_eq!(status, 200, "Host {name}");
        }

        // The fault: jason gets 418 from the sidecar, and nothing reaches reviews.
        let before = reviews_v1.requests() + reviews_v2.requests();
        let (status, _) = request(&client, vip, host, &[("end-user", "jason")]).unwrap();
        assert_eq!(status, 418);
        assert_eq!(reviews_v1.requests() + reviews_v2.requests(), before);

        // Retries: two 503s, then an answer; the application sees only the answer.
        let before = reviews_v1.requests() + reviews_v2.requests();
        let (status, body) = request(
            &client,
            vip,
            host,
            &[("x-echo-fail-first", "2"), ("x-echo-fail-key", "retry-1")],
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(reviews_v1.requests() + reviews_v2.requests(), before + 3);

        // ALLOW_ANY: an address the registry does not know passes through, on a port
        // without a listener and on reviews' HTTP port (by the allow_any virtual host).
        let (status, body) =
            request(&client, outside.addr(8080), "outside", &[]).expect("passthrough");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("outside-8080"), "{body}");
        let (status, body) = request(&client, outside.addr(9080), "outside", &[]).unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("outside-9080"), "{body}");
        assert_eq!((outside_app.requests(), outside_http.requests()), (1, 1));

        // REGISTRY_ONLY, from a Sidecar resource of the namespace.
        write_atomically(
            &work.path().join("config/sidecar.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: shop}\nspec:\n  egress: [{hosts: [\"./*\"]}]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
        );
        wait_until(
            "the sidecar is REGISTRY_ONLY",
            Duration::from_secs(30),
            || {
                envoy.assert_running();
                catch_all(&pod_config_dump(&client)).as_deref() == Some("BlackHoleCluster")
            },
        );
        // Unknown port: the connection is closed without an answer.
        let blocked = request(&client, outside.addr(8080), "outside", &[]);
        assert!(blocked.is_err(), "{blocked:?}");
        // Reviews' port, unknown host: block_all answers 502.
        let (status, _) = request(&client, outside.addr(9080), "outside", &[]).unwrap();
        assert_eq!(status, 502);
        assert_eq!((outside_app.requests(), outside_http.requests()), (1, 1));
        // The registry's services still work.
        let (status, _) = request(&client, vip, host, &[]).unwrap();
        assert_eq!(status, 200);

        // The access log says why: BlackHoleCluster with no healthy upstream (UH) for
        // the connection, the block_all route for the request.
        let tcp_dst = outside.addr(8080).to_string();
        let http_dst = outside.addr(9080).to_string();
        let mut log = String::new();
        wait_until("the access log has both", Duration::from_secs(15), || {
            log = envoy.output();
            log.lines().any(|l| {
                l.contains(&tcp_dst) && l.contains(" BlackHoleCluster ") && l.contains(" UH ")
            }) && log.lines().any(|l| {
                l.contains(&http_dst) && l.contains("\" 502 ") && l.ends_with(" block_all")
            })
        });
        // And passed-through traffic named its cluster too.
        assert!(
            log.lines()
                .any(|l| l.contains(&tcp_dst) && l.contains(" PassthroughCluster ")),
            "{log}"
        );
        let (_, stats) = local_get(&client, 15000, "/stats").expect("stats");
        let rejected: Vec<&str> = stats
            .lines()
            .filter(|l| l.contains("update_rejected") && !l.ends_with(": 0"))
            .collect();
        assert!(rejected.is_empty(), "{rejected:?}");
    }
}
