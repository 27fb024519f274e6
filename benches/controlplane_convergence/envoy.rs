//! Simulated gateway proxies that speak ADS the way Envoy 1.40 does, delta or state of
//! the world, many streams sharing a few HTTP/2 connections.
//!
//! Per stream, as Envoy 1.40 was seen doing on the wire (its trace log of a state of the
//! world stream against meshgate's control plane): CDS wildcard; on the CDS response, an
//! EDS request naming the EDS clusters' service names (`eds_cluster_config.service_name`,
//! else the cluster's name), then the CDS ACK; on the EDS response that gives every EDS
//! cluster its endpoints (all clusters initialized), the LDS wildcard, then the EDS ACK;
//! on the LDS response, an RDS request naming the HTTP connection managers'
//! `rds.route_config_name`s, then the LDS ACK; then ACKs. Envoy starts LDS only when its
//! clusters are initialized (`cm init: all clusters initialized` -> `initializing target
//! LDS`), not right after the CDS ACK.
//!
//! A delta ACK carries only the nonce; a state-of-the-world ACK carries the version, the
//! nonce and (EDS, RDS) the full list of names. The node goes on a stream's first request
//! only. Every resource of every response is decoded, as a proxy does; nothing is ever
//! NACKed.
use meshgate::xds::pb::envoy::config::cluster::v3::Cluster;
use meshgate::xds::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use meshgate::xds::pb::envoy::config::core::v3::node::UserAgentVersionType;
use meshgate::xds::pb::envoy::config::core::v3::{BuildVersion, Node};
use meshgate::xds::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use meshgate::xds::pb::envoy::config::listener::v3::Listener;
use meshgate::xds::pb::envoy::config::listener::v3::filter::ConfigType;
use meshgate::xds::pb::envoy::config::route::v3::RouteConfiguration;
use meshgate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use meshgate::xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use meshgate::xds::pb::envoy::r#type::v3::SemanticVersion;
use meshgate::xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshgate::xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use meshgate::xds::pb::google::protobuf::{Struct, Value, value::Kind};
use prost::Message;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

pub const CDS: usize = 0;
pub const EDS: usize = 1;
pub const LDS: usize = 2;
pub const RDS: usize = 3;
pub const TYPE_NAMES: [&str; 4] = ["CDS", "EDS", "LDS", "RDS"];
const TYPE_URLS: [&str; 4] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
];

/// The node of proxy `i`: an Istio ingress gateway pod in istio-system, as istio-agent
/// writes it into Envoy's bootstrap.
pub fn node(i: usize) -> Node {
    let ip = format!(
        "10.{}.{}.{}",
        128 + ((i >> 16) & 127),
        (i >> 8) & 255,
        i & 255
    );
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    let labels = Struct {
        fields: [("istio".to_string(), string("ingressgateway"))].into(),
    };
    Node {
        id: format!("router~{ip}~gw-{i}.istio-system~istio-system.svc.cluster.local"),
        cluster: "istio-ingressgateway.istio-system".into(),
        metadata: Some(Struct {
            fields: [(
                "LABELS".to_string(),
                Value {
                    kind: Some(Kind::StructValue(labels)),
                },
            )]
            .into(),
        }),
        user_agent_name: "envoy".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentBuildVersion(BuildVersion {
            version: Some(SemanticVersion {
                major_number: 1,
                minor_number: 40,
                patch: 0,
            }),
            metadata: None,
        })),
        ..Default::default()
    }
}

/// A request, the same for both protocols. In state of the world `names` is the full
/// list; in delta it is what to subscribe and `unsubscribe` what to drop.
struct Request {
    ty: usize,
    names: Vec<String>,
    unsubscribe: Vec<String>,
    version: String,
    nonce: String,
}

impl Request {
    fn new(ty: usize) -> Request {
        Request {
            ty,
            names: Vec::new(),
            unsubscribe: Vec::new(),
            version: String::new(),
            nonce: String::new(),
        }
    }
}

