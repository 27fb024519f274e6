//! The wire side of the ADS and SDS services: discovery responses written straight from
//! shared snapshot entries, each into one buffer of exactly its size.
//!
//! A response holds `Arc<Entry>`s, not copies of the resources, and is encoded only when
//! the connection asks for the stream's next frame; the buffer is freed once written to
//! the socket. (Generated gRPC servers need an owned `Any` copy of every resource in
//! every response, and encode into a per-stream buffer that grows to the largest message
//! sent and keeps that size for the stream's life: a route configuration of a large mesh,
//! times every connected proxy.) The bytes written are those of the protobuf messages
//! `DiscoveryResponse` and `DeltaDiscoveryResponse`, fields in tag order (as prost writes
//! them, which the tests compare byte for byte).
use super::snapshot::Entry;
use crate::xds::TypeUrl;
use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tonic::Status;

/// A response message the stream body can frame.
pub(crate) trait WireMessage: Send + 'static {
    /// Length of the encoded message.
    fn encoded_len(&self) -> usize;
    /// Appends the encoded message (exactly `encoded_len` bytes).
    fn encode_raw(&self, buf: &mut Out);
}

/// Resources at least this large are not copied into a response: the frame refers to
/// the snapshot's bytes (a route table of a thousand hosts, pushed to every proxy).
const SHARED_MIN: usize = 16 * 1024;

/// An encoded message as a list of pieces: small fields are copied together, large
/// resources are shared.
pub(crate) struct Out {
    cur: BytesMut,
    pieces: Vec<Bytes>,
}

impl Out {
    fn with_capacity(n: usize) -> Out {
        Out {
            cur: BytesMut::with_capacity(n),
            pieces: Vec::new(),
        }
    }

    fn put_slice(&mut self, b: &[u8]) {
        self.cur.put_slice(b);
    }

    fn put_bytes(&mut self, b: &Bytes) {
        if b.len() < SHARED_MIN {
            self.cur.put_slice(b);
        } else {
            if !self.cur.is_empty() {
                self.pieces.push(self.cur.split().freeze());
            }
            self.pieces.push(b.clone());
        }
    }

    fn finish(mut self) -> Vec<Bytes> {
        if !self.cur.is_empty() {
            self.pieces.push(self.cur.freeze());
        }
        self.pieces
    }
}

fn len_delimited(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A singular string field (proto3: omitted when empty).
fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        len_delimited(tag, s.len())
    }
}

fn put_header(tag: u32, len: usize, buf: &mut Out) {
    encode_key(tag, WireType::LengthDelimited, &mut buf.cur);
    encode_varint(len as u64, &mut buf.cur);
}

fn put_str(tag: u32, s: &str, buf: &mut Out) {
    if !s.is_empty() {
        put_header(tag, s.len(), buf);
        buf.put_slice(s.as_bytes());
    }
}

/// Length of the entry packed as a `google.protobuf.Any`.
fn any_len(e: &Entry) -> usize {
    str_len(1, e.ty.as_str())
        + if e.value.is_empty() {
            0
        } else {
            len_delimited(2, e.value.len())
        }
}

fn put_any(tag: u32, e: &Entry, buf: &mut Out) {
    put_header(tag, any_len(e), buf);
    put_str(1, e.ty.as_str(), buf);
    if !e.value.is_empty() {
        put_header(2, e.value.len(), buf);
        buf.put_bytes(&e.value);
    }
}

/// Length of the entry as a delta `Resource` (name, version, resource).
pub(crate) fn resource_len(e: &Entry) -> usize {
    str_len(3, &e.name) + str_len(1, e.version()) + len_delimited(2, any_len(e))
}

fn put_resource(tag: u32, e: &Entry, buf: &mut Out) {
    put_header(tag, resource_len(e), buf);
    put_str(1, e.version(), buf);
    put_any(2, e, buf);
    put_str(3, &e.name, buf);
}

/// `control_plane` (a `ControlPlane` message holding the identifier).
fn control_plane_len(tag: u32, identifier: &str) -> usize {
    len_delimited(tag, str_len(1, identifier))
}

fn put_control_plane(tag: u32, identifier: &str, buf: &mut Out) {
    put_header(tag, str_len(1, identifier), buf);
    put_str(1, identifier, buf);
}

/// A state-of-the-world `DiscoveryResponse`.
#[derive(Debug)]
pub(crate) struct SotwResponse {
    pub version_info: String,
    pub resources: Vec<Arc<Entry>>,
    pub type_url: TypeUrl,
    pub nonce: String,
    pub control_plane: Arc<str>,
}

