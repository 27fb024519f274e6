//! `meshgate gateway --xds ADDR`: the data plane configured by a control plane over ADS.
use super::gateway::GatewayArgs;
use anyhow::Context as _;
use meshgate::controlplane::bootstrap::EnvoyBootstrap;
use meshgate::proxy::xds_consumer::{GatewayConsumer, gateway_node};
use meshgate::proxy::{Gateway, GatewayOptions};
use meshgate::xds::ProxyKind;
use meshgate::xds::client::{ClientOptions, XdsClient};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The namespace of a gateway that does not say: where Istio runs its gateways.
const DEFAULT_NAMESPACE: &str = "istio-system";

/// Runs the gateway as an ADS client until SIGTERM, Ctrl-C or `/quitquitquit`. Nothing
/// listens until the first full sync (or until what has not come within the initial
/// fetch timeout is given up on); the last applied configuration keeps serving while the
/// control plane is away.
pub fn run(
    address: &str,
    args: &GatewayArgs,
    labels: BTreeMap<String, String>,
    opts: GatewayOptions,
) -> anyhow::Result<()> {
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let bootstrap = EnvoyBootstrap {
        xds_address: address.to_string(),
        node_id: args.node_id.clone(),
        kind: ProxyKind::Router,
        namespace,
        labels,
        delta: !args.xds_sotw,
        ..Default::default()
    };
    let node = gateway_node(&bootstrap).context("--node-id")?;
    let mut client_options = ClientOptions::new(address, node);
    client_options.delta = !args.xds_sotw;
    client_options.initial_fetch_timeout =
        Duration::try_from_secs_f64(args.xds_initial_fetch_timeout)
            .context("--xds-initial-fetch-timeout: a number of seconds, 0 or more")?;

    let gateway = Arc::new(Gateway::start(opts).context("starting the gateway")?);
    tracing::info!(xds = address, node = %client_options.node.id, delta = client_options.delta, initial_fetch_timeout = ?client_options.initial_fetch_timeout, admin = ?gateway.admin_addr(), health = ?gateway.health_addr(), "gateway started; waiting for the first full sync");
    let consumer = Arc::new(GatewayConsumer::new(gateway.clone()));
    let client = XdsClient::new(client_options, consumer);
    let mut handle = client.handle();

    // Two workers: applying an update may block on binds and DNS for a moment, and
    // signals must still be heard meanwhile.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut quit = gateway.quit_requested();
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let task = tokio::spawn(client.run());
        let ready = async {
            handle.wait_ready().await;
            tracing::info!("first full sync applied; ready");
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = quit.changed() => {}
            _ = ready => {}
        }
        task.abort();
        let _ = task.await;
        Ok::<_, anyhow::Error>(())
    })?;
    drop(rt);
    tracing::info!("draining");
    match Arc::try_unwrap(gateway) {
        Ok(g) => g.shutdown(),
        Err(_) => tracing::warn!("gateway still referenced; exiting without draining"),
    }
    Ok(())
}
