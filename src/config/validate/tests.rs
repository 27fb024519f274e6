//! Tables of cases for every validation rule: each case is a small configuration,
//! validated next to a fixed base (a gateway, services and subsets), and the exact
//! diagnostic lines it must produce.
use crate::config::{Config, load, load_str, validate};
use std::path::Path;

/// A gateway `shop/gw` on port 8080 for `*.example.com`, a service `reviews` in `shop`
/// with subsets v1 and v2, and an external `api.example.org` on ports 80 and 443.
const BASE: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*.example.com"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, labels: {version: v1}}
  - {address: 127.0.0.2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.org]
  resolution: DNS
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 443, name: https, protocol: TLS}
"#;

/// Diagnostics about `t.yaml` (the case) when validated with the base.
fn check(case: &str) -> Vec<String> {
    let base = load_str("base.yaml", BASE);
    assert!(base.diagnostics.is_empty(), "{:?}", base.diagnostics);
    let extra = load_str("t.yaml", case);
    let mut config = Config::default();
    config.extend(base.config);
    config.extend(extra.config);
    let mut all: Vec<String> = extra.diagnostics.iter().map(ToString::to_string).collect();
    all.extend(validate(&config).iter().map(ToString::to_string));
    all
}

const VS_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\nspec:\n";

fn vs(spec: &str) -> String {
    format!("{VS_HEAD}{spec}")
}

#[test]
fn base_is_clean() {
    let diags: Vec<String> = check("");
    assert!(diags.is_empty(), "{diags:#?}");
}

#[test]
fn sample_configurations_are_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/valid");
    let outcome = load(&dir);
    assert!(outcome.diagnostics.is_empty(), "{:?}", outcome.diagnostics);
    assert!(outcome.config.len() >= 10);
    let diags: Vec<String> = validate(&outcome.config)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(diags.is_empty(), "{diags:#?}");
}

