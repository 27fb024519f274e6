//! `meshgate gateway --xds ADDR`: the data plane configured by a control plane over ADS.
use super::gateway::GatewayArgs;
use anyhow::Context as _;
use meshgate::ca::SpiffeId;
use meshgate::controlplane::bootstrap::EnvoyBootstrap;
use meshgate::controlplane::workload::{ROOT_SECRET, WORKLOAD_SECRET};
use meshgate::identity::{CertificateManager, ControlPlaneTls, ManagerOptions};
use meshgate::proxy::xds_consumer::{GatewayConsumer, gateway_node};
use meshgate::proxy::{Gateway, GatewayOptions};
use meshgate::xds::ProxyKind;
use meshgate::xds::client::{ClientOptions, ClientTls, XdsClient};
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
    (mut upgrades, inherited): (
        super::gateway_upgrade::Upgrades,
        Option<meshgate::proxy::handoff::Inherited>,
    ),
) -> anyhow::Result<()> {
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let bootstrap = EnvoyBootstrap {
        xds_address: address.to_string(),
        node_id: args.node_id.clone(),
        kind: ProxyKind::Router,
        namespace: namespace.clone(),
        labels,
        delta: !args.xds_sotw,
        proxy_config: match &args.proxy_config {
            Some(path) => Some(super::gateway::load_proxy_config(path)?.document),
            None => None,
        },
        ..Default::default()
    };
    let node = gateway_node(&bootstrap).context("--node-id")?;
    // Spans report the node as Envoy's do (node id, cluster as service name, zone).
    meshgate::proxy::trace::set_local_info(meshgate::proxy::trace::LocalInfo {
        node_id: node.id.clone(),
        cluster: node.cluster.clone(),
        zone: node
            .locality
            .as_ref()
            .map(|l| l.zone.clone())
            .unwrap_or_default(),
        ..meshgate::proxy::trace::LocalInfo::of_host()
    });
    let mut client_options = ClientOptions::new(address, node);
    client_options.delta = !args.xds_sotw;
    client_options.initial_fetch_timeout =
        Duration::try_from_secs_f64(args.xds_initial_fetch_timeout)
            .context("--xds-initial-fetch-timeout: a number of seconds, 0 or more")?;

    let gateway =
        Arc::new(Gateway::start_inherited(opts, inherited).context("starting the gateway")?);
    let manager = match &args.ca_root {
        Some(root) => {
            let m = certificate_manager(address, root, &namespace, args, &gateway)?;
            client_options.tls = Some(ClientTls {
                transport: m.1,
                certificate: m.0.handle(),
            });
            // The key is made here: the control plane's `default` and `ROOTCA` are not
            // asked for (nor waited for).
            client_options.local_secrets = [WORKLOAD_SECRET, ROOT_SECRET]
                .into_iter()
                .map(String::from)
                .collect();
            Some(m.0)
        }
        None => None,
    };
    tracing::info!(xds = address, mtls = manager.is_some(), node = %client_options.node.id, delta = client_options.delta, initial_fetch_timeout = ?client_options.initial_fetch_timeout, admin = ?gateway.admin_addr(), health = ?gateway.health_addr(), "gateway started; waiting for the first full sync");
    let consumer = Arc::new(GatewayConsumer::new(gateway.clone()));
    let client = XdsClient::new(client_options, consumer);
    let mut handle = client.handle();
    gateway.set_xds_client(client.handle());

    // Two workers: applying an update may block on binds and DNS for a moment, and
    // signals must still be heard meanwhile.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut quit = gateway.quit_requested();
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let identity_task = manager.map(|m| tokio::spawn(m.run()));
        let mut usr2 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
        let task = tokio::spawn(client.run());
        let mut handed_over = upgrades.handed_over();
        let mut serving = false;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = quit.changed() => break,
                _ = handle.wait_ready(), if !serving => {
                    tracing::info!("first full sync applied; ready");
                    serving = true;
                    // Blocks for the predecessor's answer: off the runtime's threads.
                    let gw = gateway.clone();
                    let served;
                    (upgrades, served) = tokio::task::spawn_blocking(move || {
                        let served = upgrades.serving(&gw);
                        (upgrades, served)
                    })
                    .await?;
                    served?;
                }
                _ = usr2.recv() => upgrades.start_successor(),
                _ = handed_over.wait_for(|h| *h) => {
                    tracing::info!("handed over to the successor");
                    break;
                }
            }
        }
        task.abort();
        let _ = task.await;
        if let Some(t) = identity_task {
            t.abort();
            let _ = t.await;
        }
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

/// The workload certificate's manager for `--ca-root`: its secrets go into the data plane
/// (as SDS `default` and `ROOTCA`) at each rotation, before any connection presents it.
fn certificate_manager(
    address: &str,
    root: &std::path::Path,
    namespace: &str,
    args: &GatewayArgs,
    gateway: &Arc<Gateway>,
) -> anyhow::Result<(CertificateManager, ControlPlaneTls)> {
    let transport = ControlPlaneTls::from_file(root, &args.xds_server_name)
        .context("--ca-root / --xds-server-name")?;
    let trust_domain = args
        .trust_domain
        .as_deref()
        .unwrap_or(meshgate::config::mesh::DEFAULT_TRUST_DOMAIN);
    let identity = SpiffeId::new(trust_domain, namespace, &args.service_account)
        .context("the workload identity (--trust-domain, --namespace, --service-account)")?;
    let mut options = ManagerOptions::new(address, transport.clone(), identity.clone());
    options.token_file = args.token_file.clone();
    options.requested_ttl = args.workload_cert_ttl;
    let mut manager = CertificateManager::new(options);
    let data_plane = gateway.clone();
    manager.on_issue(move |cert| {
        for (name, e) in data_plane.update_secrets(&cert.sds_secrets(), &[]) {
            tracing::error!(secret = %name, error = %e, "the workload certificate cannot be used by the data plane");
        }
    });
    gateway.set_identity_status(manager.status());
    tracing::info!(%identity, ca_root = %root.display(), server_name = %args.xds_server_name, "joining the mesh over mutual TLS");
    Ok((manager, transport))
}
