use super::*;
use governor::clock::FakeRelativeClock;

fn spec(max_tokens: u32, tokens_per_fill: u32, ms: u64) -> BucketSpec {
    BucketSpec {
        max_tokens,
        tokens_per_fill,
        fill_interval: Duration::from_millis(ms),
    }
}

#[test]
fn a_bucket_starts_full_refills_continuously_and_reports_as_envoy() {
    let clock = FakeRelativeClock::default();
    // 2 tokens per second, at most 4.
    let b = Arc::new(Bucket::new(spec(4, 2, 1000), None, clock.clone()));
    let taken: Vec<(bool, u32, u64)> = (0..5)
        .map(|_| {
            let t = b.take(0);
            (t.allowed, b.peek(0).0, t.reset)
        })
        .collect();
    // Envoy: remaining after each admission, reset 0 while a token is left, then the
    // seconds until the next one (500ms -> 1).
    assert_eq!(
        taken,
        [
            (true, 3, 0),
            (true, 2, 0),
            (true, 1, 0),
            (true, 0, 1),
            (false, 0, 1)
        ]
    );
    clock.advance(Duration::from_millis(499));
    assert!(!b.take(0).allowed);
    clock.advance(Duration::from_millis(1));
    let t = b.take(0);
    assert!(t.allowed && b.peek(0).0 == 0, "{t:?}");
    // A long pause refills to max_tokens, never beyond.
    clock.advance(Duration::from_secs(60));
    let admitted = (0..10).filter(|_| b.take(0).allowed).count();
    assert_eq!(admitted, 4);
}

#[test]
fn reset_counts_whole_seconds_until_the_next_token() {
    let clock = FakeRelativeClock::default();
    // One token per 10 s: Envoy 1.40 answers reset 10, then 7 after 3.5 s.
    let b = Arc::new(Bucket::new(spec(1, 1, 10_000), None, clock.clone()));
    let t = b.take(0);
    assert_eq!((t.allowed, b.peek(0).0, t.reset), (true, 0, 10));
    let t = b.take(0);
    assert_eq!((t.allowed, t.reset), (false, 10));
    clock.advance(Duration::from_millis(3500));
    assert_eq!(b.take(0).reset, 7);
    clock.advance(Duration::from_millis(3000));
    assert_eq!(b.take(0).reset, 4);
}

#[test]
fn distinct_values_have_their_own_buckets_bounded_by_lru() {
    let clock = FakeRelativeClock::default();
    let b = Arc::new(Bucket::new(spec(1, 1, 60_000), Some(2), clock.clone()));
    assert!(b.take(1).allowed);
    assert!(b.take(2).allowed);
    assert!(!b.take(1).allowed);
    assert!(!b.take(2).allowed);
    assert_eq!(b.len(), 2);
    // A third value evicts the least recently used (2 was used last, so 1 goes).
    assert!(b.take(3).allowed);
    assert_eq!(b.len(), 2);
    assert!(!b.take(2).allowed, "2 was kept");
    assert!(b.take(1).allowed, "1 was forgotten: a full bucket again");
}

#[test]
fn full_buckets_are_pruned() {
    let clock = FakeRelativeClock::default();
    let b = Arc::new(Bucket::new(spec(5, 5, 1000), Some(1000), clock.clone()));
    for k in 0..100 {
        assert!(b.take(k).allowed);
    }
    assert_eq!(b.len(), 100);
    clock.advance(Duration::from_secs(2));
    b.limiter.retain_recent();
    assert_eq!(b.len(), 0);
}

fn compile(l: &pb::LocalRateLimit, per_route: bool) -> Result<LocalRateLimitConfig, CompileError> {
    let mut cx = Cx::new("listener", "l");
    LocalRateLimitConfig::compile(&mut cx, l, per_route, "l".into())
}

fn translated(rules: &str) -> pb::LocalRateLimit {
    let text = format!(
        "apiVersion: meshgate.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n  local:\n    rules:\n{rules}"
    );
    let loaded = crate::config::load_str("t.yaml", &text);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let rules = crate::translate::ratelimit::compile_policy(&loaded.config.rate_limit_policies[0]);
    let refs: Vec<&_> = rules.iter().collect();
    crate::translate::ratelimit::local_filter_config(&refs, false)
}