impl WireMessage for SotwResponse {
    fn encoded_len(&self) -> usize {
        str_len(1, &self.version_info)
            + self
                .resources
                .iter()
                .map(|e| len_delimited(2, any_len(e)))
                .sum::<usize>()
            + str_len(4, self.type_url.as_str())
            + str_len(5, &self.nonce)
            + control_plane_len(6, &self.control_plane)
    }

    fn encode_raw(&self, buf: &mut Out) {
        put_str(1, &self.version_info, buf);
        for e in &self.resources {
            put_any(2, e, buf);
        }
        put_str(4, self.type_url.as_str(), buf);
        put_str(5, &self.nonce, buf);
        put_control_plane(6, &self.control_plane, buf);
    }
}

/// An incremental `DeltaDiscoveryResponse`.
#[derive(Debug)]
pub(crate) struct DeltaResponse {
    pub system_version_info: String,
    pub resources: Vec<Arc<Entry>>,
    pub type_url: TypeUrl,
    pub removed_resources: Vec<String>,
    pub nonce: String,
    pub control_plane: Arc<str>,
}

impl WireMessage for DeltaResponse {
    fn encoded_len(&self) -> usize {
        str_len(1, &self.system_version_info)
            + self
                .resources
                .iter()
                .map(|e| len_delimited(2, resource_len(e)))
                .sum::<usize>()
            + str_len(4, self.type_url.as_str())
            + self
                .removed_resources
                .iter()
                .map(|n| len_delimited(6, n.len()))
                .sum::<usize>()
            + str_len(5, &self.nonce)
            + control_plane_len(7, &self.control_plane)
    }

    fn encode_raw(&self, buf: &mut Out) {
        put_str(1, &self.system_version_info, buf);
        for e in &self.resources {
            put_resource(2, e, buf);
        }
        put_str(4, self.type_url.as_str(), buf);
        put_str(5, &self.nonce, buf);
        for n in &self.removed_resources {
            // Repeated strings are written even when empty.
            put_header(6, n.len(), buf);
            buf.put_slice(n.as_bytes());
        }
        put_control_plane(7, &self.control_plane, buf);
    }
}

/// Length of the gRPC message prefix (compressed flag and length).
const GRPC_HEADER: usize = 5;

/// One gRPC message frame: the uncompressed flag, the length and the message, in
/// pieces (see `Out`).
pub(crate) fn frame_pieces<M: WireMessage>(m: &M, max: usize) -> Result<Vec<Bytes>, Status> {
    let len = m.encoded_len();
    if len > max || len > u32::MAX as usize {
        return Err(Status::out_of_range(format!(
            "response of {len} bytes is larger than the limit of {max} bytes"
        )));
    }
    let mut out = Out::with_capacity((GRPC_HEADER + len).min(64 * 1024));
    out.cur.put_u8(0);
    out.cur.put_u32(len as u32);
    m.encode_raw(&mut out);
    let pieces = out.finish();
    debug_assert_eq!(
        pieces.iter().map(Bytes::len).sum::<usize>(),
        GRPC_HEADER + len
    );
    Ok(pieces)
}

/// The frame in one buffer.
#[cfg(test)]
pub(crate) fn frame<M: WireMessage>(m: &M, max: usize) -> Result<Bytes, Status> {
    Ok(frame_pieces(m, max)?.concat().into())
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        headers.clear();
        let _ = Status::internal("invalid status").add_header(&mut headers);
    }
    headers
}

/// The body of a streaming response: frames the stream task's responses as the
/// connection asks for them, and ends with the stream's status in the trailers.
pub(crate) struct ResponseBody<M> {
    rx: mpsc::Receiver<Result<M, Status>>,
    max_message_size: usize,
    /// The rest of the message being sent.
    pending: std::collections::VecDeque<Bytes>,
    done: bool,
}

impl<M> ResponseBody<M> {
    pub fn new(rx: mpsc::Receiver<Result<M, Status>>, max_message_size: usize) -> Self {
        ResponseBody {
            rx,
            max_message_size,
            pending: std::collections::VecDeque::new(),
            done: false,
        }
    }
}

