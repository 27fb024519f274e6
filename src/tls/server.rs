//! Downstream TLS: rustls server configurations built from Envoy's
//! `DownstreamTlsContext`s, and the accept path that the data plane's listeners call.
//!
//! Filter chains of a listener whose contexts differ only by their certificates share
//! one server configuration ([`DownstreamTlsSet`]): its certificate resolver finds the
//! chain's certificates from the SNI, so ten thousand hosts cost one configuration and
//! a certificate watch each. A handshake whose SNI would pick another chain's
//! certificates uses a configuration of the chain's own, built on first use.
//!
//! Certificates come from the [`SecretStore`] (SDS names, files, inline), client
//! certificate validation from the context's validation context (inline, file, SDS, or
//! combined). Both are read at handshake time, so rotation never rebuilds this object.
//! Session resumption state is shared by every context of a process
//! ([`ServerSessionState`]) so that thousands of filter chains cost little memory.
use crate::tls::error::TlsError;
use crate::tls::identity::PeerIdentity;
use crate::tls::params::{self, Side};
use crate::tls::sni::{ServerNameTable, SniCertResolver};
use crate::tls::stats::TlsStats;
use crate::tls::store::{
    CertificateWatch, SecretSource, SecretStore, load_tls_certificate, read_data_source,
};
use crate::tls::verify::{
    DefaultCrls, DownstreamClientVerifier, ValidationMaterial, ValidationSource,
};
use crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext,
    common_tls_context::ValidationContextType, downstream_tls_context::SessionTicketKeysType,
};
use prost::Message;
use rustls::ServerConfig;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

/// Session resumption state shared by all server configurations of a process: one
/// session cache (TLS 1.2 session IDs, TLS 1.3 stateful tickets) and one rotating
/// ticket key (stateless tickets), like Envoy's per-process ticket keys.
#[derive(Clone)]
pub struct ServerSessionState {
    pub storage: Arc<dyn StoresServerSessions>,
    pub ticketer: Arc<dyn ProducesTickets>,
    compression_cache: Arc<rustls::compress::CompressionCache>,
}

impl std::fmt::Debug for ServerSessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSessionState").finish_non_exhaustive()
    }
}

impl ServerSessionState {
    /// A session cache of `cache_size` entries and a fresh ticket key.
    pub fn new(cache_size: usize) -> Result<ServerSessionState, TlsError> {
        Ok(ServerSessionState {
            storage: rustls::server::ServerSessionMemoryCache::new(cache_size),
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new()?,
            compression_cache: Arc::new(rustls::compress::CompressionCache::new(4)),
        })
    }
}

/// How a context treats client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// None requested (SIMPLE).
    None,
    /// Requested and verified when presented (OPTIONAL_MUTUAL).
    Optional,
    /// Required (MUTUAL): a handshake without one fails.
    Required,
}

/// What the chains of one [`DownstreamTlsSet`] group share: everything but certificates.
struct ServerContext {
    /// With the context's ALPN list.
    config: Arc<ServerConfig>,
    /// The same without ALPN, for clients whose ALPN offer has nothing in common with
    /// ours: BoringSSL (Envoy) then continues without ALPN, while rustls would fail.
    config_no_alpn: Arc<ServerConfig>,
    /// The resolver both configurations use.
    resolver: Arc<ChainCertResolver>,
    alpn: Vec<Vec<u8>>,
}

/// The certificate resolver of a shared configuration: the certificates of the chain
/// named by the SNI (filter-chain `server_names`, looked up as chains are).
#[derive(Debug, Default)]
struct ChainCertResolver {
    /// Set once every chain of the listener is built.
    chains: OnceLock<Chains>,
}

#[derive(Debug)]
enum Chains {
    One(Arc<SniCertResolver>),
    ByName(ServerNameTable<Arc<SniCertResolver>>),
}

