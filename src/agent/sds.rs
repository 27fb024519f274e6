//! The agent's SDS server: the workload certificate `default` and the trust bundle
//! `ROOTCA`, served to the Envoy next to it on a Unix socket.
//!
//! It is the control plane's own SDS service (StreamSecrets and DeltaSecrets, with its
//! versions, nonces, ACK/NACK handling and pushes), fed by a source that holds only the
//! agent's two secrets: a rotation replaces them and every stream gets the new ones;
//! a name the agent does not hold is answered as not existing. The key stays in memory:
//! it is never written to disk, and only a process that can open the socket (its
//! directory is 0700, the socket 0600) is served.
use crate::controlplane::{ControlPlane, Debounce, Options, ServeError, StaticSource, TypeSet};
use crate::identity::WorkloadCertificate;
use crate::xds::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret::Type};
use crate::xds::{ResourceSet, TypeUrl};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The socket's file name in its directory.
pub const SOCKET_NAME: &str = "socket";

/// Serves the agent's secrets over SDS.
#[derive(Clone)]
pub struct SecretServer {
    source: Arc<StaticSource>,
    control_plane: ControlPlane,
    /// The certificate served and the roots trusted besides its own.
    held: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    certificate: Option<Arc<WorkloadCertificate>>,
    /// PEM roots of the `--ca-root` file as last read, added to `ROOTCA`.
    extra_roots: Vec<String>,
}

impl SecretServer {
    /// A server with no secrets yet (needs a Tokio runtime).
    pub fn new() -> SecretServer {
        let source = Arc::new(StaticSource::new(ResourceSet::default()));
        let options = Options {
            // Only rotations change anything: push them at once.
            debounce: Debounce {
                after: Duration::from_millis(10),
                max: Duration::from_millis(100),
            },
            ..Options::default()
        };
        let control_plane = ControlPlane::new(source.clone(), options);
        SecretServer {
            source,
            control_plane,
            held: Arc::default(),
        }
    }

    /// Serves `cert`'s `default` and `ROOTCA` from now on, in place of the last ones.
    pub fn publish(&self, cert: &Arc<WorkloadCertificate>) {
        let mut held = self.lock();
        held.certificate = Some(cert.clone());
        self.publish_secrets(with_roots(cert.sds_secrets(), &held.extra_roots));
    }