/// One resource of a response: its name and version when the protocol says them
/// (delta), and the serialized resource.
struct Received {
    name: Option<String>,
    version: Option<String>,
    body: Vec<u8>,
}

/// A response, the same for both protocols.
struct Response {
    ty: usize,
    version: String,
    nonce: String,
    resources: Vec<Received>,
    removed: Vec<String>,
}

fn hash64(v: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// What a resource tells the proxy beyond its name: the EDS service name of an EDS
/// cluster, the route configurations a listener's HTTP connection managers load by RDS.
enum Decoded {
    Cluster { eds: Option<String> },
    Endpoints,
    Listener { routes: Vec<String> },
    Route,
}

fn decode(ty: usize, body: &[u8]) -> Result<(String, Decoded), prost::DecodeError> {
    Ok(match ty {
        CDS => {
            let c = Cluster::decode(body)?;
            let is_eds = matches!(c.cluster_discovery_type,
                Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32);
            let eds = is_eds.then(|| {
                c.eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| c.name.clone())
            });
            (c.name, Decoded::Cluster { eds })
        }
        EDS => (
            ClusterLoadAssignment::decode(body)?.cluster_name,
            Decoded::Endpoints,
        ),
        LDS => {
            let l = Listener::decode(body)?;
            let mut routes = Vec::new();
            for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
                for f in &chain.filters {
                    let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
                        continue;
                    };
                    if any.type_url.ends_with("/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager") {
                        let hcm = HttpConnectionManager::decode(any.value.as_slice())?;
                        if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                            routes.push(rds.route_config_name);
                        }
                    }
                }
            }
            (l.name, Decoded::Listener { routes })
        }
        _ => (RouteConfiguration::decode(body)?.name, Decoded::Route),
    })
}

/// The xDS state of one proxy over one stream.
#[derive(Default)]
struct Proxy {
    sotw: bool,
    /// Per type: name -> version (delta: the server's; state of the world: a hash of the
    /// resource).
    held: [HashMap<String, u64>; 4],
    /// EDS clusters -> the name their endpoints are requested by.
    eds_of_cluster: HashMap<String, String>,
    /// Listeners -> the route configurations they load by RDS.
    routes_of_listener: HashMap<String, Vec<String>>,
    /// EDS and RDS: the names subscribed to.
    subscribed: [BTreeSet<String>; 4],
    requested: [bool; 4],
    acked: [bool; 4],
    /// State of the world: the last version and nonce per type.
    version: [String; 4],
    nonce: [String; 4],
}

/// What applying a response did.
struct Applied {
    /// A resource was added, changed or removed.
    changed: bool,
    /// In the order Envoy sends them.
    requests: Vec<Request>,
}

impl Proxy {
    fn new(sotw: bool) -> Proxy {
        Proxy {
            sotw,
            ..Default::default()
        }
    }

    fn first_request(&mut self) -> Request {
        self.requested[CDS] = true;
        Request::new(CDS)
    }

    /// Subscribes `ty` (EDS or RDS) to exactly `want`, if that is not already so.
    fn subscribe(&mut self, ty: usize, want: BTreeSet<String>, out: &mut Vec<Request>) {
        if want == self.subscribed[ty] && (self.requested[ty] || want.is_empty()) {
            return;
        }
        let mut r = Request::new(ty);
        if self.sotw {
            r.names = want.iter().cloned().collect();
            r.version = self.version[ty].clone();
            r.nonce = self.nonce[ty].clone();
        } else {
            r.names = want.difference(&self.subscribed[ty]).cloned().collect();
            r.unsubscribe = self.subscribed[ty].difference(&want).cloned().collect();
        }
        self.held[ty].retain(|n, _| want.contains(n));
        self.subscribed[ty] = want;
        self.requested[ty] = true;
        out.push(r);
    }