impl ChainCertResolver {
    fn chain_for(&self, sni: Option<&str>) -> Option<&Arc<SniCertResolver>> {
        match self.chains.get()? {
            Chains::One(r) => Some(r),
            Chains::ByName(t) => t.lookup(sni),
        }
    }
}

impl ResolvesServerCert for ChainCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.chain_for(hello.server_name())?.pick(&hello)
    }
}

/// A downstream TLS context ready to accept connections.
#[derive(Clone)]
pub struct DownstreamTls {
    shared: Arc<ServerContext>,
    pub client_auth: ClientAuth,
    /// URI SANs of the local certificate at build time (the `By=` of XFCC).
    pub local_uri_sans: Vec<String>,
    /// This chain's certificates.
    resolver: Arc<SniCertResolver>,
    /// Configurations serving only this chain's certificates (with and without ALPN),
    /// for a handshake whose SNI the shared resolver maps to another chain.
    own: OnceLock<(Arc<ServerConfig>, Arc<ServerConfig>)>,
    /// The SDS certificate secrets the context serves (for logs about missing ones).
    certificate_secrets: Box<[Box<str>]>,
    stats: Arc<TlsStats>,
}

impl std::fmt::Debug for DownstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownstreamTls")
            .field("client_auth", &self.client_auth)
            .field("alpn", &self.shared.alpn)
            .finish_non_exhaustive()
    }
}

/// A connection that completed its TLS handshake.
pub struct Accepted<IO> {
    pub stream: TlsStream<IO>,
    /// The verified client certificate, if one was presented.
    pub peer: Option<PeerIdentity>,
    /// The negotiated ALPN protocol (`h2`, `http/1.1`), if any.
    pub alpn: Option<Vec<u8>>,
    /// The SNI the client sent.
    pub server_name: Option<String>,
}

