//! The PROXY protocol (HAProxy's v1 text and v2 binary headers): the listener filter
//! `envoy.filters.listener.proxy_protocol`, which reads the header a load balancer puts
//! in front of a connection and makes its addresses the connection's own, and the
//! header meshgate writes itself on upstream connections of clusters with
//! `envoy.transport_sockets.upstream_proxy_protocol`.
//!
//! As in Envoy, the header's source becomes the connection's remote address for
//! everything after it (filter chain match, access log, `x-forwarded-for`, RBAC
//! `remote_ip`, rate limits, ext_authz) and its destination the local address; the
//! physical peer stays the direct remote address (RBAC `direct_remote_ip`,
//! `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`). A v2 `LOCAL` header and a v1 `UNKNOWN` one keep
//! the real addresses.
use bytes::{Buf, Bytes, BytesMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line, `\r\n` included (HAProxy's spec).
const V1_MAX: usize = 107;
/// Sanity bound on a v2 header's address and TLV part (the length field allows 64 KiB).
const V2_MAX_BODY: usize = 65535;

/// Which TLVs are kept (listener) or sent on (upstream): Envoy's
/// `ProxyProtocolPassThroughTLVs`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PassThroughTlvs {
    /// None (the field is unset).
    #[default]
    None,
    /// Every TLV (`INCLUDE_ALL`).
    All,
    /// These types (`INCLUDE`).
    Only(Vec<u8>),
}

impl PassThroughTlvs {
    /// Whether a TLV of this type passes.
    pub fn passes(&self, ty: u8) -> bool {
        match self {
            PassThroughTlvs::None => false,
            PassThroughTlvs::All => true,
            PassThroughTlvs::Only(types) => types.contains(&ty),
        }
    }
}

/// The compiled `envoy.filters.listener.proxy_protocol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocolFilter {
    /// `allow_requests_without_proxy_protocol`: a connection without a header is served
    /// with its real addresses instead of closed.
    pub allow_without: bool,
    /// v1 headers are accepted (not in `disallowed_versions`).
    pub v1: bool,
    /// v2 headers are accepted.
    pub v2: bool,
    /// `pass_through_tlvs`: the v2 TLVs kept on the connection for upstream PROXY
    /// headers that pass them on.
    pub pass_through: PassThroughTlvs,
}

impl Default for ProxyProtocolFilter {
    fn default() -> Self {
        ProxyProtocolFilter {
            allow_without: false,
            v1: true,
            v2: true,
            pass_through: PassThroughTlvs::None,
        }
    }
}

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// What a header said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: Version,
    /// The client and the address it connected to; `None` for v2 `LOCAL`, v1
    /// `UNKNOWN` and v2 families without IP addresses (the real ones are kept).
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// The v2 TLVs the filter keeps (`pass_through_tlvs`), in header order.
    pub tlvs: Vec<(u8, Bytes)>,
}

/// Why the filter closed a connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyProtocolError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("PROXY protocol {0:?} is disallowed on this listener")]
    Disallowed(Version),
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("the PROXY protocol header did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("the connection ended before the PROXY protocol header did")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(String),
}

/// What the bytes read so far are.
enum Sniff {
    NeedMore,
    None,
    V1,
    V2,
}

fn sniff(buf: &[u8], filter: &ProxyProtocolFilter) -> Sniff {
    let v1 = filter.v1 || !filter.allow_without;
    let v2 = filter.v2 || !filter.allow_without;
    let maybe = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    let could_v1 = v1 && maybe(V1_PREFIX);
    let could_v2 = v2 && maybe(&V2_SIGNATURE);
    if could_v1 && buf.len() >= V1_PREFIX.len() {
        return Sniff::V1;
    }
    if could_v2 && buf.len() >= V2_SIGNATURE.len() {
        return Sniff::V2;
    }
    if could_v1 || could_v2 {
        Sniff::NeedMore
    } else {
        Sniff::None
    }
}

/// Reads the header at the start of `io` within `timeout`. Bytes read past it stay in
/// `buf` (the connection's first bytes for the next listener filter). `Ok(None)`: the
/// connection has no header (or one of a disallowed version) and the filter lets it
/// through with its real addresses, every byte read kept in `buf`.
pub async fn read_header<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    filter: &ProxyProtocolFilter,
    timeout: Duration,
) -> Result<Option<ProxyHeader>, ProxyProtocolError>
where
    IO: AsyncRead + Unpin,
{
    match tokio::time::timeout(timeout, read_inner(io, buf, filter)).await {
        Ok(r) => r,
        Err(_) => Err(ProxyProtocolError::Timeout(timeout)),
    }
}

