//! ACME end to end against a real pebble on loopback: issuance over HTTP-01 and
//! TLS-ALPN-01, restart reusing the stored account and certificate, renewal of short-lived
//! certificates, and back-off while the ACME server is unreachable (the old certificate
//! keeps serving).
mod support;
#[path = "support/tls.rs"]
mod tls_support;

use meshgate::acme::renewal::RenewalEvent;
use meshgate::acme::resource::{AcmeCertificate, AcmeCertificateSpec, Challenge, Metadata};
use meshgate::acme::{AcmeIssuer, ChallengeResponses, RenewalPolicy};
use meshgate::tls::SecretStore;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::TempDir;
use tls_support::Pebble;

fn resource(
    pebble: &Pebble,
    storage: &Path,
    hosts: &[&str],
    challenge: Challenge,
) -> AcmeCertificate {
    AcmeCertificate {
        api_version: "meshgate.io/v1alpha1".into(),
        kind: "AcmeCertificate".into(),
        metadata: Metadata {
            name: "shop".into(),
            namespace: Some("istio-system".into()),
            ..Default::default()
        },
        spec: AcmeCertificateSpec {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            directory: pebble.directory_url.clone(),
            email: Some("ops@example.com".into()),
            accept_terms_of_service: true,
            credential_name: "shop-cert".into(),
            challenge,
            renewal_fraction: None,
            storage: Some(storage.to_path_buf()),
            directory_ca_certificates: Some(pebble.listener_ca.clone()),
            profile: None,
        },
    }
}

