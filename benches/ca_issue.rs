//! Certificates issued per second by meshgate's CA.
//!
//! ```sh
//! cargo bench --bench ca_issue [-- --count 2000 --concurrency 16]
//! ```
//!
//! Three figures, each over `--count` certificates for P-256 keys (CSRs made beforehand):
//! - `sign`: what a CreateCertificate does after authentication, in-process on one
//!   thread: parse the CSR, verify its signature, check its names, sign the leaf; once
//!   with the default self-signed ECDSA P-256 CA, once with an RSA-2048 plug-in
//!   intermediate (Istio's usual `cacerts`).
//! - `grpc renewal`: CreateCertificate over TLS on a loopback port, the caller
//!   authenticated by its client certificate, `--concurrency` calls in flight over 4
//!   connections; client and server share the machine.
//! - `grpc join token`: the same with a fresh join token per call (each use is recorded
//!   and synced to disk before the certificate goes out).
use meshgate::ca::service::{
    CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse,
};
use meshgate::ca::{
    Authenticator, Ca, CaOptions, CertificateService, Csr, JoinTokens, ServingNames, SpiffeId,
    XdsTls,
};
use rcgen::{CertificateParams, KeyPair, SanType};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    count: usize,
    concurrency: usize,
}

fn args() -> Args {
    let mut a = Args {
        count: 2000,
        concurrency: 16,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--count" => a.count = value(),
            "--concurrency" => a.concurrency = value(),
            // `cargo bench` passes --bench.
            _ => {}
        }
    }
    a
}

fn identity() -> SpiffeId {
    SpiffeId::new("cluster.local", "edge", "ingress").unwrap()
}

fn csrs(n: usize) -> Vec<String> {
    let uri = SanType::URI(identity().uri().try_into().unwrap());
    (0..n)
        .map(|_| {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = CertificateParams::default();
            p.subject_alt_names = vec![uri.clone()];
            p.serialize_request(&key).unwrap().pem().unwrap()
        })
        .collect()
}

fn report(what: &str, n: usize, elapsed: Duration) {
    println!(
        "{what:<34} {n:>6} certificates in {:>7.3} s: {:>7.0}/s ({:.0} µs each)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
}

fn sign_all(what: &str, ca: &Ca, csrs: &[String]) {
    let id = identity();
    let start = Instant::now();
    for pem in csrs {
        let csr = Csr::from_pem(pem).unwrap();
        csr.check_names(&id).unwrap();
        std::hint::black_box(ca.sign(&csr, &id, None).unwrap());
    }
    report(what, csrs.len(), start.elapsed());
}

/// An RSA-2048 root and intermediate in Istio's plug-in layout.
fn rsa_plug_in(dir: &Path) {
    use rcgen::{BasicConstraints, DnType, IsCa, Issuer, KeyUsagePurpose, RsaKeySize};
    let rsa = || KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap();
    let ca_params = |cn: &str| {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::OrganizationName, "Istio");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    };
    let (root_key, int_key) = (rsa(), rsa());
    let root_params = ca_params("Root CA");
    let root = root_params.self_signed(&root_key).unwrap();
    let int = ca_params("Intermediate CA")
        .signed_by(&int_key, &Issuer::new(root_params, root_key))
        .unwrap();
    std::fs::write(dir.join("root-cert.pem"), root.pem()).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), int.pem()).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), int.pem() + &root.pem()).unwrap();
    let key = dir.join("ca-key.pem");
    std::fs::write(&key, int_key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
}

type Channel = tonic::transport::Channel;

/// Connects to the TLS port, verifying it with the CA's root, with a client certificate
/// when given.
async fn connect(
    addr: std::net::SocketAddr,
    ca: &Ca,
    client: Option<(Vec<rustls_pki_types::CertificateDer<'static>>, Vec<u8>)>,
) -> Channel {
    let mut roots = rustls::RootCertStore::empty();
    for r in ca.roots_der() {
        roots.add(r.clone()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(meshgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, rustls_pki_types::PrivateKeyDer::Pkcs8(key.into()))
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnect {
        addr,
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
    };
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(connector)
        .await
        .unwrap()
}

#[derive(Clone)]
struct TlsConnect {
    addr: std::net::SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

type Io = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tonic::codegen::Service<http::Uri> for TlsConnect {
    type Response = Io;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Io>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(this.addr).await?;
            tcp.set_nodelay(true)?;
            let name = rustls_pki_types::ServerName::try_from("istiod.istio-system.svc")
                .map_err(std::io::Error::other)?;
            Ok(hyper_util::rt::TokioIo::new(
                this.tls.connect(name, tcp).await?,
            ))
        })
    }
}

async fn create(
    channel: Channel,
    csr: String,
    token: Option<String>,
) -> Result<IstioCertificateResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: None,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let codec =
        tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
    grpc.unary(
        req,
        http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE_PATH),
        codec,
    )
    .await
    .map(|r| r.into_inner())
}