impl<M: WireMessage> http_body::Body for ResponseBody<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(piece) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(this.rx.poll_recv(cx)) {
            Some(Ok(m)) => match frame_pieces(&m, this.max_message_size) {
                Ok(pieces) => {
                    this.pending.extend(pieces);
                    let first = this.pending.pop_front().unwrap_or_default();
                    return Poll::Ready(Some(Ok(Frame::data(first))));
                }
                Err(status) => status,
            },
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        // The stream ends here: the receiver closes, so the stream task sees it.
        this.done = true;
        this.rx.close();
        Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controlplane::sample::{SampleGateway, SampleService};
    use crate::controlplane::snapshot::{Interner, Snapshot};
    use crate::xds::ProxyIdentity;
    use crate::xds::pb::envoy::config::core::v3::ControlPlane as ControlPlaneId;
    use crate::xds::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource,
    };
    use prost::Message;

    fn snapshot() -> Snapshot {
        let g = SampleGateway::new(
            8080,
            (0..3)
                .map(|i| {
                    SampleService::new(
                        &format!("s{i}"),
                        vec![std::net::SocketAddr::from(([127, 0, 0, 1], 9000 + i))],
                    )
                })
                .collect(),
        );
        Snapshot::build(
            ProxyIdentity::default(),
            &g.resources(),
            1,
            None,
            &Interner::default(),
        )
        .unwrap()
    }

    fn body(bytes: &Bytes) -> &[u8] {
        assert_eq!(bytes[0], 0, "uncompressed");
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len, bytes.len() - GRPC_HEADER);
        &bytes[GRPC_HEADER..]
    }

    /// Byte for byte what prost writes for the same message.
    #[test]
    fn sotw_response_is_the_protobuf_message() {
        let snap = snapshot();
        for (t, version, nonce) in [
            (TypeUrl::Cluster, "0123456789abcdef", "n-1"),
            (TypeUrl::Route, "", ""),
            (TypeUrl::Secret, "v", "n"),
        ] {
            let entries = snap.of(t).entries().to_vec();
            let ours = SotwResponse {
                version_info: version.into(),
                resources: entries.clone(),
                type_url: t,
                nonce: nonce.into(),
                control_plane: Arc::from("meshgate test"),
            };
            let theirs = DiscoveryResponse {
                version_info: version.into(),
                resources: entries.iter().map(|e| e.any()).collect(),
                type_url: t.as_str().into(),
                nonce: nonce.into(),
                control_plane: Some(ControlPlaneId {
                    identifier: "meshgate test".into(),
                }),
                ..Default::default()
            };
            let bytes = frame(&ours, usize::MAX).unwrap();
            assert_eq!(body(&bytes), theirs.encode_to_vec().as_slice(), "{t:?}");
            assert_eq!(DiscoveryResponse::decode(body(&bytes)).unwrap(), theirs);
        }
    }

    #[test]
    fn delta_response_is_the_protobuf_message() {
        let snap = snapshot();
        for (t, removed) in [
            (TypeUrl::Cluster, vec![]),
            (TypeUrl::Endpoint, vec!["gone".to_string(), String::new()]),
            (TypeUrl::Secret, vec!["x".to_string()]),
        ] {
            let entries = snap.of(t).entries().to_vec();
            let ours = DeltaResponse {
                system_version_info: "abc".into(),
                resources: entries.clone(),
                type_url: t,
                removed_resources: removed.clone(),
                nonce: "n-7".into(),
                control_plane: Arc::from("cp"),
            };
            let theirs = DeltaDiscoveryResponse {
                system_version_info: "abc".into(),
                resources: entries
                    .iter()
                    .map(|e| Resource {
                        name: e.name.to_string(),
                        version: e.version().to_string(),
                        resource: Some(e.any()),
                        ..Default::default()
                    })
                    .collect(),
                type_url: t.as_str().into(),
                removed_resources: removed,
                nonce: "n-7".into(),
                control_plane: Some(ControlPlaneId {
                    identifier: "cp".into(),
                }),
                ..Default::default()
            };
            let bytes = frame(&ours, usize::MAX).unwrap();
            assert_eq!(body(&bytes), theirs.encode_to_vec().as_slice(), "{t:?}");
        }
    }

    #[test]
    fn large_resources_are_framed_by_reference() {
        let g = SampleGateway::new(
            8080,
            (0..400)
                .map(|i| {
                    SampleService::new(
                        &format!("service-{i}"),
                        vec![std::net::SocketAddr::from(([127, 0, 0, 1], 9000))],
                    )
                })
                .collect(),
        );
        let snap = Snapshot::build(
            ProxyIdentity::default(),
            &g.resources(),
            1,
            None,
            &Interner::default(),
        )
        .unwrap();
        let routes = snap.of(TypeUrl::Route).entries().to_vec();
        assert!(
            routes[0].value.len() >= SHARED_MIN,
            "{}",
            routes[0].value.len()
        );
        let ours = SotwResponse {
            version_info: "1".into(),
            resources: routes.clone(),
            type_url: TypeUrl::Route,
            nonce: "n".into(),
            control_plane: Arc::from("cp"),
        };
        let pieces = frame_pieces(&ours, usize::MAX).unwrap();
        assert!(
            pieces
                .iter()
                .any(|p| p.as_ptr() == routes[0].value.as_ptr() && p.len() == routes[0].value.len()),
            "the route table was copied"
        );
        let theirs = DiscoveryResponse {
            version_info: "1".into(),
            resources: routes.iter().map(|e| e.any()).collect(),
            type_url: TypeUrl::Route.as_str().into(),
            nonce: "n".into(),
            control_plane: Some(ControlPlaneId {
                identifier: "cp".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            body(&pieces.concat().into()),
            theirs.encode_to_vec().as_slice()
        );
        // The body hands the pieces out in order and then the status.
        let (tx, rx) = mpsc::channel(1);
        tx.try_send(Ok(ours)).unwrap();
        drop(tx);
        let mut b = ResponseBody::new(rx, usize::MAX);
        let mut got = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            use http_body_util::BodyExt;
            while let Some(f) = b.frame().await {
                match f.unwrap().into_data() {
                    Ok(d) => got.extend_from_slice(&d),
                    Err(t) => assert_eq!(t.into_trailers().unwrap()["grpc-status"], "0"),
                }
            }
        });
        assert_eq!(got, pieces.concat());
    }

    #[test]
    fn oversized_responses_are_refused() {
        let snap = snapshot();
        let resp = SotwResponse {
            version_info: String::new(),
            resources: snap.of(TypeUrl::Cluster).entries().to_vec(),
            type_url: TypeUrl::Cluster,
            nonce: String::new(),
            control_plane: Arc::from(""),
        };
        let len = resp.encoded_len();
        assert!(frame(&resp, len).is_ok());
        let err = frame(&resp, len - 1).unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange);
    }

    #[tokio::test]
    async fn the_body_frames_responses_and_ends_with_the_status() {
        use http_body::Body as _;
        use http_body_util::BodyExt;
        let (tx, rx) = mpsc::channel(4);
        let mut b = ResponseBody::<SotwResponse>::new(rx, usize::MAX);
        tx.send(Ok(SotwResponse {
            version_info: "1".into(),
            resources: Vec::new(),
            type_url: TypeUrl::Listener,
            nonce: "n".into(),
            control_plane: Arc::from(""),
        }))
        .await
        .unwrap();
        tx.send(Err(Status::invalid_argument("bad"))).await.unwrap();
        let f = b.frame().await.unwrap().unwrap();
        let data = f.into_data().unwrap();
        let r = DiscoveryResponse::decode(body(&data)).unwrap();
        assert_eq!((r.version_info.as_str(), r.nonce.as_str()), ("1", "n"));
        let t = b.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(t["grpc-status"], "3");
        assert_eq!(t["grpc-message"], "bad");
        assert!(b.is_end_stream() && b.frame().await.is_none());
        // The stream task sees the end.
        assert!(tx.is_closed());

        let (tx, rx) = mpsc::channel::<Result<SotwResponse, Status>>(1);
        let mut b = ResponseBody::new(rx, usize::MAX);
        drop(tx);
        let t = b.frame().await.unwrap().unwrap().into_trailers().unwrap();
        assert_eq!(t["grpc-status"], "0");
    }
}

