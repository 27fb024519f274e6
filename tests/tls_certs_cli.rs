//! `meshgate certs dev` as a person runs it: files and modes, CA reuse, certificates
//! that openssl verifies against the CA, and a Secret usable as a `credentialName`.
mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use support::*;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn certs_dev_makes_a_reusable_ca_leaves_and_a_secret() {
    let dir = TempDir::new();
    let out = dir.path().join("out");
    let ca = dir.path().join("ca");
    let (ok, text) = run(&[
        "certs",
        "dev",
        "--hosts",
        "a.example.com,*.b.example.com",
        "--out",
        out.to_str().unwrap(),
        "--ca-dir",
        ca.to_str().unwrap(),
        "--secret",
        "shop-credential",
        "--namespace",
        "gw",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("created a new development CA"), "{text}");
    assert!(
        text.contains("curl --cacert"),
        "tells how to trust the CA: {text}"
    );
    for key in [
        "a.example.com.key",
        "_wildcard.b.example.com.key",
        "shop-credential.secret.yaml",
    ] {
        assert_eq!(mode(&out.join(key)), 0o600, "{key}");
    }
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    for crt in ["a.example.com.crt", "_wildcard.b.example.com.crt"] {
        let o = Command::new(peer_bin("openssl"))
            .args(["verify", "-CAfile"])
            .arg(out.join("ca.crt"))
            .arg(out.join(crt))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{crt}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    // The Secret is the Kubernetes shape meshgate's credentialName path reads.
    let yaml = std::fs::read_to_string(out.join("shop-credential.secret.yaml")).unwrap();
    assert!(
        yaml.contains("kind: Secret")
            && yaml.contains("namespace: gw")
            && yaml.contains("type: kubernetes.io/tls"),
        "{yaml}"
    );
    let mut data = std::collections::BTreeMap::new();
    for line in yaml.lines() {
        if let Some((k, v)) = line.trim().split_once(": ")
            && ["tls.crt", "tls.key", "ca.crt"].contains(&k)
        {
            use base64::Engine;
            data.insert(
                k.to_string(),
                base64::engine::general_purpose::STANDARD.decode(v).unwrap(),
            );
        }
    }
    let secrets =
        meshgate::tls::credential::secrets_from_kubernetes("shop-credential", &data).unwrap();
    let store = meshgate::tls::SecretStore::default();
    assert!(store.apply_sds(&secrets).is_empty());
    let m = store
        .current_certificate("kubernetes://shop-credential")
        .unwrap();
    let mut names = m.leaf.dns_names.clone();
    names.sort();
    assert_eq!(names, vec!["*.b.example.com", "a.example.com"]);
    assert!(
        store
            .current_validation("kubernetes://shop-credential-cacert")
            .is_some()
    );

    // Second run: the CA is reused, not replaced.
    let ca_before = std::fs::read(ca.join("ca.crt")).unwrap();
    let (ok, text) = run(&[
        "certs",
        "dev",
        "--hosts",
        "c.example.com",
        "--out",
        out.to_str().unwrap(),
        "--ca-dir",
        ca.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("using the development CA"), "{text}");
    assert_eq!(std::fs::read(ca.join("ca.crt")).unwrap(), ca_before);

    // Bad input: a clear error and exit code 1, no panic.
    let (ok, text) = run(&[
        "certs",
        "dev",
        "--hosts",
        "bad host",
        "--out",
        out.to_str().unwrap(),
        "--ca-dir",
        ca.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("invalid host `bad host`"), "{text}");
}
