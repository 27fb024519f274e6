//! A look at the raw bytes of HTTP/1 request heads for what the codec normalises away
//! before the router sees it: a request target carrying a `#fragment` (the URI parser
//! drops it) and `Content-Length` next to `Transfer-Encoding` (the codec drops the
//! length). Envoy's codec rejects both with 400, and so does meshgate: a proxy that
//! quietly repairs such requests is what request smuggling relies on.
//!
//! The scan runs only on bytes read while a request head is awaited, stops at the blank
//! line ending the head, and costs a `memchr` per header line.

/// The request target has a fragment.
pub const FRAGMENT: u8 = 1;
/// A `Content-Length` header line.
pub const CONTENT_LENGTH: u8 = 2;
/// A `Transfer-Encoding` header line.
pub const TRANSFER_ENCODING: u8 = 4;

/// Scans one read of request-head bytes. `starts_head` says the bytes begin a new head
/// (request line first); otherwise they continue one and the scan starts at the next
/// line. Returns the flags seen.
pub fn scan(bytes: &[u8], starts_head: bool) -> u8 {
    let mut flags = 0;
    let mut pos = if starts_head {
        // Empty lines before the request line are tolerated (RFC 9112 2.2).
        let start = bytes
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(bytes.len());
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
        if memchr::memchr(b'#', &bytes[start..end]).is_some() {
            flags |= FRAGMENT;
        }
        end + 1
    } else {
        match memchr::memchr(b'\n', bytes) {
            Some(i) => i + 1,
            None => return 0,
        }
    };
    while pos < bytes.len() {
        let line = &bytes[pos..];
        if line[0] == b'\r' || line[0] == b'\n' {
            break; // the blank line: end of the head
        }
        if starts_with_ignore_case(line, b"content-length:") {
            flags |= CONTENT_LENGTH;
        } else if starts_with_ignore_case(line, b"transfer-encoding:") {
            flags |= TRANSFER_ENCODING;
        }
        match memchr::memchr(b'\n', line) {
            Some(i) => pos += i + 1,
            None => break,
        }
    }
    flags
}

fn starts_with_ignore_case(line: &[u8], name: &[u8]) -> bool {
    line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_per_head() {
        let cases: &[(&[u8], bool, u8)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true, 0),
            (b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", true, FRAGMENT),
            (b"\r\nGET /a#b HTTP/1.1\r\n\r\n", true, FRAGMENT),
            (b"GET / HTTP/1.1\r\nX-A: #\r\n\r\n", true, 0),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                true,
                CONTENT_LENGTH | TRANSFER_ENCODING,
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 5\r\n\r\n",
                true,
                CONTENT_LENGTH | TRANSFER_ENCODING,
            ),
            // A body after the blank line is not looked at.
            (
                b"POST / HTTP/1.1\r\nContent-Length: 20\r\n\r\nTransfer-Encoding: x\r\n",
                true,
                CONTENT_LENGTH,
            ),
            // Header values naming the headers do not count.
            (b"GET / HTTP/1.1\r\nX: content-length: 1\r\n\r\n", true, 0),
            // A continuation read skips its partial first line.
            (
                b"ngth: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                TRANSFER_ENCODING,
            ),
            (b"partial line without end", false, 0),
            (b"", true, 0),
            (b"GET / HTTP/1.1", true, 0),
        ];
        for (bytes, starts, want) in cases {
            assert_eq!(
                scan(bytes, *starts),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
