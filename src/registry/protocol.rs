//! Port protocols as Istio names them (`HTTP`, `GRPC`, `TLS`, ...).
use std::fmt;

/// The protocol of a service or gateway port, parsed case-insensitively as Istio does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// HTTP/1.1 (and HTTP/2 when the client asks for it).
    Http,
    /// HTTP/2 (cleartext upstream).
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// gRPC-Web (HTTP/1.1 downstream, gRPC upstream).
    GrpcWeb,
    /// An HTTP forward proxy port.
    HttpProxy,
    /// HTTPS: TLS carrying HTTP.
    Https,
    /// TLS carrying an opaque protocol.
    Tls,
    /// Opaque TCP.
    Tcp,
    /// MongoDB (treated as TCP).
    Mongo,
    /// Redis (treated as TCP).
    Redis,
    /// MySQL (treated as TCP).
    Mysql,
    /// UDP (never proxied).
    Udp,
    /// Anything else, as written.
    Unsupported(String),
}

impl Protocol {
    /// Parses a protocol name, ignoring case (`http`, `Http`, `HTTP`).
    pub fn parse(s: &str) -> Protocol {
        match s.to_ascii_uppercase().as_str() {
            "HTTP" => Protocol::Http,
            "HTTP2" => Protocol::Http2,
            "GRPC" => Protocol::Grpc,
            "GRPC-WEB" => Protocol::GrpcWeb,
            "HTTP_PROXY" => Protocol::HttpProxy,
            "HTTPS" => Protocol::Https,
            "TLS" => Protocol::Tls,
            "TCP" => Protocol::Tcp,
            "MONGO" => Protocol::Mongo,
            "REDIS" => Protocol::Redis,
            "MYSQL" => Protocol::Mysql,
            "UDP" => Protocol::Udp,
            _ => Protocol::Unsupported(s.to_string()),
        }
    }

    /// Whether the port speaks plain-text HTTP (of any version).
    pub fn is_http(&self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Http2
                | Protocol::Grpc
                | Protocol::GrpcWeb
                | Protocol::HttpProxy
        )
    }

    /// Whether the upstream speaks HTTP/2 (HTTP2, GRPC, GRPC-WEB).
    pub fn is_http2(&self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
    }

    /// Whether the port carries TLS (HTTPS or TLS).
    pub fn is_tls(&self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    /// Whether the port is proxied as opaque bytes (TCP, TLS and the database protocols).
    pub fn is_tcp(&self) -> bool {
        matches!(
            self,
            Protocol::Tcp | Protocol::Tls | Protocol::Mongo | Protocol::Redis | Protocol::Mysql
        )
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-WEB",
            Protocol::HttpProxy => "HTTP_PROXY",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
            Protocol::Mongo => "MONGO",
            Protocol::Redis => "REDIS",
            Protocol::Mysql => "MYSQL",
            Protocol::Udp => "UDP",
            Protocol::Unsupported(s) => s,
        })
    }
}