/// Why a TLS accept failed; each is counted and logged at debug level by `accept`.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("TLS handshake timed out")]
    Timeout,
    #[error("not a TLS connection or malformed ClientHello: {0}")]
    ClientHello(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

fn field(name: &str, f: &str) -> String {
    format!("{name}: {f}")
}

/// Rejects the parts of a `CommonTlsContext` meshgate does not implement.
pub(crate) fn check_common_unsupported(c: &CommonTlsContext, name: &str) -> Result<(), TlsError> {
    #[allow(deprecated)]
    let providers = c.tls_certificate_provider_instance.is_some()
        || c.tls_certificate_certificate_provider.is_some()
        || c.tls_certificate_certificate_provider_instance.is_some();
    if providers {
        return Err(TlsError::unsupported(
            &field(name, "tls_certificate_provider_instance"),
            "certificate providers are not supported",
        ));
    }
    if c.custom_tls_certificate_selector.is_some() {
        return Err(TlsError::unsupported(
            &field(name, "custom_tls_certificate_selector"),
            "not supported",
        ));
    }
    if c.custom_handshaker.is_some() {
        return Err(TlsError::unsupported(
            &field(name, "custom_handshaker"),
            "not supported",
        ));
    }
    if c.key_log.is_some() {
        return Err(TlsError::unsupported(
            &field(name, "key_log"),
            "not supported",
        ));
    }
    Ok(())
}

/// The certificate watches of a context: inline or file certificates (files are watched
/// through the store under Istio's `file-cert:CERT~KEY` name) and SDS names.
pub(crate) fn certificate_watches(
    c: &CommonTlsContext,
    store: &SecretStore,
    name: &str,
) -> Result<Vec<CertificateWatch>, TlsError> {
    let mut watches = Vec::new();
    for (i, tc) in c.tls_certificates.iter().enumerate() {
        let files: Vec<String> = [tc.certificate_chain.as_ref(), tc.private_key.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|ds| match &ds.specifier {
                Some(
                    crate::xds::pb::envoy::config::core::v3::data_source::Specifier::Filename(p),
                ) => Some(p.clone()),
                _ => None,
            })
            .collect();
        if files.is_empty() {
            let m = load_tls_certificate(
                &format!("{name}.tls_certificates[{i}]"),
                tc,
                SystemTime::now(),
            )?;
            let (_tx, rx) = tokio::sync::watch::channel(Some(Arc::new(m)));
            watches.push(rx);
        } else {
            let secret = format!("file-cert:{}", files.join("~"));
            store.add_tls_certificate(&secret, tc, SecretSource::File)?;
            watches.push(store.certificate(&secret));
        }
    }
    for sds in &c.tls_certificate_sds_secret_configs {
        if sds.name.is_empty() {
            return Err(TlsError::invalid(
                &field(name, "tls_certificate_sds_secret_configs.name"),
                "is empty",
            ));
        }
        watches.push(store.certificate(&sds.name));
    }
    if watches.is_empty() {
        return Err(TlsError::invalid(
            &field(name, "common_tls_context"),
            "no certificate: set tls_certificates or tls_certificate_sds_secret_configs",
        ));
    }
    Ok(watches)
}

/// The validation source of a context, or `None` without a validation context.
pub(crate) fn validation_source(
    c: &CommonTlsContext,
    store: &SecretStore,
    name: &str,
) -> Result<Option<ValidationSource>, TlsError> {
    let static_context = |vc, what: &str| -> Result<ValidationSource, TlsError> {
        let m = ValidationMaterial::from_context(vc, what)?;
        // File-based CA bundles are watched through the store.
        let file = vc.trusted_ca.as_ref().and_then(|ds| match &ds.specifier {
            Some(crate::xds::pb::envoy::config::core::v3::data_source::Specifier::Filename(p)) => {
                Some(p.clone())
            }
            _ => None,
        });
        match file {
            Some(path) => {
                // The store's entry holds only the CA (and CRL), shared by every context
                // naming the same files; each context keeps its own matching rules.
                let ca_only = CertificateValidationContext {
                    trusted_ca: vc.trusted_ca.clone(),
                    crl: vc.crl.clone(),
                    ..Default::default()
                };
                let rules = CertificateValidationContext {
                    trusted_ca: None,
                    crl: None,
                    ..vc.clone()
                };
                let secret = match &vc.crl {
                    None => format!("file-root:{path}"),
                    Some(crl) => {
                        use prost::Message;
                        use std::hash::{Hash, Hasher};
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        crl.encode_to_vec().hash(&mut h);
                        format!("file-root:{path}~crl:{:016x}", h.finish())
                    }
                };
                store.add_validation_context(&secret, &ca_only, SecretSource::File)?;
                drop(m);
                Ok(ValidationSource {
                    default: Some(Arc::new(ValidationMaterial::from_context(&rules, what)?)),
                    dynamic: Some(store.validation(&secret)),
                    default_crls: None,
                })
            }
            None => Ok(ValidationSource {
                default: Some(Arc::new(m)),
                dynamic: None,
                default_crls: None,
            }),
        }
    };
    Ok(match &c.validation_context_type {
        None => None,
        Some(ValidationContextType::ValidationContext(vc)) => {
            Some(static_context(vc, &field(name, "validation_context"))?)
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => {
            Some(ValidationSource {
                default: None,
                dynamic: Some(store.validation(&sds.name)),
                default_crls: None,
            })
        }
        Some(ValidationContextType::CombinedValidationContext(comb)) => {
            let what = field(
                name,
                "combined_validation_context.default_validation_context",
            );
            // A CRL without a CA here is for the secret's CA (Envoy merges the secret
            // into this context): kept aside and applied to the secret's material.
            let mut default_crls = None;
            let mut source = match &comb.default_validation_context {
                Some(vc)
                    if vc.crl.is_some()
                        && vc.trusted_ca.is_none()
                        && vc.system_root_certs.is_none() =>
                {
                    let crl = vc.crl.as_ref().map_or(Ok(Vec::new()), |ds| {
                        read_data_source(ds, &format!("{what}: validation_context.crl"))
                    })?;
                    default_crls = Some(Arc::new(DefaultCrls::from_pem(
                        &crl,
                        vc.only_verify_leaf_cert_crl,
                        &format!("{what}: validation_context.crl"),
                    )?));
                    let rules = CertificateValidationContext {
                        crl: None,
                        ..vc.clone()
                    };
                    static_context(&rules, &what)?
                }
                Some(vc) => static_context(vc, &what)?,
                None => ValidationSource {
                    default: None,
                    dynamic: None,
                    default_crls: None,
                },
            };
            source.default_crls = default_crls;
            let sds = comb
                .validation_context_sds_secret_config
                .as_ref()
                .ok_or_else(|| {
                    TlsError::invalid(
                        &field(
                            name,
                            "combined_validation_context.validation_context_sds_secret_config",
                        ),
                        "is required",
                    )
                })?;
            if source.dynamic.is_some() {
                return Err(TlsError::unsupported(
                    &field(name, "combined_validation_context"),
                    "a file-based default trusted_ca combined with an SDS validation context is not supported",
                ));
            }
            source.dynamic = Some(store.validation(&sds.name));
            Some(source)
        }
        #[allow(deprecated)]
        Some(_) => {
            return Err(TlsError::unsupported(
                &field(name, "validation_context_certificate_provider"),
                "not supported",
            ));
        }
    })
}

/// Builds the downstream TLS contexts of one listener's filter chains, sharing one
/// server configuration between chains whose contexts are equal but for their SDS
/// certificate secrets. [`DownstreamTlsSet::finish`] completes the shared resolvers
/// once every chain is built; until then (or without it) each chain serves through a
/// configuration of its own.
pub struct DownstreamTlsSet<'a> {
    store: &'a SecretStore,
    sessions: &'a ServerSessionState,
    /// By the context encoded without its SDS certificate names.
    groups: HashMap<Vec<u8>, Group>,
}

struct Group {
    shared: Arc<ServerContext>,
    client_auth: ClientAuth,
    /// Each chain's server names (empty: any) and certificates, in build order.
    members: Vec<(Vec<Box<str>>, Arc<SniCertResolver>)>,
}

impl<'a> DownstreamTlsSet<'a> {
    pub fn new(store: &'a SecretStore, sessions: &'a ServerSessionState) -> DownstreamTlsSet<'a> {
        DownstreamTlsSet {
            store,
            sessions,
            groups: HashMap::new(),
        }
    }

    /// Builds the server side of a filter chain from its `DownstreamTlsContext`.
    /// `server_names` are the chain's `filter_chain_match.server_names`; `name` (e.g.
    /// the listener and filter chain) prefixes every error. Unsupported fields are
    /// errors, not silently ignored.
    pub fn build(
        &mut self,
        ctx: &DownstreamTlsContext,
        server_names: &[String],
        name: &str,
    ) -> Result<DownstreamTls, TlsError> {
        let common = ctx
            .common_tls_context
            .as_ref()
            .ok_or_else(|| TlsError::invalid(&field(name, "common_tls_context"), "is required"))?;
        check_common_unsupported(common, name)?;
        check_session_settings(ctx, name)?;
        let key = {
            let mut settings = ctx.clone();
            if let Some(c) = settings.common_tls_context.as_mut() {
                c.tls_certificate_sds_secret_configs.clear();
            }
            settings.encode_to_vec()
        };
        let params = match self.groups.contains_key(&key) {
            true => None,
            false => Some(params::resolve(
                common.tls_params.as_ref(),
                Side::Downstream,
                &field(name, "common_tls_context.tls_params"),
            )?),
        };
        let certs = certificate_watches(common, self.store, name)?;
        let certificate_secrets = common
            .tls_certificate_sds_secret_configs
            .iter()
            .map(|c| c.name.as_str().into())
            .collect();
        let local_uri_sans = certs
            .first()
            .and_then(|w| w.borrow().as_ref().map(|m| m.leaf.uri_names.clone()))
            .unwrap_or_default();
        let require_sni = ctx.require_sni.is_some_and(|b| b.value);
        let resolver = Arc::new(SniCertResolver::new(certs, require_sni));
        let group = match self.groups.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let params = match params {
                    Some(p) => p,
                    None => params::resolve(
                        common.tls_params.as_ref(),
                        Side::Downstream,
                        &field(name, "common_tls_context.tls_params"),
                    )?,
                };
                let (shared, client_auth) =
                    server_context(ctx, common, params, self.store, self.sessions, name)?;
                e.insert(Group {
                    shared,
                    client_auth,
                    members: Vec::new(),
                })
            }
        };
        group.members.push((
            server_names.iter().map(|n| n.as_str().into()).collect(),
            resolver.clone(),
        ));
        Ok(DownstreamTls {
            shared: group.shared.clone(),
            client_auth: group.client_auth,
            local_uri_sans,
            resolver,
            own: OnceLock::new(),
            certificate_secrets,
            stats: self.store.stats(),
        })
    }

    /// Completes the shared resolvers: each maps server names to the certificates of
    /// the chain that lists them (the first one, as filter chains match).
    pub fn finish(self) {
        for group in self.groups.into_values() {
            let chains = match <[_; 1]>::try_from(group.members) {
                Ok([(_, one)]) => Chains::One(one),
                Err(members) => {
                    let mut table = ServerNameTable::new(true);
                    for (names, r) in members {
                        if names.is_empty() {
                            table.insert("*", r);
                        } else {
                            for n in &names {
                                table.insert(n, r.clone());
                            }
                        }
                    }
                    Chains::ByName(table)
                }
            };
            // A set finishes once; its resolvers are new.
            let _ = group.shared.resolver.chains.set(chains);
        }
    }
}

