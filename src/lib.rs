//! meshgate: a service-mesh gateway appliance and the control plane that configures it.
//!
//! The layers mirror the architecture: `config` (Istio resources, loading, validation),
//! `registry` (services and endpoints), `translate` (config -> Envoy xDS resources),
//! `pipeline` (the one door from YAML on disk to checked, translated resources),
//! `xds` (the resource set and its JSON form), `proxy` (the data plane) and
//! `controlplane` (ADS/SDS server), `ca` (mesh identities and their certificates),
//! `identity` (a proxy's own workload certificate, obtained from that CA) and `agent`
//! (the pilot-agent job for an Envoy sidecar or gateway: bootstrap, certificate over
//! SDS, Envoy's life, readiness). `html` renders the status pages of both servers.
pub mod acme;
pub mod agent;
pub mod ca;
pub mod config;
pub mod controlplane;
pub mod html;
pub mod identity;
pub mod pipeline;
pub mod proxy;
pub mod ratelimit;
pub mod registry;
pub mod tls;
pub mod translate;
pub mod xds;
