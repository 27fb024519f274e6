//! Reading SNI and ALPN from the first bytes of a TLS connection without terminating it
//! (Envoy's `tls_inspector`): for filter-chain selection and TLS passthrough.
//!
//! The ClientHello may span several TLS records and several reads; the total is capped.
//! Input that is not TLS is reported as such (a plain-text filter chain may still take
//! it); malformed or oversized input is an error with a reason. Nothing here panics on
//! any input (see the fuzz target `client_hello`).
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What the ClientHello says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The `server_name` (SNI) host name, lower-case, if sent.
    pub server_name: Option<String>,
    /// ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
    /// Whether the client offers TLS 1.3 (`supported_versions`).
    pub tls13: bool,
    /// Bytes of the records that carried the ClientHello.
    pub len: usize,
}

/// Why a ClientHello could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHelloError {
    /// The first bytes are not a TLS handshake record (e.g. plain HTTP).
    #[error("not TLS")]
    NotTls,
    #[error("ClientHello larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("connection closed before the ClientHello was complete")]
    Truncated,
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("read error: {0}")]
    Io(String),
}

impl ClientHelloError {
    /// A short stable reason for logs and stats (`not_tls`, `too_large`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            ClientHelloError::NotTls => "not_tls",
            ClientHelloError::TooLarge { .. } => "too_large",
            ClientHelloError::Malformed(_) => "malformed",
            ClientHelloError::Truncated => "truncated",
            ClientHelloError::Timeout(_) => "timeout",
            ClientHelloError::Io(_) => "io",
        }
    }
}

