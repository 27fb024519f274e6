//! `meshgate validate` as users run it: the built binary on the files under
//! tests/testdata, with the exact lines it prints and its exit codes.
use std::path::Path;
use std::process::{Command, Output};

fn meshgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run the meshgate binary")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every file under tests/testdata/invalid: (file name, exit code, exact stdout lines).
const INVALID: &[(&str, i32, &[&str])] = &[
    (
        "bad-duration.yaml",
        1,
        &[
            "tests/testdata/invalid/bad-duration.yaml:30:5: error: VirtualService/shop/cart: spec.http[0].timeout: duration `5sec` has unknown unit `sec` (use ns, us, ms, s, m or h)",
        ],
    ),
    (
        "bad-regex.yaml",
        1,
        &[
            "tests/testdata/invalid/bad-regex.yaml:29:13: error: VirtualService/shop/cart: spec.http[0].match[0].uri.regex: invalid regex: look-around, including look-ahead and look-behind, is not supported; Envoy uses RE2 syntax (https://github.com/google/re2/wiki/Syntax)",
        ],
    ),
    (
        "conflicting-servers.yaml",
        1,
        &[
            "tests/testdata/invalid/conflicting-servers.yaml:17:5: error: Gateway/default/db: spec.servers[0].port: port 8080 is served as TCP here and as HTTP by Gateway default/web (tests/testdata/invalid/conflicting-servers.yaml:2) spec.servers[0]; one port cannot carry both",
        ],
    ),
    (
        "custom-unknown-provider.yaml",
        1,
        &[
            "tests/testdata/invalid/custom-unknown-provider.yaml:6:35: error: AuthorizationPolicy/default/ext-authz: spec.provider.name: extension provider \"opa\" is not defined in the mesh configuration (extensionProviders); defined: []",
        ],
    ),
    (
        "duplicate-name.yaml",
        1,
        &[
            "tests/testdata/invalid/duplicate-name.yaml:12:12: error: Gateway/default/web: metadata.name: Gateway default/web is already defined at tests/testdata/invalid/duplicate-name.yaml:2",
        ],
    ),
    (
        "invalid-utf8.yaml",
        1,
        &[
            "tests/testdata/invalid/invalid-utf8.yaml:4:22: error: invalid UTF-8 (byte 0xe9); configuration files must be UTF-8",
        ],
    ),
    (
        "istio-mutual.yaml",
        1,
        &[
            "tests/testdata/invalid/istio-mutual.yaml:7:3: warning: DestinationRule/shop/reviews: spec.host: no ServiceEntry defines host `reviews.shop.svc.cluster.local`, so this rule applies to nothing",
            "tests/testdata/invalid/istio-mutual.yaml:9:5: error: DestinationRule/shop/reviews: spec.trafficPolicy.tls: ISTIO_MUTUAL uses mesh certificates; certificate files and credentialName must not be set",
        ],
    ),
    (
        "missing-destination.yaml",
        1,
        &[
            "tests/testdata/invalid/missing-destination.yaml:29:21: error: VirtualService/shop/cart: spec.http[0].route[0].destination.host: no ServiceEntry defines host `payments` (resolved to payments.shop.svc.cluster.local); in standalone mode every destination needs one",
        ],
    ),
    (
        "negative-weight.yaml",
        1,
        &[
            "tests/testdata/invalid/negative-weight.yaml:30:7: error: VirtualService/shop/cart: spec.http[0].route[0].weight: weight -20 is negative",
        ],
    ),
    (
        "oneof.yaml",
        1,
        &[
            "tests/testdata/invalid/oneof.yaml:29:7: error: VirtualService/shop/cart: spec.http[0].match[0].uri: only one of `exact`, `prefix`, `regex` may be set, found `exact`, `prefix`",
        ],
    ),
    (
        "peer-authentication.yaml",
        1,
        &[
            "tests/testdata/invalid/peer-authentication.yaml:7:3: error: PeerAuthentication/shop/default: spec.portLevelMtls: portLevelMtls needs a selector with labels: a mesh-wide or namespace-wide policy cannot set port-level mTLS",
            "tests/testdata/invalid/peer-authentication.yaml:17:5: error: PeerAuthentication/shop/reviews: spec.portLevelMtls.70000: port 70000 must be in the range 1..65535",
            "tests/testdata/invalid/peer-authentication.yaml:22:1: error: PeerAuthentication/shop/second: spec.selector: PeerAuthentication shop/default is already namespace-wide for `shop` (tests/testdata/invalid/peer-authentication.yaml:2); only one policy without a selector may exist per namespace",
            "tests/testdata/invalid/peer-authentication.yaml:29:3: error: PeerAuthentication/istio-system/ratings: spec.selector: a policy with a selector in the root namespace istio-system applies to no workload (istiod ignores it); put it in the workloads' namespace, or remove the selector to make it mesh-wide",
            "tests/testdata/invalid/peer-authentication.yaml:37:10: error: PeerAuthentication/shop/typo: spec.mtls.mode: unknown MtlsMode `STRICTT`; did you mean `STRICT`?",
        ],
    ),
    (
        "port-out-of-range.yaml",
        1,
        &[
            "tests/testdata/invalid/port-out-of-range.yaml:7:12: error: Gateway/default/web: spec.servers[0].port.number: port number 80800 must be in the range 1..65535",
        ],
    ),
    (
        "redirect-with-route.yaml",
        1,
        &[
            "tests/testdata/invalid/redirect-with-route.yaml:28:5: error: VirtualService/shop/cart: spec.http[0].redirect: a route cannot have both `route` and `redirect`",
        ],
    ),
    (
        "sidecar-unserved.yaml",
        1,
        &[
            "tests/testdata/invalid/sidecar-unserved.yaml:6:3: error: Sidecar/shop/default: spec.ingress: `ingress` is not served by meshgate yet; the configuration is refused rather than served without it (remove the field)",
            "tests/testdata/invalid/sidecar-unserved.yaml:11:5: error: Sidecar/shop/default: spec.egress[0].bind: `bind` is not served by meshgate yet; the configuration is refused rather than served without it (remove the field)",
            "tests/testdata/invalid/sidecar-unserved.yaml:12:5: error: Sidecar/shop/default: spec.egress[0].captureMode: captureMode NONE (a listener bound for applications to call) is not served by meshgate yet; the configuration is refused rather than served without it (remove the field)",
            "tests/testdata/invalid/sidecar-unserved.yaml:14:38: error: Sidecar/shop/default: spec.egress[1].hosts[2]: `bad_ns/x`: invalid namespace `bad_ns`",
            "tests/testdata/invalid/sidecar-unserved.yaml:17:5: error: Sidecar/shop/default: spec.outboundTrafficPolicy.egressProxy: `egressProxy` is not served by meshgate yet; the configuration is refused rather than served without it (remove the field)",
        ],
    ),
    (
        "static-hostname-endpoint.yaml",
        1,
        &[
            "tests/testdata/invalid/static-hostname-endpoint.yaml:9:16: error: ServiceEntry/default/db: spec.endpoints[0].address: `db1.example.com` is not an IP address; resolution STATIC needs IP endpoints (use DNS for host names)",
        ],
    ),
    (
        "syntax-error.yaml",
        1,
        &[
            "tests/testdata/invalid/syntax-error.yaml:5:5: error: YAML syntax error: while parsing a flow mapping, did not find expected ',' or '}'",
        ],
    ),
    (
        "tls-without-certificate.yaml",
        1,
        &[
            "tests/testdata/invalid/tls-without-certificate.yaml:10:5: error: Gateway/shop/web: spec.servers[0].tls: SIMPLE TLS needs `credentialName`, or `serverCertificate` and `privateKey`",
        ],
    ),
    (
        "undefined-subset.yaml",
        1,
        &[
            "tests/testdata/invalid/undefined-subset.yaml:29:33: error: VirtualService/shop/cart: spec.http[0].route[0].destination.subset: subset `v2` is not defined by any DestinationRule for `cart`",
        ],
    ),
    (
        "unknown-field.yaml",
        1,
        &[
            "tests/testdata/invalid/unknown-field.yaml:30:5: error: VirtualService/shop/cart: spec.http[0].timeuot: unknown field `timeuot`; did you mean `timeout`?",
        ],
    ),
    (
        "unknown-gateway.yaml",
        1,
        &[
            "tests/testdata/invalid/unknown-gateway.yaml:7:14: error: VirtualService/shop/cart: spec.gateways[0]: Gateway shop/ingress not found",
        ],
    ),
    (
        "unsupported-kind.yaml",
        0,
        &[
            "tests/testdata/invalid/unsupported-kind.yaml:3:1: warning: EnvoyFilter/istio-system/lua: kind: kind EnvoyFilter is not supported yet; ignored",
        ],
    ),
    (
        "wrong-type.yaml",
        1,
        &[
            "tests/testdata/invalid/wrong-type.yaml:29:40: error: VirtualService/shop/cart: spec.http[0].route[0].destination.port.number: invalid type: string \"8000\", expected an integer from 0 to 4294967295",
        ],
    ),
];

