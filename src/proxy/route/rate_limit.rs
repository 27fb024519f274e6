//! Rate limit actions (`envoy.config.route.v3.RateLimit`) of routes, virtual hosts and
//! rate limit filters: what turns a request into rate limit descriptors, a list of
//! `(key, value)` entries per configured `RateLimit`. Both the local and the global rate
//! limit filters read them.
//!
//! As in Envoy, an action that cannot produce its entry (a missing header, a condition
//! that does not hold, absent metadata) drops the whole descriptor of its `RateLimit`.
use crate::proxy::compile::{CompileError, Cx, fields};
use crate::proxy::http::filter::DynamicMetadata;
use crate::proxy::route::matcher::{HeaderMatch, RequestView};
use crate::xds::pb::envoy::config::route::v3 as pb;
use http::HeaderName;
use prost::Message;
use std::net::IpAddr;

/// One descriptor entry.
pub type Entry = (Box<str>, Box<str>);

/// A descriptor: entries in action order.
pub type Descriptor = Vec<Entry>;

/// One compiled `RateLimit`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub stage: u32,
    pub actions: Vec<Action>,
}

/// One compiled action.
#[derive(Debug, Clone)]
pub enum Action {
    GenericKey {
        key: Box<str>,
        value: Box<str>,
    },
    /// `request_headers`; `:path` and `:authority` read the pseudo-headers.
    RequestHeader {
        header: HeaderSource,
        key: Box<str>,
    },
    RemoteAddress,
    MaskedRemoteAddress {
        v4: u8,
        v6: u8,
    },
    HeaderValueMatch {
        key: Box<str>,
        value: Box<str>,
        expect_match: bool,
        headers: Vec<HeaderMatch>,
    },
    /// `metadata` from dynamic metadata: a string at `path` in namespace `ns`.
    Metadata {
        key: Box<str>,
        ns: Box<str>,
        path: Vec<Box<str>>,
        default: Box<str>,
    },
    /// The CEL descriptor extension, for the one expression meshgate evaluates: the peer
    /// certificate's first URI SAN.
    PeerUriSan {
        key: Box<str>,
    },
}

/// Where a `request_headers` action reads.
#[derive(Debug, Clone)]
pub enum HeaderSource {
    Name(HeaderName),
    Path,
    Authority,
    Method,
}

/// What an action may read of the request.
pub struct RequestFacts<'a> {
    pub view: &'a RequestView<'a>,
    /// The remote address as the connection manager computed it.
    pub remote: IpAddr,
    pub metadata: &'a DynamicMetadata,
    /// The verified peer certificate's URI SANs, if any.
    pub peer_uri_sans: Option<&'a [String]>,
}

impl RateLimit {
    /// Compiles one `RateLimit`.
    pub(crate) fn compile(cx: &mut Cx, r: &pb::RateLimit) -> Result<RateLimit, CompileError> {
        fields!(
            cx,
            r,
            pb::RateLimit {
                supported: [stage, actions],
                ignored: [],
                unsupported: [
                    disable_key,
                    limit,
                    apply_on_stream_done,
                    hits_addend,
                    x_ratelimit_option
                ],
            }
        );
        let stage = r.stage.map(|s| s.value).unwrap_or(0);
        if stage > 10 {
            return Err(cx.err("stage", "stages are 0 to 10"));
        }
        let mut actions = Vec::with_capacity(r.actions.len());
        for (i, a) in r.actions.iter().enumerate() {
            actions.push(cx.at(format_args!("actions[{i}]"), |cx| Action::compile(cx, a))?);
        }
        if actions.is_empty() {
            return Err(cx.err("actions", "at least one action is required"));
        }
        Ok(RateLimit { stage, actions })
    }

    /// Compiles a list.
    pub(crate) fn compile_all(
        cx: &mut Cx,
        field: &str,
        list: &[pb::RateLimit],
    ) -> Result<Vec<RateLimit>, CompileError> {
        let mut out = Vec::with_capacity(list.len());
        for (i, r) in list.iter().enumerate() {
            out.push(cx.at(format_args!("{field}[{i}]"), |cx| RateLimit::compile(cx, r))?);
        }
        Ok(out)
    }