/// Runs cases of (name, configuration, exact expected lines); on mismatch prints what
/// was produced, in the table's own syntax.
fn run_table(cases: &[(&str, String, &[&str])]) {
    let mut failures = Vec::new();
    for (name, text, want) in cases {
        let got = check(text);
        if got != *want {
            let quoted: Vec<String> = got.iter().map(|l| format!("            {l:?},")).collect();
            failures.push(format!("== {name}\n{}", quoted.join("\n")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn virtual_service_rules() {
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "weights",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 60\n    - destination: {host: reviews, subset: v2}\n      weight: 30\n"),
            &[
                "t.yaml:8:5: warning: VirtualService/shop/r: spec.http[0].route: weights sum to 90, not 100; they are used as relative shares of 90",
            ],
        ),
        (
            "negative weight",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: -10\n    - destination: {host: reviews, subset: v2}\n      weight: 110\n"),
            &[
                "t.yaml:10:7: error: VirtualService/shop/r: spec.http[0].route[0].weight: weight -10 is negative",
            ],
        ),
        (
            "no weights",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n    - destination: {host: reviews, subset: v2}\n"),
            &[
                "t.yaml:8:5: error: VirtualService/shop/r: spec.http[0].route: destinations have no weights; with several destinations, give each a weight (summing to 100)",
            ],
        ),
        (
            "zero weight",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 100\n    - destination: {host: reviews, subset: v2}\n"),
            &[
                "t.yaml:11:7: warning: VirtualService/shop/r: spec.http[0].route[1]: this destination has weight 0 and receives no traffic",
            ],
        ),
        (
            "bad regex",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - match:\n    - uri: {regex: \"/(a\"}\n    - headers: {x-id: {regex: \"(a)\\\\1\"}}\n    - authority: {regex: \"a++\"}\n    - queryParams: {q: {regex: \"[a-z&&b]\"}}\n    - uri: {prefix: \"\"}\n    route:\n    - destination: {host: reviews}\n"),
            &[
                "t.yaml:9:13: error: VirtualService/shop/r: spec.http[0].match[0].uri.regex: invalid regex: unclosed group; Envoy uses RE2 syntax (https://github.com/google/re2/wiki/Syntax)",
                "t.yaml:10:24: error: VirtualService/shop/r: spec.http[0].match[1].headers.x-id.regex: invalid regex: backreferences are not supported; Envoy uses RE2 syntax (https://github.com/google/re2/wiki/Syntax)",
                "t.yaml:11:19: error: VirtualService/shop/r: spec.http[0].match[2].authority.regex: RE2 does not allow a repetition operator right after another (`+` then `+`); possessive quantifiers such as `a++` are not supported; Envoy uses RE2 syntax (https://github.com/google/re2/wiki/Syntax)",
                "t.yaml:12:25: error: VirtualService/shop/r: spec.http[0].match[3].queryParams.q.regex: RE2 does not support character class set operations (`&&`, `--`, `~~`); Envoy uses RE2 syntax (https://github.com/google/re2/wiki/Syntax)",
                "t.yaml:13:13: error: VirtualService/shop/r: spec.http[0].match[4].uri.prefix: prefix must not be empty (omit the match to match everything)",
            ],
        ),
        (
            "redirect and route",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - redirect: {uri: /x}\n    route:\n    - destination: {host: reviews}\n  - directResponse: {status: 700}\n  - name: empty\n"),
            &[
                "t.yaml:8:5: error: VirtualService/shop/r: spec.http[0].redirect: a route cannot have both `route` and `redirect`",
                "t.yaml:11:5: warning: VirtualService/shop/r: spec.http[1]: this rule is never used: spec.http[0] before it has no match conditions and takes every request",
                "t.yaml:11:22: error: VirtualService/shop/r: spec.http[1].directResponse.status: HTTP status 700 is not in the range 200-599",
                "t.yaml:12:5: error: VirtualService/shop/r: spec.http[2]: an HTTP route needs `route`, `redirect`, `directResponse` or `delegate`",
                "t.yaml:12:5: warning: VirtualService/shop/r: spec.http[2]: this rule is never used: spec.http[0] before it has no match conditions and takes every request",
            ],
        ),
        (
            "retries",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: reviews}\n    timeout: 1s\n    retries: {attempts: 2, perTryTimeout: 2s, retryOn: \"5xx, reset,gateway-eror,503\"}\n  - route:\n    - destination: {host: reviews}\n    timeout: 500us\n    retries: {attempts: 0, retryOn: 5xx}\n"),
            &[
                "t.yaml:11:28: warning: VirtualService/shop/r: spec.http[0].retries.perTryTimeout: perTryTimeout 2s is longer than the route timeout 1s, so no retry can happen in time",
                "t.yaml:11:47: error: VirtualService/shop/r: spec.http[0].retries.retryOn: ` reset` is not a retry condition (no spaces around commas)",
                "t.yaml:11:47: error: VirtualService/shop/r: spec.http[0].retries.retryOn: `gateway-eror` is not a retry condition; did you mean `gateway-error`?",
                "t.yaml:12:5: warning: VirtualService/shop/r: spec.http[1]: this rule is never used: spec.http[0] before it has no match conditions and takes every request",
                "t.yaml:14:5: error: VirtualService/shop/r: spec.http[1].timeout: duration 0.0005s must be at least 1ms",
                "t.yaml:15:15: error: VirtualService/shop/r: spec.http[1].retries.attempts: retry settings are given but attempts is 0, which disables retries",
            ],
        ),
        (
            "fault",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: reviews}\n    fault:\n      abort: {httpStatus: 99, percentage: {value: 120}}\n      delay: {exponentialDelay: 1s}\n  - route:\n    - destination: {host: reviews}\n    fault: {abort: {grpcStatus: NOPE}}\n"),
            &[
                "t.yaml:11:15: error: VirtualService/shop/r: spec.http[0].fault.abort.httpStatus: HTTP status 99 is not in the range 200-599",
                "t.yaml:11:44: error: VirtualService/shop/r: spec.http[0].fault.abort.percentage.value: percentage 120 must be 0 or in the range [0.0001, 100]",
                "t.yaml:12:15: error: VirtualService/shop/r: spec.http[0].fault.delay.exponentialDelay: exponentialDelay is not supported (by Istio either)",
                "t.yaml:13:5: warning: VirtualService/shop/r: spec.http[1]: this rule is never used: spec.http[0] before it has no match conditions and takes every request",
                "t.yaml:15:21: error: VirtualService/shop/r: spec.http[1].fault.abort.grpcStatus: `NOPE` is not a gRPC status name such as `UNAVAILABLE` or `NOT_FOUND`",
            ],
        ),
        (
            "hosts",
            vs("  hosts: [\"a.*.example.com\", \"-b.example.com\", \"10.0.0.1\"]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: reviews}\n"),
            &[
                "t.yaml:5:11: error: VirtualService/shop/r: spec.hosts[0]: host name `a.*.example.com` is invalid: `*` is only allowed as the whole leftmost label (`*.example.com`)",
                "t.yaml:5:30: error: VirtualService/shop/r: spec.hosts[1]: host name `-b.example.com` is invalid: label `-b` must be 1-63 letters, digits or `-`, not starting or ending with `-`",
                "t.yaml:5:48: warning: VirtualService/shop/r: spec.hosts[2]: `10.0.0.1` is an IP address: HTTP routes match it only when clients send it as the Host",
                "t.yaml:5:48: warning: VirtualService/shop/r: spec.hosts[2]: host `10.0.0.1` is not served by Gateway shop/gw (its hosts: *.example.com), so these routes are never used there",
            ],
        ),
        (
            "duplicate hosts",
            vs("  hosts: [\"b.example.com\", \"*.example.com\"]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: reviews}\n"),
            &[
                "t.yaml:5:28: error: VirtualService/shop/r: spec.hosts[1]: duplicate hosts in virtual service: `b.example.com` and `*.example.com` overlap",
            ],
        ),
        (
            "mesh star",
            vs("  hosts: [\"*\"]\n  http:\n  - route:\n    - destination: {host: reviews}\n"),
            &[
                "t.yaml:5:11: error: VirtualService/shop/r: spec.hosts[0]: host `*` is not allowed for a VirtualService that applies to the mesh",
            ],
        ),
        (
            "no routes",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n"),
            &[
                "t.yaml:4:1: error: VirtualService/shop/r: spec: a VirtualService needs http, tls or tcp routes",
            ],
        ),
        (
            "gateway names",
            vs("  hosts: [a.example.com]\n  gateways: [gw2, other/gw, mesh, gw.shop, \"Bad_Name\"]\n  http:\n  - route:\n    - destination: {host: reviews}\n"),
            &[
                "t.yaml:6:14: error: VirtualService/shop/r: spec.gateways[0]: Gateway shop/gw2 not found; did you mean `shop/gw`?",
                "t.yaml:6:19: error: VirtualService/shop/r: spec.gateways[1]: Gateway other/gw not found",
                "t.yaml:6:35: warning: VirtualService/shop/r: spec.gateways[3]: legacy gateway name form `gw.shop`; prefer `namespace/name`: `shop/gw`",
                "t.yaml:6:44: error: VirtualService/shop/r: spec.gateways[4]: Gateway shop/Bad_Name not found",
                "t.yaml:6:44: error: VirtualService/shop/r: spec.gateways[4]: invalid gateway name `Bad_Name`",
            ],
        ),
        (
            "host not in gateway",
            vs("  hosts: [a.example.net, reviews]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: reviews}\n"),
            &[
                "t.yaml:5:11: warning: VirtualService/shop/r: spec.hosts[0]: host `a.example.net` is not served by Gateway shop/gw (its hosts: *.example.com), so these routes are never used there",
                "t.yaml:5:26: warning: VirtualService/shop/r: spec.hosts[1]: host `reviews` (reviews.shop.svc.cluster.local) is not served by Gateway shop/gw (its hosts: *.example.com), so these routes are never used there",
            ],
        ),
        (
            "unknown destination",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - match: [{uri: {prefix: /a}}]\n    route:\n    - destination: {host: reviewz}\n  - match: [{uri: {prefix: /b}}]\n    route:\n    - destination: {host: api.example.org}\n  - route:\n    - destination: {host: reviews, port: {number: 80}, subset: v3}\n"),
            &[
                "t.yaml:10:21: error: VirtualService/shop/r: spec.http[0].route[0].destination.host: no ServiceEntry defines host `reviewz` (resolved to reviewz.shop.svc.cluster.local); in standalone mode every destination needs one; did you mean `reviews.shop.svc.cluster.local`?",
                "t.yaml:13:7: error: VirtualService/shop/r: spec.http[1].route[0].destination: `api.example.org` has several ports (80, 443); set destination.port to choose one",
                "t.yaml:15:43: error: VirtualService/shop/r: spec.http[2].route[0].destination.port.number: port 80 is not a port of `reviews`; its ports: 9080",
                "t.yaml:15:56: error: VirtualService/shop/r: spec.http[2].route[0].destination.subset: subset `v3` is not defined by any DestinationRule for `reviews`; defined subsets: v1, v2",
            ],
        ),
        (
            "duplicate route names and unreachable",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - name: a\n    match: [{uri: {prefix: /x}}]\n    route:\n    - destination: {host: reviews}\n  - name: a\n    match: [{uri: {prefix: /x}}]\n    route:\n    - destination: {host: reviews}\n  - route:\n    - destination: {host: reviews}\n  - route:\n    - destination: {host: reviews}\n"),
            &[
                "t.yaml:12:5: error: VirtualService/shop/r: spec.http[1].name: route name `a` is already used by spec.http[0]",
                "t.yaml:12:5: warning: VirtualService/shop/r: spec.http[1]: this rule is never used: every one of its matches appears in an earlier rule",
                "t.yaml:18:5: warning: VirtualService/shop/r: spec.http[3]: this rule is never used: spec.http[2] before it has no match conditions and takes every request",
            ],
        ),
        (
            "redirect fields",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - match:\n    - uri: {exact: /a}\n    redirect: {uri: /b, prefixRewrite: /c, redirectCode: 200, scheme: ftp, port: 70000}\n"),
            &[
                "t.yaml:10:5: error: VirtualService/shop/r: spec.http[0].redirect: redirect may have only one of `uri` and `prefixRewrite`",
                "t.yaml:10:25: error: VirtualService/shop/r: spec.http[0].redirect.prefixRewrite: prefixRewrite needs every uri match of the route to be a prefix match",
                "t.yaml:10:44: error: VirtualService/shop/r: spec.http[0].redirect.redirectCode: 200 is not a redirect code (3xx)",
                "t.yaml:10:63: error: VirtualService/shop/r: spec.http[0].redirect.scheme: redirect scheme `ftp` must be `http` or `https`",
                "t.yaml:10:76: error: VirtualService/shop/r: spec.http[0].redirect.port: port number 70000 must be in the range 1..65535",
            ],
        ),
        (
            "rewrite",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: reviews}\n    rewrite: {uri: /a, uriRegexRewrite: {match: \"(\", rewrite: x}}\n"),
            &[
                "t.yaml:10:5: error: VirtualService/shop/r: spec.http[0].rewrite: rewrite may have only one of `uri` and `uriRegexRewrite`",
                "t.yaml:10:42: error: VirtualService/shop/r: spec.http[0].rewrite.uriRegexRewrite.match: invalid regex: unclosed group; Envoy uses RE2 syntax (https://github.com/google/re2/wiki/Syntax)",
            ],
        ),
        (
            "headers",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - match:\n    - headers: {X-User: {exact: a}}\n    route:\n    - destination: {host: reviews}\n    rewrite: {authority: b.example.com}\n    headers:\n      request:\n        set: {host: c.example.com, \"x-a\": \"50%\"}\n      response:\n        remove: [\":status\"]\n"),
            &[
                "t.yaml:9:17: warning: VirtualService/shop/r: spec.http[0].match[0].headers.X-User: header names are matched in lower case; `X-User` never matches as written",
                "t.yaml:15:15: error: VirtualService/shop/r: spec.http[0].headers.request.set.host: the authority is already rewritten to `b.example.com`; it cannot also be set to `c.example.com`",
                "t.yaml:15:36: error: VirtualService/shop/r: spec.http[0].headers.request.set.x-a: header value \"50%\" has an unmatched `%`: write `%%` for a literal percent sign",
                "t.yaml:17:18: error: VirtualService/shop/r: spec.http[0].headers.response.remove[0]: pseudo-header `:status` cannot be changed",
            ],
        ),
        (
            "cors and mirror",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: reviews}\n    corsPolicy: {allowOrigins: [{exact: \"\"}], allowMethods: [get], maxAge: 1500ms}\n    mirror: {host: reviews}\n    mirrors: [{destination: {host: reviews}, percentage: {value: 200}}]\n"),
            &[
                "t.yaml:10:33: error: VirtualService/shop/r: spec.http[0].corsPolicy.allowOrigins[0]: an allowed origin cannot be empty",
                "t.yaml:10:62: error: VirtualService/shop/r: spec.http[0].corsPolicy.allowMethods[0]: `get` is not an HTTP method (methods are upper case)",
                "t.yaml:10:68: error: VirtualService/shop/r: spec.http[0].corsPolicy.maxAge: maxAge is sent in whole seconds",
                "t.yaml:12:5: error: VirtualService/shop/r: spec.http[0].mirrors: a route cannot have both `mirror` and `mirrors`",
                "t.yaml:12:59: error: VirtualService/shop/r: spec.http[0].mirrors[0].percentage.value: percentage 200 must be 0 or in the range [0.0001, 100]",
            ],
        ),
        (
            "conflicting virtual services",
            format!("{}---\n{}", vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: reviews}\n"), vs("  hosts: [a.example.com]\n  gateways: [shop/gw]\n  http:\n  - route:\n    - destination: {host: reviews}\n").replace("name: r,", "name: r2,")),
            &[
                "t.yaml:15:11: warning: VirtualService/shop/r2: spec.hosts[0]: host `a.example.com` on Gateway shop/gw is also routed by VirtualService shop/r (t.yaml:1); Istio merges them in creation order, meshgate in load order, so shop/r's routes come first; shop/r has a rule without match conditions, so these HTTP routes are never used",
            ],
        ),
        (
            "duplicate resource",
            format!("{}---\n{}", vs("  hosts: [a.example.com]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: reviews}\n"), vs("  hosts: [b.example.com]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: reviews}\n")),
            &[
                "t.yaml:13:12: error: VirtualService/shop/r: metadata.name: VirtualService shop/r is already defined at t.yaml:1",
            ],
        ),
        (
            "tls and tcp routes",
            vs("  hosts: [api.example.org]\n  gateways: [gw]\n  tls:\n  - match: [{sniHosts: [other.example.org], destinationSubnets: [10.0.0.0/33]}]\n    route:\n    - destination: {host: api.example.org, port: {number: 443}}\n  tcp:\n  - match: [{port: 0}]\n"),
            &[
                "t.yaml:5:11: warning: VirtualService/shop/r: spec.hosts[0]: host `api.example.org` is not served by Gateway shop/gw (its hosts: *.example.com), so these routes are never used there",
                "t.yaml:8:25: error: VirtualService/shop/r: spec.tls[0].match[0].sniHosts[0]: SNI host `other.example.org` is not covered by the VirtualService hosts [api.example.org]",
                "t.yaml:8:66: error: VirtualService/shop/r: spec.tls[0].match[0].destinationSubnets[0]: `10.0.0.0/33` is not an IP address or CIDR block",
                "t.yaml:12:5: error: VirtualService/shop/r: spec.tcp[0]: a TCP route needs `route`",
            ],
        ),
        (
            "unsupported fields",
            vs("  hosts: [a.example.com]\n  gateways: [gw]\n  exportTo: [\".\"]\n  http:\n  - match:\n    - sourceLabels: {app: x}\n    route:\n    - destination: {host: reviews}\n"),
            &[
            ],
        ),
    ];
    run_table(&cases);
}

#[test]
fn names_and_namespaces() {
    let cases: Vec<(&str, String, &[&str])> = vec![(
        "kubernetes names",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: My_Entry, namespace: Shop}\nspec:\n  hosts: [n.example.net]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n".to_string(),
        &[
            "t.yaml:3:12: error: ServiceEntry/Shop/My_Entry: metadata.name: name `My_Entry` must be a lower-case DNS-1123 subdomain (letters, digits, `-`, `.`)",
            "t.yaml:3:28: error: ServiceEntry/Shop/My_Entry: metadata.namespace: namespace `Shop` must be a lower-case DNS-1123 label (letters, digits, `-`)",
        ],
    )];
    run_table(&cases);
}

#[test]
fn gateway_rules() {
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "no servers",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g2, namespace: shop}\nspec:\n  selector: {istio: ingressgateway}\n  servers: []\n".to_string(),
            &[
                "t.yaml:6:3: error: Gateway/shop/g2: spec.servers: a gateway needs at least one server",
            ],
        ),
        (
            "ports and protocols",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g2, namespace: shop}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 0, name: a, protocol: HTPP}\n    hosts: [x.example.net]\n  - port: {number: 9090, name: a, protocol: HTTP, targetPort: 80}\n    hosts: [y.example.net]\n  - hosts: [z.example.net]\n".to_string(),
            &[
                "t.yaml:7:12: error: Gateway/shop/g2: spec.servers[0].port.number: port number 0 must be in the range 1..65535",
                "t.yaml:7:32: error: Gateway/shop/g2: spec.servers[0].port.protocol: unknown protocol `HTPP`; did you mean `HTTP`?",
                "t.yaml:9:26: error: Gateway/shop/g2: spec.servers[1].port.name: port name `a` is already used by spec.servers[0]; port names must be unique in a gateway",
                "t.yaml:9:51: error: Gateway/shop/g2: spec.servers[1].port.targetPort: targetPort has no effect on Gateways",
                "t.yaml:11:5: error: Gateway/shop/g2: spec.servers[2]: a server needs a port",
            ],
        ),
        (
            "hosts",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g2, namespace: shop}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 9090, name: http, protocol: HTTP}\n    hosts: [reviews, \"a.*.com\", \"*foo.example.net\", \"bad_ns!/x.example.net\", \"./ok.example.net\", \"*/ok2.example.net\", \"/x\"]\n  - port: {number: 9091, name: http2, protocol: HTTP}\n    hosts: []\n".to_string(),
            &[
                "t.yaml:8:13: error: Gateway/shop/g2: spec.servers[0].hosts[0]: `reviews` is a short name; gateway hosts must be fully qualified (e.g. `reviews.example.com`)",
                "t.yaml:8:22: error: Gateway/shop/g2: spec.servers[0].hosts[1]: host name `a.*.com` is invalid: `*` is only allowed as the whole leftmost label (`*.example.com`)",
                "t.yaml:8:33: error: Gateway/shop/g2: spec.servers[0].hosts[2]: partial wildcard `*foo.example.net` is not allowed; use a whole label (`*.example.net`)",
                "t.yaml:8:53: error: Gateway/shop/g2: spec.servers[0].hosts[3]: `bad_ns!/x.example.net`: `bad_ns!` is not `*`, `.` or a namespace name",
                "t.yaml:8:119: error: Gateway/shop/g2: spec.servers[0].hosts[6]: `/x`: namespace and host in `namespace/host` cannot be empty",
                "t.yaml:10:5: error: Gateway/shop/g2: spec.servers[1].hosts: a server needs at least one host",
            ],
        ),
        (
            "tls modes",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g2, namespace: shop}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.net]\n  - port: {number: 444, name: https2, protocol: HTTPS}\n    hosts: [b.example.net]\n    tls: {mode: SIMPLE}\n  - port: {number: 445, name: https3, protocol: HTTPS}\n    hosts: [c.example.net]\n    tls: {mode: MUTUAL, credentialName: c, serverCertificate: /a, privateKey: /b}\n  - port: {number: 446, name: tls, protocol: TLS}\n    hosts: [d.example.net]\n    tls: {mode: PASSTHROUGH, serverCertificate: /a}\n  - port: {number: 447, name: mtls, protocol: HTTPS}\n    hosts: [e.example.net]\n    tls: {mode: MUTUAL, serverCertificate: /a, privateKey: /b, httpsRedirect: true}\n  - port: {number: 448, name: im, protocol: TLS}\n    hosts: [f.example.net]\n    tls: {mode: ISTIO_MUTUAL, credentialName: x, minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2}\n".to_string(),
            &[
                "t.yaml:7:5: error: Gateway/shop/g2: spec.servers[0]: a HTTPS server needs `tls` settings",
                "t.yaml:11:5: error: Gateway/shop/g2: spec.servers[1].tls: SIMPLE TLS needs `credentialName`, or `serverCertificate` and `privateKey`",
                "t.yaml:14:5: error: Gateway/shop/g2: spec.servers[2].tls: set only one of credentialName, credentialNames, serverCertificate/privateKey, tlsCertificates",
                "t.yaml:14:25: warning: Gateway/shop/g2: spec.servers[2].tls.credentialName: Secret shop/c not found (credentials are read from the gateway's namespace)",
                "t.yaml:17:5: warning: Gateway/shop/g2: spec.servers[3].tls: PASSTHROUGH does not terminate TLS; the certificates given are ignored",
                "t.yaml:20:5: error: Gateway/shop/g2: spec.servers[4].tls: MUTUAL TLS needs `caCertificates` (or `credentialName`) to verify client certificates",
                "t.yaml:20:64: warning: Gateway/shop/g2: spec.servers[4].tls.httpsRedirect: httpsRedirect only makes sense on plain HTTP servers; requests here are already HTTPS",
                "t.yaml:23:31: error: Gateway/shop/g2: spec.servers[5].tls.credentialName: ISTIO_MUTUAL uses mesh certificates; `credentialName` must not be set",
                "t.yaml:23:31: warning: Gateway/shop/g2: spec.servers[5].tls.credentialName: Secret shop/x not found (credentials are read from the gateway's namespace)",
                "t.yaml:23:79: error: Gateway/shop/g2: spec.servers[5].tls.maxProtocolVersion: maxProtocolVersion TLSV1_2 is below minProtocolVersion TLSV1_3",
            ],
        ),
        (
            "tls on plain ports",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g2, namespace: shop}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 9090, name: http, protocol: HTTP}\n    hosts: [a.example.net]\n    tls: {httpsRedirect: true}\n  - port: {number: 9091, name: http2, protocol: HTTP}\n    hosts: [b.example.net]\n    tls: {mode: SIMPLE, credentialName: x}\n  - port: {number: 9092, name: tcp, protocol: TCP}\n    hosts: [c.example.net]\n    tls: {mode: SIMPLE, credentialName: x}\n".to_string(),
            &[
                "t.yaml:12:5: error: Gateway/shop/g2: spec.servers[1].tls: a plain-text HTTP server can only use `tls.httpsRedirect`; serve TLS with protocol HTTPS",
                "t.yaml:12:25: warning: Gateway/shop/g2: spec.servers[1].tls.credentialName: Secret shop/x not found (credentials are read from the gateway's namespace)",
                "t.yaml:15:5: error: Gateway/shop/g2: spec.servers[2].tls: a TCP server cannot have TLS settings",
                "t.yaml:15:25: warning: Gateway/shop/g2: spec.servers[2].tls.credentialName: Secret shop/x not found (credentials are read from the gateway's namespace)",
            ],
        ),
        (
            "conflicts",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g2, namespace: shop}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [a.example.com]\n  - port: {number: 8443, name: https, protocol: HTTPS}\n    hosts: [b.example.com]\n    tls: {mode: SIMPLE, credentialName: cert}\n  - port: {number: 8443, name: https2, protocol: HTTPS}\n    hosts: [\"*.example.com\"]\n    tls: {mode: SIMPLE, credentialName: cert}\n  - port: {number: 8080, name: tcp, protocol: TCP}\n    hosts: [c.example.com]\n".to_string(),
            &[
                "t.yaml:8:13: warning: Gateway/shop/g2: spec.servers[0].hosts[0]: host `a.example.com` on port 8080 is also served by Gateway shop/gw (base.yaml:2) spec.servers[0] (`*.example.com`); their routes are merged",
                "t.yaml:11:25: warning: Gateway/shop/g2: spec.servers[1].tls.credentialName: Secret shop/cert not found (credentials are read from the gateway's namespace)",
                "t.yaml:13:13: error: Gateway/shop/g2: spec.servers[2].hosts[0]: host `*.example.com` on port 8443 is also served by spec.servers[1] (`b.example.com`); only one TLS server can answer a given SNI",
                "t.yaml:14:25: warning: Gateway/shop/g2: spec.servers[2].tls.credentialName: Secret shop/cert not found (credentials are read from the gateway's namespace)",
                "t.yaml:15:5: error: Gateway/shop/g2: spec.servers[3].port: port 8080 is served as TCP here and as HTTP by Gateway shop/gw (base.yaml:2) spec.servers[0]; one port cannot carry both",
                "t.yaml:15:5: error: Gateway/shop/g2: spec.servers[3].port: port 8080 is served as TCP here and as HTTP by spec.servers[0]; one port cannot carry both",
            ],
        ),
        (
            "servers on different bind addresses are different listeners",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g2, namespace: shop}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 9090, name: http, protocol: HTTP}\n    bind: 127.0.0.1\n    hosts: [a.example.net]\n  - port: {number: 9090, name: http2, protocol: HTTP}\n    bind: 127.0.0.2\n    hosts: [a.example.net]\n  - port: {number: 9090, name: tcp, protocol: TCP}\n    bind: 127.0.0.3\n    hosts: [a.example.net]\n".to_string(),
            &[],
        ),
        (
            "credentials",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g2, namespace: shop}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 8443, name: https, protocol: HTTPS}\n    hosts: [b.example.net]\n    tls: {mode: SIMPLE, credentialName: missing}\n  - port: {number: 8444, name: https2, protocol: HTTPS}\n    hosts: [c.example.net]\n    tls: {mode: SIMPLE, credentialName: \"kubernetes://partial\"}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: partial, namespace: shop}\nstringData: {tls.crt: x}\n".to_string(),
            &[
                "t.yaml:9:25: warning: Gateway/shop/g2: spec.servers[0].tls.credentialName: Secret shop/missing not found (credentials are read from the gateway's namespace)",
                "t.yaml:12:25: warning: Gateway/shop/g2: spec.servers[1].tls.credentialName: Secret shop/partial has neither tls.crt/tls.key nor cert/key",
            ],
        ),
        (
            "bind and default endpoint",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g2, namespace: shop}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 9090, name: http, protocol: HTTP}\n    hosts: [a.example.net]\n    bind: nowhere\n    defaultEndpoint: localhost:80\n  - port: {number: 9091, name: u, protocol: HTTP}\n    hosts: [b.example.net]\n    bind: unix:///tmp/s\n".to_string(),
            &[
                "t.yaml:9:5: error: Gateway/shop/g2: spec.servers[0].bind: bind `nowhere` must be an IP address or a unix:// path",
                "t.yaml:10:5: error: Gateway/shop/g2: spec.servers[0].defaultEndpoint: defaultEndpoint `localhost:80` must be IP:PORT or unix://PATH",
                "t.yaml:10:5: warning: Gateway/shop/g2: spec.servers[0].defaultEndpoint: `defaultEndpoint` is parsed but not acted on yet: default endpoints (sidecar ingress) are not supported",
                "t.yaml:11:12: error: Gateway/shop/g2: spec.servers[1].port.number: port number must be 0 when binding a unix domain socket, not 9091",
                "t.yaml:13:5: error: Gateway/shop/g2: spec.servers[1].bind: unix domain socket listeners are not served by meshgate's data plane yet; bind an IP address",
            ],
        ),
    ];
    run_table(&cases);
}