    fn apply(&mut self, r: Response, decode_errors: &AtomicU64) -> Applied {
        let ty = r.ty;
        let mut changed = false;
        let mut seen = HashSet::new();
        for res in r.resources {
            // Decoded whether or not it changed: a proxy decodes what it is sent.
            let (decoded_name, decoded) = match decode(ty, &res.body) {
                Ok(d) => d,
                Err(_) => {
                    decode_errors.fetch_add(1, Relaxed);
                    continue;
                }
            };
            let name = res.name.filter(|n| !n.is_empty()).unwrap_or(decoded_name);
            let version = match res.version {
                Some(v) => hash64(v),
                None => hash64(&res.body),
            };
            if self.held[ty].insert(name.clone(), version) != Some(version) {
                changed = true;
                match decoded {
                    Decoded::Cluster { eds: Some(eds) } => {
                        self.eds_of_cluster.insert(name.clone(), eds);
                    }
                    Decoded::Cluster { eds: None } => {
                        self.eds_of_cluster.remove(&name);
                    }
                    Decoded::Listener { routes } => {
                        self.routes_of_listener.insert(name.clone(), routes);
                    }
                    Decoded::Endpoints | Decoded::Route => {}
                }
            }
            seen.insert(name);
        }
        // State of the world: CDS and LDS answers hold every resource; one left out is
        // removed. EDS and RDS answers hold the requested names only.
        let removed: Vec<String> = if self.sotw {
            if ty == CDS || ty == LDS {
                self.held[ty]
                    .keys()
                    .filter(|n| !seen.contains(*n))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            }
        } else {
            r.removed
        };
        for name in removed {
            changed |= self.held[ty].remove(&name).is_some();
            if ty == CDS {
                self.eds_of_cluster.remove(&name);
            } else if ty == LDS {
                self.routes_of_listener.remove(&name);
            }
        }

        let mut requests = Vec::new();
        if ty == CDS {
            let want = self.eds_of_cluster.values().cloned().collect();
            self.subscribe(EDS, want, &mut requests);
        } else if ty == LDS {
            let want = self
                .routes_of_listener
                .values()
                .flatten()
                .cloned()
                .collect();
            self.subscribe(RDS, want, &mut requests);
        }
        // Envoy starts LDS once every cluster is initialized, i.e. once every EDS
        // cluster has its endpoints: the LDS request follows the EDS response that
        // completes them, before its ACK (and the CDS ACK when there is no EDS cluster).
        let clusters_ready = self.acked[CDS] || ty == CDS;
        let lds_now = !self.requested[LDS]
            && clusters_ready
            && self.subscribed[EDS]
                .iter()
                .all(|n| self.held[EDS].contains_key(n));
        if lds_now && ty == EDS {
            self.requested[LDS] = true;
            requests.push(Request::new(LDS));
        }
        let mut ack = Request::new(ty);
        ack.nonce = r.nonce.clone();
        if self.sotw {
            ack.version = r.version.clone();
            if ty == EDS || ty == RDS {
                ack.names = self.subscribed[ty].iter().cloned().collect();
            }
            self.version[ty] = r.version;
            self.nonce[ty] = r.nonce;
        }
        requests.push(ack);
        self.acked[ty] = true;
        if lds_now && ty == CDS {
            self.requested[LDS] = true;
            requests.push(Request::new(LDS));
        }
        Applied { changed, requests }
    }

    /// CDS and LDS ACKed, and every subscribed endpoint and route name received.
    fn synced(&self) -> bool {
        self.acked[CDS]
            && self.acked[LDS]
            && self.subscribed[EDS]
                .iter()
                .all(|n| self.held[EDS].contains_key(n))
            && self.subscribed[RDS]
                .iter()
                .all(|n| self.held[RDS].contains_key(n))
    }
}

fn type_index(url: &str) -> Option<usize> {
    TYPE_URLS.iter().position(|u| *u == url)
}

/// What the proxies observed, shared with the driver. Times are nanoseconds since
/// `start`, plus one (0 = not yet).
pub struct Recorder {
    start: Instant,
    synced_at: Vec<AtomicU64>,
    synced: AtomicUsize,
    /// When the current change was made (0 = no change under way).
    change_at: AtomicU64,
    converged_at: Vec<AtomicU64>,
    converged: AtomicUsize,
    /// Responses per proxy and type since the last `take_responses`.
    responses: Vec<[AtomicU32; 4]>,
    /// Bytes of resources received per type since the last `take_responses`.
    bytes: [AtomicU64; 4],
    last_response_at: AtomicU64,
    pub stream_errors: AtomicU64,
    pub decode_errors: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    /// Set when the run is over: streams that end then are not errors.
    finished: AtomicBool,
}