    /// The descriptor of this rate limit for a request, or None when an action produced
    /// nothing.
    pub fn descriptor(&self, req: &RequestFacts<'_>) -> Option<Descriptor> {
        let mut out = Vec::with_capacity(self.actions.len());
        for a in &self.actions {
            out.push(a.entry(req)?);
        }
        Some(out)
    }
}

impl Action {
    fn compile(cx: &mut Cx, a: &pb::rate_limit::Action) -> Result<Action, CompileError> {
        use pb::rate_limit::action::ActionSpecifier as A;
        #[allow(deprecated)]
        Ok(match &a.action_specifier {
            Some(A::GenericKey(g)) => Action::GenericKey {
                key: if g.descriptor_key.is_empty() {
                    "generic_key".into()
                } else {
                    g.descriptor_key.as_str().into()
                },
                value: g.descriptor_value.as_str().into(),
            },
            Some(A::RequestHeaders(h)) => {
                if h.skip_if_absent {
                    return Err(cx.err("request_headers.skip_if_absent", "not supported"));
                }
                if h.descriptor_key.is_empty() {
                    return Err(cx.err("request_headers.descriptor_key", "required"));
                }
                let header =
                    match h.header_name.to_ascii_lowercase().as_str() {
                        ":path" => HeaderSource::Path,
                        ":authority" | "host" => HeaderSource::Authority,
                        ":method" => HeaderSource::Method,
                        n => HeaderSource::Name(HeaderName::from_bytes(n.as_bytes()).map_err(
                            |_| cx.err("request_headers.header_name", "invalid header name"),
                        )?),
                    };
                Action::RequestHeader {
                    header,
                    key: h.descriptor_key.as_str().into(),
                }
            }
            Some(A::RemoteAddress(_)) => Action::RemoteAddress,
            Some(A::MaskedRemoteAddress(m)) => {
                let v4 = m.v4_prefix_mask_len.map(|v| v.value).unwrap_or(32);
                let v6 = m.v6_prefix_mask_len.map(|v| v.value).unwrap_or(128);
                if v4 > 32 || v6 > 128 {
                    return Err(cx.err("masked_remote_address", "prefix length out of range"));
                }
                Action::MaskedRemoteAddress {
                    v4: v4 as u8,
                    v6: v6 as u8,
                }
            }
            Some(A::HeaderValueMatch(m)) => {
                if !m.descriptor_value.is_empty() && m.descriptor_value.contains('%') {
                    return Err(cx.err(
                        "header_value_match.descriptor_value",
                        "formatted descriptor values are not supported",
                    ));
                }
                let mut headers = Vec::with_capacity(m.headers.len());
                for (i, h) in m.headers.iter().enumerate() {
                    headers.push(
                        cx.at(format_args!("header_value_match.headers[{i}]"), |cx| {
                            HeaderMatch::compile(cx, h)
                        })?,
                    );
                }
                if !m.default_value.is_empty() {
                    return Err(cx.unsupported("header_value_match.default_value"));
                }
                Action::HeaderValueMatch {
                    key: if m.descriptor_key.is_empty() {
                        "header_match".into()
                    } else {
                        m.descriptor_key.as_str().into()
                    },
                    value: m.descriptor_value.as_str().into(),
                    expect_match: m.expect_match.map(|b| b.value).unwrap_or(true),
                    headers,
                }
            }
            Some(A::Metadata(m)) => {
                use pb::rate_limit::action::meta_data::Source;
                if m.source != Source::Dynamic as i32 {
                    return Err(cx.err("metadata.source", "only DYNAMIC metadata is supported"));
                }
                if m.skip_if_absent {
                    return Err(cx.unsupported("metadata.skip_if_absent"));
                }
                let Some(k) = &m.metadata_key else {
                    return Err(cx.err("metadata.metadata_key", "required"));
                };
                let mut path = Vec::with_capacity(k.path.len());
                for s in &k.path {
                    use crate::xds::pb::envoy::r#type::metadata::v3::metadata_key::path_segment::Segment;
                    match &s.segment {
                        Some(Segment::Key(k)) => path.push(k.as_str().into()),
                        _ => {
                            return Err(cx.err(
                                "metadata.metadata_key.path",
                                "only key segments are supported",
                            ));
                        }
                    }
                }
                if path.is_empty() {
                    return Err(cx.err("metadata.metadata_key.path", "a path is required"));
                }
                Action::Metadata {
                    key: m.descriptor_key.as_str().into(),
                    ns: k.key.as_str().into(),
                    path,
                    default: m.default_value.as_str().into(),
                }
            }
            Some(A::Extension(e)) => {
                use crate::xds::pb::envoy::extensions::rate_limit_descriptors::expr::v3::{
                    Descriptor, descriptor::ExprSpecifier,
                };
                let Some(any) = &e.typed_config else {
                    return Err(cx.err("extension.typed_config", "required"));
                };
                if any.type_url != crate::translate::ratelimit::EXPR_DESCRIPTOR_TYPE {
                    return Err(cx.err(
                        "extension",
                        format!(
                            "rate limit descriptor extension {} is not supported",
                            any.type_url
                        ),
                    ));
                }
                let d = Descriptor::decode(any.value.as_slice())
                    .map_err(|e| cx.err("extension.typed_config", e.to_string()))?;
                match &d.expr_specifier {
                    Some(ExprSpecifier::Text(t))
                        if t.trim() == crate::translate::ratelimit::PRINCIPAL_EXPR
                            && !d.skip_if_error =>
                    {
                        Action::PeerUriSan {
                            key: d.descriptor_key.as_str().into(),
                        }
                    }
                    _ => {
                        return Err(cx.err(
                            "extension.typed_config",
                            format!(
                                "only the expression `{}` is evaluated",
                                crate::translate::ratelimit::PRINCIPAL_EXPR
                            ),
                        ));
                    }
                }
            }
            Some(other) => {
                let name = match other {
                    A::SourceCluster(_) => "source_cluster",
                    A::DestinationCluster(_) => "destination_cluster",
                    A::QueryParameters(_) => "query_parameters",
                    A::DynamicMetadata(_) => "dynamic_metadata",
                    A::QueryParameterValueMatch(_) => "query_parameter_value_match",
                    _ => "this action",
                };
                return Err(cx.err(name, "rate limit action not supported by meshgate"));
            }
            None => return Err(cx.err("", "an action is required")),
        })
    }

