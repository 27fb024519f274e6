//! The HTTP filter chain: every HTTP filter of a connection manager is one value behind
//! the [`HttpFilter`] trait, built from the listener's `http_filters` in order, with the
//! router implicit and last (Envoy's decoder/encoder filters).
//!
//! A request goes through each filter's [`HttpFilter::on_request`] in configured order
//! once its route is known (the route may be absent: filters run before the router's
//! "no route" answer, as in Envoy). A filter either lets the request continue, answers
//! it locally (a 403, a 429, an injected fault), or waits for something (an external
//! authorizer, a shared rate-limit counter) and then decides. Every answer, forwarded or
//! local, then goes through each filter's [`HttpFilter::on_response`] in reverse order.
//!
//! Filters keep what their response phase needs in [`RequestCx::state`], and share
//! facts about the request (a verified token's claims, an authorization decision) in
//! [`DynamicMetadata`], keyed by the filter's namespace as Envoy's dynamic metadata is.
use crate::proxy::access_log::RequestLog;
use crate::proxy::http::body::ResponseBody;
use crate::proxy::http::router::ConnCtx;
use crate::proxy::route::{RequestView, Route, VirtualHost};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// One HTTP filter, compiled from its `typed_config`. Filters are rebuilt with every
/// configuration snapshot; state that must outlive one (token buckets, key caches) lives
/// in the runtime and is looked up by the filter when it is built.
pub trait HttpFilter: Send + Sync + Debug {
    /// The filter's configured name (`http_filters[].name`): the key of its per-route
    /// config in `typed_per_filter_config`.
    fn name(&self) -> &str;

    /// The request phase. Most filters decide at once; a filter that must wait returns
    /// [`Step::Wait`] with the future that decides.
    fn on_request<'a>(&'a self, cx: &'a mut RequestCx<'_>) -> Step<'a>;

    /// The response phase, for every answer (forwarded or local), in reverse filter
    /// order. Headers only: bodies stream through untouched.
    fn on_response(&self, _cx: &mut ResponseCx<'_>) {}

    /// What this filter would decide about a request, for `meshgate explain`, with the
    /// same rules `on_request` applies; `None` when the filter cannot tell without
    /// serving it (the default).
    fn explain(&self, _input: &crate::proxy::rbac::Input<'_>) -> Option<FilterExplanation> {
        None
    }
}

/// A filter's decision about a request as [`HttpFilter::explain`] tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterExplanation {
    /// What the filter decided and why, in a sentence.
    pub summary: String,
    /// The local answer the filter would give: status and Envoy's response code details.
    pub answer: Option<(u16, String)>,
}

/// What a filter decided about a request.
pub enum Verdict {
    /// On to the next filter (the router after the last).
    Continue,
    /// Answer locally; later filters and the router do not see the request. The route's
    /// response headers are added to the answer, as Envoy adds them to local replies,
    /// unless the answer carries [`crate::proxy::http::local_reply::FilterEncoded`]
    /// (a filter encoding its own answer, as the CORS filter answers a preflight).
    Respond(Box<Response<ResponseBody>>),
}

impl Verdict {
    pub fn respond(resp: Response<ResponseBody>) -> Verdict {
        Verdict::Respond(Box::new(resp))
    }
}

/// A filter's request phase: decided, or a future that decides.
pub enum Step<'a> {
    Done(Verdict),
    Wait(Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>),
}

impl Step<'_> {
    pub const CONTINUE: Step<'static> = Step::Done(Verdict::Continue);

    pub fn respond(resp: Response<ResponseBody>) -> Step<'static> {
        Step::Done(Verdict::respond(resp))
    }
}

/// The request as a filter sees it.
pub struct RequestCx<'a> {
    pub req: &'a mut Request<Incoming>,
    /// `:authority` / `Host` after the connection manager's port stripping.
    pub authority: &'a HeaderValue,
    /// The downstream remote address as Envoy computes it: the connection's peer, or the
    /// client named by `x-forwarded-for` past `xff_num_trusted_hops` trusted proxies
    /// (RBAC `remote_ip`, client-IP rate limits). The peer itself is `conn.peer.remote`
    /// (RBAC `direct_remote_ip`).
    pub remote: std::net::IpAddr,
    pub vhost: Option<&'a VirtualHost>,
    pub route: Option<&'a Route>,
    /// The downstream connection: addresses, TLS session, runtime.
    pub conn: &'a ConnCtx,
    /// Response flags and details for the access log.
    pub log: &'a mut RequestLog,
    pub metadata: &'a mut DynamicMetadata,
    /// What this request's filters keep for their response phase.
    pub state: &'a mut http::Extensions,
}