impl Recorder {
    pub fn new(proxies: usize) -> Recorder {
        let zeros = || (0..proxies).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Recorder {
            start: Instant::now(),
            synced_at: zeros(),
            synced: AtomicUsize::new(0),
            change_at: AtomicU64::new(0),
            converged_at: zeros(),
            converged: AtomicUsize::new(0),
            responses: (0..proxies).map(|_| Default::default()).collect(),
            bytes: Default::default(),
            last_response_at: AtomicU64::new(0),
            stream_errors: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            finished: AtomicBool::new(false),
        }
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }

    pub fn synced_count(&self) -> usize {
        self.synced.load(Relaxed)
    }

    pub fn converged_count(&self) -> usize {
        self.converged.load(Relaxed)
    }

    /// Time since the last response any proxy received.
    pub fn quiet_for(&self) -> Duration {
        Duration::from_nanos(
            self.now()
                .saturating_sub(self.last_response_at.load(Relaxed)),
        )
    }

    /// Per proxy, the time it synced, from `from` (a `now()`); `None` for those that
    /// have not.
    pub fn sync_times(&self, from: u64) -> Vec<Option<Duration>> {
        times(&self.synced_at, from)
    }

    /// Starts watching for a change made at `at` (a `now()`).
    pub fn arm(&self, at: u64) {
        for t in &self.converged_at {
            t.store(0, Relaxed);
        }
        self.converged.store(0, Relaxed);
        self.change_at.store(at, Relaxed);
    }

    /// Stops watching; per proxy, the time from the change until it ACKed the first
    /// response that changed a resource.
    pub fn disarm(&self) -> Vec<Option<Duration>> {
        let at = self.change_at.swap(0, Relaxed);
        times(&self.converged_at, at)
    }

    /// Responses received per proxy and type, and bytes of resources per type, since
    /// the last call.
    pub fn take_responses(&self) -> (Vec<[u32; 4]>, [u64; 4]) {
        let counts = self
            .responses
            .iter()
            .map(|r| std::array::from_fn(|t| r[t].swap(0, Relaxed)))
            .collect();
        (
            counts,
            std::array::from_fn(|t| self.bytes[t].swap(0, Relaxed)),
        )
    }

    pub fn finish(&self) {
        self.finished.store(true, Relaxed);
    }

    fn response(&self, i: usize, ty: usize, bytes: usize) {
        self.responses[i][ty].fetch_add(1, Relaxed);
        self.bytes[ty].fetch_add(bytes as u64, Relaxed);
        self.last_response_at.store(self.now(), Relaxed);
    }

    /// Proxy `i` ACKed a response of `ty` received at `received`.
    fn acked(&self, i: usize, changed: bool, received: u64, synced: bool) {
        let now = self.now();
        if synced
            && self.synced_at[i]
                .compare_exchange(0, now, Relaxed, Relaxed)
                .is_ok()
        {
            self.synced.fetch_add(1, Relaxed);
        }
        let change = self.change_at.load(Relaxed);
        if changed
            && change != 0
            && received >= change
            && self.converged_at[i]
                .compare_exchange(0, now, Relaxed, Relaxed)
                .is_ok()
        {
            self.converged.fetch_add(1, Relaxed);
        }
    }

    fn error(&self, i: usize, e: String) {
        if self.finished.load(Relaxed) {
            return;
        }
        self.stream_errors.fetch_add(1, Relaxed);
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(format!("proxy {i}: {e}"));
    }
}

fn times(at: &[AtomicU64], from: u64) -> Vec<Option<Duration>> {
    at.iter()
        .map(|t| match t.load(Relaxed) {
            0 => None,
            t => Some(Duration::from_nanos(t.saturating_sub(from))),
        })
        .collect()
}