const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Largest record payload a peer may send (2^14 plus the slack RFC 8446 allows for
/// ciphertext; ClientHello records are plaintext, so this is generous).
const MAX_RECORD: usize = 16384 + 256;

/// Parses the ClientHello at the start of `buf`. `Ok(None)`: more bytes are needed.
/// `limit` caps the bytes the ClientHello's records may take.
pub fn parse_client_hello(
    buf: &[u8],
    limit: usize,
) -> Result<Option<ClientHelloInfo>, ClientHelloError> {
    // Reassemble the handshake message from consecutive handshake records.
    let mut message: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        let Some(header) = buf.get(pos..pos + RECORD_HEADER) else {
            if pos == 0 && !buf.is_empty() && buf[0] != CONTENT_HANDSHAKE {
                return Err(ClientHelloError::NotTls);
            }
            if pos + RECORD_HEADER > limit {
                return Err(ClientHelloError::TooLarge { limit });
            }
            return Ok(None);
        };
        if header[0] != CONTENT_HANDSHAKE {
            return Err(if pos == 0 {
                ClientHelloError::NotTls
            } else {
                ClientHelloError::Malformed("record other than handshake inside the ClientHello")
            });
        }
        if header[1] != 3 {
            return Err(if pos == 0 {
                ClientHelloError::NotTls
            } else {
                ClientHelloError::Malformed("bad record version")
            });
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if len == 0 {
            return Err(ClientHelloError::Malformed("empty handshake record"));
        }
        if len > MAX_RECORD {
            return Err(ClientHelloError::Malformed("record too long"));
        }
        if pos + RECORD_HEADER + len > limit {
            return Err(ClientHelloError::TooLarge { limit });
        }
        let Some(fragment) = buf.get(pos + RECORD_HEADER..pos + RECORD_HEADER + len) else {
            return Ok(None);
        };
        message.extend_from_slice(fragment);
        pos += RECORD_HEADER + len;
        if message.len() >= 4 {
            if message[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(ClientHelloError::Malformed(
                    "first handshake message is not a ClientHello",
                ));
            }
            let body_len = u32::from_be_bytes([0, message[1], message[2], message[3]]) as usize;
            if body_len + 4 > limit {
                return Err(ClientHelloError::TooLarge { limit });
            }
            if message.len() >= 4 + body_len {
                let mut info = parse_body(&message[4..4 + body_len])?;
                info.len = pos;
                return Ok(Some(info));
            }
        }
    }
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        if self.data.len() < n {
            return Err(ClientHelloError::Malformed(what));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, ClientHelloError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ClientHelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        let n = self.u8(what)? as usize;
        self.take(n, what)
    }
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

fn parse_body(body: &[u8]) -> Result<ClientHelloInfo, ClientHelloError> {
    let mut r = Reader { data: body };
    let version = r.u16("truncated legacy_version")?;
    if version >> 8 != 3 {
        return Err(ClientHelloError::Malformed("unsupported client version"));
    }
    r.take(32, "truncated random")?;
    let session_id = r.vec8("truncated session_id")?;
    if session_id.len() > 32 {
        return Err(ClientHelloError::Malformed(
            "session_id longer than 32 bytes",
        ));
    }
    let suites = r.vec16("truncated cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(ClientHelloError::Malformed("bad cipher_suites length"));
    }
    let compression = r.vec8("truncated compression_methods")?;
    if compression.is_empty() {
        return Err(ClientHelloError::Malformed("no compression method"));
    }
    let mut info = ClientHelloInfo::default();
    if r.is_empty() {
        return Ok(info); // no extensions at all
    }
    let mut exts = Reader {
        data: r.vec16("truncated extensions")?,
    };
    if !r.is_empty() {
        return Err(ClientHelloError::Malformed(
            "trailing bytes after extensions",
        ));
    }
    let mut seen: Vec<u16> = Vec::new();
    while !exts.is_empty() {
        let ty = exts.u16("truncated extension type")?;
        let data = exts.vec16("truncated extension")?;
        if seen.contains(&ty) {
            return Err(ClientHelloError::Malformed("duplicate extension"));
        }
        seen.push(ty);
        match ty {
            0 => info.server_name = parse_sni(data)?,
            16 => info.alpn = parse_alpn(data)?,
            43 => {
                let mut v = Reader { data };
                let list = v.vec8("truncated supported_versions")?;
                info.tls13 = list.chunks(2).any(|c| c == [3, 4]);
            }
            _ => {}
        }
    }
    Ok(info)
}

fn parse_sni(data: &[u8]) -> Result<Option<String>, ClientHelloError> {
    let mut r = Reader { data };
    let mut list = Reader {
        data: r.vec16("truncated server_name list")?,
    };
    if !r.is_empty() {
        return Err(ClientHelloError::Malformed("trailing bytes in server_name"));
    }
    let mut host = None;
    while !list.is_empty() {
        let kind = list.u8("truncated server_name type")?;
        let name = list.vec16("truncated server_name")?;
        if kind != 0 {
            continue; // only host_name is defined
        }
        if host.is_some() {
            return Err(ClientHelloError::Malformed("more than one host_name"));
        }
        if name.is_empty() || name.len() > 255 {
            return Err(ClientHelloError::Malformed("bad host_name length"));
        }
        if !name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'))
        {
            return Err(ClientHelloError::Malformed("host_name is not a DNS name"));
        }
        let mut s = String::from_utf8_lossy(name).into_owned();
        s.make_ascii_lowercase();
        host = Some(s);
    }
    Ok(host)
}

fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, ClientHelloError> {
    let mut r = Reader { data };
    let mut list = Reader {
        data: r.vec16("truncated ALPN list")?,
    };
    if !r.is_empty() {
        return Err(ClientHelloError::Malformed("trailing bytes in ALPN"));
    }
    let mut out = Vec::new();
    while !list.is_empty() {
        let p = list.vec8("truncated ALPN protocol")?;
        if p.is_empty() {
            return Err(ClientHelloError::Malformed("empty ALPN protocol"));
        }
        out.push(p.to_vec());
    }
    if out.is_empty() {
        return Err(ClientHelloError::Malformed("empty ALPN list"));
    }
    Ok(out)
}

/// Reads a ClientHello from a connection with a size cap and a deadline.
#[derive(Debug, Clone, Copy)]
pub struct ClientHelloReader {
    /// Cap on the bytes of the ClientHello's records (Envoy's `tls_inspector` default is 64 KiB).
    pub max_size: usize,
    /// How long the client may take to send it (Envoy's listener filter timeout is 15 s).
    pub timeout: Duration,
}

impl Default for ClientHelloReader {
    fn default() -> Self {
        ClientHelloReader {
            max_size: 64 * 1024,
            timeout: Duration::from_secs(15),
        }
    }
}

impl ClientHelloReader {
    /// Reads from `io` into `buf` until a whole ClientHello is there. Every byte read
    /// stays in `buf`, to be replayed with [`Rewind`](crate::tls::Rewind) (terminate) or
    /// forwarded upstream (passthrough). On `NotTls` the bytes read so far are in `buf`
    /// too, for a plain-text filter chain.
    pub async fn read<S: AsyncRead + Unpin>(
        &self,
        io: &mut S,
        buf: &mut BytesMut,
    ) -> Result<ClientHelloInfo, ClientHelloError> {
        let work = async {
            loop {
                if let Some(info) = parse_client_hello(buf, self.max_size)? {
                    return Ok(info);
                }
                buf.reserve(4096);
                let n = io
                    .read_buf(buf)
                    .await
                    .map_err(|e| ClientHelloError::Io(e.to_string()))?;
                if n == 0 {
                    return Err(if buf.is_empty() {
                        ClientHelloError::Truncated
                    } else {
                        // A few bytes that looked like TLS and then EOF.
                        parse_client_hello(buf, self.max_size)
                            .err()
                            .unwrap_or(ClientHelloError::Truncated)
                    });
                }
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ClientHelloError::Timeout(self.timeout)),
        }
    }
}

/// Test and fuzz support: builds ClientHello records.
pub mod build {
    /// A ClientHello with the given SNI and ALPN, split into records of at most
    /// `record_size` bytes.
    pub fn client_hello(sni: Option<&str>, alpn: &[&str], record_size: usize) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(host) = sni {
            let mut entry = vec![0u8];
            entry.extend_from_slice(&(host.len() as u16).to_be_bytes());
            entry.extend_from_slice(host.as_bytes());
            let mut list = (entry.len() as u16).to_be_bytes().to_vec();
            list.extend_from_slice(&entry);
            exts.extend_from_slice(&0u16.to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend_from_slice(&list);
        }
        if !alpn.is_empty() {
            let mut protos = Vec::new();
            for p in alpn {
                protos.push(p.len() as u8);
                protos.extend_from_slice(p.as_bytes());
            }
            let mut list = (protos.len() as u16).to_be_bytes().to_vec();
            list.extend_from_slice(&protos);
            exts.extend_from_slice(&16u16.to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend_from_slice(&list);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        let mut out = Vec::new();
        for chunk in msg.chunks(record_size.max(1)) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::client_hello;
    use super::*;

    #[test]
    fn parses_sni_and_alpn_whole_and_split() {
        for record_size in [16384, 100, 7, 1] {
            let hello = client_hello(Some("A.Example.com"), &["h2", "http/1.1"], record_size);
            let info = parse_client_hello(&hello, 64 * 1024).unwrap().unwrap();
            assert_eq!(info.server_name.as_deref(), Some("a.example.com"));
            assert_eq!(info.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
            assert_eq!(info.len, hello.len());
            // Every strict prefix asks for more bytes, never errors or panics.
            for cut in 0..hello.len() {
                assert_eq!(
                    parse_client_hello(&hello[..cut], 64 * 1024),
                    Ok(None),
                    "cut {cut} size {record_size}"
                );
            }
        }
    }

    #[test]
    fn bad_input_table() {
        let good = client_hello(Some("a.example.com"), &["h2"], 16384);
        let mut wrong_msg = good.clone();
        wrong_msg[5] = 2; // ServerHello
        let mut bad_sni = client_hello(Some("a.example.com"), &[], 16384);
        let at = bad_sni.len() - 3;
        bad_sni[at] = b' ';
        let mut huge_len = good.clone();
        huge_len[6] = 0xff; // handshake length ~16 MiB
        let cases: Vec<(&str, Vec<u8>, usize, ClientHelloError)> = vec![
            (
                "plain http",
                b"GET / HTTP/1.1\r\n".to_vec(),
                65536,
                ClientHelloError::NotTls,
            ),
            (
                "one byte not tls",
                b"G".to_vec(),
                65536,
                ClientHelloError::NotTls,
            ),
            (
                "ssl2-ish version",
                vec![22, 2, 0, 0, 5],
                65536,
                ClientHelloError::NotTls,
            ),
            (
                "not client hello",
                wrong_msg,
                65536,
                ClientHelloError::Malformed("first handshake message is not a ClientHello"),
            ),
            (
                "bad sni chars",
                bad_sni,
                65536,
                ClientHelloError::Malformed("host_name is not a DNS name"),
            ),
            (
                "oversized",
                good.clone(),
                50,
                ClientHelloError::TooLarge { limit: 50 },
            ),
            (
                "declared huge",
                huge_len,
                65536,
                ClientHelloError::TooLarge { limit: 65536 },
            ),
            (
                "empty record",
                vec![22, 3, 1, 0, 0],
                65536,
                ClientHelloError::Malformed("empty handshake record"),
            ),
        ];
        for (name, input, limit, want) in cases {
            assert_eq!(parse_client_hello(&input, limit), Err(want), "{name}");
        }
        let no_sni = parse_client_hello(&client_hello(None, &[], 16384), 65536)
            .unwrap()
            .unwrap();
        assert_eq!(no_sni.server_name, None);
        assert!(no_sni.alpn.is_empty());
    }

    #[test]
    fn random_mutations_never_panic() {
        // A quick in-suite complement to the cargo-fuzz target `client_hello`.
        let base = client_hello(Some("a.example.com"), &["h2", "http/1.1"], 37);
        let mut rng_state = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            rng_state
        };
        for _ in 0..20_000 {
            let mut input = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % input.len();
                input[i] = next() as u8;
            }
            let cut = (next() as usize) % (input.len() + 1);
            if let Ok(Some(info)) = parse_client_hello(&input[..cut], 1024) {
                assert!(info.len <= cut);
            }
        }
    }

    #[test]
    fn parses_real_rustls_client_hello() {
        let mut roots = rustls::RootCertStore::empty();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        roots.add(ca.der().clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let mut conn = rustls::ClientConnection::new(
            std::sync::Arc::new(cfg),
            "svc.example.com".try_into().unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        let info = parse_client_hello(&out, 65536).unwrap().unwrap();
        assert_eq!(info.server_name.as_deref(), Some("svc.example.com"));
        assert_eq!(info.alpn, vec![b"h2".to_vec()]);
        assert!(info.tls13);
    }

    #[tokio::test]
    async fn reader_handles_split_reads_eof_and_timeout() {
        let hello = client_hello(Some("a.example.com"), &[], 50);
        let (mut client, mut server) = tokio::io::duplex(16);
        let h = hello.clone();
        tokio::spawn(async move {
            for chunk in h.chunks(3) {
                tokio::io::AsyncWriteExt::write_all(&mut client, chunk)
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let mut buf = BytesMut::new();
        let info = ClientHelloReader::default()
            .read(&mut server, &mut buf)
            .await
            .unwrap();
        assert_eq!(info.server_name.as_deref(), Some("a.example.com"));
        assert_eq!(&buf[..], &hello[..]);

        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, &hello[..10])
            .await
            .unwrap();
        drop(client);
        let err = ClientHelloReader::default()
            .read(&mut server, &mut BytesMut::new())
            .await
            .unwrap_err();
        assert_eq!(err, ClientHelloError::Truncated);
    }

    #[tokio::test(start_paused = true)]
    async fn reader_times_out() {
        let (_client, mut server) = tokio::io::duplex(64);
        let r = ClientHelloReader {
            max_size: 1024,
            timeout: Duration::from_secs(5),
        };
        let err = r.read(&mut server, &mut BytesMut::new()).await.unwrap_err();
        assert_eq!(err.reason(), "timeout");
    }
}
