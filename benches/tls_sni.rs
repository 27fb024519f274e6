//! Memory and handshake cost of many SNI certificates: 10,000 ECDSA P-256 certificates
//! loaded as SDS secrets into the secret store, one `DownstreamTls` per filter chain
//! (Istio's shape: one chain per Gateway server), chains selected by SNI through the
//! ClientHello peek and the server-name table, as the data plane does.
//!
//! Reports the process RSS after loading, and the server side's thread CPU time of a
//! full handshake (TLS 1.3, no resumption) with 1 certificate and with 10,000 (thread CPU
//! time, so that other processes on the machine do not skew the comparison).
//!
//!     cargo bench --bench tls_sni            # N=10000
//!     cargo bench --bench tls_sni -- 2000    # another N
use meshgate::tls::client_hello::parse_client_hello;
use meshgate::tls::server::{DownstreamTls, ServerSessionState};
use meshgate::tls::sni::ServerNameTable;
use meshgate::tls::{SecretStore, SecretStoreOptions};
use meshgate::xds::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use meshgate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret, TlsCertificate, secret,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn inline(b: String) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(b.into_bytes())),
        ..Default::default()
    })
}

struct Loaded {
    table: ServerNameTable<usize>,
    chains: Vec<DownstreamTls>,
    _store: SecretStore,
    ca_pem: String,
}

fn load(n: usize) -> Loaded {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let store = SecretStore::new(SecretStoreOptions::default());
    let sessions = ServerSessionState::new(4096).unwrap();
    let mut table = ServerNameTable::new(true);
    let mut chains = Vec::with_capacity(n);
    // In batches, as SDS snapshots would deliver them, so inputs do not pile up.
    let mut secrets = Vec::new();
    for i in 0..n {
        let host = format!("host-{i}.example.com");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.clone()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let name = format!("kubernetes://cred-{i}");
        secrets.push(Secret {
            name: name.clone(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(cert.pem()),
                private_key: inline(key.serialize_pem()),
                ..Default::default()
            })),
        });
        let ctx = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                alpn_protocols: vec!["h2".into(), "http/1.1".into()],
                tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                    name,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        chains.push(DownstreamTls::from_context(&ctx, &store, &sessions, &host).unwrap());
        table.insert(&host, i);
    }
    // One state-of-the-world snapshot with every secret.
    assert!(store.apply_sds(&secrets).is_empty());
    drop(secrets);
    Loaded {
        table,
        chains,
        _store: store,
        ca_pem,
    }
}

/// CPU time of this thread: unaffected by other processes competing for the cores.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `count` full handshakes in memory against hosts chosen by `pick`; returns the
/// thread CPU time per handshake spent on the server side (peek + chain lookup +
/// rustls server work).
fn handshakes(l: &Loaded, count: usize, mut pick: impl FnMut(usize) -> usize) -> Duration {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            meshgate::tls::material::parse_certificates(l.ca_pem.as_bytes(), "ca").unwrap()[0]
                .clone(),
        )
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(meshgate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let cfg = Arc::new(cfg);
    let mut server_time = Duration::ZERO;
    for k in 0..count {
        let i = pick(k);
        let host = format!("host-{i}.example.com");
        let mut client =
            rustls::ClientConnection::new(cfg.clone(), host.try_into().unwrap()).unwrap();
        let mut to_server = Vec::new();
        client.write_tls(&mut to_server).unwrap();
        let t = thread_cpu();
        let hello = parse_client_hello(&to_server, 64 * 1024).unwrap().unwrap();
        let chain = *l.table.lookup(hello.server_name.as_deref()).unwrap();
        let mut server = rustls::ServerConnection::new(l.chains[chain].server_config()).unwrap();
        server_time += thread_cpu() - t;
        let mut to_client = Vec::new();
        loop {
            if !to_server.is_empty() {
                let t = thread_cpu();
                let mut rd = &to_server[..];
                while !rd.is_empty() {
                    server.read_tls(&mut rd).unwrap();
                }
                server.process_new_packets().unwrap();
                server.write_tls(&mut to_client).unwrap();
                server_time += thread_cpu() - t;
                to_server.clear();
            }
            if !to_client.is_empty() {
                let mut rd = &to_client[..];
                while !rd.is_empty() {
                    client.read_tls(&mut rd).unwrap();
                }
                client.process_new_packets().unwrap();
                to_client.clear();
                client.write_tls(&mut to_server).unwrap();
            }
            if !client.is_handshaking() && !server.is_handshaking() && to_server.is_empty() {
                break;
            }
        }
        assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));
    }
    server_time / count as u32
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --all-targets` runs bench binaries too: benchmarks are never tests.
    if !args.iter().any(|a| a == "--bench") {
        println!("tls_sni: a benchmark; run it with `cargo bench --bench tls_sni`");
        return;
    }
    let n: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000);
    let base = rss_kib();
    let t = Instant::now();
    let one = load(1);
    let many = load(n);
    let load_time = t.elapsed();
    let rss = rss_kib();
    println!("certificates: {n} ECDSA P-256, one SDS secret and one filter chain each");
    println!(
        "load: {:.1} s (including generating the certificates)",
        load_time.as_secs_f64()
    );
    println!(
        "RSS: {:.1} MiB total after loading (baseline before: {:.1} MiB; {:.2} KiB per certificate)",
        rss as f64 / 1024.0,
        base as f64 / 1024.0,
        (rss.saturating_sub(base)) as f64 / n as f64
    );
    let rounds = 1000;
    // Alternate the scenarios and take medians of 5 runs each.
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut c = Vec::new();
    for _ in 0..9 {
        a.push(handshakes(&one, rounds, |_| 0));
        c.push(handshakes(&many, rounds, |_| n / 2));
        let mut x: u64 = 0x2545f4914f6cdd1d;
        b.push(handshakes(&many, rounds, |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        }));
    }
    a.sort();
    b.sort();
    c.sort();
    println!(
        "server thread CPU per full TLS 1.3 handshake (peek + chain lookup + rustls), median of 9 x {rounds}:"
    );
    println!("  1 certificate:      {:>7.1} us", a[4].as_secs_f64() * 1e6);
    println!(
        "  {n} certificates: {:>7.1} us (the same SNI every time)",
        c[4].as_secs_f64() * 1e6
    );
    println!(
        "  {n} certificates: {:>7.1} us (random SNI among all)",
        b[4].as_secs_f64() * 1e6
    );
}
