//! `meshgate inject` as users run it: the built binary on workload YAML, its output read
//! back as YAML and checked for the structure Istio's injector produces.
use meshgate::config::source;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn inject(yaml: &str, extra: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["inject", "-f", "-"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run meshgate");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write");
    child.wait_with_output().expect("wait")
}

fn docs(text: &str) -> Vec<Value> {
    source::parse(text)
        .into_iter()
        .map(|d| {
            d.expect("valid YAML out")
                .root
                .expect("a document")
                .to_value()
        })
        .collect()
}

fn injected(yaml: &str, extra: &[&str]) -> (String, Vec<Value>) {
    let out = inject(yaml, extra);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let d = docs(&text);
    (text, d)
}

fn container<'a>(spec: &'a Value, list: &str, name: &str) -> &'a Value {
    spec[list]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} `{name}` in {spec:#}"))
}

fn env<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["env"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no env {name}"))
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: reviews
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: reviews}
  template:
    metadata:
      labels: {app: reviews, version: v2}
      annotations:
        traffic.sidecar.istio.io/excludeOutboundPorts: "5432"
    spec:
      serviceAccountName: reviews
      x-vendor-field: {kept: true}
      containers:
      - name: reviews
        image: example/reviews:2
        ports: [{containerPort: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  ports: [{port: 9080, name: http}]
"#;

/// Checks everything injection must add to one pod (metadata + spec).
fn assert_injected(meta: &Value, spec: &Value, image: &str, app: &str) {
    assert_eq!(spec["containers"].as_array().unwrap().len(), 2, "{spec:#}");
    assert_eq!(
        spec["containers"][0]["name"], app,
        "app container stays first"
    );
    let init = container(spec, "initContainers", "istio-init");
    assert_eq!(init["image"], image);
    assert_eq!(init["command"][0], "meshgate");
    assert_eq!(init["args"][0], "iptables");
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for pair in [
        ["-p", "15001"],
        ["-z", "15006"],
        ["-u", "1337"],
        ["-b", "*"],
        ["-i", "*"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    assert!(
        args.windows(2)
            .any(|w| w[0] == "-d" && w[1].starts_with("15090,15021,15020"))
    );
    let sc = &init["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW"])
    );

    let proxy = container(spec, "containers", "istio-proxy");
    assert_eq!(proxy["image"], image);
    let cmdline: Vec<&str> = proxy["command"]
        .as_array()
        .unwrap()
        .iter()
        .chain(proxy["args"].as_array().unwrap())
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&cmdline[..2], ["meshgate", "agent"]);
    // The pod's identity reaches the agent's flags through the downward API's
    // variables; Envoy follows `--`.
    let dashes = cmdline.iter().position(|a| *a == "--").expect("`--`");
    assert_eq!(cmdline[dashes + 1], "envoy");
    let flags = &cmdline[..dashes];
    for pair in [
        ["--namespace", "$(POD_NAMESPACE)"],
        ["--service-account", "$(SERVICE_ACCOUNT)"],
        ["--pod-name", "$(POD_NAME)"],
        ["--ip", "$(INSTANCE_IP)"],
        ["--proxy-type", "sidecar"],
        ["--status-port", "15021"],
    ] {
        assert!(flags.windows(2).any(|w| w == pair), "{pair:?} in {flags:?}");
    }
    let flag = |name: &str| {
        flags
            .windows(2)
            .find(|w| w[0] == name)
            .map(|w| w[1])
            .unwrap_or_else(|| panic!("{name} in {flags:?}"))
    };
    assert!(
        flag("--labels")
            .split(',')
            .any(|l| l == "security.istio.io/tlsMode=istio"),
        "{flags:?}"
    );
    // The root certificate, the token and the run directory are on the pod's volumes.
    let mounts: Vec<&str> = proxy["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for path in [flag("--ca-root"), flag("--token-file"), flag("--run-dir")] {
        assert!(
            mounts.iter().any(|m| path.starts_with(m)),
            "{path} is on none of {mounts:?}"
        );
    }
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("INSTANCE_IP", "status.podIP"),
        ("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ] {
        assert_eq!(env(proxy, name)["valueFrom"]["fieldRef"]["fieldPath"], path);
    }
    assert_eq!(proxy["ports"][0]["containerPort"], 15090);
    assert_eq!(proxy["ports"][0]["name"], "http-envoy-prom");
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15021);
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/healthz/ready");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["securityContext"]["runAsGroup"], 1337);
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for m in proxy["volumeMounts"].as_array().unwrap() {
        assert!(
            volumes.contains(&m["name"].as_str().unwrap()),
            "mount {m} has a volume"
        );
    }

    assert_eq!(meta["labels"]["security.istio.io/tlsMode"], "istio");
    let status: Value = serde_json::from_str(
        meta["annotations"]["sidecar.istio.io/status"]
            .as_str()
            .expect("status annotation"),
    )
    .expect("status is JSON");
    assert_eq!(status["initContainers"], serde_json::json!(["istio-init"]));
    assert_eq!(status["containers"], serde_json::json!(["istio-proxy"]));
}