/// The requests of one stream, decoded from the request body's gRPC frames.
///
/// The frames received so far are kept as they came (no copy, and nothing reserved for
/// the announced length: many streams may each be part-way through a large message at
/// once, a SotW ACK naming thousands of clusters), and the message is decoded from them
/// once complete. (tonic's `Streaming` keeps a per-stream buffer as large as the largest
/// message received, on every connected proxy, for the stream's whole life.)
pub(crate) struct RequestStream<T> {
    body: tonic::body::Body,
    chunks: Chunks,
    max_message_size: usize,
    _message: std::marker::PhantomData<fn() -> T>,
}

/// Received bytes not yet consumed, as a list of chunks.
#[derive(Default)]
struct Chunks {
    list: std::collections::VecDeque<Bytes>,
    len: usize,
}

impl Chunks {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.list.push_back(b);
        }
    }

    /// The first `N` bytes, if there are that many.
    fn peek<const N: usize>(&self) -> Option<[u8; N]> {
        if self.len < N {
            return None;
        }
        let mut out = [0u8; N];
        let mut at = 0;
        for c in &self.list {
            let n = (N - at).min(c.len());
            out[at..at + n].copy_from_slice(&c[..n]);
            at += n;
            if at == N {
                break;
            }
        }
        Some(out)
    }

    /// The next `n` bytes (there must be that many), as a `Buf` over the chunks.
    fn split_front(&mut self, n: usize) -> Chunks {
        let mut out = Chunks::default();
        while out.len < n {
            let front = self.list.front_mut().expect("enough bytes");
            let want = n - out.len;
            if front.len() <= want {
                let c = self.list.pop_front().expect("a front chunk");
                self.len -= c.len();
                out.push(c);
            } else {
                self.len -= want;
                out.push(front.split_to(want));
            }
        }
        out
    }
}

