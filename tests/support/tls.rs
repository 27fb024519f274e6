//! TLS helpers for integration tests: certificates made at test time (rcgen),
//! command-line clients (openssl, curl, h2load), and a pebble ACME server on loopback.
#![allow(dead_code)]

use crate::support::{TempDir, free_port, peer_bin, wait_for_port};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[allow(unused_imports)]
pub use crate::support::certs::{Leaf, TestCa};

// ---------------------------------------------------------------------------------------
// Command-line clients
// ---------------------------------------------------------------------------------------

/// The outcome of `openssl s_client`.
#[derive(Debug)]
pub struct SClient {
    pub ok: bool,
    pub output: String,
}

impl SClient {
    /// The negotiated protocol (`TLSv1.3`), if a handshake completed.
    pub fn protocol(&self) -> Option<String> {
        self.output.lines().find_map(|l| {
            let l = l.trim();
            l.strip_prefix("Protocol  : ")
                .or_else(|| l.strip_prefix("Protocol: "))
                .map(str::to_string)
                .or_else(|| {
                    l.strip_prefix("New, TLSv1.3, Cipher is")
                        .map(|_| "TLSv1.3".to_string())
                })
                .or_else(|| {
                    l.strip_prefix("New, TLSv1.2, Cipher is")
                        .map(|_| "TLSv1.2".to_string())
                })
                .or_else(|| {
                    l.strip_prefix("New, (NONE), Cipher is (NONE)")
                        .map(|_| "NONE".to_string())
                })
        })
    }

    /// The server certificate's subject line (`subject=CN = a.example.com, ...`).
    pub fn subject(&self) -> Option<String> {
        self.output
            .lines()
            .find(|l| l.starts_with("subject="))
            .map(str::to_string)
    }

    pub fn alpn(&self) -> Option<String> {
        self.output
            .lines()
            .find_map(|l| l.strip_prefix("ALPN protocol: ").map(str::to_string))
    }

    pub fn handshake_done(&self) -> bool {
        self.output.contains("Cipher is ") && !self.output.contains("Cipher is (NONE)")
    }
}

/// Runs `openssl s_client -connect 127.0.0.1:PORT` with extra args and `input` on stdin.
pub fn s_client(port: u16, args: &[&str], input: &str) -> SClient {
    s_client_within(port, args, input, Duration::from_secs(15))
}

/// [`s_client`] killed after `timeout` (for exchanges that never finish by themselves).
pub fn s_client_within(port: u16, args: &[&str], input: &str, timeout: Duration) -> SClient {
    use std::io::Write;
    let mut child = Command::new(peer_bin("openssl"))
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    {
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(input.as_bytes());
        // Keep stdin open briefly so that a response (or an alert after the handshake)
        // can arrive before s_client sees EOF and quits.
        std::thread::sleep(Duration::from_millis(400));
    }
    let out = wait_output(child, timeout);
    SClient {
        ok: out.0,
        output: out.1,
    }
}

fn wait_output(mut child: Child, timeout: Duration) -> (bool, String) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs h2load with `args`; returns (success, stdout+stderr).
pub fn h2load(args: &[&str]) -> (bool, String) {
    let child = Command::new(peer_bin("h2load"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("h2load");
    wait_output(child, Duration::from_secs(30))
}

/// Runs curl with `args`; returns (success, stdout+stderr).
pub fn curl(args: &[&str]) -> (bool, String) {
    let child = Command::new(peer_bin("curl"))
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl");
    wait_output(child, Duration::from_secs(15))
}

// ---------------------------------------------------------------------------------------
// pebble
// ---------------------------------------------------------------------------------------

/// pebble (Let's Encrypt's test ACME server) with pebble-challtestsrv as its DNS (every
/// name resolves to 127.0.0.1), on free loopback ports.
pub struct Pebble {
    children: Vec<Child>,
    pub dir: TempDir,
    pub directory_url: String,
    /// CA of pebble's own HTTPS listener (clients trust it).
    pub listener_ca: PathBuf,
    pub mgmt_port: u16,
    /// Where pebble connects for HTTP-01 and TLS-ALPN-01 validations.
    pub http01_port: u16,
    pub tls_alpn_port: u16,
}

impl Pebble {
    /// Starts pebble; `validity_secs` sets the certificate lifetime (short for renewal tests).
    pub fn start(validity_secs: Option<u64>) -> Pebble {
        let dir = TempDir::new();
        let ca = TestCa::new("pebble listener test CA");
        let listener = ca.localhost_leaf();
        let listener_ca = ca.write_ca(dir.path(), "listener-ca");
        std::fs::write(dir.path().join("listener.pem"), &listener.cert).unwrap();
        std::fs::write(dir.path().join("listener.key"), &listener.key).unwrap();
        let (acme_port, mgmt_port, http01_port, tls_alpn_port, dns_port, chall_mgmt) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let mut config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": dir.path().join("listener.pem"),
            "privateKey": dir.path().join("listener.key"),
            "httpPort": http01_port,
            "tlsPort": tls_alpn_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = validity_secs {
            config["pebble"]["certificateValidityPeriod"] = v.into();
        }
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let chall = Command::new(peer_bin("pebble-challtestsrv"))
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &format!("127.0.0.1:{chall_mgmt}"),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("pebble-challtestsrv");
        let pebble = Command::new(peer_bin("pebble"))
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .args(["-strict=false", "-config"])
            .arg(dir.path().join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("pebble");
        let me = Pebble {
            children: vec![pebble, chall],
            directory_url: format!("https://127.0.0.1:{acme_port}/dir"),
            listener_ca,
            mgmt_port,
            http01_port,
            tls_alpn_port,
            dir,
        };
        wait_for_port(chall_mgmt, Duration::from_secs(15));
        wait_for_port(acme_port, Duration::from_secs(15));
        wait_for_port(mgmt_port, Duration::from_secs(15));
        me
    }

    /// pebble's issuing root (new on every start), PEM.
    pub async fn root_pem(&self) -> String {
        let ca = std::fs::read(&self.listener_ca).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .no_proxy()
            .build()
            .unwrap();
        client
            .get(format!("https://127.0.0.1:{}/roots/0", self.mgmt_port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.path().join("pebble.err")).unwrap_or_default()
    }

    /// Stops pebble (the ACME server becomes unreachable).
    pub fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- pebble log ---\n{}", self.log());
        }
        self.stop();
    }
}
