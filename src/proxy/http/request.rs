//! The connection manager's standard request handling: x-forwarded-for/-proto, request
//! ids, internal-only `x-envoy-*` headers, client-certificate headers, hop-by-hop headers.
use crate::proxy::connection::ConnTls;
use crate::proxy::http::hcm::{ForwardClientCert, HttpConnectionManager};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use std::net::IpAddr;
use std::net::SocketAddr;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_ENVOY_EXTERNAL_ADDRESS: HeaderName =
    HeaderName::from_static("x-envoy-external-address");
pub static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
pub static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
pub static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
/// The authority a host rewrite replaced, as Envoy's router keeps it.
pub static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// `x-envoy-*` request headers that steer the router; Envoy honours them only from
/// internal clients and removes them from external requests.
pub static ROUTER_CONTROL_HEADERS: [HeaderName; 13] = [
    HeaderName::from_static("x-envoy-retry-on"),
    HeaderName::from_static("x-envoy-retry-grpc-on"),
    HeaderName::from_static("x-envoy-max-retries"),
    HeaderName::from_static("x-envoy-upstream-alt-stat-name"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response"),
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-ip-tags"),
    HeaderName::from_static("x-envoy-decorator-operation"),
    HeaderName::from_static("x-envoy-downstream-service-cluster"),
    HeaderName::from_static("x-envoy-downstream-service-node"),
    HeaderName::from_static("x-envoy-force-trace"),
];

/// Per-connection facts computed once at accept (no per-request getpeername/formatting).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client: the PROXY protocol header's source, else the TCP peer.
    pub remote: SocketAddr,
    /// The TCP peer (Envoy's direct remote address), which a PROXY header does not
    /// change.
    pub direct: SocketAddr,
    pub local: SocketAddr,
    /// The TLVs of the downstream PROXY header the listener kept (`pass_through_tlvs`).
    pub proxy_tlvs: std::sync::Arc<[(u8, bytes::Bytes)]>,
    /// The remote IP as a header value, for x-envoy-external-address.
    pub remote_ip: HeaderValue,
    /// What is appended to x-forwarded-for: the remote IP, or for a loopback client the
    /// host's own address (Envoy's rule: a local client is represented by this host).
    pub xff_ip: HeaderValue,
    pub https: bool,
}

impl Peer {
    pub fn new(remote: SocketAddr, local: SocketAddr, https: bool) -> Peer {
        let ip = remote.ip().to_canonical();
        let remote_ip =
            HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        // Envoy's `isLoopbackAddress` is 127.0.0.1 or ::1 exactly: a client on
        // 127.0.0.2 is appended as itself.
        let loopback = match ip {
            std::net::IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
            std::net::IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::LOCALHOST,
        };
        let xff_ip = if loopback {
            host_address(ip.is_ipv4()).clone()
        } else {
            remote_ip.clone()
        };
        Peer {
            remote,
            direct: remote,
            local,
            proxy_tlvs: std::sync::Arc::new([]),
            remote_ip,
            xff_ip,
            https,
        }
    }

    /// The same peer reached through `direct` (a proxy that sent a PROXY header).
    pub fn with_direct(
        mut self,
        direct: SocketAddr,
        proxy_tlvs: std::sync::Arc<[(u8, bytes::Bytes)]>,
    ) -> Peer {
        self.direct = direct;
        self.proxy_tlvs = proxy_tlvs;
        self
    }
}

/// The first non-loopback address of this host (as Envoy's `getLocalAddress`), computed
/// once; loopback if there is none.
pub(crate) fn host_address(v4: bool) -> &'static HeaderValue {
    static V4: std::sync::LazyLock<HeaderValue> =
        std::sync::LazyLock::new(|| first_interface_address(true));
    static V6: std::sync::LazyLock<HeaderValue> =
        std::sync::LazyLock::new(|| first_interface_address(false));
    if v4 { &V4 } else { &V6 }
}

fn first_interface_address(v4: bool) -> HeaderValue {
    let fallback = HeaderValue::from_static(if v4 { "127.0.0.1" } else { "::1" });
    let mut found: Option<std::net::IpAddr> = None;
    // SAFETY: getifaddrs fills a linked list we only read and then free with freeifaddrs.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return fallback;
        }
        let mut cur = list;
        while !cur.is_null() && found.is_none() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() {
                let family = (*ifa.ifa_addr).sa_family as i32;
                if v4 && family == libc::AF_INET {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    if !ip.is_loopback() {
                        found = Some(ip.into());
                    }
                } else if !v4 && family == libc::AF_INET6 {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                    if !ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80 {
                        found = Some(ip.into());
                    }
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
        .and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok())
        .unwrap_or(fallback)
}

