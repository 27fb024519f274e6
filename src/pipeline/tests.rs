use super::*;
use crate::config::Severity;

const GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ['*']
";

fn run_yaml(yaml: &str) -> Report {
    run_str("t.yaml", yaml, &Options::all_gateways())
}

fn lines(report: &Report) -> Vec<String> {
    report.diagnostics.iter().map(|d| d.to_string()).collect()
}

#[test]
fn a_clean_configuration_is_translated_for_its_gateway() {
    let yaml = format!(
        "{GATEWAY}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs, namespace: istio-system}}
spec:
  hosts: ['*']
  gateways: [gw]
  http:
  - directResponse: {{status: 200, body: {{string: ok}}}}
"
    );
    let report = run_str(
        "t.yaml",
        &yaml,
        &Options::gateway(
            [("istio".to_string(), "ingressgateway".to_string())].into(),
            None,
        ),
    );
    assert!(!report.has_errors(), "{:?}", lines(&report));
    let (proxy, set) = report.translation.expect("translated");
    assert_eq!(proxy.labels["istio"], "ingressgateway");
    assert_eq!(set.listeners.len(), 1);
}

#[test]
fn policies_that_guard_traffic_are_refused_everywhere() {
    for (doc, want) in [
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: istio-system}\nspec: {action: CUSTOM, provider: {name: opa}, rules: [{}]}\n",
            "spec.provider.name: extension provider \"opa\" is not defined in the mesh configuration",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec: {ingress: [{port: {number: 80, protocol: HTTP}}]}\n",
            "spec.ingress: `ingress` is not served by meshgate yet",
        ),
    ] {
        let yaml = format!("{GATEWAY}---\n{doc}");
        for options in [
            Options::all_gateways(),
            Options::gateway(
                [("istio".to_string(), "ingressgateway".to_string())].into(),
                None,
            ),
        ] {
            let report = run_str("t.yaml", &yaml, &options);
            assert!(report.has_errors(), "{doc}");
            assert!(report.translation.is_none());
            assert!(
                report.error_text().contains(want),
                "{}",
                report.error_text()
            );
        }
    }
}

#[test]
fn peer_authentication_is_accepted_and_leaves_gateways_unchanged() {
    let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";
    let options = Options::gateway(
        [("istio".to_string(), "ingressgateway".to_string())].into(),
        None,
    );
    let without = run_str("t.yaml", GATEWAY, &options);
    let with = run_str("t.yaml", &format!("{GATEWAY}---\n{pa}"), &options);
    assert!(!with.has_errors(), "{:?}", lines(&with));
    assert_eq!(with.warnings().count(), 0, "{:?}", lines(&with));
    assert_eq!(with.config.peer_authentications.len(), 1);
    assert_eq!(
        with.translation.expect("translated").1,
        without.translation.expect("translated").1
    );
    // What the policy cannot mean is refused with the field.
    let bad = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}\n";
    let report = run_yaml(&format!("{GATEWAY}---\n{bad}"));
    assert!(report.has_errors());
    assert!(
        report.error_text().contains(
            "PeerAuthentication/shop/default: spec.portLevelMtls: portLevelMtls needs a selector"
        ),
        "{}",
        report.error_text()
    );
}

#[test]
fn features_that_only_add_stay_warnings() {
    let yaml = format!(
        "{GATEWAY}---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t}}\nspec: {{}}\n---\napiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata: {{name: e}}\nspec: {{}}\n"
    );
    let report = run_yaml(&yaml);
    assert!(!report.has_errors(), "{:?}", lines(&report));
    assert_eq!(report.warnings().count(), 2, "{:?}", lines(&report));
}

#[test]
fn sidecar_resources_restricting_egress_are_served() {
    let yaml = format!(
        "{GATEWAY}---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: shop}}\nspec:\n  egress: [{{hosts: [\"./*\", \"istio-system/*\"]}}]\n  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\n"
    );
    let report = run_yaml(&yaml);
    assert!(!report.has_errors(), "{:?}", lines(&report));
    assert_eq!(report.config.sidecars.len(), 1);
    assert!(report.diagnostics.is_empty(), "{:?}", lines(&report));
}

#[test]
fn istio_mutual_is_accepted_and_translated() {
    let yaml = format!(
        "{GATEWAY}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: dr, namespace: istio-system}}
spec:
  host: backend.example.com
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
"
    );
    let report = run_yaml(&yaml);
    assert!(!report.has_errors(), "{:?}", lines(&report));
    assert!(
        report
            .diagnostics
            .iter()
            .all(|d| !d.message.contains("ISTIO_MUTUAL")),
        "{:?}",
        lines(&report)
    );
}

#[test]
fn what_the_data_plane_refuses_is_an_error_on_the_istio_resource() {
    // A Gateway server the translator accepts but whose translation the data plane
    // cannot compile is reported on the resource that produced it. Unix sockets are
    // refused by validation first, naming the field.
    let yaml = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 0, name: http, protocol: HTTP}
    bind: unix:///tmp/gw.sock
    hosts: ['*']
";
    let report = run_yaml(yaml);
    let errors: Vec<_> = report.errors().collect();
    assert!(!errors.is_empty());
    assert!(
        errors
            .iter()
            .any(|d| d.field.as_deref() == Some("spec.servers[0].bind")
                && d.severity == Severity::Error),
        "{:?}",
        lines(&report)
    );
}
