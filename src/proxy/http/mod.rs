//! Downstream HTTP: connections served with hyper, the connection manager's request
//! handling, the HTTP filter chain
//! (`filter`, one module per filter in `filters`) and the router.
pub mod body;
pub mod filter;
pub mod filters;
pub mod hcm;
pub mod head_scan;
pub mod local_reply;
pub mod normalize;
pub mod request;
pub mod router;
pub mod server;
