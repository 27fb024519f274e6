//! Compiled listeners and their filter chains, and how a connection finds its chain.
//!
//! A connection is matched to a filter chain when it is accepted, with Envoy's
//! `FilterChainMatch` rules applied level by level: destination port, server name (SNI:
//! exact, then the longest wildcard, then chains naming none), transport protocol (`tls`
//! when the `tls_inspector` saw a ClientHello, else `raw_buffer`), application protocols
//! (the client's ALPN offer, in its order). At each level the most specific candidates
//! win and nothing falls back to a less specific level afterwards; when a level leaves no
//! candidate the `default_filter_chain` applies, and without one the connection is reset.
//! The levels are precomputed tables, so the cost does not grow with the number of
//! chains (a gateway with 10,000 SNI hosts has 10,000 chains).
use crate::proxy::http::hcm::HttpConnectionManager;
use crate::proxy::tcp::TcpProxy;
use crate::tls::DownstreamTls;
use crate::tls::sni::ServerNameTable;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What a filter chain requires of a connection (Envoy's `FilterChainMatch`, the fields
/// meshgate implements).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    /// Lower-case server names (`a.example.com`, `*.example.com`); empty for any.
    pub server_names: Vec<Box<str>>,
    /// `tls` or `raw_buffer`; `None` for any.
    pub transport_protocol: Option<TransportProtocol>,
    /// ALPN protocols; empty for any.
    pub application_protocols: Vec<Box<[u8]>>,
}

impl ChainMatch {
    /// Why this chain, taken alone, does not match a connection (`None`: it does). The
    /// listener chooses among the chains that do with [`Listener::select`]; this only
    /// says, for `meshgate explain`, why the others were out.
    pub fn mismatch(&self, d: &Detected<'_>) -> Option<String> {
        if let Some(p) = self.destination_port
            && p != d.local_port
        {
            return Some(format!(
                "destination port {p}, connection to port {}",
                d.local_port
            ));
        }
        if !self.server_names.is_empty() {
            let names = self.server_names.join(", ");
            let Some(sni) = d.server_name else {
                return Some(format!("server names [{names}]; the client sent no SNI"));
            };
            let sni = sni.to_ascii_lowercase();
            let hit = self.server_names.iter().any(|n| match n.strip_prefix('*') {
                Some(suffix) => sni.len() > suffix.len() && sni.ends_with(suffix),
                None => **n == *sni,
            });
            if !hit {
                return Some(format!("server names [{names}]; SNI {sni} is none of them"));
            }
        }
        if let Some(t) = self.transport_protocol
            && t != d.transport
        {
            return Some(format!(
                "transport protocol {}, connection is {}",
                t.name(),
                d.transport.name()
            ));
        }
        if !self.application_protocols.is_empty()
            && !d
                .alpn
                .iter()
                .any(|p| self.application_protocols.iter().any(|a| **a == **p))
        {
            let want: Vec<String> = self
                .application_protocols
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            let offered: Vec<String> = d
                .alpn
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            return Some(format!(
                "ALPN [{}], client offered [{}]",
                want.join(", "),
                offered.join(", ")
            ));
        }
        None
    }
}

/// The transport protocol of a connection as the listener filters detected it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportProtocol {
    /// A TLS ClientHello was read.
    Tls,
    /// Anything else (Envoy's default when nothing was detected).
    RawBuffer,
}

impl TransportProtocol {
    /// Envoy's name: `tls` or `raw_buffer`.
    pub fn name(self) -> &'static str {
        match self {
            TransportProtocol::Tls => "tls",
            TransportProtocol::RawBuffer => "raw_buffer",
        }
    }
}

/// What the listener filters learned about a connection before a chain is chosen.
#[derive(Debug, Clone, Copy)]
pub struct Detected<'a> {
    pub local_port: u16,
    pub server_name: Option<&'a str>,
    pub transport: TransportProtocol,
    /// The client's ALPN offer, in its order.
    pub alpn: &'a [Vec<u8>],
}