#[test]
fn destination_rule_rules() {
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "subsets",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: shop}\nspec:\n  host: api.example.org\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v1}\n  - {name: Bad_Name}\n".to_string(),
            &[
                "t.yaml:8:6: error: DestinationRule/shop/d: spec.subsets[1].name: subset `v1` is already defined by spec.subsets[0]",
                "t.yaml:9:6: error: DestinationRule/shop/d: spec.subsets[2].name: subset name `Bad_Name` must be a DNS-1123 label",
            ],
        ),
        (
            "empty policy",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: shop}\nspec:\n  host: api.example.org\n  trafficPolicy: {}\n".to_string(),
            &[
                "t.yaml:6:3: error: DestinationRule/shop/d: spec.trafficPolicy: a traffic policy needs at least one field",
            ],
        ),
        (
            "load balancer",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: shop}\nspec:\n  host: api.example.org\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {maglev: {tableSize: 1000}, minimumRingSize: 10}\n      localityLbSetting: {distribute: [{from: a, to: {b: 50}}], failover: [{from: a, to: a}]}\n      zoneAwareLbSetting: {enabled: true}\n    portLevelSettings:\n    - port: {number: 80}\n      loadBalancer: {simple: LEAST_CONN}\n    - port: {number: 80}\n".to_string(),
            &[
                "t.yaml:7:5: error: DestinationRule/shop/d: spec.trafficPolicy.loadBalancer: only one of localityLbSetting and zoneAwareLbSetting can be set",
                "t.yaml:8:7: error: DestinationRule/shop/d: spec.trafficPolicy.loadBalancer.consistentHash: consistentHash needs one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
                "t.yaml:8:33: error: DestinationRule/shop/d: spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: tableSize 1000 is not a prime number",
                "t.yaml:8:51: error: DestinationRule/shop/d: spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize: minimumRingSize cannot be combined with ringHash or maglev",
                "t.yaml:8:51: warning: DestinationRule/shop/d: spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize: minimumRingSize is deprecated; use ringHash.minimumRingSize",
                "t.yaml:9:7: error: DestinationRule/shop/d: spec.trafficPolicy.loadBalancer.localityLbSetting: distribute and failover cannot both be set",
                "t.yaml:10:7: warning: DestinationRule/shop/d: spec.trafficPolicy.loadBalancer.zoneAwareLbSetting: `zoneAwareLbSetting` is parsed but not acted on yet: zone-aware load balancing is not supported yet",
                "t.yaml:13:22: warning: DestinationRule/shop/d: spec.trafficPolicy.portLevelSettings[0].loadBalancer.simple: LEAST_CONN is deprecated; use LEAST_REQUEST",
                "t.yaml:14:7: error: DestinationRule/shop/d: spec.trafficPolicy.portLevelSettings[1]: a port-level policy needs at least one of loadBalancer, connectionPool, outlierDetection, tls",
                "t.yaml:14:14: error: DestinationRule/shop/d: spec.trafficPolicy.portLevelSettings[1].port.number: port 80 already has a policy in portLevelSettings[0]",
            ],
        ),
        (
            "pools and outliers",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: shop}\nspec:\n  host: api.example.org\n  trafficPolicy:\n    connectionPool:\n      http: {http1MaxPendingRequests: -1, h2UpgradePolicy: UPGRADE, useClientProtocol: true, http2KeepAlive: {interval: 1s}}\n      tcp: {connectTimeout: 0s, idleTimeout: 0s}\n    outlierDetection: {consecutiveErrors: 5, consecutiveLocalOriginFailures: 3, maxEjectionPercent: 150, outlierDetectionHttpErrorCodes: [700]}\n".to_string(),
            &[
                "t.yaml:8:14: error: DestinationRule/shop/d: spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests: http1MaxPendingRequests cannot be negative",
                "t.yaml:8:69: error: DestinationRule/shop/d: spec.trafficPolicy.connectionPool.http.useClientProtocol: useClientProtocol cannot be true with h2UpgradePolicy UPGRADE",
                "t.yaml:8:94: error: DestinationRule/shop/d: spec.trafficPolicy.connectionPool.http.http2KeepAlive: http2KeepAlive needs `timeout`",
                "t.yaml:9:13: error: DestinationRule/shop/d: spec.trafficPolicy.connectionPool.tcp.connectTimeout: duration 0s must be at least 1ms",
                "t.yaml:10:24: warning: DestinationRule/shop/d: spec.trafficPolicy.outlierDetection.consecutiveErrors: consecutiveErrors is deprecated; use consecutiveGatewayErrors or consecutive5xxErrors",
                "t.yaml:10:46: error: DestinationRule/shop/d: spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures: consecutiveLocalOriginFailures needs splitExternalLocalOriginErrors: true",
                "t.yaml:10:81: error: DestinationRule/shop/d: spec.trafficPolicy.outlierDetection.maxEjectionPercent: maxEjectionPercent 150 is not in the range 0..100",
                "t.yaml:10:139: error: DestinationRule/shop/d: spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[0]: 700 is not an HTTP status code",
            ],
        ),
        (
            "client tls",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: shop}\nspec:\n  host: api.example.org\n  trafficPolicy:\n    tls: {mode: MUTUAL, caCertificates: /ca.pem, insecureSkipVerify: true}\n  subsets:\n  - name: v1\n    trafficPolicy:\n      tls: {mode: SIMPLE, credentialName: c, clientCertificate: /c.pem}\n".to_string(),
            &[
                "t.yaml:7:5: error: DestinationRule/shop/d: spec.trafficPolicy.tls: MUTUAL TLS needs clientCertificate (or credentialName)",
                "t.yaml:7:5: error: DestinationRule/shop/d: spec.trafficPolicy.tls: MUTUAL TLS needs privateKey (or credentialName)",
                "t.yaml:7:50: error: DestinationRule/shop/d: spec.trafficPolicy.tls.insecureSkipVerify: insecureSkipVerify cannot be combined with caCertificates, subjectAltNames or a CA credential",
                "t.yaml:11:27: error: DestinationRule/shop/d: spec.subsets[0].trafficPolicy.tls.credentialName: credentialName cannot be combined with clientCertificate, privateKey, caCertificates or caCrl",
            ],
        ),
        (
            "cross resource",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: shop}\nspec:\n  host: nothing.example.org\n  subsets: [{name: v9, labels: {version: v9}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews2, namespace: shop}\nspec:\n  host: reviews.shop.svc.cluster.local\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v3, labels: {version: v3}}\n".to_string(),
            &[
                "t.yaml:5:3: warning: DestinationRule/shop/d: spec.host: no ServiceEntry defines host `nothing.example.org`, so this rule applies to nothing",
                "t.yaml:12:3: warning: DestinationRule/shop/reviews2: spec.host: DestinationRule shop/reviews (base.yaml:23) has the same host in this namespace; Istio merges them, and where they overlap the one loaded first (shop/reviews) wins",
                "t.yaml:14:6: warning: DestinationRule/shop/reviews2: spec.subsets[0].name: subset `v1` is also defined by shop/reviews, whose definition wins",
                "t.yaml:15:16: warning: DestinationRule/shop/reviews2: spec.subsets[1].labels: subset `v3` selects no endpoint of `reviews.shop.svc.cluster.local`",
            ],
        ),
        (
            "subsets by topology labels",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: located, namespace: shop}\nspec:\n  hosts: [located.example.org]\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints:\n  - {address: 127.0.0.1, locality: eu/z1}\n  - {address: 127.0.0.2, labels: {istio-locality: us.z2}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: located, namespace: shop}\nspec:\n  host: located.example.org\n  subsets:\n  - {name: eu, labels: {topology.kubernetes.io/region: eu}}\n  - {name: us, labels: {topology.kubernetes.io/zone: z2}}\n  - {name: ap, labels: {topology.kubernetes.io/region: ap}}\n".to_string(),
            &[
                "t.yaml:20:16: warning: DestinationRule/shop/located: spec.subsets[2].labels: subset `ap` selects no endpoint of `located.example.org`",
            ],
        ),
        (
            "wildcard hosts",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: w, namespace: shop}\nspec:\n  host: '*.svc.cluster.local'\n  subsets:\n  - {name: v2, labels: {version: v2}}\n  - {name: v7, labels: {version: v7}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: o, namespace: shop}\nspec:\n  host: '*.org'\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: n, namespace: shop}\nspec:\n  host: '*.nowhere.net'\n".to_string(),
            &[
                "t.yaml:8:16: warning: DestinationRule/shop/w: spec.subsets[1].labels: subset `v7` selects no endpoint of `*.svc.cluster.local`",
                "t.yaml:20:3: warning: DestinationRule/shop/n: spec.host: no ServiceEntry defines host `*.nowhere.net`, so this rule applies to nothing",
            ],
        ),
        (
            "unsupported fields",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: shop}\nspec:\n  host: api.example.org\n  workloadSelector: {matchLabels: {app: x}}\n  trafficPolicy:\n    tunnel: {targetHost: proxy.example.org, targetPort: 3128}\n".to_string(),
            &[
                "t.yaml:8:5: warning: DestinationRule/shop/d: spec.trafficPolicy.tunnel: `tunnel` is parsed but not acted on yet: tunnelling through HTTP CONNECT/POST is not supported yet",
            ],
        ),
    ];
    run_table(&cases);
}

