//! meshgate: a service-mesh gateway appliance and the control plane that configures it.
//!
//! The layers mirror the architecture: `config` (Istio resources, loading, validation),
//! `registry` (services and endpoints), `translate` (config -> Envoy xDS resources),
//! `pipeline` (the one door from YAML on disk to checked, translated resources),
//! `xds` (the resource set and its JSON form), `proxy` (the data plane) and
//! `controlplane` (ADS/SDS server), `ca` (mesh identities and their certificates) and
//! `identity` (a gateway's own workload certificate, obtained from that CA).
pub mod acme;
pub mod ca;
pub mod config;
pub mod controlplane;
pub mod identity;
pub mod pipeline;
pub mod proxy;
pub mod registry;
pub mod tls;
pub mod translate;
pub mod xds;
