//! Compiled route tables: virtual host selection, route matching, and what a matched
//! route does (forward to a cluster, redirect, answer directly), plus header mutations.
pub mod action;
pub mod format;
pub mod headers;
pub mod matcher;
pub mod table;

pub use action::{Action, ClusterRef, DirectResponse, Redirect, RetryPolicy, RouteAction};
pub use headers::HeaderMutations;
pub use matcher::{HeaderMatch, Mismatch, PathMatch, RequestView, RouteMatch, StringMatch};
pub use table::{Route, RouteTable, VirtualHost};
