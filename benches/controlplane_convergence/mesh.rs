//! The configuration the benchmark serves, as an operator would write it: one ingress
//! Gateway and, per service, one file holding its ServiceEntry (three endpoints, labels
//! version v1/v2/v1), a DestinationRule with subsets v1 and v2, and a VirtualService that
//! splits `svc-I.example.com` 90/10 between the subsets. A change rewrites one service's
//! file with new weights, atomically (a temporary file renamed over it), as an editor does.
use std::io::Write;
use std::path::{Path, PathBuf};

const GATEWAY: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: ingressgateway
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - \"*\"
";

/// Who a service's VirtualService routes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The ingress Gateway, for host `svc-I.example.com`.
    Gateway,
    /// Sidecars (`mesh`), for the service's own host: what each sidecar receives.
    Mesh,
}

/// The file of service `i`, routing `v1_weight`% to subset v1 and the rest to v2.
pub fn service_yaml(i: usize, v1_weight: u32) -> String {
    service_yaml_bound(i, v1_weight, Binding::Gateway)
}

/// [`service_yaml`] with the VirtualService bound as `binding` says.
pub fn service_yaml_bound(i: usize, v1_weight: u32, binding: Binding) -> String {
    let host = format!("svc-{i}.example.internal");
    let (vs_host, vs_gateway) = match binding {
        Binding::Gateway => (
            format!("svc-{i}.example.com"),
            "istio-system/ingressgateway",
        ),
        Binding::Mesh => (host.clone(), "mesh"),
    };
    let ip = |k: usize| format!("10.{}.{}.{}", (i >> 8) & 255, i & 255, k + 1);
    format!(
        "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: svc-{i}
  namespace: default
spec:
  hosts:
  - {host}
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 80
    name: http
    protocol: HTTP
  endpoints:
  - address: {e0}
    labels: {{version: v1}}
  - address: {e1}
    labels: {{version: v2}}
  - address: {e2}
    labels: {{version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: svc-{i}
  namespace: default
spec:
  host: {host}
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: svc-{i}
  namespace: default
spec:
  hosts:
  - {vs_host}
  gateways:
  - {vs_gateway}
  http:
  - route:
    - destination:
        host: {host}
        subset: v1
        port:
          number: 80
      weight: {v1_weight}
    - destination:
        host: {host}
        subset: v2
        port:
          number: 80
      weight: {v2_weight}
",
        e0 = ip(0),
        e1 = ip(1),
        e2 = ip(2),
        v2_weight = 100 - v1_weight,
    )
}

/// The file that holds service `i`.
pub fn service_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("svc-{i}.yaml"))
}

/// Writes the gateway and `services` service files into `dir` (which must exist).
pub fn write(dir: &Path, services: usize) -> std::io::Result<()> {
    write_bound(dir, services, Binding::Gateway)
}

/// [`write`] with the VirtualServices bound as `binding` says.
pub fn write_bound(dir: &Path, services: usize, binding: Binding) -> std::io::Result<()> {
    std::fs::write(dir.join("gateway.yaml"), GATEWAY)?;
    for i in 0..services {
        std::fs::write(service_path(dir, i), service_yaml_bound(i, 90, binding))?;
    }
    Ok(())
}

/// The v1 weight after change `n` (1, 2, ...): 80 for odd changes, 90 for even ones, so
/// that the split goes 90/10 -> 80/20 -> 90/10 ...
pub fn weight_after(n: usize) -> u32 {
    if n % 2 == 1 { 80 } else { 90 }
}

/// Rewrites service `i`'s file with weight `v1_weight` in one rename, so that the control
/// plane never reads a half-written file. The temporary file is hidden and not YAML, so
/// the loader does not read it.
pub fn rewrite_service(dir: &Path, i: usize, v1_weight: u32) -> std::io::Result<()> {
    let tmp = dir.join(format!(".svc-{i}.yaml.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(service_yaml(i, v1_weight).as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, service_path(dir, i))
}