async fn read_inner<IO>(
    io: &mut IO,
    buf: &mut BytesMut,
    filter: &ProxyProtocolFilter,
) -> Result<Option<ProxyHeader>, ProxyProtocolError>
where
    IO: AsyncRead + Unpin,
{
    loop {
        match sniff(buf, filter) {
            Sniff::NeedMore => fill(io, buf).await?,
            Sniff::None if filter.allow_without => return Ok(None),
            Sniff::None => return Err(ProxyProtocolError::Missing),
            Sniff::V1 if !filter.v1 => {
                return if filter.allow_without {
                    Ok(None)
                } else {
                    Err(ProxyProtocolError::Disallowed(Version::V1))
                };
            }
            Sniff::V2 if !filter.v2 => {
                return if filter.allow_without {
                    Ok(None)
                } else {
                    Err(ProxyProtocolError::Disallowed(Version::V2))
                };
            }
            Sniff::V1 => loop {
                if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                    let line = buf.split_to(end + 2);
                    return parse_v1(&line[..end]).map(Some);
                }
                if buf.len() >= V1_MAX {
                    return Err(ProxyProtocolError::Malformed(
                        "v1 line longer than 107 bytes",
                    ));
                }
                fill(io, buf).await?;
            },
            Sniff::V2 => {
                while buf.len() < 16 {
                    fill(io, buf).await?;
                }
                let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
                if len > V2_MAX_BODY {
                    return Err(ProxyProtocolError::Malformed("v2 header too long"));
                }
                while buf.len() < 16 + len {
                    fill(io, buf).await?;
                }
                let header = buf.split_to(16 + len).freeze();
                return parse_v2(header, &filter.pass_through).map(Some);
            }
        }
    }
}

async fn fill<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
) -> Result<(), ProxyProtocolError> {
    buf.reserve(512);
    match io.read_buf(buf).await {
        Ok(0) => Err(ProxyProtocolError::Closed),
        Ok(_) => Ok(()),
        Err(e) => Err(ProxyProtocolError::Io(e.to_string())),
    }
}

/// Parses a v1 line without its `\r\n`.
pub fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyProtocolError> {
    let bad = ProxyProtocolError::Malformed;
    let line = std::str::from_utf8(line).map_err(|_| bad("v1 line is not text"))?;
    let rest = line.strip_prefix("PROXY ").ok_or(bad("v1 line"))?;
    let mut parts = rest.split(' ');
    let family = parts.next().unwrap_or("");
    if family == "UNKNOWN" {
        return Ok(ProxyHeader {
            version: Version::V1,
            addresses: None,
            tlvs: Vec::new(),
        });
    }
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad("v1 line needs family, two addresses and two ports"));
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyProtocolError> {
        match family {
            "TCP4" => s
                .parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| bad("v1 TCP4 address")),
            "TCP6" => s
                .parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| bad("v1 TCP6 address")),
            _ => Err(bad("v1 family is not TCP4, TCP6 or UNKNOWN")),
        }
    };
    let port = |s: &str| -> Result<u16, ProxyProtocolError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("v1 port"));
        }
        s.parse::<u16>().map_err(|_| bad("v1 port"))
    };
    Ok(ProxyHeader {
        version: Version::V1,
        addresses: Some((
            SocketAddr::new(ip(src)?, port(sport)?),
            SocketAddr::new(ip(dst)?, port(dport)?),
        )),
        tlvs: Vec::new(),
    })
}

