//! Istio's certificate service, `istio.v1.auth.IstioCertificateService/CreateCertificate`
//! (istio.io/api `security/v1alpha1/ca.proto`), on the control plane's TLS port.
//!
//! A call is authenticated ([`super::authn`]), its CSR parsed and its signature verified,
//! its names checked against the caller's identity, then a join token is marked used and
//! the leaf signed. Errors map as istiod's do: no or bad credential `UNAUTHENTICATED`,
//! a CSR that cannot be used `INVALID_ARGUMENT`, names the caller may not have
//! `PERMISSION_DENIED`.
use super::authn::{Authenticator, bearer};
use super::authority::Ca;
use super::csr::Csr;
use super::serving::PeerInfo;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::Status;

/// `istio.v1.auth.IstioCertificateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded certificate request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds; zero or less for the default.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Opaque node metadata (WorkloadName, WorkloadIP, ClusterID); not used.
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<prost_types::Struct>,
}

/// `istio.v1.auth.IstioCertificateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates: the leaf first, the root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// The fully qualified gRPC method.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// Counts of CreateCertificate outcomes.
#[derive(Debug, Default)]
pub struct CaMetrics {
    pub issued: AtomicU64,
    pub unauthenticated: AtomicU64,
    pub denied: AtomicU64,
    pub invalid: AtomicU64,
    pub failed: AtomicU64,
}

struct Shared {
    ca: Arc<Ca>,
    authn: Arc<Authenticator>,
    metrics: Arc<CaMetrics>,
}

/// The gRPC service (tonic), to be added to the control plane's TLS server.
#[derive(Clone)]
pub struct CertificateService {
    shared: Arc<Shared>,
}

impl CertificateService {
    pub fn new(ca: Arc<Ca>, authn: Arc<Authenticator>) -> CertificateService {
        CertificateService {
            shared: Arc::new(Shared {
                ca,
                authn,
                metrics: Arc::default(),
            }),
        }
    }

    /// Outcome counters.
    pub fn metrics(&self) -> &Arc<CaMetrics> {
        &self.shared.metrics
    }

    /// Handles one request: what the gRPC method does, without the transport.
    pub fn create_certificate(
        &self,
        req: &IstioCertificateRequest,
        authorization: Option<&str>,
        peer: Option<&PeerInfo>,
    ) -> Result<IstioCertificateResponse, Status> {
        let s = &self.shared;
        let count = |c: &AtomicU64| {
            c.fetch_add(1, Ordering::Relaxed);
        };
        let token = match authorization {
            Some(h) => Some(bearer(h).ok_or_else(|| {
                count(&s.metrics.unauthenticated);
                Status::unauthenticated("the authorization header is not `Bearer TOKEN`")
            })?),
            None => None,
        };
        let peer_id = peer.and_then(|p| p.identity.as_ref());
        let addr = peer.and_then(|p| p.addr);
        let caller = s.authn.authenticate(token, peer_id).map_err(|e| {
            tracing::info!(peer = ?addr, reason = %e, "certificate request refused: not authenticated");
            match e {
                super::authn::AuthError::Internal(m) => {
                    count(&s.metrics.failed);
                    Status::unavailable(m)
                }
                other => {
                    count(&s.metrics.unauthenticated);
                    Status::unauthenticated(other.to_string())
                }
            }
        })?;
        let csr = Csr::from_pem(&req.csr).map_err(|e| {
            count(&s.metrics.invalid);
            tracing::info!(peer = ?addr, identity = %caller.identity, reason = %e, "certificate request refused: bad CSR");
            Status::invalid_argument(e.to_string())
        })?;
        csr.check_names(&caller.identity).map_err(|e| {
            count(&s.metrics.denied);
            tracing::warn!(peer = ?addr, identity = %caller.identity, source = caller.source.as_str(), reason = %e, "certificate request refused: names not allowed");
            Status::permission_denied(e.to_string())
        })?;
        // As istiod: a lifetime above the maximum is refused, not cut (the caller asked
        // for something it would not get); before a join token is spent on it.
        let ttl =
            (req.validity_duration > 0).then(|| Duration::from_secs(req.validity_duration as u64));
        if let Some(asked) = ttl
            && asked > s.ca.max_ttl()
        {
            count(&s.metrics.invalid);
            tracing::info!(peer = ?addr, identity = %caller.identity, asked_s = asked.as_secs(), max_s = s.ca.max_ttl().as_secs(), "certificate request refused: lifetime above the maximum");
            return Err(Status::invalid_argument(format!(
                "requested TTL {}s is greater than the max allowed TTL {}s",
                asked.as_secs(),
                s.ca.max_ttl().as_secs()
            )));
        }
        s.authn.commit(&caller).map_err(|e| {
            tracing::info!(peer = ?addr, identity = %caller.identity, reason = %e, "certificate request refused");
            match e {
                super::authn::AuthError::Internal(m) => {
                    count(&s.metrics.failed);
                    Status::unavailable(m)
                }
                other => {
                    count(&s.metrics.unauthenticated);
                    Status::unauthenticated(other.to_string())
                }
            }
        })?;
        let issued = s.ca.sign(&csr, &caller.identity, ttl).map_err(|e| {
            count(&s.metrics.failed);
            tracing::error!(identity = %caller.identity, error = %e, "signing failed");
            Status::internal(e.to_string())
        })?;
        count(&s.metrics.issued);
        let lifetime = issued
            .not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tracing::info!(peer = ?addr, identity = %caller.identity, source = caller.source.as_str(), lifetime_s = lifetime.as_secs(), "certificate issued");
        Ok(IstioCertificateResponse {
            cert_chain: issued.chain,
        })
    }
}

impl tonic::server::NamedService for CertificateService {
    const NAME: &'static str = "istio.v1.auth.IstioCertificateService";
}

type GrpcRequest = http::Request<tonic::body::Body>;
type GrpcResponse = http::Response<tonic::body::Body>;

impl tonic::codegen::Service<GrpcRequest> for CertificateService {
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<GrpcResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: GrpcRequest) -> Self::Future {
        if req.uri().path() != CREATE_CERTIFICATE_PATH {
            return Box::pin(std::future::ready(
                Ok(Status::unimplemented("").into_http()),
            ));
        }
        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
            IstioCertificateResponse,
            IstioCertificateRequest,
        >::default())
        .apply_max_message_size_config(Some(super::csr::MAX_CSR_BYTES + 4096), Some(1 << 20));
        let unary = Unary(self.clone());
        Box::pin(async move { Ok(grpc.unary(unary, req).await) })
    }
}

struct Unary(CertificateService);

impl tonic::server::UnaryService<IstioCertificateRequest> for Unary {
    type Response = IstioCertificateResponse;
    type Future = Pin<
        Box<dyn Future<Output = Result<tonic::Response<IstioCertificateResponse>, Status>> + Send>,
    >;

    fn call(&mut self, request: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            let authorization = match request.metadata().get("authorization") {
                Some(v) => Some(
                    v.to_str()
                        .map_err(|_| {
                            Status::unauthenticated("the authorization header is not text")
                        })?
                        .to_string(),
                ),
                None => None,
            };
            let peer = request.extensions().get::<PeerInfo>().cloned();
            let req = request.into_inner();
            // Signing, verifying and the token record's fsync are blocking work.
            tokio::task::spawn_blocking(move || {
                service.create_certificate(&req, authorization.as_deref(), peer.as_ref())
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(tonic::Response::new)
        })
    }
}
