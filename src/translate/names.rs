//! Istio's resource names, so that `istioctl proxy-config` users recognise everything.

/// Traffic direction prefix of outbound clusters.
pub const OUTBOUND: &str = "outbound";

/// `outbound|PORT|SUBSET|HOST`: the cluster for a service port (and subset).
pub fn cluster_name(subset: &str, host: &str, port: u32) -> String {
    format!("{OUTBOUND}|{port}|{subset}|{host}")
}

/// Traffic direction prefix of inbound clusters.
pub const INBOUND: &str = "inbound";

/// `inbound|PORT||`: a sidecar's cluster (and inline route table) for the workload port
/// `PORT` (Istio 1.10 and later name it by the target port, without the host).
pub fn inbound_cluster_name(port: u32) -> String {
    format!("{INBOUND}|{port}||")
}

/// `outbound_.PORT_.SUBSET_.HOST`: the SNI-friendly form, used as the SNI of mesh mTLS
/// and by AUTO_PASSTHROUGH gateways.
pub fn sni_cluster_name(subset: &str, host: &str, port: u32) -> String {
    format!("{OUTBOUND}_.{port}_.{subset}_.{host}")
}

/// `BIND_PORT` (`0.0.0.0_8080`): a gateway listener.
pub fn listener_name(bind: &str, port: u32) -> String {
    format!("{bind}_{port}")
}

/// The RDS name of a server: `http.PORT` for plain-text HTTP, and
/// `https.PORT.PORTNAME.GATEWAY.NAMESPACE` for HTTPS servers that terminate TLS, with
/// `.BIND` appended when the server binds to one address. Empty for servers that carry
/// no HTTP (TCP, TLS, passthrough).
pub fn route_name(
    http: bool,
    https_terminated: bool,
    port: u32,
    port_name: &str,
    gateway: &str,
    gateway_namespace: &str,
    bind: &str,
) -> String {
    let bind = if bind.is_empty() {
        String::new()
    } else {
        format!(".{bind}")
    };
    if http {
        format!("http.{port}{bind}")
    } else if https_terminated {
        format!("https.{port}.{port_name}.{gateway}.{gateway_namespace}{bind}")
    } else {
        String::new()
    }
}

/// `HOST:PORT` (`[::1]:80` for IPv6): a virtual host.
pub fn virtual_host_name(host: &str, port: u32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A stats prefix with Istio's `;` delimiter, which its tag extraction splits on.
pub fn delimited_stat_prefix(prefix: &str) -> String {
    format!("{prefix};")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_istio() {
        assert_eq!(
            cluster_name("v1", "reviews.shop.svc.cluster.local", 9080),
            "outbound|9080|v1|reviews.shop.svc.cluster.local"
        );
        assert_eq!(
            cluster_name("", "a.example.com", 80),
            "outbound|80||a.example.com"
        );
        assert_eq!(
            sni_cluster_name("", "a.b.svc.cluster.local", 80),
            "outbound_.80_._.a.b.svc.cluster.local"
        );
        assert_eq!(listener_name("0.0.0.0", 8080), "0.0.0.0_8080");
        assert_eq!(inbound_cluster_name(9080), "inbound|9080||");
        assert_eq!(
            route_name(true, false, 8080, "http", "gw", "ns", ""),
            "http.8080"
        );
        assert_eq!(
            route_name(true, false, 8080, "http", "gw", "ns", "10.0.0.1"),
            "http.8080.10.0.0.1"
        );
        assert_eq!(
            route_name(false, true, 443, "https-a", "gw", "ns", ""),
            "https.443.https-a.gw.ns"
        );
        assert_eq!(route_name(false, false, 443, "tls", "gw", "ns", ""), "");
        assert_eq!(virtual_host_name("*", 8080), "*:8080");
        assert_eq!(virtual_host_name("::1", 80), "[::1]:80");
    }
}