/// What a filter chain does with its connections.
#[derive(Debug, Clone)]
pub enum ChainAction {
    /// The HTTP connection manager.
    Http(Arc<HttpConnectionManager>),
    /// `tcp_proxy`: bytes copied to a cluster.
    Tcp(Arc<TcpProxy>),
}

/// A compiled filter chain.
#[derive(Debug)]
pub struct FilterChain {
    pub name: Box<str>,
    pub matcher: ChainMatch,
    /// TLS termination (`envoy.transport_sockets.tls`); certificates are read from the
    /// secret store at each handshake, so a rotation reaches new connections at once.
    pub tls: Option<DownstreamTls>,
    /// How long the TLS handshake may take (`transport_socket_connect_timeout`, default
    /// 10 s as Envoy's TLS handshake bound).
    pub handshake_timeout: Duration,
    pub action: ChainAction,
}

impl FilterChain {
    /// The HTTP connection manager, for HTTP chains.
    pub fn hcm(&self) -> Option<&Arc<HttpConnectionManager>> {
        match &self.action {
            ChainAction::Http(h) => Some(h),
            ChainAction::Tcp(_) => None,
        }
    }
}

/// A compiled listener.
#[derive(Debug)]
pub struct Listener {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub chains: Vec<FilterChain>,
    pub default_chain: Option<FilterChain>,
    /// `envoy.filters.listener.tls_inspector`: read the ClientHello (SNI, ALPN) first.
    pub tls_inspector: bool,
    /// `envoy.filters.listener.proxy_protocol`: a PROXY header before anything else.
    pub proxy_protocol: Option<Arc<crate::proxy::proxy_protocol::ProxyProtocolFilter>>,
    /// How long listener filters may take (`listener_filters_timeout`, default 15 s).
    pub listener_filters_timeout: Duration,
    /// On a listener-filter timeout, carry on with what was detected instead of closing.
    pub continue_on_listener_filters_timeout: bool,
    /// Envoy's stat name for the listener: `stat_prefix`, else `ADDRESS_PORT`
    /// (`listener.<stat_name>.downstream_cx_overflow`).
    pub stat_name: Arc<str>,
    /// `ignore_global_conn_limit`: not refused by `--max-connections-total` (its
    /// connections still count towards it).
    pub ignore_global_conn_limit: bool,
    index: ChainIndex,
}

impl Listener {
    /// Builds a listener; the chains' matchers must be distinct (compile checks).
    pub fn new(
        name: Arc<str>,
        addr: SocketAddr,
        chains: Vec<FilterChain>,
        default_chain: Option<FilterChain>,
        tls_inspector: bool,
    ) -> Listener {
        let index = ChainIndex::build(chains.iter().map(|c| &c.matcher));
        Listener {
            name,
            addr,
            chains,
            default_chain,
            tls_inspector,
            proxy_protocol: None,
            listener_filters_timeout: Duration::from_secs(15),
            continue_on_listener_filters_timeout: false,
            stat_name: crate::proxy::overload::listener_stat_name("", addr).into(),
            ignore_global_conn_limit: false,
            index,
        }
    }

    /// The filter chain for a connection, or `None` (reset, as Envoy does).
    pub fn select(&self, d: &Detected<'_>) -> Option<&FilterChain> {
        match self.index.lookup(d) {
            Some(i) => self.chains.get(i),
            None => self.default_chain.as_ref(),
        }
    }

    /// The chain for a plain-text connection on `local_port` (nothing detected).
    pub fn select_chain(&self, local_port: u16) -> Option<&FilterChain> {
        self.select(&Detected {
            local_port,
            server_name: None,
            transport: TransportProtocol::RawBuffer,
            alpn: &[],
        })
    }
}

