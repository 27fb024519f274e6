//! meshgate's data plane: Envoy xDS resources in, HTTP proxying out.
//!
//! A request's path through this layer, in reading order:
//! - [`compile`] turns a [`crate::xds::ResourceSet`] into an immutable [`Snapshot`]
//!   (listeners, filter chains, route tables with precompiled matchers, clusters); anything
//!   meshgate does not implement is rejected there, like an Envoy NACK.
//! - [`runtime`] runs one current-thread tokio runtime per core; each binds its own
//!   `SO_REUSEPORT` socket per listener and owns its upstream connection pools.
//! - [`connection`] takes an accepted connection to its filter chain ([`listener`]):
//!   ClientHello peek, SNI/ALPN chain matching, TLS termination ([`tls`] holds the
//!   secret store and sessions).
//! - [`http`] serves downstream connections with hyper, applies the connection manager's
//!   request handling, the fault and CORS filters, and the router.
//! - [`tcp`] copies the bytes of `tcp_proxy` chains (TCP, TLS passthrough by SNI,
//!   AUTO_PASSTHROUGH) to a cluster's host.
//! - [`route`] holds the compiled route tables and their matchers.
//! - [`upstream`] holds clusters, hosts, load balancing, circuit breakers, outlier
//!   detection, DNS resolution and connection pools.
//! - [`overload`] holds the connection limits, requests per connection and the heap
//!   monitor's actions (Envoy's overload manager).
//! - [`admin`] (with the [`status_page`] and its [`rates`]), [`stats`] and [`access_log`]
//!   are what operators look at; [`trace`] makes and reports the spans of distributed
//!   tracing.
//! - [`explain`] follows one request through a snapshot and says why it gets its answer
//!   (`meshgate explain`).
//! - [`handoff`] hands the listening sockets to a successor process (upgrades that
//!   refuse no connection).
pub mod access_log;
pub mod admin;
pub mod cgroup;
pub mod compile;
pub mod connection;
pub mod explain;
pub mod handoff;
pub mod http;
pub mod json_input;
pub mod listener;
pub mod malloc;
pub mod overload;
pub mod proxy_protocol;
pub mod rates;
pub mod rbac;
pub mod route;
pub mod runtime;
pub mod snapshot;
pub mod stats;
pub mod status_page;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod xds_consumer;

pub use compile::{CompileError, check, compile, compile_with};
pub use runtime::{Gateway, GatewayOptions};
pub use snapshot::Snapshot;
