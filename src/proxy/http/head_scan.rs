//! A look at the raw bytes of HTTP/1 request heads for what the codec normalises away
//! before the router sees it, and for the connection manager's head limits:
//! - a request target carrying a `#fragment` (the URI parser drops it) and
//!   `Content-Length` next to `Transfer-Encoding` (the codec drops the length). Envoy's
//!   codec rejects both with 400, and so does meshgate: a proxy that quietly repairs such
//!   requests is what request smuggling relies on;
//! - `max_request_headers_kb` and `max_headers_count`: Envoy's codec answers a head over
//!   either with its own 431 (`http1.headers_too_large`, `http1.too_many_headers`),
//!   counted and logged, where hyper would answer a bare 431 itself.
//!
//! The scan runs only on bytes read while a request head is awaited, stops at the blank
//! line ending the head, and costs a `memchr` per header line. Lines split across reads
//! are handled: the start of a line is remembered between reads.

/// The request target has a fragment.
pub const FRAGMENT: u8 = 1;
/// A `Content-Length` header line.
pub const CONTENT_LENGTH: u8 = 2;
/// A `Transfer-Encoding` header line.
pub const TRANSFER_ENCODING: u8 = 4;

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooLarge {
    /// Over `max_request_headers_kb` (request line and header lines, line ends excluded).
    Bytes,
    /// More header lines than `max_headers_count`.
    Count,
}

/// Where the scanner is in the connection's stream of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the first byte of a head.
    Fresh,
    /// Inside a head.
    InHead,
    /// The head ended; what follows is its body until the next head starts.
    Done,
    /// Not HTTP/1 (the HTTP/2 preface was seen): nothing more is scanned.
    Off,
}

/// Longest header-name prefix looked at (`transfer-encoding:`).
const PREFIX: usize = 18;

/// Scans request heads across reads.
#[derive(Debug)]
pub struct HeadScanner {
    max_bytes: usize,
    max_headers: usize,
    pub phase: Phase,
    /// Bytes of the current head so far (line ends excluded).
    bytes: usize,
    /// Header lines of the current head so far (the request line excluded).
    lines: usize,
    /// The next byte starts a line.
    at_line_start: bool,
    /// The previous read ended with a CR at the start of a line (half a blank line).
    pending_cr: bool,
    /// Still in the request line.
    in_request_line: bool,
    /// The first bytes of the current header line, for name checks across reads.
    prefix: [u8; PREFIX],
    prefix_len: usize,
}

/// What one read of head bytes showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scanned {
    pub flags: u8,
    pub too_large: Option<TooLarge>,
}

impl HeadScanner {
    /// A scanner with the connection manager's limits.
    pub fn new(max_request_headers_kb: u32, max_headers_count: usize) -> HeadScanner {
        HeadScanner {
            max_bytes: (max_request_headers_kb as usize).saturating_mul(1024),
            max_headers: max_headers_count,
            phase: Phase::Fresh,
            bytes: 0,
            lines: 0,
            at_line_start: true,
            pending_cr: false,
            in_request_line: true,
            prefix: [0; PREFIX],
            prefix_len: 0,
        }
    }

    /// A scanner that never looks (HTTP/2 connections).
    pub fn off() -> HeadScanner {
        let mut s = HeadScanner::new(0, 0);
        s.phase = Phase::Off;
        s
    }

    /// Waits for the next head.
    pub fn expect_head(&mut self) {
        if self.phase != Phase::Off {
            self.phase = Phase::Fresh;
        }
    }