/// A random UUID v4 as a header value.
pub fn uuid4() -> HeaderValue {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = [0u8; 36];
    let hex = b"0123456789abcdef";
    let mut j = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s[j] = b'-';
            j += 1;
        }
        s[j] = hex[(byte >> 4) as usize];
        s[j + 1] = hex[(byte & 0xf) as usize];
        j += 2;
    }
    HeaderValue::from_bytes(&s).unwrap_or(HeaderValue::from_static(
        "00000000-0000-4000-8000-000000000000",
    ))
}

/// Envoy's `mutateRequestHeaders`, for a request from `peer`. Returns whether the
/// request is internal (loopback and private ranges count as external since Envoy 1.33
/// unless `internal_address_config` says otherwise, which meshgate does not support).
pub fn mutate_request_headers(
    h: &mut HeaderMap,
    hcm: &HttpConnectionManager,
    peer: &Peer,
    tls: Option<&ConnTls>,
) -> IpAddr {
    let internal = false;
    // Hop-by-hop headers never travel upstream (upgrades are re-added by the router).
    remove_hop_by_hop(h);
    let remote = original_remote_address(
        h,
        hcm.use_remote_address,
        hcm.xff_num_trusted_hops,
        peer.remote.ip(),
    );
    if hcm.use_remote_address && !hcm.skip_xff_append {
        append_xff(h, &peer.xff_ip);
    }
    // Edge request (remote address used, external client): sanitize and stamp.
    let edge = hcm.use_remote_address && !internal;
    if edge {
        // A trusted prior hop's x-forwarded-proto stands (Envoy overwrites it only when
        // no hop is trusted).
        if hcm.xff_num_trusted_hops == 0 || !h.contains_key(&X_FORWARDED_PROTO) {
            h.insert(
                X_FORWARDED_PROTO.clone(),
                HeaderValue::from_static(if peer.https { "https" } else { "http" }),
            );
        }
        let external = if remote == peer.remote.ip().to_canonical() {
            peer.remote_ip.clone()
        } else {
            HeaderValue::from_str(&remote.to_string()).unwrap_or(peer.remote_ip.clone())
        };
        h.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), external);
    } else if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if peer.https { "https" } else { "http" }),
        );
    }
    // One pass over the names instead of a dozen lookups: most requests carry no
    // `x-envoy-*` header at all.
    if !internal && h.keys().any(|k| k.as_str().starts_with("x-envoy-")) {
        h.remove(&X_ENVOY_INTERNAL);
        for name in &ROUTER_CONTROL_HEADERS {
            h.remove(name);
        }
    }
    xfcc(h, hcm, tls);
    if hcm.generate_request_id {
        let replace = match h.get(&X_REQUEST_ID) {
            None => true,
            Some(_) => edge && !hcm.preserve_external_request_id,
        };
        if replace {
            h.insert(X_REQUEST_ID.clone(), uuid4());
        }
    }
    remote
}

/// Envoy's downstream remote address for a request (what `remote.ip`, `remoteIpBlocks`
/// and client-IP rate limits see). With `use_remote_address`, the connection's peer, or
/// with `xff_num_trusted_hops` N > 0 the Nth address from the right of the received
/// `x-forwarded-for`; without it, the (N+1)th from the right. The peer when the header
/// has too few addresses or the one chosen does not parse.
pub fn original_remote_address(
    h: &HeaderMap,
    use_remote_address: bool,
    xff_num_trusted_hops: u32,
    peer: IpAddr,
) -> IpAddr {
    let direct = peer.to_canonical();
    let skip = match (use_remote_address, xff_num_trusted_hops) {
        (true, 0) => return direct,
        (true, n) => n - 1,
        (false, n) => n,
    };
    let Some(xff) = h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) else {
        return direct;
    };
    xff.rsplit(',')
        .nth(skip as usize)
        .and_then(|a| a.trim().parse::<IpAddr>().ok())
        .map_or(direct, |a| a.to_canonical())
}

