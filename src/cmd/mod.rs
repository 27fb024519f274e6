//! Subcommands of the `meshgate` binary. Each file holds one subcommand's clap `Args` and
//! its `run` function; the work itself lives in the library's layers.
pub mod agent;
pub mod bootstrap;
pub mod ca;
pub mod certs;
pub mod control_plane;
pub mod explain;
pub mod gateway;
pub mod gateway_upgrade;
pub mod gateway_xds;
pub mod inject;
pub mod iptables;
pub mod ratelimit;
pub mod token;
pub mod translate;
pub mod validate;