#[test]
fn what_translation_emits_compiles_and_errors_name_fields() {
    let l = translated(
        "    - clientSelectors: [{sourceCIDR: {type: Distinct}, headers: [{name: x-user, type: Distinct}]}]\n      limit: {requests: 5, unit: Second, burst: 10}\n",
    );
    let c = compile(&l, false).unwrap();
    assert_eq!(c.descriptors.len(), 1);
    assert!(c.descriptors[0].wildcard());
    assert_eq!(c.descriptors[0].rule.as_deref(), Some("ns/p/0"));
    assert_eq!(
        c.max_dynamic,
        crate::translate::ratelimit::MAX_DYNAMIC_DESCRIPTORS
    );
    let e = compile(&l, true).unwrap_err();
    assert_eq!(e.path, "token_bucket");
    let mut bad = l.clone();
    bad.local_rate_limit_per_downstream_connection = true;
    assert_eq!(
        compile(&bad, false).unwrap_err().path,
        "local_rate_limit_per_downstream_connection"
    );
    let mut bad = l.clone();
    bad.descriptors[0]
        .token_bucket
        .as_mut()
        .unwrap()
        .fill_interval = Some(crate::xds::pb::google::protobuf::Duration {
        seconds: 0,
        nanos: 10_000_000,
    });
    assert_eq!(
        compile(&bad, false).unwrap_err().path,
        "descriptors[0].token_bucket.fill_interval"
    );
    let mut bad = l.clone();
    bad.rate_limited_as_resource_exhausted = true;
    assert_eq!(
        compile(&bad, false).unwrap_err().path,
        "rate_limited_as_resource_exhausted"
    );
}

#[test]
fn decisions_take_the_slowest_bucket_first_and_fall_back_to_the_default() {
    let mut l = translated(
        "    - name: fast\n      limit: {requests: 100, unit: Second}\n    - name: slow\n      limit: {requests: 1, unit: Minute}\n",
    );
    l.token_bucket = Some(crate::translate::ratelimit::token_bucket(
        2,
        Duration::from_secs(60),
        2,
    ));
    let c = compile(&l, false).unwrap();
    let runtime = LocalRateLimits::default();
    let stats = crate::proxy::stats::Stats::new(
        1,
        crate::proxy::stats::SourceLabels {
            workload: String::new(),
            namespace: String::new(),
            app: String::new(),
        },
    );
    let r = c.resolved(&runtime, &stats);
    let d = |rule: &str| Descriptor {
        entries: vec![(RULE_KEY.to_string(), format!("ns/p/{rule}"))],
        hits_addend: None,
    };
    let both = [d("fast"), d("slow")];
    // The slow bucket (1/min) decides first: the second request is refused by it and
    // the fast one is not charged for it.
    assert!(matches!(c.decide(r, &both), Decision::Allowed(Some(t)) if t.limit == 1));
    assert!(matches!(c.decide(r, &both), Decision::Limited(t) if t.limit == 1));
    assert_eq!(
        stats
            .filter_counters
            .counter("meshgate_local_rate_limit.http_local_rate_limit.rule.ns/p/slow.rate_limited")
            .load(Ordering::Relaxed),
        1
    );
    // No descriptor matched: the default bucket (2 tokens) decides.
    assert!(matches!(c.decide(r, &[]), Decision::Allowed(Some(t)) if t.limit == 2));
    assert!(matches!(c.decide(r, &[]), Decision::Allowed(Some(_))));
    assert!(matches!(c.decide(r, &[]), Decision::Limited(_)));
    // The same config compiled again (a config update) finds the same buckets.
    let again = compile(&l, false).unwrap();
    let r2 = again.resolved(&runtime, &stats);
    assert!(matches!(again.decide(r2, &[]), Decision::Limited(_)));
    assert!(matches!(again.decide(r2, &both), Decision::Limited(t) if t.limit == 1));
}

#[test]
fn the_principal_and_claim_actions_read_the_peer_and_the_token() {
    use crate::proxy::http::filter::DynamicMetadata;
    use crate::proxy::route::matcher::RequestView;
    let l = translated(
        "    - clientSelectors: [{principal: {type: Distinct}, jwtClaim: {issuer: https://iss, claim: sub, type: Distinct}, sourceCIDR: {value: 10.0.0.0/8}}]\n      limit: {requests: 1, unit: Minute}\n",
    );
    let c = compile(&l, false).unwrap();
    let headers = http::HeaderMap::new();
    let method = http::Method::GET;
    let mut metadata = DynamicMetadata::default();
    let sans = vec!["spiffe://cluster.local/ns/a/sa/b".to_string()];
    let descriptors = |metadata: &DynamicMetadata, sans: Option<&[String]>| {
        let input = DescriptorInput {
            view: RequestView::new(&method, b"a.example.com", "/x?y=1", None, true, &headers),
            remote: "10.1.2.3".parse().unwrap(),
            metadata,
            cluster: None,
            peer_uri_sans: sans,
        };
        let mut out = Vec::new();
        c.rate_limits.descriptors(0, &input, &mut out);
        out.into_iter().map(|d| d.entries).collect::<Vec<_>>()
    };
    // No verified token: the claim has no value, so the rule makes no descriptor.
    assert!(descriptors(&metadata, Some(&sans)).is_empty());
    metadata
        .namespace_mut("envoy.filters.http.jwt_authn")
        .insert("https://iss".into(), serde_json::json!({"sub": "alice"}));
    let e = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        descriptors(&metadata, Some(&sans)),
        [vec![
            e(RULE_KEY, "ns/p/0"),
            e("masked_remote_address", "10.0.0.0/8"),
            e("principal", "spiffe://cluster.local/ns/a/sa/b"),
            e("claim:sub", "alice"),
        ]]
    );
    // No client certificate: no principal, no descriptor.
    assert!(descriptors(&metadata, None).is_empty());
}
