use super::*;

fn config(yaml: &str) -> Config {
    let outcome = crate::config::load_str("pa.yaml", yaml);
    assert!(outcome.diagnostics.is_empty(), "{:?}", outcome.diagnostics);
    outcome.config
}

fn pa(name: &str, namespace: &str, body: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {body}\n"
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn resolve(yaml: &str, namespace: &str, workload: &[(&str, &str)]) -> WorkloadMtls {
    let mut diagnostics = Vec::new();
    let out = for_workload(
        &config(yaml),
        namespace,
        &labels(workload),
        &mut diagnostics,
    );
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    out
}

#[test]
fn nothing_set_is_permissive() {
    let r = resolve("", "shop", &[("app", "a")]);
    assert_eq!(r.mode, Mode::Permissive);
    assert!(r.per_port.is_empty());
    assert_eq!(namespace_mode(&Config::default(), "shop"), Mode::Permissive);
}

#[test]
fn workload_beats_namespace_beats_mesh() {
    let mesh = pa("default", "istio-system", "{mtls: {mode: STRICT}}");
    let ns = pa("default", "shop", "{mtls: {mode: DISABLE}}");
    let workload = pa(
        "reviews",
        "shop",
        "{selector: {matchLabels: {app: reviews}}, mtls: {mode: PERMISSIVE}}",
    );
    // Mesh-wide only.
    assert_eq!(
        resolve(&mesh, "shop", &[("app", "reviews")]).mode,
        Mode::Strict
    );
    // The namespace's policy beats the mesh's, for its namespace only.
    let both = format!("{mesh}{ns}");
    assert_eq!(
        resolve(&both, "shop", &[("app", "reviews")]).mode,
        Mode::Disable
    );
    assert_eq!(
        resolve(&both, "other", &[("app", "reviews")]).mode,
        Mode::Strict
    );
    // The workload's beats both, for the workloads it selects.
    let all = format!("{mesh}{ns}{workload}");
    assert_eq!(
        resolve(&all, "shop", &[("app", "reviews"), ("version", "v1")]).mode,
        Mode::Permissive
    );
    assert_eq!(
        resolve(&all, "shop", &[("app", "ratings")]).mode,
        Mode::Disable
    );
    // A selector matches in its own namespace only.
    assert_eq!(
        resolve(&all, "other", &[("app", "reviews")]).mode,
        Mode::Strict
    );
    assert_eq!(namespace_mode(&config(&all), "shop"), Mode::Disable);
    assert_eq!(namespace_mode(&config(&all), "other"), Mode::Strict);
}

#[test]
fn unset_inherits_from_the_parent() {
    let mesh = pa("default", "istio-system", "{mtls: {mode: STRICT}}");
    let ns_unset = pa("default", "shop", "{mtls: {mode: UNSET}}");
    let ns_empty = pa("default", "shop", "{}");
    let workload_unset = pa(
        "reviews",
        "shop",
        "{selector: {matchLabels: {app: reviews}}, mtls: {}}",
    );
    for ns in [&ns_unset, &ns_empty] {
        let yaml = format!("{mesh}{ns}{workload_unset}");
        assert_eq!(
            resolve(&yaml, "shop", &[("app", "reviews")]).mode,
            Mode::Strict
        );
    }
    // A mesh-wide UNSET is PERMISSIVE.
    let mesh_unset = pa("default", "istio-system", "{mtls: {mode: UNSET}}");
    let yaml = format!("{mesh_unset}{ns_unset}");
    assert_eq!(resolve(&yaml, "shop", &[]).mode, Mode::Permissive);
    // The root namespace's own workloads have only the mesh-wide policy.
    assert_eq!(resolve(&mesh, "istio-system", &[]).mode, Mode::Strict);
}

#[test]
fn port_level_overrides_and_unset_ports_take_the_workload_mode() {
    let yaml = format!(
        "{}{}",
        pa("default", "shop", "{mtls: {mode: STRICT}}"),
        pa(
            "reviews",
            "shop",
            "{selector: {matchLabels: {app: reviews}}, portLevelMtls: {9080: {mode: DISABLE}, 9090: {mode: PERMISSIVE}, '9091': {}}}",
        )
    );
    let r = resolve(&yaml, "shop", &[("app", "reviews")]);
    assert_eq!(r.mode, Mode::Strict);
    assert_eq!(r.for_port(9080), Mode::Disable);
    assert_eq!(r.for_port(9090), Mode::Permissive);
    assert_eq!(r.for_port(9091), Mode::Strict);
    assert_eq!(r.for_port(8000), Mode::Strict);
    assert_eq!(
        r.per_port.keys().copied().collect::<Vec<_>>(),
        [9080, 9090, 9091]
    );
}

#[test]
fn of_two_selecting_policies_the_first_loaded_applies_with_a_warning() {
    let yaml = format!(
        "{}{}",
        pa(
            "a",
            "shop",
            "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}}"
        ),
        pa(
            "b",
            "shop",
            "{selector: {matchLabels: {version: v1}}, mtls: {mode: DISABLE}}"
        )
    );
    let mut diagnostics = Vec::new();
    let r = for_workload(
        &config(&yaml),
        "shop",
        &labels(&[("app", "reviews"), ("version", "v1")]),
        &mut diagnostics,
    );
    assert_eq!(r.mode, Mode::Strict);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert_eq!(
        diagnostics[0].resource.as_deref(),
        Some("PeerAuthentication/shop/b")
    );
    assert!(diagnostics[0].message.contains("shop/a"), "{diagnostics:?}");
}