/// Starts the HTTP-01 responder on pebble's validation port; stops when dropped.
fn http01_responder(
    pebble: &Pebble,
    challenges: &ChallengeResponses,
) -> tokio::sync::oneshot::Sender<()> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", pebble.http01_port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(meshgate::acme::challenge::serve_http01(
        listener,
        challenges.clone(),
        async {
            let _ = rx.await;
        },
    ));
    tx
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Verifies `chain_pem` (leaf + intermediates) against pebble's root for `host`.
fn verify_chain(chain: &[rustls_pki_types::CertificateDer<'static>], root_pem: &str, host: &str) {
    let trust =
        meshgate::tls::TrustMaterial::from_pem(root_pem.as_bytes(), None, "pebble root").unwrap();
    let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
        trust.roots,
        meshgate::tls::provider(),
    )
    .build()
    .unwrap();
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        v.as_ref(),
        &chain[0],
        &chain[1..],
        &rustls_pki_types::ServerName::try_from(host.to_string()).unwrap(),
        &[],
        rustls_pki_types::UnixTime::now(),
    )
    .expect("issued chain verifies against pebble's root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issuance_then_restart_reuses_account_and_certificate() {
    let pebble = Pebble::start(None);
    let storage = TempDir::new();
    let challenges = ChallengeResponses::default();
    let _responder = http01_responder(&pebble, &challenges);
    let store = SecretStore::default();
    let hosts = ["shop.example.test", "www.shop.example.test"];
    let issuer = AcmeIssuer::new(
        resource(&pebble, storage.path(), &hosts, Challenge::Http01),
        store.clone(),
        challenges.clone(),
    )
    .unwrap();

    // Nothing stored yet.
    assert!(issuer.load_stored().is_none());
    let v = issuer
        .issue()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.log()));
    assert!(v.not_after > std::time::SystemTime::now());
    let served = store
        .current_certificate("kubernetes://shop-cert")
        .expect("published under the credential name");
    let mut names = served.leaf.dns_names.clone();
    names.sort();
    assert_eq!(names, vec!["shop.example.test", "www.shop.example.test"]);
    verify_chain(
        &served.certified_key.cert,
        &pebble.root_pem().await,
        "www.shop.example.test",
    );
    assert!(
        challenges.is_empty(),
        "challenge responses are removed after the order"
    );

    // Account and certificate on disk, 0600.
    let account = issuer.account_path();
    let cert_dir = issuer.certificate_dir();
    assert_eq!(mode(&account), 0o600);
    assert_eq!(mode(&cert_dir.join("tls.key")), 0o600);
    assert_eq!(mode(&cert_dir.join("tls.crt")), 0o600);
    let account_json = std::fs::read(&account).unwrap();

    // Restart: a new store and issuer on the same storage serve the stored certificate at
    // once, and a new order reuses the stored account.
    let store2 = SecretStore::default();
    let issuer2 = AcmeIssuer::new(
        resource(&pebble, storage.path(), &hosts, Challenge::Http01),
        store2.clone(),
        challenges.clone(),
    )
    .unwrap();
    let v2 = issuer2.load_stored().expect("stored certificate reused");
    assert_eq!(v2, v);
    assert_eq!(
        store2
            .current_certificate("kubernetes://shop-cert")
            .unwrap()
            .digest,
        served.digest
    );
    issuer2
        .issue()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.log()));
    assert_eq!(
        std::fs::read(&account).unwrap(),
        account_json,
        "account reused, not recreated"
    );
    assert_ne!(
        store2
            .current_certificate("kubernetes://shop-cert")
            .unwrap()
            .digest,
        served.digest
    );
    let accounts = std::fs::read_dir(account.parent().unwrap())
        .unwrap()
        .count();
    assert_eq!(accounts, 1);

    // Other hosts than the stored certificate's: not reused.
    let issuer3 = AcmeIssuer::new(
        resource(
            &pebble,
            storage.path(),
            &["other.example.test"],
            Challenge::Http01,
        ),
        SecretStore::default(),
        challenges,
    )
    .unwrap();
    assert!(issuer3.load_stored().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issuance() {
    let pebble = Pebble::start(None);
    let storage = TempDir::new();
    let challenges = ChallengeResponses::default();
    let listener = std::net::TcpListener::bind(("127.0.0.1", pebble.tls_alpn_port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(meshgate::acme::challenge::serve_tls_alpn(
        listener,
        challenges.clone(),
        async {
            let _ = rx.await;
        },
    ));
    let store = SecretStore::default();
    let issuer = AcmeIssuer::new(
        resource(
            &pebble,
            storage.path(),
            &["alpn.example.test"],
            Challenge::TlsAlpn01,
        ),
        store.clone(),
        challenges,
    )
    .unwrap();
    issuer
        .issue()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.log()));
    let served = store.current_certificate("kubernetes://shop-cert").unwrap();
    verify_chain(
        &served.certified_key.cert,
        &pebble.root_pem().await,
        "alpn.example.test",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_are_renewed_at_two_thirds() {
    // 9-second certificates: renewal due 6 s after issuance.
    let pebble = Pebble::start(Some(9));
    let storage = TempDir::new();
    let challenges = ChallengeResponses::default();
    let _responder = http01_responder(&pebble, &challenges);
    let store = SecretStore::default();
    let mut rx = store.certificate("kubernetes://shop-cert");
    let issuer = AcmeIssuer::new(
        resource(
            &pebble,
            storage.path(),
            &["renew.example.test"],
            Challenge::Http01,
        ),
        store.clone(),
        challenges,
    )
    .unwrap();
    let task = tokio::spawn(issuer.run(RenewalPolicy::default()));
    // First issuance, then one renewal.
    let mut digests = Vec::new();
    let mut issued_at = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while digests.len() < 2 {
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .unwrap_or_else(|_| panic!("no renewal in time\n{}", pebble.log()))
            .unwrap();
        let m = rx.borrow_and_update().clone().unwrap();
        digests.push(m.digest);
        issued_at.push((
            std::time::Instant::now(),
            m.leaf.not_before,
            m.leaf.not_after,
        ));
    }
    task.abort();
    assert_ne!(digests[0], digests[1]);
    let (t0, nb, na) = issued_at[0];
    let lifetime = na.duration_since(nb).unwrap();
    assert!(
        lifetime <= Duration::from_secs(10),
        "short validity honoured: {lifetime:?}"
    );
    let waited = issued_at[1].0.duration_since(t0);
    // Renewed around 2/3 of the lifetime: not at once (a lower bound the clock cannot
    // break) and before the first certificate expired (told by the certificates
    // themselves, not by how long the test took).
    assert!(waited >= Duration::from_secs(3), "renewed after {waited:?}");
    let (_, renewed_nb, _) = issued_at[1];
    assert!(
        renewed_nb < na,
        "the renewed certificate ({renewed_nb:?}) starts after the first expired ({na:?})"
    );
    assert_eq!(store.stats().get("tls.secret_rotations"), Some(1));
    assert!(store.stats().get("acme.issued").unwrap() >= 2);
    assert!(store.stats().get("acme.issued").unwrap() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_directory_backs_off_and_old_certificate_keeps_serving() {
    let mut pebble = Pebble::start(None);
    let storage = TempDir::new();
    let challenges = ChallengeResponses::default();
    let _responder = http01_responder(&pebble, &challenges);
    let hosts = ["backoff.example.test"];
    let mut res = resource(&pebble, storage.path(), &hosts, Challenge::Http01);
    AcmeIssuer::new(res.clone(), SecretStore::default(), challenges.clone())
        .unwrap()
        .issue()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.log()));
    pebble.stop();

    // Renewal due at once (tiny fraction), the server is gone: attempts back off while the
    // stored certificate serves.
    res.spec.renewal_fraction = Some(1e-9);
    let store = SecretStore::default();
    let issuer = AcmeIssuer::new(res, store.clone(), challenges).unwrap();
    let current = issuer.load_stored().expect("stored certificate");
    let served = store
        .current_certificate("kubernetes://shop-cert")
        .unwrap()
        .digest;
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let policy = RenewalPolicy {
        fraction: 1e-9,
        min_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(2),
    };
    let run = tokio::spawn(async move {
        meshgate::acme::renewal::run(
            &issuer,
            Some(current),
            policy,
            std::time::SystemTime::now,
            move |e| ev.lock().unwrap().push(e),
        )
        .await
    });
    let failures = || {
        events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                RenewalEvent::Failed { retry_in, .. } => Some(*retry_in),
                _ => None,
            })
            .collect::<Vec<Duration>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while failures().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "three failed attempts: {:?}",
            failures()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.abort();
    let retries = failures();
    assert!(retries.len() >= 3, "{retries:?}");
    assert_eq!(
        &retries[..3],
        &[
            Duration::from_millis(200),
            Duration::from_millis(400),
            Duration::from_millis(800)
        ]
    );
    assert_eq!(
        store
            .current_certificate("kubernetes://shop-cert")
            .unwrap()
            .digest,
        served
    );
    assert!(store.stats().get("acme.failures").unwrap() >= 3);
}
