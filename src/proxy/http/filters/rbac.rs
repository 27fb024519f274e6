//! `envoy.filters.http.rbac` (`envoy.extensions.filters.http.rbac.v3.RBAC`): allows or
//! denies a request by the rules of [`crate::proxy::rbac`].
//!
//! As Envoy's filter: the shadow rules are evaluated first, for the record only — their
//! result goes to dynamic metadata namespace `envoy.filters.http.rbac` under
//! `<shadow_rules_stat_prefix>shadow_engine_result` (`allowed`/`denied`) and
//! `<shadow_rules_stat_prefix>shadow_effective_policy_id` (the matching policy, when
//! one matched), which later filters read (ext_authz's `filter_enabled_metadata` for
//! Istio's CUSTOM action). Then the enforced rules: a denied request is answered 403
//! `RBAC: access denied` with details `rbac_access_denied_matched_policy[ID]`; a LOG
//! rule set never denies and sets `envoy.common` / `access_log_hint` to whether a
//! policy matched. Without `rules` nothing is enforced.
use crate::proxy::compile::{CompileError, Cx, fields};
use crate::proxy::http::body::ResponseBody;
use crate::proxy::http::filter::{HttpFilter, RequestCx, Step};
use crate::proxy::rbac::{Action, Engine, Input, response_detail};
use crate::xds::pb::envoy::extensions::filters::http::rbac::v3 as pb;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use std::sync::atomic::Ordering::Relaxed;

/// The filter's config type.
pub const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// The dynamic metadata namespace the filter writes.
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.rbac";
/// Where a LOG rule set records whether it matched.
pub const COMMON_NAMESPACE: &str = "envoy.common";
pub const ACCESS_LOG_HINT: &str = "access_log_hint";
/// The body of the 403.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// A compiled RBAC HTTP filter.
#[derive(Debug)]
pub struct RbacFilter {
    name: Box<str>,
    rules: Option<Engine>,
    shadow: Option<Engine>,
    /// `<prefix>shadow_effective_policy_id` and `<prefix>shadow_engine_result`.
    shadow_policy_key: Box<str>,
    shadow_result_key: Box<str>,
}

impl RbacFilter {
    pub(crate) fn compile(
        cx: &mut Cx,
        name: &str,
        r: &pb::Rbac,
    ) -> Result<RbacFilter, CompileError> {
        fields!(
            cx,
            r,
            pb::Rbac {
                supported: [rules, shadow_rules, shadow_rules_stat_prefix],
                ignored: [rules_stat_prefix, track_per_rule_stats],
                unsupported: [matcher, shadow_matcher],
            }
        );
        let prefix = &r.shadow_rules_stat_prefix;
        Ok(RbacFilter {
            name: name.into(),
            rules: match &r.rules {
                Some(x) => Some(cx.at("rules", |cx| Engine::compile(cx, x))?),
                None => None,
            },
            shadow: match &r.shadow_rules {
                Some(x) => Some(cx.at("shadow_rules", |cx| Engine::compile(cx, x))?),
                None => None,
            },
            shadow_policy_key: format!("{prefix}shadow_effective_policy_id").into(),
            shadow_result_key: format!("{prefix}shadow_engine_result").into(),
        })
    }

    /// Decodes and compiles the filter's `typed_config`.
    pub(crate) fn build(
        cx: &mut Cx,
        b: &super::BuildCx<'_>,
        any: &crate::xds::pb::google::protobuf::Any,
    ) -> Result<std::sync::Arc<dyn HttpFilter>, CompileError> {
        use prost::Message;
        let r = pb::Rbac::decode(any.value.as_slice())
            .map_err(|e| cx.err("typed_config", format!("decoding RBAC: {e}")))?;
        let f = cx.at("typed_config", |cx| RbacFilter::compile(cx, b.name, &r))?;
        Ok(std::sync::Arc::new(f))
    }
}

/// Envoy's 403 for a denied request.
pub fn denied_response() -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(Bytes::from_static(
        DENIED_BODY.as_bytes(),
    )));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

impl HttpFilter for RbacFilter {
    fn name(&self) -> &str {
        &self.name
    }

    fn explain(&self, input: &Input<'_>) -> Option<crate::proxy::http::filter::FilterExplanation> {
        Some(self.explanation(input))
    }