    fn entry(&self, req: &RequestFacts<'_>) -> Option<Entry> {
        match self {
            Action::GenericKey { key, value } => Some((key.clone(), value.clone())),
            Action::RequestHeader { header, key } => {
                let v: &str = match header {
                    HeaderSource::Path => req.view.path_and_query,
                    HeaderSource::Authority => std::str::from_utf8(req.view.authority).ok()?,
                    HeaderSource::Method => req.view.method.as_str(),
                    HeaderSource::Name(n) => req.view.headers.get(n)?.to_str().ok()?,
                };
                Some((key.clone(), v.into()))
            }
            Action::RemoteAddress => Some(("remote_address".into(), req.remote.to_string().into())),
            Action::MaskedRemoteAddress { v4, v6 } => {
                let (net, len) = match req.remote {
                    IpAddr::V4(a) => {
                        let m = if *v4 == 0 {
                            0
                        } else {
                            u32::MAX << (32 - u32::from(*v4))
                        };
                        (IpAddr::V4((u32::from(a) & m).into()), *v4)
                    }
                    IpAddr::V6(a) => {
                        let m = if *v6 == 0 {
                            0
                        } else {
                            u128::MAX << (128 - u32::from(*v6))
                        };
                        (IpAddr::V6((u128::from(a) & m).into()), *v6)
                    }
                };
                Some((
                    "masked_remote_address".into(),
                    format!("{net}/{len}").into(),
                ))
            }
            Action::HeaderValueMatch {
                key,
                value,
                expect_match,
                headers,
            } => {
                let all = headers.iter().all(|h| h.matches(req.view));
                (all == *expect_match).then(|| (key.clone(), value.clone()))
            }
            Action::Metadata {
                key,
                ns,
                path,
                default,
            } => match req.metadata.lookup(ns, path) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => {
                    Some((key.clone(), s.as_str().into()))
                }
                _ if !default.is_empty() => Some((key.clone(), default.clone())),
                _ => None,
            },
            Action::PeerUriSan { key } => {
                let san = req.peer_uri_sans?.first()?;
                Some((key.clone(), san.as_str().into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::pb::envoy::config::route::v3 as pb;

    fn compile(yaml_actions: serde_json::Value) -> RateLimit {
        let r: pb::RateLimit =
            crate::xds::json::from_json(&serde_json::json!({ "actions": yaml_actions }))
                .expect("RateLimit");
        RateLimit::compile(&mut Cx::new("route_configuration", "rc"), &r).expect("compiles")
    }

    #[test]
    fn actions_read_the_request_as_envoy_does() {
        let rl = compile(serde_json::json!([
            {"generic_key": {"descriptor_key": "meshgate.io/rule", "descriptor_value": "ns/p/r"}},
            {"masked_remote_address": {"v4_prefix_mask_len": 8}},
            {"metadata": {"descriptor_key": "claim:sub", "metadata_key": {"key": "envoy.filters.http.jwt_authn", "path": [{"key": "https://iss"}, {"key": "sub"}]}}},
            {"extension": {"name": "envoy.rate_limit_descriptors.expr", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.rate_limit_descriptors.expr.v3.Descriptor", "descriptor_key": "principal", "text": "connection.uri_san_peer_certificate"}}},
            {"request_headers": {"header_name": ":path", "descriptor_key": "path"}}
        ]));
        let headers = http::HeaderMap::new();
        let method = http::Method::GET;
        let view = RequestView::new(&method, b"a.example.com", "/x?y=1", None, true, &headers);
        let mut metadata = DynamicMetadata::default();
        let sans = vec!["spiffe://cluster.local/ns/a/sa/b".to_string()];
        fn facts<'a>(
            view: &'a RequestView<'a>,
            metadata: &'a DynamicMetadata,
            sans: &'a [String],
        ) -> RequestFacts<'a> {
            RequestFacts {
                view,
                remote: "10.1.2.3".parse().unwrap(),
                metadata,
                peer_uri_sans: Some(sans),
            }
        }
        // No verified token: the metadata action has nothing, so no descriptor.
        assert_eq!(rl.descriptor(&facts(&view, &metadata, &sans)), None);
        metadata
            .namespace_mut("envoy.filters.http.jwt_authn")
            .insert("https://iss".into(), serde_json::json!({"sub": "alice"}));
        let d = rl
            .descriptor(&facts(&view, &metadata, &sans))
            .expect("descriptor");
        let d: Vec<(&str, &str)> = d.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(
            d,
            [
                ("meshgate.io/rule", "ns/p/r"),
                ("masked_remote_address", "10.0.0.0/8"),
                ("claim:sub", "alice"),
                ("principal", "spiffe://cluster.local/ns/a/sa/b"),
                ("path", "/x?y=1"),
            ]
        );
        // Without a client certificate the expression has no value either.
        let no_peer = RequestFacts {
            peer_uri_sans: None,
            ..facts(&view, &metadata, &sans)
        };
        assert_eq!(rl.descriptor(&no_peer), None);
    }

    #[test]
    fn unsupported_actions_are_refused_with_their_path() {
        let r: pb::RateLimit =
            crate::xds::json::from_json(&serde_json::json!({"actions": [{"source_cluster": {}}]}))
                .unwrap();
        let e = RateLimit::compile(&mut Cx::new("route_configuration", "rc"), &r).unwrap_err();
        assert_eq!(e.path, "actions[0].source_cluster");
    }
}