/// Parses a whole v2 header (signature included).
pub fn parse_v2(
    header: Bytes,
    pass_through: &PassThroughTlvs,
) -> Result<ProxyHeader, ProxyProtocolError> {
    let bad = ProxyProtocolError::Malformed;
    if header.len() < 16 || header[..12] != V2_SIGNATURE {
        return Err(bad("v2 signature"));
    }
    let ver_cmd = header[12];
    if ver_cmd >> 4 != 2 {
        return Err(bad("v2 version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(bad("v2 command is neither LOCAL nor PROXY")),
    };
    let fam = header[13];
    let mut body = header.slice(16..);
    let addr_len = match fam >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Err(bad("v2 address family")),
    };
    if fam & 0x0f > 2 {
        return Err(bad("v2 transport protocol"));
    }
    if body.len() < addr_len {
        return Err(bad("v2 addresses longer than the header"));
    }
    let addrs = body.split_to(addr_len);
    let addresses = if local {
        None
    } else {
        match fam >> 4 {
            1 => {
                let a = &addrs[..];
                let src = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                let dst = Ipv4Addr::new(a[4], a[5], a[6], a[7]);
                let sp = u16::from_be_bytes([a[8], a[9]]);
                let dp = u16::from_be_bytes([a[10], a[11]]);
                Some((
                    SocketAddr::new(src.into(), sp),
                    SocketAddr::new(dst.into(), dp),
                ))
            }
            2 => {
                let a = &addrs[..];
                let mut s = [0u8; 16];
                let mut d = [0u8; 16];
                s.copy_from_slice(&a[..16]);
                d.copy_from_slice(&a[16..32]);
                let sp = u16::from_be_bytes([a[32], a[33]]);
                let dp = u16::from_be_bytes([a[34], a[35]]);
                Some((
                    SocketAddr::new(Ipv6Addr::from(s).into(), sp),
                    SocketAddr::new(Ipv6Addr::from(d).into(), dp),
                ))
            }
            // Unspecified and unix sockets: the real addresses are kept.
            _ => None,
        }
    };
    let mut tlvs = Vec::new();
    while body.has_remaining() {
        if body.len() < 3 {
            return Err(bad("v2 TLV header cut short"));
        }
        let ty = body.get_u8();
        let len = body.get_u16() as usize;
        if body.len() < len {
            return Err(bad("v2 TLV longer than the header"));
        }
        let value = body.split_to(len);
        if !local && pass_through.passes(ty) {
            tlvs.push((ty, value));
        }
    }
    Ok(ProxyHeader {
        version: Version::V2,
        addresses,
        tlvs,
    })
}

/// The header an upstream connection starts with (Envoy's
/// `upstream_proxy_protocol`): `source` and `destination` are the downstream
/// connection's remote and local addresses. v1 cannot carry TLVs; a v1 header for
/// addresses of different families says `UNKNOWN`, as Envoy's does.
pub fn encode(
    version: Version,
    source: SocketAddr,
    destination: SocketAddr,
    tlvs: &[(u8, Bytes)],
) -> Vec<u8> {
    let (source, destination) = (canonical(source), canonical(destination));
    match version {
        Version::V1 => match (source, destination) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => format!(
                "PROXY TCP4 {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
            .into_bytes(),
            (SocketAddr::V6(s), SocketAddr::V6(d)) => format!(
                "PROXY TCP6 {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
            .into_bytes(),
            _ => b"PROXY UNKNOWN\r\n".to_vec(),
        },
        Version::V2 => {
            let mut out = Vec::with_capacity(64);
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(0x21);
            let mut body = Vec::with_capacity(48);
            match (source, destination) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    out.push(0x11);
                    body.extend_from_slice(&s.ip().octets());
                    body.extend_from_slice(&d.ip().octets());
                    body.extend_from_slice(&s.port().to_be_bytes());
                    body.extend_from_slice(&d.port().to_be_bytes());
                }
                (s, d) => {
                    out.push(0x21);
                    body.extend_from_slice(&v6(s.ip()).octets());
                    body.extend_from_slice(&v6(d.ip()).octets());
                    body.extend_from_slice(&s.port().to_be_bytes());
                    body.extend_from_slice(&d.port().to_be_bytes());
                }
            }
            for (ty, value) in tlvs {
                let len = value.len().min(u16::MAX as usize);
                body.push(*ty);
                body.extend_from_slice(&(len as u16).to_be_bytes());
                body.extend_from_slice(&value[..len]);
            }
            let len = body.len().min(u16::MAX as usize) as u16;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&body[..len as usize]);
            out
        }
    }
}

