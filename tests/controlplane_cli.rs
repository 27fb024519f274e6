//! The control plane's commands as a user runs them: `meshgate bootstrap envoy` output
//! that Envoy 1.40 itself validates.
mod support;

use std::process::Command;
use support::*;

fn meshgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
}

#[test]
fn bootstrap_envoy_is_accepted_by_envoy_in_both_modes_and_formats() {
    let dir = TempDir::new();
    for (mode, format, file) in [
        ("--sotw", "yaml", "sotw.yaml"),
        ("--delta", "yaml", "delta.yaml"),
        ("--delta", "json", "delta.json"),
    ] {
        let out = dir.path().join(file);
        let status = meshgate()
            .args([
                "bootstrap",
                "envoy",
                "--xds",
                "127.0.0.1:15010",
                "--node-id",
                "gw-1",
            ])
            .args([
                "--namespace",
                "edge",
                "--labels",
                "istio=ingressgateway,app=gw",
            ])
            .args([mode, "--format", format, "--admin-port", "15000", "--out"])
            .arg(&out)
            .status()
            .expect("running meshgate");
        assert!(status.success());
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(
            text.contains("router~127.0.0.1~gw-1.edge~edge.svc.cluster.local"),
            "{text}"
        );
        assert!(
            text.contains(if mode == "--sotw" {
                "\"GRPC\""
            } else {
                "\"DELTA_GRPC\""
            }),
            "{text}"
        );
        let envoy = Command::new(peer_bin("envoy"))
            .args(["--mode", "validate", "-c"])
            .arg(&out)
            .output()
            .expect("running envoy");
        assert!(
            envoy.status.success(),
            "envoy rejected {file}:\n{}\n{}\n{text}",
            String::from_utf8_lossy(&envoy.stdout),
            String::from_utf8_lossy(&envoy.stderr)
        );
    }
}

#[test]
fn bootstrap_rejects_bad_input_with_a_message() {
    for args in [
        vec!["--xds", "no-port"],
        vec!["--labels", "novalue"],
        vec!["--node-id", "router~only-two"],
    ] {
        let out = meshgate()
            .args(["bootstrap", "envoy"])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("meshgate bootstrap:"), "{err}");
    }
}