impl RequestCx<'_> {
    /// The route's config for the filter named `name` (most specific of route, virtual
    /// host and route configuration), if any and of type `T`.
    pub fn per_route<T: Any + Send + Sync>(&self, name: &str) -> Option<&T> {
        self.route?.filter_config::<T>(name)
    }

    /// The request as route and header matchers see it.
    pub fn request_view(&self) -> RequestView<'_> {
        crate::proxy::http::router::request_view(self.req, self.authority, self.conn.peer.https)
    }
}

/// The answer as a filter sees it.
pub struct ResponseCx<'a> {
    pub resp: &'a mut Response<ResponseBody>,
    pub metadata: &'a DynamicMetadata,
    pub state: &'a mut http::Extensions,
}

/// Per-request facts filters share, by namespace (e.g. `envoy.filters.http.jwt_authn`),
/// each an object as Envoy's dynamic metadata `Struct`.
#[derive(Debug, Default)]
pub struct DynamicMetadata(BTreeMap<Box<str>, serde_json::Map<String, serde_json::Value>>);

impl DynamicMetadata {
    pub fn namespace(&self, ns: &str) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.0.get(ns)
    }

    /// The namespace's object, created empty if absent (Envoy merges a filter's writes
    /// into its namespace).
    pub fn namespace_mut(&mut self, ns: &str) -> &mut serde_json::Map<String, serde_json::Value> {
        if !self.0.contains_key(ns) {
            self.0.insert(ns.into(), serde_json::Map::new());
        }
        self.0.get_mut(ns).expect("inserted above")
    }

    /// The value at `path` inside namespace `ns` (Envoy's metadata matcher path).
    pub fn lookup(&self, ns: &str, path: &[impl AsRef<str>]) -> Option<&serde_json::Value> {
        let (first, rest) = path.split_first()?;
        let mut v = self.0.get(ns)?.get(first.as_ref())?;
        for k in rest {
            v = v.as_object()?.get(k.as_ref())?;
        }
        Some(v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A compiled per-route filter config, looked up by filter name.
pub type PerFilterConfig = Arc<dyn Any + Send + Sync>;

/// The per-route configs of one route, by filter name (sorted, few).
#[derive(Debug, Clone, Default)]
pub struct PerFilterConfigs(Arc<[(Box<str>, PerFilterConfigEntry)]>);

/// One named per-route config.
#[derive(Clone)]
pub struct PerFilterConfigEntry(pub PerFilterConfig);

impl Debug for PerFilterConfigEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PerFilterConfig")
    }
}

impl PerFilterConfigs {
    pub fn new(mut entries: Vec<(Box<str>, PerFilterConfig)>) -> PerFilterConfigs {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        PerFilterConfigs(
            entries
                .into_iter()
                .map(|(n, c)| (n, PerFilterConfigEntry(c)))
                .collect(),
        )
    }

    pub fn get<T: Any + Send + Sync>(&self, name: &str) -> Option<&T> {
        let i = self.0.binary_search_by(|e| (*e.0).cmp(name)).ok()?;
        self.0[i].1.0.downcast_ref::<T>()
    }

    /// `self` over `outer`: the more specific level wins per filter name.
    pub fn or(&self, outer: &PerFilterConfigs) -> PerFilterConfigs {
        if outer.0.is_empty() {
            return self.clone();
        }
        if self.0.is_empty() {
            return outer.clone();
        }
        let mut out: Vec<(Box<str>, PerFilterConfig)> = self
            .0
            .iter()
            .map(|(n, c)| (n.clone(), c.0.clone()))
            .collect();
        for (n, c) in outer.0.iter() {
            if !out.iter().any(|(m, _)| m == n) {
                out.push((n.clone(), c.0.clone()));
            }
        }
        PerFilterConfigs::new(out)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