#[test]
fn each_invalid_file_prints_its_problem_and_fails() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/invalid");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("read tests/testdata/invalid")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    on_disk.sort();
    let listed: Vec<&str> = INVALID.iter().map(|(name, _, _)| *name).collect();
    assert_eq!(
        on_disk, listed,
        "every file under tests/testdata/invalid has a case here"
    );
    for (name, code, want) in INVALID {
        let path = format!("tests/testdata/invalid/{name}");
        let out = meshgate(&["validate", &path]);
        assert_eq!(stdout_lines(&out), *want, "{name}");
        assert_eq!(out.status.code(), Some(*code), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.ends_with("checked\n"),
            "{name}: summary on stderr: {stderr}"
        );
    }
}

#[test]
fn a_directory_tree_reports_every_file_sorted_and_keeps_loading_after_bad_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let invalid = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/invalid");
    std::fs::create_dir_all(root.join("nested")).expect("mkdir");
    std::fs::create_dir_all(root.join(".git")).expect("mkdir");
    for (from, to) in [
        ("unknown-field.yaml", "b.yaml"),
        ("port-out-of-range.yaml", "nested/a.yml"),
        ("invalid-utf8.yaml", "a.yaml"),
    ] {
        std::fs::copy(invalid.join(from), root.join(to)).expect("copy");
    }
    std::fs::write(root.join(".git/config.yaml"), "not: [valid").expect("write");
    std::fs::write(root.join("notes.txt"), "not: [valid").expect("write");
    let find = |name: &str| {
        INVALID
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, l)| *l)
            .unwrap_or(&[])
    };
    let moved = |name: &str, to: &str| -> Vec<String> {
        find(name)
            .iter()
            .map(|l| {
                l.replace(
                    &format!("tests/testdata/invalid/{name}"),
                    &root.join(to).display().to_string(),
                )
            })
            .collect()
    };
    let mut want = moved("invalid-utf8.yaml", "a.yaml");
    want.extend(moved("unknown-field.yaml", "b.yaml"));
    want.extend(moved("port-out-of-range.yaml", "nested/a.yml"));
    let out = meshgate(&["validate", &root.display().to_string()]);
    assert_eq!(stdout_lines(&out), want);
    assert_eq!(out.status.code(), Some(1));
    // The gateway and service entry of b.yaml and the gateway of nested/a.yml loaded.
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "3 errors, 0 warnings; 3 resources checked\n"
    );
}