    /// Scans one read. In `Fresh` the bytes start a head; in `InHead` they continue it;
    /// otherwise nothing is scanned.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Scanned {
        let mut out = Scanned::default();
        match self.phase {
            Phase::Off | Phase::Done => return out,
            Phase::InHead => {}
            Phase::Fresh => {
                // Empty lines before the request line are tolerated (RFC 9112 2.2).
                let start = bytes
                    .iter()
                    .position(|&b| b != b'\r' && b != b'\n')
                    .unwrap_or(bytes.len());
                bytes = &bytes[start..];
                if bytes.is_empty() {
                    return out;
                }
                if bytes.starts_with(b"PRI * HTTP/2") {
                    self.phase = Phase::Off;
                    return out;
                }
                if !looks_like_request_line(bytes) {
                    // Not the start of a head: the rest of one hyper already holds
                    // (pipelined requests), or its body. Nothing to judge here.
                    self.phase = Phase::Done;
                    return out;
                }
                self.phase = Phase::InHead;
                self.bytes = 0;
                self.lines = 0;
                self.at_line_start = true;
                self.pending_cr = false;
                self.in_request_line = true;
                self.prefix_len = 0;
            }
        }
        let mut pos = 0;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            if self.at_line_start && !self.in_request_line {
                // A blank line ends the head: "\r\n", "\n", or a CR carried over.
                if self.pending_cr || rest[0] == b'\r' || rest[0] == b'\n' {
                    let blank = if self.pending_cr {
                        rest[0] == b'\n'
                    } else if rest[0] == b'\n' {
                        true
                    } else if rest.len() == 1 {
                        self.pending_cr = true;
                        return out;
                    } else {
                        rest[1] == b'\n'
                    };
                    if blank {
                        self.phase = Phase::Done;
                        return out;
                    }
                    self.pending_cr = false;
                }
                self.lines += 1;
                self.prefix_len = 0;
                if self.lines > self.max_headers {
                    out.too_large = Some(TooLarge::Count);
                    return out;
                }
            }
            self.at_line_start = false;
            let end = memchr::memchr(b'\n', rest);
            let line = &rest[..end.unwrap_or(rest.len())];
            let content = line.strip_suffix(b"\r").unwrap_or(line);
            self.bytes += content.len();
            if self.in_request_line {
                if memchr::memchr(b'#', line).is_some() {
                    out.flags |= FRAGMENT;
                }
            } else if self.prefix_len < PREFIX {
                let take = (PREFIX - self.prefix_len).min(content.len());
                self.prefix[self.prefix_len..self.prefix_len + take]
                    .copy_from_slice(&content[..take]);
                self.prefix_len += take;
                if end.is_some() || self.prefix_len == PREFIX {
                    out.flags |= name_flags(&self.prefix[..self.prefix_len]);
                }
            }
            if self.bytes > self.max_bytes {
                out.too_large = Some(TooLarge::Bytes);
                return out;
            }
            match end {
                Some(i) => {
                    pos += i + 1;
                    self.at_line_start = true;
                    self.in_request_line = false;
                }
                None => break,
            }
        }
        out
    }
}

/// A method token (RFC 9110 `tchar`s) followed by a space, as far as the bytes go.
fn looks_like_request_line(bytes: &[u8]) -> bool {
    const LONGEST_METHOD: usize = 20;
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    match bytes
        .iter()
        .take(LONGEST_METHOD + 1)
        .position(|&c| c == b' ')
    {
        Some(0) => false,
        Some(i) => bytes[..i].iter().all(|&c| is_tchar(c)),
        None => bytes.len() <= LONGEST_METHOD && bytes.iter().all(|&c| is_tchar(c)),
    }
}

fn name_flags(prefix: &[u8]) -> u8 {
    if starts_with_ignore_case(prefix, b"content-length:") {
        CONTENT_LENGTH
    } else if starts_with_ignore_case(prefix, b"transfer-encoding:") {
        TRANSFER_ENCODING
    } else {
        0
    }
}

