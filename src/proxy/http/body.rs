//! Body types: what goes upstream (streamed, or buffered for replay by retries and
//! mirrors) and what goes back downstream (local answers, or the upstream's body with a
//! completion hook that returns the connection to its pool and finishes the log line).
use crate::proxy::http::router::{Finish, UpstreamDone};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// Errors carried by proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// When a stream last moved (request body bytes in), for the stream idle timeout. Made
/// only for streams with an idle timeout: streams without one pay nothing.
#[derive(Debug)]
pub struct StreamActivity {
    start: tokio::time::Instant,
    /// Milliseconds after `start` of the last activity.
    last_ms: AtomicU64,
    /// The whole request has been received.
    request_complete: AtomicBool,
}

impl StreamActivity {
    pub fn new(request_complete: bool) -> StreamActivity {
        StreamActivity {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            request_complete: AtomicBool::new(request_complete),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn complete(&self) {
        self.request_complete.store(true, Ordering::Relaxed);
    }

    pub fn request_complete(&self) -> bool {
        self.request_complete.load(Ordering::Relaxed)
    }

    /// Resolves once nothing has moved for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Notes a polled request-body frame.
    fn saw<T, E>(&self, polled: &Poll<Option<Result<T, E>>>, ended: bool) {
        match polled {
            Poll::Ready(Some(Ok(_))) => {
                self.touch();
                if ended {
                    self.complete();
                }
            }
            Poll::Ready(None) => self.complete(),
            _ => {}
        }
    }
}

/// A request body sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    Empty,
    /// The downstream body, streamed (noting activity for the stream idle timeout).
    Stream(Incoming, Option<Arc<StreamActivity>>),
    /// A whole body held in memory (replayable).
    Full(Option<Bytes>),
    /// What was buffered before the limit was hit, then the rest of the stream.
    Prefixed(Option<Bytes>, Incoming, Option<Arc<StreamActivity>>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Stream(inc, activity) | RequestBody::Prefixed(None, inc, activity) => {
                let polled = Pin::new(&mut *inc).poll_frame(cx);
                if let Some(a) = activity {
                    a.saw(&polled, inc.is_end_stream());
                }
                polled.map_err(Into::into)
            }
            RequestBody::Prefixed(prefix, ..) => {
                Poll::Ready(prefix.take().map(|b| Ok(Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(b) => b.is_none(),
            RequestBody::Stream(inc, _) => inc.is_end_stream(),
            RequestBody::Prefixed(p, inc, _) => p.is_none() && inc.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::Stream(inc, _) => inc.size_hint(),
            RequestBody::Prefixed(p, inc, _) => {
                let extra = p.as_ref().map_or(0, |b| b.len() as u64);
                let h = inc.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + extra);
                if let Some(u) = h.upper() {
                    out.set_upper(u + extra);
                }
                out
            }
        }
    }
}

/// Reads up to `limit` bytes of a body. `Ok(Full)` if it ended within the limit,
/// otherwise the prefix read so far and the remaining stream.
pub async fn buffer_up_to(
    mut body: Incoming,
    limit: usize,
    activity: Option<Arc<StreamActivity>>,
) -> Result<RequestBody, hyper::Error> {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    loop {
        if buf.len() > limit {
            return Ok(RequestBody::Prefixed(Some(buf.freeze()), body, activity));
        }
        match body.frame().await {
            None => {
                if let Some(a) = &activity {
                    a.complete();
                }
                return Ok(RequestBody::Full(Some(buf.freeze())));
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(f)) => {
                if let Some(a) = &activity {
                    a.touch();
                }
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
        }
    }
}

/// A response body sent downstream. When it ends (or is dropped unfinished) it returns
/// the upstream connection to its pool, then completes the request's stats and log line.
pub struct ResponseBody {
    inner: Inner,
    bytes: u64,
    /// The route timeout, which covers the whole upstream response (as Envoy's): when it
    /// fires while the body is still streaming, the response is reset.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The stream idle timeout once the response has started: no body bytes for this
    /// long resets the response (Envoy's `SI`).
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    pub(crate) upstream_done: Option<UpstreamDone>,
    pub(crate) finish: Option<Finish>,
}

enum Inner {
    Full(Option<Bytes>),
    Upstream(Incoming),
}

impl ResponseBody {
    pub fn empty() -> ResponseBody {
        ResponseBody {
            inner: Inner::Full(None),
            bytes: 0,
            deadline: None,
            idle: None,
            upstream_done: None,
            finish: None,
        }
    }

    pub fn full(b: Bytes) -> ResponseBody {
        let inner = if b.is_empty() {
            Inner::Full(None)
        } else {
            Inner::Full(Some(b))
        };
        ResponseBody {
            inner,
            bytes: 0,
            deadline: None,
            idle: None,
            upstream_done: None,
            finish: None,
        }
    }

    pub fn upstream(b: Incoming) -> ResponseBody {
        ResponseBody {
            inner: Inner::Upstream(b),
            bytes: 0,
            deadline: None,
            idle: None,
            upstream_done: None,
            finish: None,
        }
    }

    /// An answer the gateway made itself (not an upstream's body).
    pub fn is_local(&self) -> bool {
        matches!(self.inner, Inner::Full(_))
    }

    /// The body of a local answer not yet sent.
    pub fn local_bytes(&self) -> Option<&Bytes> {
        match &self.inner {
            Inner::Full(b) => b.as_ref(),
            Inner::Upstream(_) => None,
        }
    }

    /// Resets the response if it has not been received whole by `at`.
    pub fn with_deadline(mut self, at: Option<tokio::time::Instant>) -> ResponseBody {
        self.deadline = at.map(|at| Box::pin(tokio::time::sleep_until(at)));
        self
    }

    /// Resets the response if its body makes no progress for `timeout`.
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> ResponseBody {
        self.idle = timeout.map(|t| (t, Box::pin(tokio::time::sleep(t))));
        self
    }

    fn finish(&mut self, complete: bool) {
        if let Some(mut u) = self.upstream_done.take() {
            u.done(complete);
        }
        if let Some(mut f) = self.finish.take() {
            f.done(complete, self.bytes);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // The codec does not poll a body that says it has ended (an empty local reply,
        // a zero-length upstream body): such a body was sent whole.
        let complete = self.is_end_stream();
        self.finish(complete);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(inc) => Pin::new(inc).poll_frame(cx).map_err(BoxError::from),
        };
        if polled.is_pending()
            && let Some(d) = &mut this.deadline
            && d.as_mut().poll(cx).is_ready()
        {
            this.deadline = None;
            if let Some(u) = &this.upstream_done {
                u.timed_out();
            }
            if let Some(f) = &mut this.finish {
                f.timed_out();
            }
            this.finish(false);
            return Poll::Ready(Some(Err("upstream response timeout".into())));
        }
        if let Some((timeout, sleep)) = &mut this.idle {
            if polled.is_pending() {
                if sleep.as_mut().poll(cx).is_ready() {
                    this.idle = None;
                    if let Some(f) = &mut this.finish {
                        f.stream_idle_timed_out();
                    }
                    this.finish(false);
                    return Poll::Ready(Some(Err("stream idle timeout".into())));
                }
            } else {
                let at = tokio::time::Instant::now() + *timeout;
                sleep.as_mut().reset(at);
            }
        }
        match &polled {
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(inc) => inc.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(inc) => inc.size_hint(),
        }
    }
}
