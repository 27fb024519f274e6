//! The fault filter (envoy.extensions.filters.http.fault.v3.HTTPFault): delays and aborts
//! injected for a percentage of requests, configured on the filter or per route.
use crate::proxy::compile::{CompileError, Cx, duration, fields};
use crate::proxy::http::body::ResponseBody;
use crate::proxy::http::filter::{HttpFilter, RequestCx, Step, Verdict};
use crate::proxy::http::filters::BuildCx;
use crate::proxy::http::local_reply::{self, Flags, LocalReply};
use crate::proxy::route::matcher::{HeaderMatch, RequestView, fraction_per_million};
use crate::xds::pb::envoy::extensions::filters::common::fault::v3 as common_pb;
use crate::xds::pb::envoy::extensions::filters::http::fault::v3 as fault_pb;
use crate::xds::pb::google::protobuf::Any;
use http::{Response, StatusCode};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;

/// A compiled fault configuration.
#[derive(Debug, Clone, Default)]
pub struct Fault {
    pub delay: Option<(Duration, u32)>,
    pub abort: Option<(FaultAbort, u32)>,
    pub headers: Vec<HeaderMatch>,
}

/// What an abort answers.
#[derive(Debug, Clone, Copy)]
pub enum FaultAbort {
    Http(u16),
    Grpc(u32),
}

impl Fault {
    pub(crate) fn compile(cx: &mut Cx, f: &fault_pb::HttpFault) -> Result<Fault, CompileError> {
        fields!(
            cx,
            f,
            fault_pb::HttpFault {
                supported: [delay, abort, headers],
                ignored: [disable_downstream_cluster_stats],
                unsupported: [
                    upstream_cluster,
                    downstream_nodes,
                    max_active_faults,
                    response_rate_limit,
                    delay_percent_runtime,
                    abort_percent_runtime,
                    delay_duration_runtime,
                    abort_http_status_runtime,
                    max_active_faults_runtime,
                    response_rate_limit_percent_runtime,
                    abort_grpc_status_runtime,
                    filter_metadata
                ],
            }
        );
        let delay = match &f.delay {
            None => None,
            Some(d) => Some(cx.at("delay", |cx| {
                fields!(
                    cx,
                    d,
                    common_pb::FaultDelay {
                        supported: [percentage, fault_delay_secifier],
                        ignored: [],
                        unsupported: [],
                    }
                );
                let dur = match &d.fault_delay_secifier {
                    Some(common_pb::fault_delay::FaultDelaySecifier::FixedDelay(p)) => {
                        duration(cx, "fixed_delay", &Some(*p))?.unwrap_or_default()
                    }
                    Some(common_pb::fault_delay::FaultDelaySecifier::HeaderDelay(_)) => {
                        return Err(cx.unsupported("header_delay"));
                    }
                    None => return Err(cx.err("fixed_delay", "required")),
                };
                Ok((
                    dur,
                    d.percentage.as_ref().map(fraction_per_million).unwrap_or(0),
                ))
            })?),
        };
        let abort = match &f.abort {
            None => None,
            Some(a) => Some(cx.at("abort", |cx| {
                fields!(
                    cx,
                    a,
                    fault_pb::FaultAbort {
                        supported: [percentage, error_type],
                        ignored: [],
                        unsupported: [response_body],
                    }
                );
                use fault_pb::fault_abort::ErrorType as E;
                let kind = match a.error_type {
                    Some(E::HttpStatus(s)) if (200..600).contains(&s) => FaultAbort::Http(s as u16),
                    Some(E::HttpStatus(s)) => {
                        return Err(cx.err("http_status", format!("{s} is not in [200, 600)")));
                    }
                    Some(E::GrpcStatus(s)) => FaultAbort::Grpc(s),
                    Some(E::HeaderAbort(_)) => return Err(cx.unsupported("header_abort")),
                    None => return Err(cx.err("http_status", "an error type is required")),
                };
                Ok((
                    kind,
                    a.percentage.as_ref().map(fraction_per_million).unwrap_or(0),
                ))
            })?),
        };
        let headers = f
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                cx.at(format_args!("headers[{i}]"), |cx| {
                    HeaderMatch::compile(cx, h)
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Fault {
            delay,
            abort,
            headers,
        })
    }

    /// Whether the fault applies to a request (its headers and pseudo-headers).
    pub fn applies(&self, req: &RequestView<'_>) -> bool {
        self.headers.iter().all(|h| h.matches(req))
    }
}

/// Draws whether an event with `per_million` probability happens.
pub fn roll(per_million: u32) -> bool {
    per_million >= 1_000_000
        || (per_million > 0 && rand::random_range(0..1_000_000u32) < per_million)
}

/// The filter's config type.
pub const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

/// The fault filter on the chain: the route's fault config if it has one, else the
/// filter's own.
#[derive(Debug)]
pub struct FaultFilter {
    name: Box<str>,
    filter_level: Option<Arc<Fault>>,
}

impl FaultFilter {
    pub(crate) fn build(
        cx: &mut Cx,
        b: &BuildCx<'_>,
        any: &Any,
    ) -> Result<Arc<dyn HttpFilter>, CompileError> {
        let fault = fault_pb::HttpFault::decode(any.value.as_slice())
            .map_err(|e| cx.err("typed_config", e.to_string()))?;
        let compiled = cx.at("typed_config", |cx| Fault::compile(cx, &fault))?;
        let empty = compiled.delay.is_none() && compiled.abort.is_none();
        Ok(Arc::new(FaultFilter {
            name: b.name.into(),
            filter_level: (!empty).then(|| Arc::new(compiled)),
        }))
    }
}

/// The answer of an abort.
fn abort_response(abort: FaultAbort) -> Response<ResponseBody> {
    match abort {
        FaultAbort::Http(s) => LocalReply::FAULT_ABORT.response_with_status(
            StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        ),
        FaultAbort::Grpc(code) => {
            // Other requests get the fault's answer with 200.
            let mut r = LocalReply::FAULT_ABORT.response_with_status(StatusCode::OK);
            r.extensions_mut().insert(local_reply::GrpcStatus(code));
            r
        }
    }
}

impl HttpFilter for FaultFilter {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx<'_>) -> Step<'a> {
        let fault = cx
            .route
            .and_then(|r| r.fault.as_deref())
            .or(self.filter_level.as_deref());
        let Some(fault) = fault else {
            return Step::CONTINUE;
        };
        if !fault.applies(&cx.request_view()) {
            return Step::CONTINUE;
        }
        let abort = fault.abort.filter(|(_, pm)| roll(*pm)).map(|(a, _)| a);
        let finish = move |cx: &mut RequestCx<'_>| match abort {
            Some(a) => {
                cx.log.flags.set(Flags::FI);
                Verdict::respond(abort_response(a))
            }
            None => Verdict::Continue,
        };
        match fault.delay {
            Some((delay, pm)) if roll(pm) => {
                cx.log.flags.set(Flags::DI);
                Step::Wait(Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    finish(cx)
                }))
            }
            _ => Step::Done(finish(cx)),
        }
    }
}
