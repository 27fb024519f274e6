//! `meshgate inject`: the `istioctl kube-inject` job. Reads Kubernetes workloads (Pod,
//! Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, and `List`s of them) and
//! adds to each pod template what Istio's injector adds: an `istio-init` init container
//! that installs the traffic redirect (`meshgate iptables`), an `istio-proxy` container
//! running Envoy under `meshgate agent`, the volumes they need, and Istio's annotations
//! and labels. Everything else in the input is kept as it was, in its order; other kinds
//! pass through unchanged.
use meshgate::config::source;
use serde_json::{Map, Value, json};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// The annotation that marks a pod as injected, and lists what was added.
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// The opt-out: `"false"` on a pod template (annotation or label) leaves it alone.
pub const INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Workload YAML to inject (`-` for standard input). Several documents may be given.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Where to write the result (default: standard output).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// The image of both added containers (it must hold the meshgate binary, and Envoy
    /// for the sidecar).
    #[arg(long, default_value = "meshgate:latest")]
    pub image: String,
    /// The control plane the sidecar connects to (xDS and CA over mTLS).
    #[arg(long, default_value = "istiod.istio-system.svc:15012")]
    pub discovery_address: String,
}

/// What injection needs to know besides the workload.
#[derive(Debug, Clone)]
pub struct Settings {
    pub image: String,
    pub discovery_address: String,
}

/// What happened to one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The pod template got the sidecar.
    Injected,
    /// Not a workload kind: passed through.
    NotAWorkload,
    /// `sidecar.istio.io/inject: "false"`.
    OptedOut,
    /// Already carries `sidecar.istio.io/status` or an `istio-proxy` container.
    AlreadyInjected,
    /// `hostNetwork: true`: redirecting would capture the node's traffic (Istio skips these too).
    HostNetwork,
}

/// Where a kind keeps its pod template (metadata + spec), as a path of keys.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController"
        | "DeploymentConfig" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn obj<'a>(parent: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = parent
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("made an object above")
}

fn arr<'a>(parent: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = parent
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().expect("made an array above")
}

fn str_at<'a>(m: &'a Map<String, Value>, path: &[&str]) -> Option<&'a str> {
    let (last, head) = path.split_last()?;
    let mut cur = m;
    for k in head {
        cur = cur.get(*k)?.as_object()?;
    }
    cur.get(*last)?.as_str()
}

/// Injects one document in place (a `List`'s items one by one) and says what it did.
pub fn inject_document(doc: &mut Value, s: &Settings) -> Result<Vec<Outcome>, String> {
    let Some(root) = doc.as_object_mut() else {
        return Ok(vec![Outcome::NotAWorkload]);
    };
    let kind = root
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind == "List" {
        let mut out = Vec::new();
        if let Some(items) = root.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                out.extend(inject_document(item, s)?);
            }
        }
        return Ok(out);
    }
    let Some(path) = template_path(&kind) else {
        return Ok(vec![Outcome::NotAWorkload]);
    };
    let workload_name = str_at(root, &["metadata", "name"])
        .or_else(|| str_at(root, &["metadata", "generateName"]).map(|g| g.trim_end_matches('-')))
        .unwrap_or("")
        .to_string();
    let mut template = root;
    for key in path {
        template = obj(template, key);
    }
    Ok(vec![inject_template(template, &workload_name, s)?])
}

/// The opt-out, Istio's way: the annotation or label, "false" (or other falsy spellings).
fn opted_out(meta: &Map<String, Value>) -> bool {
    ["annotations", "labels"].iter().any(|k| {
        str_at(meta, &[k, INJECT_ANNOTATION]).is_some_and(|v| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "false" | "n" | "no" | "off"
            )
        })
    })
}