/// Application protocols -> chain (the last level).
#[derive(Debug, Default)]
struct AlpnLevel {
    by_protocol: FxHashMap<Box<[u8]>, usize>,
    any: Option<usize>,
}

impl AlpnLevel {
    fn lookup(&self, alpn: &[Vec<u8>]) -> Option<usize> {
        if !self.by_protocol.is_empty() {
            for p in alpn {
                if let Some(i) = self.by_protocol.get(p.as_slice()) {
                    return Some(*i);
                }
            }
        }
        self.any
    }
}

/// Transport protocol -> application protocols.
#[derive(Debug, Default)]
struct TransportLevel {
    tls: Option<AlpnLevel>,
    raw: Option<AlpnLevel>,
    any: Option<AlpnLevel>,
}

impl TransportLevel {
    fn lookup(&self, d: &Detected<'_>) -> Option<usize> {
        let exact = match d.transport {
            TransportProtocol::Tls => self.tls.as_ref(),
            TransportProtocol::RawBuffer => self.raw.as_ref(),
        };
        exact.or(self.any.as_ref())?.lookup(d.alpn)
    }

    fn slot(&mut self, t: Option<TransportProtocol>) -> &mut AlpnLevel {
        match t {
            Some(TransportProtocol::Tls) => self.tls.get_or_insert_with(Default::default),
            Some(TransportProtocol::RawBuffer) => self.raw.get_or_insert_with(Default::default),
            None => self.any.get_or_insert_with(Default::default),
        }
    }
}

/// Server names -> transport protocols, for one destination port.
#[derive(Debug)]
struct NameLevel {
    table: ServerNameTable<usize>,
    levels: Vec<TransportLevel>,
}

impl NameLevel {
    fn lookup(&self, d: &Detected<'_>) -> Option<usize> {
        let at = *self.table.lookup(d.server_name)?;
        self.levels.get(at)?.lookup(d)
    }
}

/// The precomputed levels of a listener's chains.
#[derive(Debug, Default)]
struct ChainIndex {
    by_port: FxHashMap<u16, NameLevel>,
    any_port: Option<NameLevel>,
}