#[test]
fn service_entry_rules() {
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "hosts and ports",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e, namespace: shop}\nspec:\n  hosts: [\"*\", \"*foo.example.net\"]\n  resolution: NONE\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n  - {number: 80, name: http, protocol: HTTTP}\n  - {number: 0, name: Bad_Port}\n".to_string(),
            &[
                "t.yaml:5:11: error: ServiceEntry/shop/e: spec.hosts[0]: host `*` is not allowed in a ServiceEntry",
                "t.yaml:5:16: warning: ServiceEntry/shop/e: spec.hosts[1]: partial wildcard `*foo.example.net` is not supported; use `*.` and a whole domain",
                "t.yaml:9:6: error: ServiceEntry/shop/e: spec.ports[1].number: port 80 is already defined by spec.ports[0]",
                "t.yaml:9:18: error: ServiceEntry/shop/e: spec.ports[1].name: port name `http` is already used by spec.ports[0]",
                "t.yaml:9:30: error: ServiceEntry/shop/e: spec.ports[1].protocol: unknown protocol `HTTTP`; did you mean `HTTP`?",
                "t.yaml:10:6: error: ServiceEntry/shop/e: spec.ports[2].number: port number 0 must be in the range 1..65535",
                "t.yaml:10:17: error: ServiceEntry/shop/e: spec.ports[2].name: invalid port name `Bad_Port`: it must be a DNS-1123 label",
            ],
        ),
        (
            "static",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e, namespace: shop}\nspec:\n  hosts: [s.example.net]\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints:\n  - {address: db.example.net}\n  - {address: 10.0.0.1, ports: {grpc: 8080}}\n".to_string(),
            &[
                "t.yaml:9:6: error: ServiceEntry/shop/e: spec.endpoints[0].address: `db.example.net` is not an IP address; resolution STATIC needs IP endpoints (use DNS for host names)",
                "t.yaml:10:33: error: ServiceEntry/shop/e: spec.endpoints[1].ports.grpc: endpoint port `grpc` is not a port name of this ServiceEntry",
            ],
        ),
        (
            "static without endpoints",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e, namespace: shop}\nspec:\n  hosts: [s.example.net]\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n".to_string(),
            &[
                "t.yaml:6:3: error: ServiceEntry/shop/e: spec.resolution: resolution STATIC needs endpoints with IP addresses or a workloadSelector; this service has no endpoints",
            ],
        ),
        (
            "dns",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e, namespace: shop}\nspec:\n  hosts: [\"*.example.net\", b.example.net]\n  resolution: DNS_ROUND_ROBIN\n  ports: [{number: 5432, name: pg, protocol: TCP}]\n  addresses: [10.0.0.0/24]\n".to_string(),
            &[
                "t.yaml:5:11: error: ServiceEntry/shop/e: spec.hosts[0]: resolution DNS_ROUND_ROBIN without endpoints resolves the hosts themselves, and wildcard `*.example.net` cannot be resolved; list endpoints or use DYNAMIC_DNS",
                "t.yaml:7:36: error: ServiceEntry/shop/e: spec.ports[0].protocol: several hosts on a non-HTTP, non-TLS port cannot be told apart; use one host per ServiceEntry or resolution NONE",
                "t.yaml:8:3: error: ServiceEntry/shop/e: spec.addresses: CIDR addresses are only allowed with resolution NONE or STATIC",
            ],
        ),
        (
            "dns endpoints",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e, namespace: shop}\nspec:\n  hosts: [d.example.net]\n  resolution: DNS_ROUND_ROBIN\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints: [{address: a.example.net}, {address: b.example.net}]\n".to_string(),
            &[
                "t.yaml:8:3: error: ServiceEntry/shop/e: spec.endpoints: resolution DNS_ROUND_ROBIN takes at most one endpoint",
            ],
        ),
        (
            "export to no namespace",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e, namespace: shop}\nspec:\n  hosts: [n.example.net]\n  exportTo: ['~']\n  ports: [{number: 80, name: http, protocol: HTTP}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: f, namespace: shop}\nspec:\n  hosts: [m.example.net]\n  exportTo: ['~', shop]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n".to_string(),
            &[
                "t.yaml:14:3: error: ServiceEntry/shop/f: spec.exportTo: `~` exports to no namespace and cannot be combined with others",
            ],
        ),
        (
            "none with endpoints",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e, namespace: shop}\nspec:\n  hosts: [n.example.net]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints: [{address: 10.0.0.1}]\n  workloadSelector: {labels: {app: n}}\n".to_string(),
            &[
                "t.yaml:7:3: error: ServiceEntry/shop/e: spec.endpoints: resolution NONE takes no endpoints (traffic goes to the address the client asked for)",
                "t.yaml:8:3: error: ServiceEntry/shop/e: spec.workloadSelector: only one of workloadSelector and endpoints can be set",
            ],
        ),
        (
            "dynamic dns",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e, namespace: shop}\nspec:\n  hosts: [dyn.example.net]\n  resolution: DYNAMIC_DNS\n  ports: [{number: 5432, name: pg, protocol: TCP}]\n  addresses: [10.0.0.1]\n".to_string(),
            &[
                "t.yaml:5:11: error: ServiceEntry/shop/e: spec.hosts[0]: resolution DYNAMIC_DNS needs wildcard hosts",
                "t.yaml:7:36: error: ServiceEntry/shop/e: spec.ports[0].protocol: resolution DYNAMIC_DNS supports only HTTP, TLS, GRPC and HTTP2 ports",
                "t.yaml:8:3: error: ServiceEntry/shop/e: spec.addresses: resolution DYNAMIC_DNS takes no addresses",
            ],
        ),
        (
            "workload entries",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e, namespace: shop}\nspec:\n  hosts: [w.example.net]\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  workloadSelector: {labels: {app: w}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w1, namespace: shop}\nspec: {address: 10.0.0.5, labels: {app: w}, ports: {http: 70000}, locality: \"a//b\"}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w2, namespace: shop}\nspec: {labels: {app: other}, serviceAccount: sa}\n".to_string(),
            &[
                "t.yaml:13:53: error: WorkloadEntry/shop/w1: spec.ports.http: port number 70000 must be in the range 1..65535",
                "t.yaml:13:67: error: WorkloadEntry/shop/w1: spec.locality: locality `a//b` must be region, region/zone or region/zone/subzone",
                "t.yaml:18:1: error: WorkloadEntry/shop/w2: spec.address: address is required",
                "t.yaml:18:8: warning: WorkloadEntry/shop/w2: spec.labels: no ServiceEntry in namespace `shop` selects this WorkloadEntry, so it receives no traffic",
            ],
        ),
    ];
    run_table(&cases);
}