fn inject_template(
    template: &mut Map<String, Value>,
    workload_name: &str,
    s: &Settings,
) -> Result<Outcome, String> {
    let meta = obj(template, "metadata");
    if opted_out(meta) {
        return Ok(Outcome::OptedOut);
    }
    if str_at(meta, &["annotations", STATUS_ANNOTATION]).is_some() {
        return Ok(Outcome::AlreadyInjected);
    }
    let meta = meta.clone();
    let spec = obj(template, "spec");
    let containers = spec.get("containers").and_then(Value::as_array);
    let app_names: Vec<String> = containers
        .map(|c| {
            c.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if app_names.is_empty() {
        return Err(format!(
            "{workload_name}: the pod template has no containers"
        ));
    }
    if app_names.iter().any(|n| n == "istio-proxy") {
        return Ok(Outcome::AlreadyInjected);
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::HostNetwork);
    }

    let annotation = |k: &str| str_at(&meta, &["annotations", k]).map(str::to_string);
    arr(spec, "initContainers").push(init_container(s, &annotation));
    let volumes = arr(spec, "volumes");
    volumes.push(json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}));
    volumes.push(json!({"name": "istio-data", "emptyDir": {}}));
    // The join credential: a service-account token for the CA's audience, as Istio's
    // injector mounts it; and the mesh's root certificate from the CA's ConfigMap.
    volumes.push(
        json!({"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
        "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}}),
    );
    volumes.push(json!({"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}));

    let meta = obj(template, "metadata");
    let labels = obj(meta, "labels");
    let label = |labels: &Map<String, Value>, keys: &[&str]| {
        keys.iter()
            .find_map(|k| labels.get(*k).and_then(Value::as_str))
            .map(str::to_string)
    };
    let canonical_name = label(
        labels,
        &[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ],
    )
    .unwrap_or_else(|| workload_name.to_string());
    let canonical_revision = label(
        labels,
        &[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ],
    )
    .unwrap_or_else(|| "latest".to_string());
    labels.insert("security.istio.io/tlsMode".into(), "istio".into());
    labels.insert(
        "service.istio.io/canonical-name".into(),
        canonical_name.into(),
    );
    labels.insert(
        "service.istio.io/canonical-revision".into(),
        canonical_revision.into(),
    );
    let annotations = obj(meta, "annotations");
    for key in [
        "kubectl.kubernetes.io/default-container",
        "kubectl.kubernetes.io/default-logs-container",
    ] {
        annotations
            .entry(key)
            .or_insert_with(|| Value::String(app_names[0].clone()));
    }
    let status = json!({
        "initContainers": ["istio-init"],
        "containers": ["istio-proxy"],
        "volumes": ["istio-envoy", "istio-data", "istio-token", "istiod-ca-cert"],
        "imagePullSecrets": null,
        "revision": "default",
    });
    annotations.insert(STATUS_ANNOTATION.into(), Value::String(status.to_string()));
    // The proxy goes in last, with the pod's labels as they are now (the ones added
    // above included): the agent puts them in Envoy's node metadata.
    let pod_labels: Vec<String> = obj(obj(template, "metadata"), "labels")
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
        .collect();
    let spec = obj(template, "spec");
    arr(spec, "containers").push(proxy_container(
        s,
        workload_name,
        &app_names,
        &pod_labels.join(","),
    ));
    Ok(Outcome::Injected)
}

/// `istio-init`: `meshgate iptables` with Istio's defaults, steered by the pod's
/// `traffic.sidecar.istio.io/*` annotations as Istio's injector does.
fn init_container(s: &Settings, annotation: &dyn Fn(&str) -> Option<String>) -> Value {
    let traffic = |k: &str, default: &str| {
        annotation(&format!("traffic.sidecar.istio.io/{k}")).unwrap_or_else(|| default.into())
    };
    let mut exclude_inbound = String::from("15090,15021,15020");
    let extra = traffic("excludeInboundPorts", "");
    if !extra.is_empty() {
        exclude_inbound = format!("{exclude_inbound},{extra}");
    }
    let mut args = vec![
        "iptables".to_string(),
        "-p".into(),
        "15001".into(),
        "-z".into(),
        "15006".into(),
        "-u".into(),
        "1337".into(),
        "-i".into(),
        traffic("includeOutboundIPRanges", "*"),
        "-x".into(),
        traffic("excludeOutboundIPRanges", ""),
        "-b".into(),
        traffic("includeInboundPorts", "*"),
        "-d".into(),
        exclude_inbound,
    ];
    let exclude_outbound = traffic("excludeOutboundPorts", "");
    if !exclude_outbound.is_empty() {
        args.push("-o".into());
        args.push(exclude_outbound);
    }
    json!({
        "name": "istio-init",
        "image": s.image,
        "command": ["meshgate"],
        "args": args,
        "resources": {
            "limits": {"cpu": "2", "memory": "1Gi"},
            "requests": {"cpu": "10m", "memory": "40Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": false,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0,
        },
    })
}

/// Where `istio-proxy` finds the mesh's root certificate and its join token (Istio's
/// paths).
const ROOT_CERT_PATH: &str = "/var/run/secrets/istio/root-cert.pem";
const TOKEN_PATH: &str = "/var/run/secrets/tokens/istio-token";

/// `istio-proxy`: Envoy under `meshgate agent`, with the pod's identity from the
/// downward API (Kubernetes expands `$(VAR)` in the arguments).
fn proxy_container(s: &Settings, workload_name: &str, app_names: &[String], labels: &str) -> Value {
    let args = [
        "agent",
        "--xds",
        &s.discovery_address,
        "--ca-root",
        ROOT_CERT_PATH,
        "--token-file",
        TOKEN_PATH,
        "--namespace",
        "$(POD_NAMESPACE)",
        "--service-account",
        "$(SERVICE_ACCOUNT)",
        "--pod-name",
        "$(POD_NAME)",
        "--ip",
        "$(INSTANCE_IP)",
        "--labels",
        labels,
        "--workload-name",
        workload_name,
        "--proxy-type",
        "sidecar",
        "--run-dir",
        "/etc/istio/proxy",
        "--status-port",
        "15021",
        "--admin-port",
        "15000",
        "--",
        "envoy",
        "--concurrency",
        "2",
    ];
    let env_field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}});
    let ready = json!({"httpGet": {"path": "/healthz/ready", "port": 15021}});
    let mut readiness = ready.clone();
    readiness["failureThreshold"] = 4.into();
    readiness["periodSeconds"] = 15.into();
    readiness["timeoutSeconds"] = 3.into();
    let mut startup = ready;
    startup["failureThreshold"] = 600.into();
    startup["periodSeconds"] = 1.into();
    startup["timeoutSeconds"] = 3.into();
    json!({
        "name": "istio-proxy",
        "image": s.image,
        "command": ["meshgate"],
        "args": args,
        "env": [
            env_field("POD_NAME", "metadata.name"),
            env_field("POD_NAMESPACE", "metadata.namespace"),
            env_field("INSTANCE_IP", "status.podIP"),
            env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            env_field("HOST_IP", "status.hostIP"),
            {"name": "PROXY_CONFIG", "value": json!({"discoveryAddress": s.discovery_address}).to_string()},
            {"name": "ISTIO_META_APP_CONTAINERS", "value": app_names.join(",")},
            {"name": "ISTIO_META_WORKLOAD_NAME", "value": workload_name},
        ],
        "ports": [
            {"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"},
            {"containerPort": 15021, "name": "status-port", "protocol": "TCP"},
        ],
        "readinessProbe": readiness,
        "startupProbe": startup,
        "resources": {
            "limits": {"cpu": "2", "memory": "1Gi"},
            "requests": {"cpu": "100m", "memory": "128Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": 1337,
            "runAsNonRoot": true,
            "runAsUser": 1337,
        },
        "volumeMounts": [
            {"name": "istio-envoy", "mountPath": "/etc/istio/proxy"},
            {"name": "istio-data", "mountPath": "/var/lib/istio/data"},
            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio"},
        ],
    })
}

/// Injects every document of a YAML text; returns the YAML out and one line per
/// document that was left as it was for a reason worth saying.
pub fn inject_text(name: &str, text: &str, s: &Settings) -> Result<(String, Vec<String>), String> {
    let mut out = String::new();
    let mut notes = Vec::new();
    let mut first = true;
    for doc in source::parse(text) {
        let doc =
            doc.map_err(|e| format!("{name}:{}:{}: {}", e.pos.line, e.pos.column, e.message))?;
        let Some(root) = doc.root else { continue };
        let mut value = root.to_value();
        for outcome in
            inject_document(&mut value, s).map_err(|e| format!("{name}:{}: {e}", doc.pos.line))?
        {
            let why = match outcome {
                Outcome::OptedOut => "sidecar.istio.io/inject is false",
                Outcome::AlreadyInjected => "already injected",
                Outcome::HostNetwork => "hostNetwork pods are not injected",
                Outcome::Injected | Outcome::NotAWorkload => continue,
            };
            notes.push(format!("{name}:{}: left unchanged: {why}", doc.pos.line));
        }
        if !first {
            out.push_str("---\n");
        }
        first = false;
        out.push_str(&meshgate::controlplane::bootstrap::yaml(&value));
    }
    Ok((out, notes))
}

fn inject(args: &Args) -> Result<(), String> {
    let name = args.file.display().to_string();
    let mut text = String::new();
    if name == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading standard input: {e}"))?;
    } else {
        text = std::fs::read_to_string(&args.file).map_err(|e| format!("{name}: {e}"))?;
    }
    let settings = Settings {
        image: args.image.clone(),
        discovery_address: args.discovery_address.clone(),
    };
    let (yaml, notes) = inject_text(&name, &text, &settings)?;
    for n in notes {
        eprintln!("meshgate inject: {n}");
    }
    match &args.output {
        Some(path) => std::fs::write(path, yaml).map_err(|e| format!("{}: {e}", path.display())),
        None => std::io::stdout()
            .write_all(yaml.as_bytes())
            .map_err(|e| format!("writing: {e}")),
    }
}

pub fn run(args: Args) -> ExitCode {
    match inject(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate inject: {e}");
            ExitCode::from(1)
        }
    }
}