/// Rejects the session settings meshgate does not implement.
fn check_session_settings(ctx: &DownstreamTlsContext, name: &str) -> Result<(), TlsError> {
    match &ctx.session_ticket_keys_type {
        Some(SessionTicketKeysType::SessionTicketKeys(_))
        | Some(SessionTicketKeysType::SessionTicketKeysSdsSecretConfig(_)) => {
            return Err(TlsError::unsupported(
                &field(name, "session_ticket_keys"),
                "explicit ticket keys are not supported; keys are generated and rotated in process",
            ));
        }
        _ => {}
    }
    if ctx.session_timeout.is_some() {
        return Err(TlsError::unsupported(
            &field(name, "session_timeout"),
            "not supported",
        ));
    }
    if ctx.ocsp_staple_policy != 0 {
        return Err(TlsError::unsupported(
            &field(name, "ocsp_staple_policy"),
            "only LENIENT_STAPLING is supported",
        ));
    }
    Ok(())
}

/// The certificate-independent part of a context: client authentication, versions,
/// cipher suites, session resumption, ALPN.
fn server_context(
    ctx: &DownstreamTlsContext,
    common: &CommonTlsContext,
    params: params::ResolvedParams,
    store: &SecretStore,
    sessions: &ServerSessionState,
    name: &str,
) -> Result<(Arc<ServerContext>, ClientAuth), TlsError> {
    let stateless_off = matches!(
        ctx.session_ticket_keys_type,
        Some(SessionTicketKeysType::DisableStatelessSessionResumption(
            true
        ))
    );
    let stateful_off = ctx.disable_stateful_session_resumption;
    let require_client = ctx.require_client_certificate.is_some_and(|b| b.value);
    let validation = validation_source(common, store, name)?;
    let (client_auth, verifier): (
        ClientAuth,
        Arc<dyn rustls::server::danger::ClientCertVerifier>,
    ) = match validation {
        None if require_client => {
            return Err(TlsError::invalid(
                &field(name, "require_client_certificate"),
                "needs a validation context",
            ));
        }
        None => (
            ClientAuth::None,
            rustls::server::WebPkiClientVerifier::no_client_auth(),
        ),
        Some(source) => (
            if require_client || source.has_peer_rules() {
                ClientAuth::Required
            } else {
                ClientAuth::Optional
            },
            Arc::new(DownstreamClientVerifier {
                source,
                mandatory: require_client,
                stats: store.stats(),
            }),
        ),
    };
    let resolver = Arc::new(ChainCertResolver::default());
    let mut config = ServerConfig::builder_with_provider(params.provider)
        .with_protocol_versions(&params.versions)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver.clone());
    config.ignore_client_order = !ctx.prefer_client_ciphers;
    config.session_storage = if stateful_off {
        Arc::new(NoServerSessionStorage {})
    } else {
        sessions.storage.clone()
    };
    if !stateless_off {
        config.ticketer = sessions.ticketer.clone();
    }
    if stateless_off && stateful_off {
        config.send_tls13_tickets = 0;
    }
    config.cert_compression_cache = sessions.compression_cache.clone();
    let config_no_alpn = Arc::new(config.clone());
    let alpn: Vec<Vec<u8>> = common
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    config.alpn_protocols = alpn.clone();
    Ok((
        Arc::new(ServerContext {
            config: Arc::new(config),
            config_no_alpn,
            resolver,
            alpn,
        }),
        client_auth,
    ))
}