#[test]
fn valid_samples_pass_with_no_output() {
    let out = meshgate(&["validate", "tests/testdata/valid"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "0 errors, 0 warnings; 13 resources checked\n"
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn json_output_is_an_array_of_diagnostics() {
    let out = meshgate(&[
        "validate",
        "--output",
        "json",
        "tests/testdata/invalid/unknown-field.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(
        json,
        serde_json::json!([{
            "file": "tests/testdata/invalid/unknown-field.yaml",
            "line": 30,
            "column": 5,
            "severity": "error",
            "resource": "VirtualService/shop/cart",
            "field": "spec.http[0].timeuot",
            "message": "unknown field `timeuot`; did you mean `timeout`?"
        }])
    );
    let clean = meshgate(&["validate", "--output", "json", "tests/testdata/valid"]);
    assert_eq!(String::from_utf8_lossy(&clean.stdout).trim(), "[]");
    assert_eq!(clean.status.code(), Some(0));
}

#[test]
fn a_missing_path_cannot_run() {
    let out = meshgate(&["validate", "tests/testdata/no-such-dir"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("meshgate validate: cannot read tests/testdata/no-such-dir: "),
        "{stderr}"
    );
}

#[test]
fn a_mesh_config_is_checked_with_the_resources() {
    let ok = meshgate(&[
        "validate",
        "tests/testdata/valid",
        "--mesh-config",
        "tests/testdata/mesh/mesh.yaml",
    ]);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "");
    assert_eq!(ok.status.code(), Some(0));
    // Its unknown fields and the settings meshgate does not serve are errors, before
    // those of the resources.
    let bad = meshgate(&[
        "validate",
        "tests/testdata/valid",
        "--mesh-config",
        "tests/testdata/mesh/bad-mesh.yaml",
    ]);
    assert_eq!(
        stdout_lines(&bad),
        [
            "tests/testdata/mesh/bad-mesh.yaml:4:3: error: defaultConfig.concurency: unknown field `concurency`; did you mean `concurrency`?"
        ]
    );
    assert_eq!(bad.status.code(), Some(1));
    let file = std::env::temp_dir().join(format!("mesh-{}.yaml", std::process::id()));
    std::fs::write(&file, "tcpKeepalive: {probes: 3}\n").unwrap();
    let unserved = meshgate(&[
        "validate",
        "tests/testdata/valid",
        "--mesh-config",
        file.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&file);
    let lines = stdout_lines(&unserved);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].ends_with(":1:1: error: MeshConfig: tcpKeepalive: meshgate does not serve this mesh setting yet; the mesh configuration is refused rather than run without it (remove the field)"),
        "{lines:?}"
    );
    assert_eq!(unserved.status.code(), Some(1));
}

#[test]
fn the_gateway_and_the_control_plane_refuse_a_bad_mesh_config() {
    for args in [
        &[
            "gateway",
            "--config",
            "tests/testdata/valid",
            "--mesh-config",
            "tests/testdata/mesh/bad-mesh.yaml",
        ][..],
        &[
            "control-plane",
            "--config",
            "tests/testdata/valid",
            "--xds-addr",
            "127.0.0.1:0",
            "--debug-addr",
            "127.0.0.1:0",
            "--mesh-config",
            "tests/testdata/mesh/bad-mesh.yaml",
        ][..],
    ] {
        let out = meshgate(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--mesh-config: the mesh configuration is refused")
                && err.contains(
                    "tests/testdata/mesh/bad-mesh.yaml:4:3: error: defaultConfig.concurency"
                ),
            "{args:?}: {err}"
        );
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn a_proxy_config_is_checked_with_the_resources() {
    let dir = std::env::temp_dir().join(format!("proxy-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let good = write(
        "good.yaml",
        "gatewayTopology:\n  numTrustedProxies: 1\n  proxyProtocol: {}\n",
    );
    let misspelt = write("misspelt.yaml", "gatewayTopology:\n  numTrustedProxys: 1\n");
    let unserved = write("unserved.yaml", "tracing: {zipkin: {}}\n");
    let run = |file: &str| {
        meshgate(&[
            "validate",
            "tests/testdata/valid",
            "--mesh-config",
            "tests/testdata/mesh/mesh.yaml",
            "--proxy-config",
            file,
        ])
    };
    let (ok, bad, refused) = (run(&good), run(&misspelt), run(&unserved));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "");
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(
        stdout_lines(&bad),
        [format!(
            "{misspelt}:2:3: error: gatewayTopology.numTrustedProxys: unknown field `numTrustedProxys`; did you mean `numTrustedProxies`?"
        )]
    );
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        stdout_lines(&refused),
        [format!(
            "{unserved}:1:1: error: ProxyConfig: tracing: meshgate does not serve this mesh setting yet; the mesh configuration is refused rather than run without it (remove the field)"
        )]
    );
    assert_eq!(refused.status.code(), Some(1));
}