fn sidecar(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}"
    )
}

#[test]
fn sidecar_rules() {
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "served",
            sidecar(
                "s",
                "  workloadSelector: {labels: {app: cart}}\n  egress:\n  - port: {number: 9080, protocol: HTTP, name: http}\n    hosts: [./reviews.shop.svc.cluster.local, \"*/*.example.org\"]\n  - hosts: [\"./*\", \"~istio-system/*.internal\", istio-system/*]\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
            ),
            &[],
        ),
        (
            "empty",
            sidecar("s", "  egress: []\n"),
            &[
                "t.yaml:4:1: error: Sidecar/shop/s: spec: a Sidecar needs egress, ingress, outboundTrafficPolicy or inboundConnectionPool",
            ],
        ),
        (
            "listeners",
            sidecar(
                "s",
                "  egress:\n  - hosts: [\"*/*\"]\n  - port: {number: 80, protocol: HTTPS, targetPort: 8080}\n    hosts: [foo/bar.example.com, foo/*, nohost, \"ns/\"]\n  - port: {number: 80, protocol: HTTP_PROXY}\n    hosts: [\"*/*\", ./a.example.com]\n  - port: {number: 0, protocol: HTP}\n    hosts: []\n  - hosts: [./*]\n",
            ),
            &[
                "t.yaml:6:5: error: Sidecar/shop/s: spec.egress[0]: the egress listener without a port (the catch-all) must be the last one",
                "t.yaml:7:41: error: Sidecar/shop/s: spec.egress[1].port.targetPort: targetPort has no effect on Sidecars",
                "t.yaml:8:34: warning: Sidecar/shop/s: spec.egress[1].hosts[1]: duplicated egress host `foo/*`",
                "t.yaml:8:41: error: Sidecar/shop/s: spec.egress[1].hosts[2]: host `nohost` must be of the form namespace/dnsName (`./*`, `*/*`, `ns/host`)",
                "t.yaml:8:49: error: Sidecar/shop/s: spec.egress[1].hosts[3]: `ns/`: the namespace and the dnsName cannot be empty",
                "t.yaml:9:12: error: Sidecar/shop/s: spec.egress[2].port.number: port 80 is already declared by spec.egress[1]; ports of egress listeners must be unique",
                "t.yaml:9:24: error: Sidecar/shop/s: spec.egress[2].port.protocol: an HTTP_PROXY egress listener (an explicit proxy the application connects to) is not served by meshgate yet; the configuration is refused rather than served without it (remove the field)",
                "t.yaml:10:5: warning: Sidecar/shop/s: spec.egress[2].hosts: `*/*` imports everything; the other hosts add nothing",
                "t.yaml:11:12: error: Sidecar/shop/s: spec.egress[3].port.number: port 0 (a Unix domain socket listener) is not served by meshgate yet; the configuration is refused rather than served without it (remove the field)",
                "t.yaml:11:23: error: Sidecar/shop/s: spec.egress[3].port.protocol: unknown protocol `HTP`; did you mean `HTTP`?",
                "t.yaml:12:5: error: Sidecar/shop/s: spec.egress[3].hosts: an egress listener needs at least one host",
                "t.yaml:13:5: error: Sidecar/shop/s: spec.egress[4]: only one egress listener may have no port (spec.egress[0] has none)",
            ],
        ),
        (
            "selectors",
            format!(
                "{}---\n{}---\n{}---\n{}",
                sidecar("a", "  egress: [{hosts: [./*]}]\n"),
                sidecar("b", "  egress: [{hosts: [./*]}]\n"),
                sidecar(
                    "c",
                    "  workloadSelector: {labels: {app: x}}\n  egress: [{hosts: [./*]}]\n"
                ),
                sidecar(
                    "d",
                    "  workloadSelector: {labels: {app: x}}\n  egress: [{hosts: [./*]}]\n"
                ),
            ),
            &[
                "t.yaml:9:12: error: Sidecar/shop/b: metadata.name: Sidecar shop/a (t.yaml:1) also has no workloadSelector in namespace `shop`; which one applies would be undefined",
                "t.yaml:24:3: error: Sidecar/shop/d: spec.workloadSelector: Sidecar shop/c (t.yaml:13) also has the same workloadSelector in namespace `shop`; which one applies would be undefined",
            ],
        ),
    ];
    run_table(&cases);
}