impl ChainIndex {
    fn build<'a>(matchers: impl Iterator<Item = &'a ChainMatch>) -> ChainIndex {
        // Group by port, then by server name (a chain with several names appears once
        // per name), keeping the first chain for identical criteria.
        // Names keep their first-seen order; the map finds a name's slot in one probe
        // (a listener may have thousands of chains, one name each).
        type Names = (Vec<(Box<str>, TransportLevel)>, HashMap<Box<str>, usize>);
        let mut ports: Vec<(Option<u16>, Names)> = Vec::new();
        for (i, m) in matchers.enumerate() {
            let at = match ports.iter().position(|(p, _)| *p == m.destination_port) {
                Some(at) => at,
                None => {
                    ports.push((m.destination_port, Default::default()));
                    ports.len() - 1
                }
            };
            let (names, slots) = &mut ports[at].1;
            let wanted: Vec<Box<str>> = if m.server_names.is_empty() {
                vec!["*".into()]
            } else {
                m.server_names.clone()
            };
            for n in wanted {
                let level = match slots.get(&n) {
                    Some(&j) => &mut names[j].1,
                    None => {
                        slots.insert(n.clone(), names.len());
                        names.push((n, TransportLevel::default()));
                        &mut names.last_mut().expect("just pushed").1
                    }
                };
                let alpn = level.slot(m.transport_protocol);
                if m.application_protocols.is_empty() {
                    alpn.any.get_or_insert(i);
                } else {
                    for p in &m.application_protocols {
                        alpn.by_protocol.entry(p.clone()).or_insert(i);
                    }
                }
            }
        }
        let mut index = ChainIndex::default();
        for (port, (names, _)) in ports {
            let mut table = ServerNameTable::new(true);
            let mut levels = Vec::with_capacity(names.len());
            for (j, (name, level)) in names.into_iter().enumerate() {
                table.insert(&name, j);
                levels.push(level);
            }
            let level = NameLevel { table, levels };
            match port {
                Some(p) => {
                    index.by_port.insert(p, level);
                }
                None => index.any_port = Some(level),
            }
        }
        index
    }

    fn lookup(&self, d: &Detected<'_>) -> Option<usize> {
        match self.by_port.get(&d.local_port) {
            Some(level) => level.lookup(d),
            None => self.any_port.as_ref()?.lookup(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<Box<str>> {
        n.iter().map(|s| Box::<str>::from(*s)).collect()
    }

    fn alpn(n: &[&str]) -> Vec<Box<[u8]>> {
        n.iter().map(|s| Box::<[u8]>::from(s.as_bytes())).collect()
    }

    /// Envoy's level-by-level matching, as tables of (chains, connection, expected chain).
    #[test]
    fn chain_selection_follows_envoy() {
        use TransportProtocol::*;
        let chains = [
            // 0: exact name
            ChainMatch {
                server_names: names(&["a.example.com"]),
                ..Default::default()
            },
            // 1: wildcard
            ChainMatch {
                server_names: names(&["*.example.com"]),
                ..Default::default()
            },
            // 2: deeper wildcard wins over 1
            ChainMatch {
                server_names: names(&["*.b.example.com"]),
                ..Default::default()
            },
            // 3: names on another port
            ChainMatch {
                destination_port: Some(9443),
                server_names: names(&["a.example.com"]),
                ..Default::default()
            },
            // 4: tls with ALPN istio, name c.example.org
            ChainMatch {
                server_names: names(&["c.example.org"]),
                transport_protocol: Some(Tls),
                application_protocols: alpn(&["istio", "istio-h2"]),
                ..Default::default()
            },
            // 5: raw buffer, no name
            ChainMatch {
                transport_protocol: Some(RawBuffer),
                ..Default::default()
            },
        ];
        let index = ChainIndex::build(chains.iter());
        let no_alpn: Vec<Vec<u8>> = vec![];
        let istio = vec![b"h2".to_vec(), b"istio-h2".to_vec()];
        type Case<'a> = (
            u16,
            Option<&'a str>,
            TransportProtocol,
            &'a [Vec<u8>],
            Option<usize>,
        );
        let cases: Vec<Case<'_>> = vec![
            (443, Some("a.example.com"), Tls, &no_alpn, Some(0)),
            (443, Some("A.EXAMPLE.COM"), Tls, &no_alpn, Some(0)),
            (443, Some("x.example.com"), Tls, &no_alpn, Some(1)),
            (443, Some("x.y.example.com"), Tls, &no_alpn, Some(1)),
            (443, Some("x.b.example.com"), Tls, &no_alpn, Some(2)),
            // Unknown name: chains without names (only the raw_buffer one): no match.
            (443, Some("other.org"), Tls, &no_alpn, None),
            (443, None, Tls, &no_alpn, None),
            // Plain text: the raw_buffer chain.
            (443, None, RawBuffer, &no_alpn, Some(5)),
            // The port's own chains only: a.example.com on 9443 is chain 3 ...
            (9443, Some("a.example.com"), Tls, &no_alpn, Some(3)),
            // ... and nothing else on 9443 (no fallback to the port-less chains).
            (9443, Some("x.example.com"), Tls, &no_alpn, None),
            (443, Some("c.example.org"), Tls, &istio, Some(4)),
            // Name matched but ALPN not: no fallback to a less specific name.
            (443, Some("c.example.org"), Tls, &no_alpn, None),
            (443, Some("c.example.org"), RawBuffer, &no_alpn, None),
        ];
        for (port, sni, transport, alpn, want) in cases {
            let got = index.lookup(&Detected {
                local_port: port,
                server_name: sni,
                transport,
                alpn,
            });
            assert_eq!(got, want, "{port} {sni:?} {transport:?} {alpn:?}");
        }
    }
}