    /// Trusts `roots` (PEM) in `ROOTCA` besides the CA's, from now on: the `--ca-root`
    /// file changed (a root rotated in). Pushed at once when a certificate is held.
    pub fn set_extra_roots(&self, roots: Vec<String>) {
        let mut held = self.lock();
        held.extra_roots = roots;
        if let Some(cert) = &held.certificate {
            self.publish_secrets(with_roots(cert.sds_secrets(), &held.extra_roots));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves exactly `secrets` from now on; every stream gets what changed.
    pub fn publish_secrets(&self, secrets: Vec<Secret>) {
        let set = ResourceSet {
            secrets,
            ..Default::default()
        };
        self.source
            .set_default(set, TypeSet::of(&[TypeUrl::Secret]));
    }

    /// Serves SDS on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: tokio::net::UnixListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        self.control_plane.serve_local_sds(listener, shutdown).await
    }
}

impl Default for SecretServer {
    fn default() -> Self {
        SecretServer::new()
    }
}

/// `ROOTCA` of `secrets` with `extra` roots added (each once, in order).
fn with_roots(secrets: [Secret; 2], extra: &[String]) -> Vec<Secret> {
    let mut secrets: Vec<Secret> = secrets.into();
    if extra.is_empty() {
        return secrets;
    }
    for s in &mut secrets {
        if let Some(Type::ValidationContext(v)) = &mut s.r#type
            && let Some(DataSource {
                specifier: Some(Specifier::InlineString(bundle)),
                ..
            }) = &mut v.trusted_ca
        {
            for root in extra {
                if !bundle.contains(root.trim()) {
                    if !bundle.is_empty() && !bundle.ends_with('\n') {
                        bundle.push('\n');
                    }
                    bundle.push_str(root.trim());
                    bundle.push('\n');
                }
            }
        }
    }
    secrets
}

/// The PEM certificates of a bundle, each as its own block.
pub fn pem_certificates(text: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    text.split_inclusive(END)
        .filter_map(|part| {
            let start = part.find("-----BEGIN CERTIFICATE-----")?;
            part.ends_with(END).then(|| part[start..].to_string())
        })
        .collect()
}

/// Makes `dir` (mode 0700, created if missing) and binds `dir/socket` (mode 0600), a
/// stale socket of an earlier run removed first. Fails if `dir` is not a directory of
/// this user: another user could then reach the key.
pub fn bind_socket(dir: &Path) -> std::io::Result<(tokio::net::UnixListener, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if std::os::unix::fs::MetadataExt::uid(&meta) != uid {
        return Err(std::io::Error::other(format!(
            "{} belongs to another user",
            dir.display()
        )));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join(SOCKET_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::pb::envoy::config::core::v3::Node;
    use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, TlsCertificate,
    };
    use crate::xds::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    };
    use crate::xds::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    use prost::Message as _;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    const NODE: &str = "sidecar~10.0.0.1~reviews-1.shop~shop.svc.cluster.local";
    const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    /// `default` and `ROOTCA` with recognisable contents.
    fn secrets(tag: &str) -> Vec<Secret> {
        let inline = |s: String| DataSource {
            specifier: Some(Specifier::InlineString(s)),
            ..Default::default()
        };
        vec![
            Secret {
                name: "default".into(),
                r#type: Some(Type::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(inline(format!("chain-{tag}"))),
                    private_key: Some(inline(format!("key-{tag}"))),
                    ..Default::default()
                })),
            },
            Secret {
                name: "ROOTCA".into(),
                r#type: Some(Type::ValidationContext(CertificateValidationContext {
                    trusted_ca: Some(inline(format!("root-{tag}"))),
                    ..Default::default()
                })),
            },
        ]
    }

    fn chain_of(packed: &[u8]) -> (String, String) {
        let s = Secret::decode(packed).expect("a Secret");
        let text = match s.r#type {
            Some(Type::TlsCertificate(t)) => t.certificate_chain,
            Some(Type::ValidationContext(v)) => v.trusted_ca,
            _ => None,
        };
        let text = match text.and_then(|d| d.specifier) {
            Some(Specifier::InlineString(s)) => s,
            other => panic!("inline text expected, got {other:?}"),
        };
        (s.name, text)
    }

    /// Connects a channel to the Unix socket at `path`.
    #[derive(Clone)]
    struct Uds(PathBuf);

    impl tonic::codegen::Service<http::Uri> for Uds {
        type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
        type Error = std::io::Error;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _uri: http::Uri) -> Self::Future {
            let path = self.0.clone();
            Box::pin(async move {
                Ok(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            })
        }
    }

    async fn client(path: &Path) -> SecretDiscoveryServiceClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_static("http://agent.local")
            .connect_with_connector(Uds(path.to_path_buf()))
            .await
            .expect("connect to the socket");
        SecretDiscoveryServiceClient::new(channel)
    }

    fn node() -> Option<Node> {
        Some(Node {
            id: NODE.into(),
            ..Default::default()
        })
    }

    async fn next<T>(s: &mut tonic::Streaming<T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("a response in time")
            .expect("no stream error")
            .expect("the stream goes on")
    }

    #[test]
    fn roots_of_the_file_join_rootca() {
        let [default, root] = <[Secret; 2]>::try_from(secrets("1")).unwrap();
        let pem = |n: u8| format!("-----BEGIN CERTIFICATE-----\nQ{n}==\n-----END CERTIFICATE-----");
        let file = format!("# roots\n{}\n{}\n", pem(1), pem(2));
        let extra = pem_certificates(&file);
        assert_eq!(extra, [pem(1), pem(2)]);
        let merged = with_roots([default.clone(), root.clone()], &extra);
        assert_eq!(merged[0], default);
        let (name, bundle) = chain_of(&merged[1].encode_to_vec());
        assert_eq!(name, "ROOTCA");
        assert_eq!(bundle, format!("root-1\n{}\n{}\n", pem(1), pem(2)));
        // A root already in the bundle is not added again.
        let again = with_roots(
            <[Secret; 2]>::try_from(merged.clone()).unwrap(),
            &extra[..1],
        );
        assert_eq!(again, merged);
        assert_eq!(with_roots([default, root.clone()], &[])[1], root);
    }

    #[tokio::test]
    async fn the_socket_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let sds = dir.path().join("run").join("sds");
        let (_listener, path) = bind_socket(&sds).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sds), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert!(std::os::unix::fs::FileTypeExt::is_socket(
            &std::fs::metadata(&path).unwrap().file_type()
        ));
        // A second bind replaces the stale socket.
        drop(_listener);
        let (_again, path2) = bind_socket(&sds).unwrap();
        assert_eq!(path, path2);
        // Not a directory: refused.
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(bind_socket(&file).is_err());
    }

    #[tokio::test]
    async fn state_of_the_world_and_delta_streams_follow_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, path) = bind_socket(&dir.path().join("sds")).unwrap();
        let server = SecretServer::new();
        server.publish_secrets(secrets("1"));
        let serving = server.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serving
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        });

        // StreamSecrets, as Envoy asks for each secret: one name per stream, and a name
        // the agent does not hold.
        let mut sotw = client(&path).await;
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(8);
        tx.send(DiscoveryRequest {
            node: node(),
            type_url: SECRET.into(),
            resource_names: vec!["default".into(), "ROOTCA".into(), "other".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let mut answers = sotw
            .stream_secrets(ReceiverStream::new(rx))
            .await
            .expect("StreamSecrets")
            .into_inner();
        let first: DiscoveryResponse = next(&mut answers).await;
        let mut got: Vec<_> = first.resources.iter().map(|a| chain_of(&a.value)).collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("ROOTCA".to_string(), "root-1".to_string()),
                ("default".to_string(), "chain-1".to_string())
            ],
            "`other` does not exist"
        );
        assert!(!first.nonce.is_empty() && !first.version_info.is_empty());
        // ACK.
        tx.send(DiscoveryRequest {
            type_url: SECRET.into(),
            resource_names: vec!["default".into(), "ROOTCA".into(), "other".into()],
            version_info: first.version_info.clone(),
            response_nonce: first.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

        // DeltaSecrets on another stream.
        let mut delta = client(&path).await;
        let (dtx, drx) = mpsc::channel::<DeltaDiscoveryRequest>(8);
        dtx.send(DeltaDiscoveryRequest {
            node: node(),
            type_url: SECRET.into(),
            resource_names_subscribe: vec!["default".into(), "missing".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let mut deltas = delta
            .delta_secrets(ReceiverStream::new(drx))
            .await
            .expect("DeltaSecrets")
            .into_inner();
        let d1: DeltaDiscoveryResponse = next(&mut deltas).await;
        let names: Vec<_> = d1
            .resources
            .iter()
            .map(|r| chain_of(&r.resource.as_ref().expect("a resource").value))
            .collect();
        assert_eq!(names, [("default".to_string(), "chain-1".to_string())]);
        dtx.send(DeltaDiscoveryRequest {
            type_url: SECRET.into(),
            response_nonce: d1.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

        // A rotation reaches both streams, with a new version and nonce.
        server.publish_secrets(secrets("2"));
        let second: DiscoveryResponse = next(&mut answers).await;
        let mut got: Vec<_> = second
            .resources
            .iter()
            .map(|a| chain_of(&a.value))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("ROOTCA".to_string(), "root-2".to_string()),
                ("default".to_string(), "chain-2".to_string())
            ]
        );
        assert_ne!(second.version_info, first.version_info);
        assert_ne!(second.nonce, first.nonce);
        let d2: DeltaDiscoveryResponse = next(&mut deltas).await;
        let names: Vec<_> = d2
            .resources
            .iter()
            .map(|r| chain_of(&r.resource.as_ref().expect("a resource").value))
            .collect();
        assert_eq!(names, [("default".to_string(), "chain-2".to_string())]);
        assert_ne!(d2.nonce, d1.nonce);
        assert!(d2.removed_resources.is_empty());

        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }
}
