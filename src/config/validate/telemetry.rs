//! Checks of `Telemetry`s as Istio's webhook checks their tracing
//! (`validateTelemetryTracing`), plus what meshgate refuses rather than serve half:
//! `targetRef(s)` and sampling that ignores the request id. Provider names are checked
//! against the mesh configuration by [`crate::translate::tracing::check`].
use super::common::{Sink, check_labels_map};
use crate::config::diag::Diagnostic;
use crate::config::mesh::TracingCustomTag;
use crate::config::types::{Resource, Telemetry};

/// Validates one Telemetry.
pub fn validate(t: &Resource<Telemetry>, out: &mut Vec<Diagnostic>) {
    let mut s = Sink::new(t, out);
    let spec = &t.spec;
    if let Some(selector) = &spec.selector {
        for (key, message) in check_labels_map(&selector.match_labels) {
            s.error(&format!("spec.selector.matchLabels.{key}"), message);
        }
    }
    if spec.target_ref.is_some() {
        s.error(
            "spec.targetRef",
            "targetRef is not served by meshgate; select the gateway or workload by its labels with `selector`",
        );
    }
    if !spec.target_refs.is_empty() {
        s.error(
            "spec.targetRefs",
            "targetRefs is not served by meshgate; select the gateway or workload by its labels with `selector`",
        );
    }
    if spec.tracing.len() > 1 {
        s.warning(
            "spec.tracing",
            "multiple tracing is not currently supported",
        );
    }
    for (i, tr) in spec.tracing.iter().enumerate() {
        let at = |f: &str| format!("spec.tracing[{i}].{f}");
        if let Some(p) = tr.random_sampling_percentage
            && !(0.0..=100.0).contains(&p)
        {
            s.error(
                &at("randomSamplingPercentage"),
                "randomSamplingPercentage must be in range [0.0, 100.0]",
            );
        }
        if tr.use_request_id_for_trace_sampling == Some(false) {
            s.error(
                &at("useRequestIdForTraceSampling"),
                "false is not served: meshgate samples on the request id's trace decision",
            );
        }
        for (j, p) in tr.providers.iter().enumerate() {
            if p.name.is_empty() {
                s.error(
                    &format!("spec.tracing[{i}].providers[{j}].name"),
                    "provider name must be set",
                );
            }
        }
        for (name, tag) in tr.custom_tags.iter().flatten() {
            let field = format!("spec.tracing[{i}].customTags.{name}");
            if name.is_empty() {
                s.error(&at("customTags"), "tag name may not be empty");
                continue;
            }
            match tag {
                TracingCustomTag::Literal { value } if value.is_empty() => {
                    s.error(&field, "literal tag value may not be empty")
                }
                TracingCustomTag::Header { name, .. } if name.is_empty() => {
                    s.error(&field, "header tag name may not be empty")
                }
                TracingCustomTag::Environment { name, .. } if name.is_empty() => {
                    s.error(&field, "environment tag name may not be empty")
                }
                _ => {}
            }
        }
    }
}

/// Istio keeps one selector-less Telemetry per namespace; a second is ignored (istiod
/// takes the oldest, meshgate the first loaded), which is worth a warning.
pub fn one_per_namespace(telemetries: &[Resource<Telemetry>], out: &mut Vec<Diagnostic>) {
    let mut seen = std::collections::HashSet::new();
    for t in telemetries {
        if t.spec.match_labels().is_none() && !seen.insert(t.meta.namespace.as_str()) {
            out.push(t.warning(
                "metadata.name",
                format!(
                    "namespace {:?} already has a Telemetry without a selector; this one is ignored",
                    t.meta.namespace
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    const HEAD: &str = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: shop}\nspec:\n";

    fn diagnostics(spec: &str) -> Vec<String> {
        let loaded = crate::config::load_str("t.yaml", &format!("{HEAD}{spec}"));
        let mut out: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
        out.extend(
            crate::config::validate::validate(&loaded.config)
                .iter()
                .map(|d| d.to_string()),
        );
        out
    }

    #[test]
    fn tracing_errors_name_the_field() {
        let cases: &[(&str, &[&str])] = &[
            (
                "  tracing: [{randomSamplingPercentage: 101}]\n",
                &[
                    "t.yaml:5:14: error: Telemetry/shop/t: spec.tracing[0].randomSamplingPercentage: randomSamplingPercentage must be in range [0.0, 100.0]",
                ],
            ),
            (
                "  tracing: [{useRequestIdForTraceSampling: false}]\n",
                &[
                    "t.yaml:5:14: error: Telemetry/shop/t: spec.tracing[0].useRequestIdForTraceSampling: false is not served: meshgate samples on the request id's trace decision",
                ],
            ),
            (
                "  tracing:\n  - customTags:\n      a: {literal: {value: ''}}\n      b: {header: {name: ''}}\n",
                &[
                    "t.yaml:7:7: error: Telemetry/shop/t: spec.tracing[0].customTags.a: literal tag value may not be empty",
                    "t.yaml:8:7: error: Telemetry/shop/t: spec.tracing[0].customTags.b: header tag name may not be empty",
                ],
            ),
            (
                "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]\n  tracing: [{}]\n",
                &[
                    "t.yaml:5:3: error: Telemetry/shop/t: spec.targetRefs: targetRefs is not served by meshgate; select the gateway or workload by its labels with `selector`",
                ],
            ),
            (
                "  tracing: [{match: {mode: BOTH}}]\n",
                &[
                    "t.yaml:5:22: error: Telemetry/shop/t: spec.tracing[0].match.mode: unknown variant `BOTH`, expected one of `CLIENT_AND_SERVER`, `CLIENT`, `SERVER`",
                ],
            ),
            (
                "  tracing: [{enableIstioTags: false}]\n",
                &[
                    "t.yaml:5:14: error: Telemetry/shop/t: spec.tracing[0].enableIstioTags: unknown field `enableIstioTags`; expected one of `match`, `providers`, `customTags`, `disableSpanReporting`, `randomSamplingPercentage`, `useRequestIdForTraceSampling`",
                ],
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(diagnostics(spec), *want, "{spec}");
        }
    }

    #[test]
    fn metrics_and_access_logging_stay_ignored_with_a_warning() {
        assert_eq!(
            diagnostics("  metrics: [{providers: [{name: prometheus}]}]\n"),
            [
                "t.yaml:2:1: warning: Telemetry/shop/t: kind: kind Telemetry is not supported yet; ignored"
            ]
        );
        assert_eq!(
            diagnostics("  tracing: [{randomSamplingPercentage: 5}]\n  accessLogging: [{}]\n"),
            [
                "t.yaml:6:3: warning: Telemetry/shop/t: spec.accessLogging: Telemetry accessLogging is not supported yet; ignored (only tracing is served)"
            ]
        );
        assert!(diagnostics("  tracing: [{randomSamplingPercentage: 5}]\n").is_empty());
    }
}