/// Envoy's `x-forwarded-client-cert` handling: removed unless the mode forwards it;
/// on mutual TLS, this proxy's element set (SANITIZE_SET) or appended (APPEND_FORWARD).
fn xfcc(h: &mut HeaderMap, hcm: &HttpConnectionManager, tls: Option<&ConnTls>) {
    let mutual = tls.is_some_and(|t| t.peer.is_some());
    match (hcm.forward_client_cert, mutual) {
        (ForwardClientCert::AlwaysForwardOnly, _) | (ForwardClientCert::ForwardOnly, true) => {}
        (_, false) | (ForwardClientCert::Sanitize, true) => {
            if h.contains_key(&X_FORWARDED_CLIENT_CERT) {
                h.remove(&X_FORWARDED_CLIENT_CERT);
            }
        }
        (ForwardClientCert::SanitizeSet | ForwardClientCert::AppendForward, true) => {
            let Some(element) = tls.and_then(|t| t.xfcc_element(hcm.client_cert_details)) else {
                h.remove(&X_FORWARDED_CLIENT_CERT);
                return;
            };
            let value = match (hcm.forward_client_cert, h.get(&X_FORWARDED_CLIENT_CERT)) {
                (ForwardClientCert::AppendForward, Some(prev)) if !prev.is_empty() => {
                    let mut v = Vec::with_capacity(prev.len() + 1 + element.len());
                    v.extend_from_slice(prev.as_bytes());
                    v.push(b',');
                    v.extend_from_slice(element.as_bytes());
                    HeaderValue::from_bytes(&v).unwrap_or(element)
                }
                _ => element,
            };
            h.insert(X_FORWARDED_CLIENT_CERT.clone(), value);
        }
    }
}

fn append_xff(h: &mut HeaderMap, ip: &HeaderValue) {
    match h.get(&X_FORWARDED_FOR) {
        None => {
            h.insert(X_FORWARDED_FOR.clone(), ip.clone());
        }
        Some(existing) => {
            let mut v = Vec::with_capacity(existing.len() + ip.len() + 1);
            v.extend_from_slice(existing.as_bytes());
            v.push(b',');
            v.extend_from_slice(ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                h.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
    }
}

/// Removes connection-specific headers (RFC 9110 7.6.1), including any named in
/// `Connection`. `te: trailers` survives, as in Envoy.
pub fn remove_hop_by_hop(h: &mut HeaderMap) {
    // Find what is there in one pass; most messages have none of these.
    let mut connection = false;
    let mut others = false;
    for k in h.keys() {
        if *k == header::CONNECTION {
            connection = true;
        } else if *k == KEEP_ALIVE
            || *k == PROXY_CONNECTION
            || *k == header::TRANSFER_ENCODING
            || *k == header::UPGRADE
            || *k == header::PROXY_AUTHENTICATE
            || *k == header::TE
        {
            others = true;
        }
    }
    if connection {
        let named: smallvec::SmallVec<[HeaderName; 4]> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|n| {
                !n.is_empty()
                    && !n.eq_ignore_ascii_case("upgrade")
                    && !n.eq_ignore_ascii_case("close")
                    && !n.eq_ignore_ascii_case("keep-alive")
            })
            .filter_map(|n| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok())
            .filter(|n| *n != header::TE)
            .collect();
        h.remove(header::CONNECTION);
        for n in named {
            h.remove(n);
        }
    }
    if !others {
        return;
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::TRANSFER_ENCODING);
    h.remove(header::UPGRADE);
    h.remove(header::PROXY_AUTHENTICATE);
    if let Some(te) = h.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        h.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_address_skips_trusted_hops_from_the_right() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let mut h = HeaderMap::new();
        let at = |h: &HeaderMap, use_remote, hops| {
            original_remote_address(h, use_remote, hops, peer).to_string()
        };
        assert_eq!(at(&h, true, 0), "10.0.0.9");
        assert_eq!(at(&h, true, 1), "10.0.0.9");
        assert_eq!(at(&h, false, 0), "10.0.0.9");
        h.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("192.0.2.1, 198.51.100.2,203.0.113.3"),
        );
        assert_eq!(at(&h, true, 0), "10.0.0.9");
        assert_eq!(at(&h, true, 1), "203.0.113.3");
        assert_eq!(at(&h, true, 2), "198.51.100.2");
        assert_eq!(at(&h, true, 3), "192.0.2.1");
        assert_eq!(at(&h, true, 4), "10.0.0.9");
        assert_eq!(at(&h, false, 0), "203.0.113.3");
        assert_eq!(at(&h, false, 1), "198.51.100.2");
        h.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("192.0.2.1, unknown"),
        );
        assert_eq!(at(&h, true, 1), "10.0.0.9");
        h.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("::ffff:192.0.2.1"),
        );
        assert_eq!(at(&h, true, 1), "192.0.2.1");
    }

    #[test]
    fn uuid_shape() {
        let u = uuid4();
        let s = u.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_ne!(uuid4(), u);
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-other", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert!(h.get("x-custom").is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-other"], "1");
    }
}