impl DownstreamTls {
    /// Builds the server side of a filter chain from its `DownstreamTlsContext`, alone
    /// (see [`DownstreamTlsSet`] for a listener's chains). `name` (e.g. the listener and
    /// filter chain) prefixes every error.
    pub fn from_context(
        ctx: &DownstreamTlsContext,
        store: &SecretStore,
        sessions: &ServerSessionState,
        name: &str,
    ) -> Result<DownstreamTls, TlsError> {
        let mut set = DownstreamTlsSet::new(store, sessions);
        let built = set.build(ctx, &[], name)?;
        set.finish();
        Ok(built)
    }

    /// The context's ALPN protocols.
    pub fn alpn(&self) -> &[Vec<u8>] {
        &self.shared.alpn
    }

    /// The configurations (with ALPN, without) that serve this chain's certificates for
    /// a ClientHello naming `sni`: the shared ones when their resolver picks this
    /// chain's certificates for it, else the chain's own.
    fn configs_for(&self, sni: Option<&str>) -> (&Arc<ServerConfig>, &Arc<ServerConfig>) {
        let shared = &self.shared;
        if shared
            .resolver
            .chain_for(sni)
            .is_some_and(|r| Arc::ptr_eq(r, &self.resolver))
        {
            return (&shared.config, &shared.config_no_alpn);
        }
        let (with, without) = self.own.get_or_init(|| {
            let own = |c: &ServerConfig| {
                let mut c = c.clone();
                c.cert_resolver = self.resolver.clone();
                Arc::new(c)
            };
            (own(&shared.config), own(&shared.config_no_alpn))
        });
        (with, without)
    }

