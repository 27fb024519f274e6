//! A scripted ADS server: it hands every delta or state-of-the-world stream to the test,
//! which reads the client's requests and answers by hand (edge cases a real control plane
//! never produces: NACK loops, unknown types, out-of-order versions, removals).
#![allow(dead_code)]

use meshgate::xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use meshgate::xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use meshgate::xds::pb::google::protobuf::Any;
use prost::{Message, Name};
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Where the test sends delta responses of one stream.
pub type DeltaOut = mpsc::Sender<Result<DeltaDiscoveryResponse, tonic::Status>>;
/// Where the test sends state-of-the-world responses of one stream.
pub type SotwOut = mpsc::Sender<Result<DiscoveryResponse, tonic::Status>>;
type Out<T> = Pin<Box<dyn futures::Stream<Item = Result<T, tonic::Status>> + Send>>;

/// How long the helpers wait for the client before failing the test.
const WAIT: Duration = Duration::from_secs(10);

struct Scripted {
    delta: mpsc::Sender<(tonic::Streaming<DeltaDiscoveryRequest>, DeltaOut)>,
    sotw: mpsc::Sender<(tonic::Streaming<DiscoveryRequest>, SotwOut)>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Scripted {
    type StreamAggregatedResourcesStream = Out<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Out<DeltaDiscoveryResponse>;
    async fn stream_aggregated_resources(
        &self,
        req: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let _ = self.sotw.send((req.into_inner(), tx)).await;
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
    async fn delta_aggregated_resources(
        &self,
        req: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let _ = self.delta.send((req.into_inner(), tx)).await;
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The server on 127.0.0.1 and the streams clients open on it.
pub struct ScriptedServer {
    pub addr: SocketAddr,
    pub delta: mpsc::Receiver<(tonic::Streaming<DeltaDiscoveryRequest>, DeltaOut)>,
    pub sotw: mpsc::Receiver<(tonic::Streaming<DiscoveryRequest>, SotwOut)>,
}

impl ScriptedServer {
    /// Serves on a free port of 127.0.0.1 (inside the test's tokio runtime).
    pub async fn start() -> ScriptedServer {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Serves on `addr` (a port a client may already be trying).
    pub async fn start_on(addr: SocketAddr) -> ScriptedServer {
        let (dtx, drx) = mpsc::channel(4);
        let (stx, srx) = mpsc::channel(4);
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(Scripted {
                    delta: dtx,
                    sotw: stx,
                }))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        ScriptedServer {
            addr,
            delta: drx,
            sotw: srx,
        }
    }
}

/// The next stream a client opens (bounded wait).
pub async fn accept<T>(rx: &mut mpsc::Receiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the client connects in time")
        .expect("server running")
}

/// The client's next request on a stream (bounded wait).
pub async fn next<T>(s: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("a request in time")
        .expect("stream ok")
        .expect("a request")
}

/// Reads requests until one matches `pred`.
pub async fn until<T>(s: &mut tonic::Streaming<T>, pred: impl Fn(&T) -> bool) -> T {
    loop {
        let r = next(s).await;
        if pred(&r) {
            return r;
        }
    }
}

/// `m` packed as an `Any`.
pub fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// A delta resource named `name` at `version`.
pub fn res<M: Message + Name>(name: &str, version: &str, m: &M) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(any(m)),
        ..Default::default()
    }
}
