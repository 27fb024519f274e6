use super::*;

fn registry(yaml: &str) -> (Registry, Vec<Diagnostic>) {
    let loaded = crate::config::load_str("test.yaml", yaml);
    assert!(
        !loaded.has_errors(),
        "test config has errors: {:?}",
        loaded.diagnostics
    );
    Registry::from_config(&loaded.config)
}

#[test]
fn static_entry_with_inline_endpoints_and_target_ports() {
    let (r, diags) = registry(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 9080}
  - {number: 81, name: grpc, protocol: grpc}
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}, locality: us-east/a/1, weight: 3}
  - {address: 10.0.0.2, labels: {version: v2}, ports: {http: 9999}, network: n2}
  - {address: not-an-ip.example.com}
  - {address: "unix:///var/run/app.sock"}
"#,
    );
    let s = r.service("reviews.shop.internal", "shop", None).unwrap();
    assert!(!s.mesh_external);
    assert_eq!(s.resolution, Resolution::Static);
    assert_eq!(s.ports[1].protocol, Protocol::Grpc);
    let none = BTreeMap::new();
    let eps: Vec<(&str, u32, u32)> = s
        .endpoints_for(80, &none)
        .map(|e| (e.address.as_str(), e.port, e.weight))
        .collect();
    assert_eq!(
        eps,
        vec![
            ("10.0.0.1", 9080, 3),
            ("10.0.0.2", 9999, 1),
            ("/var/run/app.sock", 0, 1)
        ]
    );
    let grpc: Vec<u32> = s.endpoints_for(81, &none).map(|e| e.port).collect();
    assert_eq!(grpc, vec![81, 81, 0]);
    // Subsets select on labels, including the topology labels derived from locality.
    let v1 = BTreeMap::from([("version".to_string(), "v1".to_string())]);
    let e = s.endpoints_for(80, &v1).collect::<Vec<_>>();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].locality, Locality::parse("us-east/a/1"));
    assert_eq!(e[0].labels["topology.kubernetes.io/region"], "us-east");
    let n2 = BTreeMap::from([("topology.istio.io/network".to_string(), "n2".to_string())]);
    assert_eq!(s.endpoints_for(80, &n2).count(), 1);
    // The host-name endpoint of a STATIC entry is dropped, with a warning at its field.
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].field.as_deref(), Some("spec.endpoints[2].address"));
}

#[test]
fn dns_entry_without_endpoints_resolves_its_hosts() {
    let (r, diags) = registry(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com, www.example.com]
  resolution: DNS
  ports: [{number: 443, name: https, protocol: TLS, targetPort: 8443}]
"#,
    );
    assert!(diags.is_empty());
    for host in ["api.example.com", "www.example.com"] {
        let s = r.service(host, "default", None).unwrap();
        assert!(s.mesh_external);
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(s.endpoints[0].address, host);
        assert_eq!(s.endpoints[0].port, 8443);
    }
}

#[test]
fn workload_selector_picks_workload_entries_in_the_same_namespace() {
    let (r, _) = registry(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm, namespace: a}
spec:
  hosts: [vm.a.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: a}
spec: {address: 10.1.0.1, labels: {app: vm, version: v1}, serviceAccount: vm-sa}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-2, namespace: b}
spec: {address: 10.1.0.2, labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other, namespace: a}
spec: {address: 10.1.0.3, labels: {app: other}}
"#,
    );
    let s = r.service("vm.a.svc.cluster.local", "a", None).unwrap();
    let eps: Vec<(&str, &str)> = s
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.workload_name.as_str()))
        .collect();
    assert_eq!(eps, vec![("10.1.0.1", "vm-1")]);
    assert_eq!(s.endpoints[0].service_account, "vm-sa");
}

#[test]
fn export_to_and_namespace_preference() {
    let (r, _) = registry(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: s, namespace: a}
spec: {hosts: [x.example.com], exportTo: ["."], ports: [{number: 80, name: http, protocol: HTTP}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: s, namespace: b}
spec: {hosts: [x.example.com], ports: [{number: 80, name: http, protocol: HTTP}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hidden, namespace: c}
spec: {hosts: [h.example.com], exportTo: ["~"], ports: [{number: 80, name: http, protocol: HTTP}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: c}
spec: {hosts: ["*.example.com"], exportTo: [d], ports: [{number: 80, name: http, protocol: HTTP}]}
"#,
    );
    let ns = |host: &str, viewer: &str, preferred: Option<&str>| {
        r.service(host, viewer, preferred)
            .map(|s| s.namespace.clone())
    };
    let cases = [
        ("x.example.com", "a", None, Some("a")),
        ("x.example.com", "b", None, Some("b")),
        ("x.example.com", "z", None, Some("b")),
        ("x.example.com", "a", Some("b"), Some("b")),
        ("x.example.com", "z", Some("a"), Some("b")),
        ("h.example.com", "c", None, None),
        ("nope.example.com", "a", None, None),
    ];
    for (host, viewer, preferred, want) in cases {
        assert_eq!(
            ns(host, viewer, preferred).as_deref(),
            want,
            "{host} from {viewer}"
        );
    }
    // Wildcard lookups: exact wins, then the wildcard if visible.
    assert_eq!(
        r.service_matching("api.example.com", "d")
            .map(|s| s.hostname.as_str()),
        Some("*.example.com")
    );
    assert!(r.service_matching("api.example.com", "a").is_none());
    assert_eq!(
        r.service_matching("x.example.com", "d")
            .map(|s| s.hostname.as_str()),
        Some("x.example.com")
    );
}

#[test]
fn locality_patterns_and_labels() {
    let l = Locality::parse("us-east/zone1/sub1");
    let cases = [
        ("*", true),
        ("us-east", true),
        ("us-east/*", true),
        ("us-east/zone1", true),
        ("us-east/zone1/sub1", true),
        ("us-east/zone2", false),
        ("us-west/*", false),
        ("us-east/zone1/sub2", false),
    ];
    for (pattern, want) in cases {
        assert_eq!(l.matches(pattern), want, "{pattern}");
    }
    let labels = BTreeMap::from([("istio-locality".to_string(), "r.z.s".to_string())]);
    assert_eq!(Locality::of_workload("", &labels), Locality::parse("r/z/s"));
    assert_eq!(
        Locality::of_workload("a/b", &labels),
        Locality::parse("a/b")
    );
}

#[test]
fn protocols_parse_like_istio() {
    let cases = [
        ("http", Protocol::Http, true, false),
        ("HTTP2", Protocol::Http2, true, true),
        ("grpc", Protocol::Grpc, true, true),
        ("GRPC-WEB", Protocol::GrpcWeb, true, true),
        ("HTTPS", Protocol::Https, false, false),
        ("tcp", Protocol::Tcp, false, false),
    ];
    for (s, want, http, h2) in cases {
        let p = Protocol::parse(s);
        assert_eq!(p, want);
        assert_eq!(p.is_http(), http, "{s}");
        assert_eq!(p.is_http2(), h2, "{s}");
    }
    assert_eq!(Protocol::parse("quic").to_string(), "quic");
}
