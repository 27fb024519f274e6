//! Compiled listeners and their filter chains.
//!
//! A connection is matched to a filter chain when it is accepted. TLS termination plugs
//! in per filter chain: a chain with a `transport_socket` will carry the server config
//! (resolved at accept time, so certificates rotate without recompiling).
use crate::proxy::http::hcm::HttpConnectionManager;
use std::net::SocketAddr;
use std::sync::Arc;

/// What a filter chain requires of a connection (plaintext subset of
/// FilterChainMatch: destination port and transport protocol).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    /// `raw_buffer` (detected by tls_inspector), or empty for any.
    pub transport_protocol: Option<Box<str>>,
}

/// A compiled filter chain.
#[derive(Debug)]
pub struct FilterChain {
    pub name: Box<str>,
    pub matcher: ChainMatch,
    pub hcm: Arc<HttpConnectionManager>,
}

/// A compiled listener.
#[derive(Debug)]
pub struct Listener {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub chains: Vec<FilterChain>,
    pub default_chain: Option<FilterChain>,
    pub tls_inspector: bool,
}

impl Listener {
    /// The filter chain for a plaintext connection to `local_port`, most specific first
    /// (a chain naming the port beats one that does not; `raw_buffer` beats any when the
    /// tls_inspector detected it), else the default chain.
    pub fn select_chain(&self, local_port: u16) -> Option<&FilterChain> {
        let detected_raw = self.tls_inspector;
        let mut best: Option<(u8, &FilterChain)> = None;
        for c in &self.chains {
            let m = &c.matcher;
            if m.destination_port.is_some_and(|p| p != local_port) {
                continue;
            }
            let tp_score = match m.transport_protocol.as_deref() {
                None => 0,
                Some("raw_buffer") if detected_raw => 1,
                Some(_) => continue,
            };
            let score = (m.destination_port.is_some() as u8) * 2 + tp_score;
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, c));
            }
        }
        best.map(|(_, c)| c).or(self.default_chain.as_ref())
    }
}