fn starts_with_ignore_case(line: &[u8], name: &[u8]) -> bool {
    line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(reads: &[&[u8]], kb: u32, count: usize) -> (Scanned, Phase) {
        let mut s = HeadScanner::new(kb, count);
        let mut total = Scanned::default();
        for r in reads {
            let got = s.feed(r);
            total.flags |= got.flags;
            if got.too_large.is_some() {
                total.too_large = got.too_large;
                break;
            }
        }
        (total, s.phase)
    }

    #[test]
    fn flags_per_head() {
        let cases: &[(&[u8], u8)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0),
            (b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", FRAGMENT),
            (b"\r\nGET /a#b HTTP/1.1\r\n\r\n", FRAGMENT),
            (b"GET / HTTP/1.1\r\nX-A: #\r\n\r\n", 0),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                CONTENT_LENGTH | TRANSFER_ENCODING,
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 5\r\n\r\n",
                CONTENT_LENGTH | TRANSFER_ENCODING,
            ),
            // A body after the blank line is not looked at.
            (
                b"POST / HTTP/1.1\r\nContent-Length: 20\r\n\r\nTransfer-Encoding: x\r\n",
                CONTENT_LENGTH,
            ),
            // Header values naming the headers do not count.
            (b"GET / HTTP/1.1\r\nX: content-length: 1\r\n\r\n", 0),
            (b"", 0),
            (b"GET / HTTP/1.1", 0),
        ];
        for (bytes, want) in cases {
            let (got, _) = scan_all(&[bytes], 60, 100);
            assert_eq!(got.flags, *want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn heads_split_across_reads() {
        let head: &[u8] =
            b"POST /a#b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nBODY\r\n\r\n";
        // Every split point, and byte-by-byte: same flags, and the head ends exactly once.
        for split in 0..head.len() {
            let (got, phase) = scan_all(&[&head[..split], &head[split..]], 60, 100);
            assert_eq!(
                got.flags,
                FRAGMENT | CONTENT_LENGTH | TRANSFER_ENCODING,
                "split at {split}"
            );
            assert_eq!(phase, Phase::Done, "split at {split}");
        }
        let bytes: Vec<&[u8]> = head.chunks(1).collect();
        let (got, phase) = scan_all(&bytes, 60, 100);
        assert_eq!(got.flags, FRAGMENT | CONTENT_LENGTH | TRANSFER_ENCODING);
        assert_eq!(phase, Phase::Done);
    }

    #[test]
    fn limits() {
        let head = |n: usize, value: usize| {
            let mut h = b"GET / HTTP/1.1\r\n".to_vec();
            for i in 0..n {
                h.extend_from_slice(format!("x-h{i}: {}\r\n", "v".repeat(value)).as_bytes());
            }
            h.extend_from_slice(b"\r\n");
            h
        };
        // Header count: the limit itself passes, one more does not.
        assert_eq!(scan_all(&[&head(100, 1)], 60, 100).0.too_large, None);
        assert_eq!(
            scan_all(&[&head(101, 1)], 60, 100).0.too_large,
            Some(TooLarge::Count)
        );
        // Bytes: 1 KiB limit; line ends do not count.
        let under = head(1, 1024 - "GET / HTTP/1.1".len() - "x-h0: ".len());
        assert_eq!(scan_all(&[&under], 1, 100).0.too_large, None);
        let over = head(1, 1025 - "GET / HTTP/1.1".len() - "x-h0: ".len());
        assert_eq!(
            scan_all(&[&over], 1, 100).0.too_large,
            Some(TooLarge::Bytes)
        );
        // Seen before the head ends, across reads.
        let chunks: Vec<&[u8]> = over[..over.len() - 4].chunks(100).collect();
        assert_eq!(scan_all(&chunks, 1, 100).0.too_large, Some(TooLarge::Bytes));
        // A large body after the head is not the head.
        let mut with_body = head(1, 10);
        with_body.extend_from_slice(&[b'x'; 4096]);
        assert_eq!(scan_all(&[&with_body], 1, 100).0.too_large, None);
    }

    #[test]
    fn only_request_lines_start_a_head() {
        // The middle of a pipelined head, or body bytes: not judged as a head.
        for bytes in [
            &b"X-A: #1\r\n\r\n"[..],
            b"{\"json\": 1}\n",
            b" GET / HTTP/1.1\r\n",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1\r\n",
        ] {
            let mut s = HeadScanner::new(1, 1);
            assert_eq!(s.feed(bytes), Scanned::default(), "{bytes:?}");
            assert_eq!(s.phase, Phase::Done);
        }
        for bytes in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"M-SEARCH * HTTP/1.1\r\n",
            b"PO",
        ] {
            let mut s = HeadScanner::new(60, 100);
            s.feed(bytes);
            assert_eq!(s.phase, Phase::InHead, "{bytes:?}");
        }
    }

    #[test]
    fn http2_preface_turns_the_scan_off() {
        let mut s = HeadScanner::new(1, 1);
        s.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(s.phase, Phase::Off);
        let big = vec![b'a'; 4096];
        assert_eq!(s.feed(&big), Scanned::default());
        s.expect_head();
        assert_eq!(s.phase, Phase::Off);
    }
}