/// Runs proxy `i` on `channel` until the run is over: like Envoy, it opens a new stream
/// (and starts over) when one fails.
pub async fn run(i: usize, channel: Channel, sotw: bool, rec: Arc<Recorder>) {
    loop {
        let outcome = if sotw {
            sotw_stream(i, channel.clone(), &rec).await
        } else {
            delta_stream(i, channel.clone(), &rec).await
        };
        if rec.finished.load(Relaxed) {
            return;
        }
        if let Err(e) = outcome {
            rec.error(i, e);
        }
        tokio::time::sleep(Duration::from_millis(500 + (i as u64 % 500))).await;
    }
}

fn client(channel: Channel) -> AggregatedDiscoveryServiceClient<Channel> {
    AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX)
}

async fn delta_stream(i: usize, channel: Channel, rec: &Recorder) -> Result<(), String> {
    let mut proxy = Proxy::new(false);
    let mut node = Some(node(i));
    let mut message = |r: Request| DeltaDiscoveryRequest {
        node: node.take(),
        type_url: TYPE_URLS[r.ty].into(),
        resource_names_subscribe: r.names,
        resource_names_unsubscribe: r.unsubscribe,
        response_nonce: r.nonce,
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(16);
    let _ = tx.send(message(proxy.first_request())).await;
    let mut inbound = client(channel)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    while let Some(m) = inbound.message().await.map_err(|e| e.to_string())? {
        let received = rec.now();
        let DeltaDiscoveryResponse {
            type_url,
            system_version_info,
            nonce,
            resources,
            removed_resources,
            ..
        } = m;
        let Some(ty) = type_index(&type_url) else {
            continue;
        };
        rec.response(
            i,
            ty,
            resources
                .iter()
                .map(|r| r.resource.as_ref().map_or(0, |a| a.value.len()))
                .sum(),
        );
        let applied = proxy.apply(
            Response {
                ty,
                version: system_version_info,
                nonce,
                resources: resources
                    .into_iter()
                    .map(|r| Received {
                        name: Some(r.name),
                        version: Some(r.version),
                        body: r.resource.map(|a| a.value).unwrap_or_default(),
                    })
                    .collect(),
                removed: removed_resources,
            },
            &rec.decode_errors,
        );
        for r in applied.requests {
            tx.send(message(r))
                .await
                .map_err(|_| "the request stream closed".to_string())?;
        }
        rec.acked(i, applied.changed, received, proxy.synced());
    }
    Err("the control plane ended the stream".into())
}

async fn sotw_stream(i: usize, channel: Channel, rec: &Recorder) -> Result<(), String> {
    let mut proxy = Proxy::new(true);
    let mut node = Some(node(i));
    let mut message = |r: Request| DiscoveryRequest {
        node: node.take(),
        type_url: TYPE_URLS[r.ty].into(),
        resource_names: r.names,
        version_info: r.version,
        response_nonce: r.nonce,
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(16);
    let _ = tx.send(message(proxy.first_request())).await;
    let mut inbound = client(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    while let Some(m) = inbound.message().await.map_err(|e| e.to_string())? {
        let received = rec.now();
        let DiscoveryResponse {
            version_info,
            resources,
            type_url,
            nonce,
            ..
        } = m;
        let Some(ty) = type_index(&type_url) else {
            continue;
        };
        rec.response(i, ty, resources.iter().map(|a| a.value.len()).sum());
        let applied = proxy.apply(
            Response {
                ty,
                version: version_info,
                nonce,
                resources: resources
                    .into_iter()
                    .map(|a| Received {
                        name: None,
                        version: None,
                        body: a.value,
                    })
                    .collect(),
                removed: Vec::new(),
            },
            &rec.decode_errors,
        );
        for r in applied.requests {
            tx.send(message(r))
                .await
                .map_err(|_| "the request stream closed".to_string())?;
        }
        rec.acked(i, applied.changed, received, proxy.synced());
    }
    Err("the control plane ended the stream".into())
}