#[test]
fn deployment_gets_init_and_proxy_containers_and_other_kinds_pass_through() {
    let (_, d) = injected(DEPLOYMENT, &["--image", "registry.example/meshgate:1.2"]);
    assert_eq!(d.len(), 2);
    let t = &d[0]["spec"]["template"];
    assert_injected(
        &t["metadata"],
        &t["spec"],
        "registry.example/meshgate:1.2",
        "reviews",
    );
    assert_eq!(
        t["metadata"]["labels"]["service.istio.io/canonical-revision"],
        "v2"
    );
    // The pod's traffic annotations reach istio-init.
    let init = container(&t["spec"], "initContainers", "istio-init");
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.windows(2).any(|w| w == ["-o", "5432"]), "{args:?}");
    // Unknown fields and the rest of the workload are kept.
    assert_eq!(t["spec"]["x-vendor-field"]["kept"], true);
    assert_eq!(d[0]["spec"]["replicas"], 2);
    assert_eq!(d[0]["metadata"]["namespace"], "shop");
    // The Service is untouched.
    assert_eq!(d[1], docs(DEPLOYMENT)[1]);
}

#[test]
fn pod_is_injected_with_the_discovery_address() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: curl\n  labels: {app.kubernetes.io/name: client}\nspec:\n  containers:\n  - name: curl\n    image: curlimages/curl\n";
    let (_, d) = injected(pod, &["--discovery-address", "cp.mesh.svc:15012"]);
    assert_eq!(d.len(), 1);
    assert_injected(&d[0]["metadata"], &d[0]["spec"], "meshgate:latest", "curl");
    assert_eq!(
        d[0]["metadata"]["labels"]["service.istio.io/canonical-name"],
        "client"
    );
    assert_eq!(
        d[0]["metadata"]["labels"]["service.istio.io/canonical-revision"],
        "latest"
    );
    let proxy = container(&d[0]["spec"], "containers", "istio-proxy");
    let cfg: Value =
        serde_json::from_str(env(proxy, "PROXY_CONFIG")["value"].as_str().unwrap()).unwrap();
    assert_eq!(cfg["discoveryAddress"], "cp.mesh.svc:15012");
    let args: Vec<&str> = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--xds", "cp.mesh.svc:15012"]),
        "{args:?}"
    );
    assert!(
        args.windows(2).any(|w| w == ["--workload-name", "curl"]),
        "{args:?}"
    );
}

#[test]
fn other_workload_kinds_are_injected() {
    for (kind, api, template) in [
        ("StatefulSet", "apps/v1", "spec:\n  template:\n"),
        ("DaemonSet", "apps/v1", "spec:\n  template:\n"),
        ("ReplicaSet", "apps/v1", "spec:\n  template:\n"),
        ("Job", "batch/v1", "spec:\n  template:\n"),
    ] {
        let yaml = format!(
            "apiVersion: {api}\nkind: {kind}\nmetadata: {{name: w}}\n{template}    spec:\n      containers: [{{name: app, image: x}}]\n"
        );
        let (_, d) = injected(&yaml, &[]);
        let t = &d[0]["spec"]["template"];
        assert_injected(&t["metadata"], &t["spec"], "meshgate:latest", "app");
    }
}

#[test]
fn opt_out_annotation_leaves_the_workload_unchanged() {
    let yaml = DEPLOYMENT.replace(
        "traffic.sidecar.istio.io/excludeOutboundPorts: \"5432\"",
        "sidecar.istio.io/inject: \"false\"",
    );
    let (_, d) = injected(&yaml, &[]);
    assert_eq!(d, docs(&yaml));
    assert!(
        d[0]["spec"]["template"]["spec"]
            .get("initContainers")
            .is_none()
    );
}

#[test]
fn injecting_twice_adds_nothing_the_second_time() {
    let (once, _) = injected(DEPLOYMENT, &[]);
    let out = inject(&once, &[]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), once);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already injected"), "{stderr}");
}

#[test]
fn broken_yaml_is_an_error_with_its_position() {
    let out = inject("kind: Pod\nspec: [unclosed\n", &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("meshgate inject: -:"), "{stderr}");
}