    /// Whether any of the context's certificates has material now (an SDS secret or an
    /// ACME certificate not yet delivered leaves the context without one).
    pub fn certificates_ready(&self) -> bool {
        self.resolver.any_ready()
    }

    /// The names of the SDS certificate secrets the context serves.
    pub fn certificate_secrets(&self) -> impl Iterator<Item = &str> {
        self.certificate_secrets.iter().map(|s| &**s)
    }

    /// The stats the context counts handshakes in.
    pub fn stats(&self) -> &Arc<TlsStats> {
        &self.stats
    }

    /// The rustls configuration (with the context's ALPN) of a handshake without SNI.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.configs_for(None).0.clone()
    }

    /// Runs the server handshake on `io` (whose first bytes may have been replayed with
    /// [`Rewind`](crate::tls::Rewind) after peeking), within `timeout`.
    pub async fn accept<IO>(&self, io: IO, timeout: Duration) -> Result<Accepted<IO>, AcceptError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let result = tokio::time::timeout(timeout, self.handshake(io)).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(AcceptError::Timeout),
        };
        match &result {
            Ok(_) => TlsStats::bump(&self.stats.handshakes),
            Err(e) => {
                match e {
                    AcceptError::ClientHello(_) => TlsStats::bump(&self.stats.client_hello_errors),
                    _ => TlsStats::bump(&self.stats.handshake_failures),
                }
                tracing::debug!(error = %e, "TLS accept failed");
            }
        }
        result
    }

    async fn handshake<IO>(&self, io: IO) -> Result<Accepted<IO>, AcceptError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .map_err(AcceptError::ClientHello)?;
        let hello = start.client_hello();
        let server_name = hello.server_name().map(str::to_string);
        let overlap = match hello.alpn() {
            Some(mut offered) => offered.any(|p| self.shared.alpn.iter().any(|a| a == p)),
            None => true,
        };
        let (with_alpn, without_alpn) = self.configs_for(hello.server_name());
        let config = if overlap {
            with_alpn.clone()
        } else {
            without_alpn.clone()
        };
        let stream = start.into_stream(config).await.map_err(|e| {
            if e.get_ref()
                .is_some_and(|inner| inner.to_string().contains("no server certificate"))
            {
                TlsStats::bump(&self.stats.no_certificate);
            }
            AcceptError::Handshake(e)
        })?;
        let (_, conn) = stream.get_ref();
        let peer = conn.peer_certificates().and_then(PeerIdentity::from_chain);
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        Ok(Accepted {
            stream,
            peer,
            alpn,
            server_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::json::from_json;
    use serde_json::json;

    fn build(extra: serde_json::Value) -> Result<DownstreamTls, TlsError> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example.com".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut ctx = json!({"common_tls_context": {"alpn_protocols": ["h2", "http/1.1"],
            "tls_certificates": [{"certificate_chain": {"inline_string": cert.pem()}, "private_key": {"inline_string": key.serialize_pem()}}]}});
        for (k, v) in extra.as_object().unwrap() {
            ctx[k] = v.clone();
        }
        let ctx: DownstreamTlsContext = from_json(&ctx).unwrap();
        DownstreamTls::from_context(
            &ctx,
            &SecretStore::default(),
            &ServerSessionState::new(16)?,
            "t",
        )
    }

    #[test]
    fn session_resumption_knobs() {
        let both = build(json!({"disable_stateful_session_resumption": true, "disable_stateless_session_resumption": true})).unwrap();
        let c = both.server_config();
        assert_eq!(c.send_tls13_tickets, 0);
        assert!(!c.ticketer.enabled());
        assert!(!c.session_storage.can_cache());
        let default = build(json!({})).unwrap().server_config();
        assert!(default.ticketer.enabled());
        assert!(default.session_storage.can_cache());
        assert_eq!(
            default.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(
            default.ignore_client_order,
            "server cipher order unless prefer_client_ciphers"
        );
        let stateless_only = build(json!({"disable_stateful_session_resumption": true}))
            .unwrap()
            .server_config();
        assert!(stateless_only.ticketer.enabled() && !stateless_only.session_storage.can_cache());
    }

    #[test]
    fn client_auth_modes() {
        assert_eq!(build(json!({})).unwrap().client_auth, ClientAuth::None);
        let ca = json!({"validation_context_sds_secret_config": {"name": "kubernetes://x-cacert"}});
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example.com".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut common = ca.clone();
        common["tls_certificates"] = json!([{"certificate_chain": {"inline_string": cert.pem()}, "private_key": {"inline_string": key.serialize_pem()}}]);
        let optional = build(json!({"common_tls_context": common})).unwrap();
        assert_eq!(optional.client_auth, ClientAuth::Optional);
        let required =
            build(json!({"common_tls_context": common, "require_client_certificate": true}))
                .unwrap();
        assert_eq!(required.client_auth, ClientAuth::Required);
        // SAN matchers or pins make a client certificate mandatory (Envoy's verify mode).
        for rules in [
            json!({"match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": "spiffe://x/y"}}]}),
            json!({"verify_certificate_hash": ["00".repeat(32)]}),
        ] {
            let mut common = common.clone();
            common["combined_validation_context"] = json!({
                "default_validation_context": rules,
                "validation_context_sds_secret_config": {"name": "kubernetes://x-cacert"}});
            common
                .as_object_mut()
                .unwrap()
                .remove("validation_context_sds_secret_config");
            let pinned = build(json!({"common_tls_context": common})).unwrap();
            assert_eq!(pinned.client_auth, ClientAuth::Required, "{rules}");
        }
    }

    /// An SDS secret with a fresh self-signed certificate for `host`.
    fn secret(
        name: &str,
        host: &str,
    ) -> crate::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        from_json(&json!({"name": name, "tls_certificate": {
            "certificate_chain": {"inline_string": cert.pem()},
            "private_key": {"inline_string": key.serialize_pem()}}}))
        .unwrap()
    }

    /// The DNS SAN of the certificate `tls` serves to a client sending `sni`.
    async fn served(tls: &DownstreamTls, sni: &str) -> String {
        let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls::client::NoVerification))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let (client, server) = tokio::io::duplex(1 << 16);
        let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let connect = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, client);
        let (client, server) = tokio::join!(connect, tls.accept(server, Duration::from_secs(5)));
        server.unwrap();
        let client = client.unwrap();
        let leaf = client.get_ref().1.peer_certificates().unwrap()[0].clone();
        let m = crate::tls::material::LeafInfo::from_der(&leaf, "served").unwrap();
        m.dns_names[0].clone()
    }

    #[tokio::test]
    async fn chains_differing_by_certificate_share_one_configuration() {
        let store = SecretStore::default();
        let sessions = ServerSessionState::new(16).unwrap();
        assert!(
            store
                .apply_sds(&[
                    secret("a", "a.example.com"),
                    secret("b", "b.example.com"),
                    secret("c", "c.example.com")
                ])
                .is_empty()
        );
        let ctx = |sds: &str, alpn: serde_json::Value| -> DownstreamTlsContext {
            from_json(&json!({"common_tls_context": {"alpn_protocols": alpn,
                "tls_certificate_sds_secret_configs": [{"name": sds}]}}))
            .unwrap()
        };
        let mut set = DownstreamTlsSet::new(&store, &sessions);
        let a = set
            .build(&ctx("a", json!(["h2"])), &["a.example.com".into()], "a")
            .unwrap();
        let b = set
            .build(&ctx("b", json!(["h2"])), &["B.example.com".into()], "b")
            .unwrap();
        // Other settings (here ALPN): a configuration of its own.
        let c = set
            .build(
                &ctx("c", json!(["http/1.1"])),
                &["c.example.com".into()],
                "c",
            )
            .unwrap();
        set.finish();
        assert!(Arc::ptr_eq(&a.shared, &b.shared));
        assert!(!Arc::ptr_eq(&a.shared, &c.shared));
        assert_eq!(c.alpn(), [b"http/1.1".to_vec()]);

        assert_eq!(served(&a, "a.example.com").await, "a.example.com");
        assert_eq!(served(&b, "b.example.com").await, "b.example.com");
        assert_eq!(served(&c, "c.example.com").await, "c.example.com");
        assert!(
            a.own.get().is_none() && b.own.get().is_none(),
            "served by the shared configuration"
        );
        // An SNI that names another chain of the group: this chain's certificate all the same.
        assert_eq!(served(&a, "b.example.com").await, "a.example.com");
        assert!(a.own.get().is_some());
        assert_eq!(served(&b, "other.example.com").await, "b.example.com");

        // Rotation: the next handshake serves the new certificate, nothing rebuilt.
        assert!(
            store
                .apply_sds(&[
                    secret("a", "a2.example.com"),
                    secret("b", "b.example.com"),
                    secret("c", "c.example.com")
                ])
                .is_empty()
        );
        assert_eq!(served(&a, "a.example.com").await, "a2.example.com");
        assert_eq!(served(&b, "b.example.com").await, "b.example.com");
    }
}