impl bytes::Buf for Chunks {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.list.front().map(|b| &b[..]).unwrap_or_default()
    }

    fn advance(&mut self, mut cnt: usize) {
        while cnt > 0 {
            let front = self.list.front_mut().expect("advance within remaining");
            if front.len() <= cnt {
                cnt -= front.len();
                self.len -= front.len();
                self.list.pop_front();
            } else {
                front.advance(cnt);
                self.len -= cnt;
                cnt = 0;
            }
        }
    }
}

impl<T: prost::Message + Default> RequestStream<T> {
    pub fn new(body: tonic::body::Body, max_message_size: usize) -> RequestStream<T> {
        RequestStream {
            body,
            chunks: Chunks::default(),
            max_message_size,
            _message: std::marker::PhantomData,
        }
    }

    /// The next request; `Ok(None)` when the client ended its side of the stream.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        use bytes::Buf;
        use http_body_util::BodyExt;
        loop {
            if let Some([flag, a, b, c, d]) = self.chunks.peek::<5>() {
                if flag != 0 {
                    return Err(Status::internal(
                        "protocol error: received a compressed message but no grpc-encoding was negotiated",
                    ));
                }
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if len > self.max_message_size {
                    return Err(Status::out_of_range(format!(
                        "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                        self.max_message_size
                    )));
                }
                if self.chunks.len >= 5 + len {
                    self.chunks.advance(5);
                    let message = self.chunks.split_front(len);
                    return T::decode(message).map(Some).map_err(|e| {
                        Status::internal(format!("failed to decode the request: {e}"))
                    });
                }
            }
            match self.body.frame().await {
                None if self.chunks.len == 0 => return Ok(None),
                None => {
                    return Err(Status::internal(
                        "the request stream ended in the middle of a message",
                    ));
                }
                Some(Err(status)) => return Err(status),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.chunks.push(data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod request_stream_tests {
    use super::*;
    use crate::xds::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use prost::Message;

    fn framed(m: &DeltaDiscoveryRequest) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn body_of(chunks: Vec<Vec<u8>>) -> tonic::body::Body {
        let frames = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, Status>(Frame::data(Bytes::from(c)))),
        );
        tonic::body::Body::new(http_body_util::StreamBody::new(frames))
    }

    #[tokio::test]
    async fn messages_split_across_frames_decode_and_nothing_is_kept() {
        let big = DeltaDiscoveryRequest {
            type_url: "t".into(),
            resource_names_subscribe: (0..5000)
                .map(|i| format!("outbound|80|v1|svc-{i}"))
                .collect(),
            ..Default::default()
        };
        let small = DeltaDiscoveryRequest {
            response_nonce: "n".into(),
            ..Default::default()
        };
        let mut bytes = framed(&big);
        bytes.extend(framed(&small));
        // Cut into odd pieces, a header split included.
        let chunks: Vec<Vec<u8>> = bytes.chunks(7777).map(<[u8]>::to_vec).collect();
        let mut s = RequestStream::<DeltaDiscoveryRequest>::new(body_of(chunks), 4 << 20);
        assert_eq!(s.message().await.unwrap().unwrap(), big);
        assert_eq!(s.message().await.unwrap().unwrap(), small);
        assert!(s.chunks.list.is_empty() && s.chunks.len == 0);
        assert!(s.message().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_compressed_and_truncated_messages_are_refused() {
        let m = DeltaDiscoveryRequest {
            type_url: "x".repeat(100),
            ..Default::default()
        };
        let mut s = RequestStream::<DeltaDiscoveryRequest>::new(body_of(vec![framed(&m)]), 50);
        assert_eq!(
            s.message().await.unwrap_err().code(),
            tonic::Code::OutOfRange
        );
        let mut compressed = framed(&m);
        compressed[0] = 1;
        let mut s = RequestStream::<DeltaDiscoveryRequest>::new(body_of(vec![compressed]), 1 << 20);
        assert_eq!(s.message().await.unwrap_err().code(), tonic::Code::Internal);
        let mut cut = framed(&m);
        cut.truncate(20);
        let mut s = RequestStream::<DeltaDiscoveryRequest>::new(body_of(vec![cut]), 1 << 20);
        assert_eq!(s.message().await.unwrap_err().code(), tonic::Code::Internal);
    }
}