    fn on_request<'a>(&'a self, cx: &'a mut RequestCx<'_>) -> Step<'a> {
        let conn = cx.conn;
        let tls = conn.tls.as_deref();
        let direct = conn.peer.direct.ip();
        let view = cx.request_view();
        let (shadow, enforced, log_hint) = {
            let input = Input {
                direct_remote: direct,
                remote: cx.remote,
                local: conn.peer.local,
                sni: tls.and_then(|t| t.server_name.as_deref()),
                tls: tls.is_some(),
                peer: tls.and_then(|t| t.peer.as_ref()),
                request: Some(view),
                metadata: Some(&*cx.metadata),
            };
            let shadow = self.shadow.as_ref().map(|e| {
                let d = e.decide(&input);
                (d.allowed, d.policy.map(str::to_owned))
            });
            let enforced = self.rules.as_ref().map(|e| {
                let d = e.decide(&input);
                (d.allowed, d.policy.map(str::to_owned))
            });
            let log_hint = self
                .rules
                .as_ref()
                .filter(|e| e.action == Action::Log)
                .map(|_| enforced.as_ref().is_some_and(|(_, p)| p.is_some()));
            (shadow, enforced, log_hint)
        };
        let stats = &conn.shared.stats;
        if let Some((allowed, policy)) = shadow {
            if allowed {
                stats.rbac_shadow_allowed.fetch_add(1, Relaxed);
            } else {
                stats.rbac_shadow_denied.fetch_add(1, Relaxed);
            }
            let ns = cx.metadata.namespace_mut(METADATA_NAMESPACE);
            if let Some(p) = policy {
                ns.insert(
                    self.shadow_policy_key.to_string(),
                    serde_json::Value::String(p),
                );
            }
            ns.insert(
                self.shadow_result_key.to_string(),
                serde_json::Value::String(if allowed { "allowed" } else { "denied" }.into()),
            );
        }
        if let Some(matched) = log_hint {
            cx.metadata
                .namespace_mut(COMMON_NAMESPACE)
                .insert(ACCESS_LOG_HINT.into(), serde_json::Value::Bool(matched));
        }
        match enforced {
            None => Step::CONTINUE,
            Some((true, _)) => {
                stats.rbac_allowed.fetch_add(1, Relaxed);
                Step::CONTINUE
            }
            Some((false, policy)) => {
                stats.rbac_denied.fetch_add(1, Relaxed);
                tracing::debug!(detail = %response_detail(policy.as_deref()), "RBAC denied the request");
                cx.log.filter_details = Some(response_detail(policy.as_deref()).into());
                Step::respond(denied_response())
            }
        }
    }
}

impl RbacFilter {
    /// The enforced and shadow decisions for `input`, in words (the engines `on_request`
    /// runs).
    fn explanation(&self, input: &Input<'_>) -> crate::proxy::http::filter::FilterExplanation {
        let action = |e: &Engine| match e.action {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Log => "LOG",
        };
        let mut summary = String::new();
        let mut answer = None;
        match &self.rules {
            None => summary.push_str("no enforced rules"),
            Some(e) => {
                let d = e.decide(input);
                let verdict = if d.allowed { "allowed" } else { "denied" };
                match d.policy {
                    Some(p) => summary.push_str(&format!(
                        "{verdict}: policy {p} of the {} rules ({} policies) matches{}",
                        action(e),
                        e.len(),
                        crate::proxy::explain::authorization_policy(p)
                            .map(|a| format!(" ({a})"))
                            .unwrap_or_default()
                    )),
                    None => summary.push_str(&format!(
                        "{verdict}: none of the {} {} policies matches",
                        e.len(),
                        action(e)
                    )),
                }
                if !d.allowed {
                    answer = Some((403, response_detail(d.policy)));
                }
            }
        }
        if let Some(e) = &self.shadow {
            let d = e.decide(input);
            summary.push_str(&format!(
                "; shadow {} rules: {}{}",
                action(e),
                if d.allowed { "allowed" } else { "denied" },
                d.policy.map(|p| format!(" by {p}")).unwrap_or_default()
            ));
        }
        crate::proxy::http::filter::FilterExplanation { summary, answer }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_keys_carry_the_stat_prefix() {
        let r = pb::Rbac {
            shadow_rules_stat_prefix: "istio_ext_authz_".into(),
            ..Default::default()
        };
        let f = RbacFilter::compile(&mut Cx::new("listener", "l"), "envoy.filters.http.rbac", &r)
            .unwrap();
        assert_eq!(
            &*f.shadow_policy_key,
            "istio_ext_authz_shadow_effective_policy_id"
        );
        assert_eq!(
            &*f.shadow_result_key,
            "istio_ext_authz_shadow_engine_result"
        );
        let resp = denied_response();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain");
    }
}