async fn over_grpc(
    what: &str,
    channels: &[Channel],
    csrs: Vec<String>,
    tokens: Vec<Option<String>>,
    concurrency: usize,
) {
    let n = csrs.len();
    let work = Arc::new(std::sync::Mutex::new(
        csrs.into_iter().zip(tokens).collect::<Vec<_>>(),
    ));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..concurrency {
        let (channel, work) = (channels[i % channels.len()].clone(), work.clone());
        tasks.spawn(async move {
            loop {
                let Some((csr, token)) = work.lock().unwrap().pop() else {
                    return;
                };
                let resp = create(channel.clone(), csr, token).await.unwrap();
                assert_eq!(resp.cert_chain.len(), 2);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    report(what, n, start.elapsed());
}

fn main() {
    let a = args();
    println!(
        "CA issuance, {} certificates per figure, P-256 CSRs, {} CPUs",
        a.count,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let csrs_made = csrs(a.count * 3);
    let (sign_set, rest) = csrs_made.split_at(a.count);
    let (renew_set, token_set) = rest.split_at(a.count);

    let dir = tempfile::tempdir().unwrap();
    let ecdsa_dir = dir.path().join("ecdsa");
    let ca = Arc::new(Ca::load_or_create(&ecdsa_dir, CaOptions::default()).unwrap());
    sign_all("sign (ECDSA P-256 root)", &ca, sign_set);
    let rsa_dir = dir.path().join("rsa");
    std::fs::create_dir_all(&rsa_dir).unwrap();
    rsa_plug_in(&rsa_dir);
    let rsa = Ca::load_or_create(&rsa_dir, CaOptions::default()).unwrap();
    sign_all(
        "sign (RSA-2048 plug-in intermediate)",
        &rsa,
        &sign_set[..sign_set.len().min(500)],
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let authn = Arc::new(Authenticator::new(
            JoinTokens::open(&ecdsa_dir, "cluster.local").unwrap(),
            None,
        ));
        let service = CertificateService::new(ca.clone(), authn);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = Arc::new(XdsTls::new(ca.clone(), ServingNames::for_listener(addr, &[])).unwrap());
        let incoming = tls.incoming(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        // A client certificate of the CA, for renewal.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(identity().uri().try_into().unwrap())];
        let csr = Csr::from_pem(&p.serialize_request(&key).unwrap().pem().unwrap()).unwrap();
        let issued = ca.sign(&csr, &identity(), None).unwrap();
        let chain: Vec<_> = issued
            .chain
            .iter()
            .flat_map(|pem| {
                rustls_pemfile::certs(&mut pem.as_bytes())
                    .map(|c| c.unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut renewing = Vec::new();
        let mut anonymous = Vec::new();
        for _ in 0..4 {
            renewing.push(connect(addr, &ca, Some((chain.clone(), key.serialize_der()))).await);
            anonymous.push(connect(addr, &ca, None).await);
        }
        over_grpc(
            "grpc renewal (client certificate)",
            &renewing,
            renew_set.to_vec(),
            vec![None; renew_set.len()],
            a.concurrency,
        )
        .await;
        let tokens = (0..token_set.len())
            .map(|_| {
                Some(
                    meshgate::ca::token::create_token(
                        &ecdsa_dir,
                        &identity(),
                        Duration::from_secs(600),
                    )
                    .unwrap(),
                )
            })
            .collect();
        over_grpc(
            "grpc join token (synced record)",
            &anonymous,
            token_set.to_vec(),
            tokens,
            a.concurrency,
        )
        .await;
    });
}
