//! Every example configuration, translated for its gateway, compiles into meshgate's data
//! plane: the translator's output is what the gateway serves.
use meshgate::config;
use meshgate::registry::Registry;
use meshgate::xds::ProxyIdentity;
use std::path::Path;

fn translate(dir: &Path, labels: &str) -> meshgate::xds::ResourceSet {
    let outcome = config::load(dir);
    let labels = ProxyIdentity::parse_labels(labels).unwrap();
    let ns = meshgate::translate::default_namespace(&outcome.config, &labels);
    let mut proxy = ProxyIdentity::gateway(&ns, labels);
    proxy.namespace.clear();
    let (registry, _) = Registry::from_config(&outcome.config);
    meshgate::translate::gateway(&outcome.config, &registry, &proxy).resources
}

#[test]
fn examples_compile() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway-config");
    let mut report = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/valid");
    if let Ok(rd) = std::fs::read_dir(&testdata) {
        entries.extend(rd.flatten().map(|e| e.path()));
    }
    entries.sort();
    assert!(!entries.is_empty());
    for dir in entries {
        for labels in [
            "istio=ingressgateway",
            "istio=egressgateway",
            "istio=eastwestgateway",
        ] {
            let set = translate(&dir, labels);
            if set.listeners.is_empty() {
                continue;
            }
            match meshgate::proxy::compile(&set, "1", None) {
                Ok(snap) => report.push(format!(
                    "{} [{labels}]: ok, {} listener(s)",
                    dir.display(),
                    snap.listeners.len()
                )),
                Err(e) => panic!("{} [{labels}]: {e}", dir.display()),
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}