/// A header without addresses: v2 `LOCAL`, v1 `UNKNOWN` (a connection this proxy makes
/// on its own behalf).
pub fn encode_local(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.extend_from_slice(&[0x20, 0x00, 0, 0]);
            out
        }
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(fam: u8, cmd: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    async fn read(
        bytes: &[u8],
        filter: &ProxyProtocolFilter,
    ) -> (Result<Option<ProxyHeader>, ProxyProtocolError>, Vec<u8>) {
        let mut io = bytes;
        let mut buf = BytesMut::new();
        let r = read_header(&mut io, &mut buf, filter, Duration::from_secs(1)).await;
        let mut rest = buf.to_vec();
        rest.extend_from_slice(io);
        (r, rest)
    }

    #[tokio::test]
    async fn v1_and_v2_headers_give_their_addresses_and_leave_the_rest() {
        let f = ProxyProtocolFilter::default();
        let (h, rest) = read(b"PROXY TCP4 10.1.2.3 10.9.9.9 5555 80\r\nGET /", &f).await;
        let h = h.unwrap().unwrap();
        assert_eq!(h.version, Version::V1);
        assert_eq!(
            h.addresses,
            Some((
                "10.1.2.3:5555".parse().unwrap(),
                "10.9.9.9:80".parse().unwrap()
            ))
        );
        assert_eq!(rest, b"GET /");
        let (h, _) = read(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n", &f).await;
        assert_eq!(
            h.unwrap().unwrap().addresses.unwrap().0,
            "[2001:db8::1]:1".parse().unwrap()
        );
        let (h, rest) = read(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\nX", &f).await;
        assert_eq!(h.unwrap().unwrap().addresses, None);
        assert_eq!(rest, b"X");

        let mut body = vec![10, 1, 2, 3, 10, 9, 9, 9, 0x15, 0xb3, 0, 80];
        body.extend_from_slice(&[0xe0, 0, 3, b'a', b'b', b'c', 0x01, 0, 2, b'h', b'2']);
        let mut bytes = v2(0x11, 1, &body);
        bytes.extend_from_slice(b"tail");
        let all = ProxyProtocolFilter {
            pass_through: PassThroughTlvs::Only(vec![0xe0]),
            ..Default::default()
        };
        let (h, rest) = read(&bytes, &all).await;
        let h = h.unwrap().unwrap();
        assert_eq!(h.addresses.unwrap().0, "10.1.2.3:5555".parse().unwrap());
        assert_eq!(h.tlvs, vec![(0xe0, Bytes::from_static(b"abc"))]);
        assert_eq!(rest, b"tail");
        // LOCAL keeps the real peer; TLVs of a LOCAL header are not kept.
        let (h, _) = read(&v2(0x11, 0, &body), &all).await;
        let h = h.unwrap().unwrap();
        assert_eq!((h.addresses, h.tlvs.len()), (None, 0));
        // Without pass_through_tlvs, none is kept.
        let (h, _) = read(&v2(0x11, 1, &body), &f).await;
        assert!(h.unwrap().unwrap().tlvs.is_empty());
    }

    #[tokio::test]
    async fn missing_malformed_and_disallowed_headers() {
        let f = ProxyProtocolFilter::default();
        assert_eq!(
            read(b"GET / HTTP/1.1\r\n", &f).await.0,
            Err(ProxyProtocolError::Missing)
        );
        assert_eq!(read(b"PROX", &f).await.0, Err(ProxyProtocolError::Closed));
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 +2\r\n",
        ] {
            assert!(
                matches!(read(bad, &f).await.0, Err(ProxyProtocolError::Malformed(_))),
                "{bad:?}"
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(
            read(&long, &f).await.0,
            Err(ProxyProtocolError::Malformed(_))
        ));
        assert!(matches!(
            read(&v2(0x11, 1, &[1, 2, 3]), &f).await.0,
            Err(ProxyProtocolError::Malformed(_))
        ));
        let mut body = vec![0; 12];
        body.extend_from_slice(&[0xe0, 0, 9, 1]);
        assert!(matches!(
            read(&v2(0x11, 1, &body), &f).await.0,
            Err(ProxyProtocolError::Malformed(_))
        ));

        let allow = ProxyProtocolFilter {
            allow_without: true,
            ..Default::default()
        };
        let (h, rest) = read(b"GET / HTTP/1.1\r\n", &allow).await;
        assert_eq!(h, Ok(None));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let no_v1 = ProxyProtocolFilter {
            v1: false,
            ..Default::default()
        };
        assert_eq!(
            read(b"PROXY UNKNOWN\r\n", &no_v1).await.0,
            Err(ProxyProtocolError::Disallowed(Version::V1))
        );
        let no_v1_allow = ProxyProtocolFilter {
            v1: false,
            allow_without: true,
            ..Default::default()
        };
        let (h, rest) = read(b"PROXY UNKNOWN\r\n", &no_v1_allow).await;
        assert_eq!(h, Ok(None));
        assert_eq!(rest, b"PROXY UNKNOWN\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_header_times_out() {
        let (_client, mut server) = tokio::io::duplex(64);
        let mut buf = BytesMut::new();
        let r = read_header(
            &mut server,
            &mut buf,
            &ProxyProtocolFilter::default(),
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(r, Err(ProxyProtocolError::Timeout(Duration::from_secs(15))));
    }

    #[test]
    fn encoded_headers_parse_back() {
        let s: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let d: SocketAddr = "10.9.9.9:80".parse().unwrap();
        assert_eq!(
            encode(Version::V1, s, d, &[]),
            b"PROXY TCP4 10.1.2.3 10.9.9.9 5555 80\r\n"
        );
        let tlvs = vec![(0xe0, Bytes::from_static(b"abc"))];
        let h = parse_v2(
            Bytes::from(encode(Version::V2, s, d, &tlvs)),
            &PassThroughTlvs::All,
        )
        .unwrap();
        assert_eq!(h.addresses, Some((s, d)));
        assert_eq!(h.tlvs, tlvs);
        let s6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        assert_eq!(encode(Version::V1, s6, d, &[]), b"PROXY UNKNOWN\r\n");
        let h = parse_v2(
            Bytes::from(encode(Version::V2, s6, s6, &[])),
            &PassThroughTlvs::None,
        )
        .unwrap();
        assert_eq!(h.addresses, Some((s6, s6)));
    }
}
