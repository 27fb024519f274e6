//! Refusing TLS 1.2 renegotiation the way BoringSSL (Envoy) does: the connection ends.
//!
//! rustls never renegotiates, but it answers a client's renegotiation ClientHello with a
//! warning alert and carries on. Envoy's servers end such a connection, and a gateway
//! should not let a client make it parse handshakes forever. Record headers stay in clear
//! text in TLS 1.2, so this wrapper, placed under the TLS stream, follows the record
//! boundaries of what the client sends and fails the read when a handshake record
//! arrives after the handshake completed. TLS 1.3 has no renegotiation; the wrapper then
//! steps aside.
use crate::tls::stats::TlsStats;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const CONTENT_HANDSHAKE: u8 = 22;
const HEADER: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// During the handshake: records are followed, nothing is refused.
    Following,
    /// After a TLS 1.2 handshake: a handshake record ends the connection.
    Armed,
    /// TLS 1.3 (or disarmed): bytes pass untouched.
    Off,
}

/// A stream under a server-side TLS session that ends the connection on a TLS 1.2
/// renegotiation attempt (counted as `tls.renegotiation_refused`).
#[derive(Debug)]
pub struct RenegotiationGuard<S> {
    inner: S,
    mode: Mode,
    header: [u8; HEADER],
    have: usize,
    remaining: usize,
    stats: Arc<TlsStats>,
    peer: Option<SocketAddr>,
}

impl<S> RenegotiationGuard<S> {
    pub fn new(inner: S, stats: Arc<TlsStats>, peer: Option<SocketAddr>) -> RenegotiationGuard<S> {
        RenegotiationGuard {
            inner,
            mode: Mode::Following,
            header: [0; HEADER],
            have: 0,
            remaining: 0,
            stats,
            peer,
        }
    }

    /// Called once the handshake completed: TLS 1.2 arms the guard, anything else turns
    /// it off.
    pub fn handshake_done(&mut self, tls12: bool) {
        self.mode = if tls12 { Mode::Armed } else { Mode::Off };
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Follows record boundaries through `data`; true if a refused record starts in it.
    fn scan(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (HEADER - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == HEADER {
                self.have = 0;
                self.remaining = u16::from_be_bytes([self.header[3], self.header[4]]) as usize;
                if self.mode == Mode::Armed && self.header[0] == CONTENT_HANDSHAKE {
                    return true;
                }
            }
        }
        false
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RenegotiationGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.mode == Mode::Off || !matches!(polled, Poll::Ready(Ok(()))) {
            return polled;
        }
        let this = &mut *self;
        if this.scan(&buf.filled()[before..]) {
            buf.set_filled(before);
            TlsStats::bump(&this.stats.renegotiation_refused);
            tracing::debug!(peer = ?this.peer, "TLS 1.2 renegotiation attempt refused; closing the connection");
            this.mode = Mode::Off;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS renegotiation is not supported",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RenegotiationGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ty: u8, len: usize) -> Vec<u8> {
        let mut r = vec![ty, 3, 3, (len >> 8) as u8, len as u8];
        r.extend(std::iter::repeat_n(0xAA, len));
        r
    }

    #[test]
    fn follows_records_split_anywhere() {
        let mut stream = Vec::new();
        stream.extend(record(22, 300)); // handshake
        stream.extend(record(20, 1)); // change cipher spec
        stream.extend(record(22, 40)); // encrypted Finished
        let after_handshake = stream.len();
        stream.extend(record(23, 1000)); // application data, contains 22 bytes inside
        stream.extend(record(23, 5));
        let reneg_at = stream.len();
        stream.extend(record(22, 200)); // renegotiation
        for chunk in [1usize, 3, 5, 7, 64, 4096] {
            let mut g = RenegotiationGuard::new((), Arc::default(), None);
            let mut refused_at = None;
            let mut pos = 0;
            while pos < stream.len() {
                if pos >= after_handshake && g.mode == Mode::Following {
                    g.handshake_done(true);
                }
                let end = (pos + chunk).min(stream.len());
                // Feed chunks that never straddle the handshake end, as a real read of
                // the client's flight would not.
                let end = if pos < after_handshake {
                    end.min(after_handshake)
                } else {
                    end
                };
                if g.scan(&stream[pos..end]) {
                    refused_at = Some(pos);
                    break;
                }
                pos = end;
            }
            let at = refused_at.expect("renegotiation refused");
            assert!(
                at <= reneg_at + HEADER && at + chunk > reneg_at,
                "chunk {chunk}: {at}"
            );
        }
        // TLS 1.3: never refused.
        let mut g = RenegotiationGuard::new((), Arc::default(), None);
        g.handshake_done(false);
        assert_eq!(g.mode, Mode::Off);
    }
}
