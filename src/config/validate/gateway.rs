//! Checks of one `Gateway` on its own: servers, ports, hosts, TLS settings.
use super::common::{
    Sink, check_port, check_wildcard_host, is_dns1123_label, is_ip, is_partial_wildcard,
};
use crate::config::diag::Diagnostic;
use crate::config::types::Protocol;
use crate::config::types::common::{nearest, quoted_list};
use crate::config::types::gateway::{Server, ServerTlsMode, ServerTlsSettings, TlsProtocol};
use crate::config::types::{Gateway, Resource};
use std::collections::HashMap;

/// Validates one Gateway.
pub fn validate(gw: &Resource<Gateway>, out: &mut Vec<Diagnostic>) {
    let mut s = Sink::new(gw, out);
    if !is_dns1123_label(&gw.meta.name) {
        s.error(
            "metadata.name",
            format!(
                "invalid gateway name `{}`: it must be a DNS-1123 label (no dots)",
                gw.meta.name
            ),
        );
    }
    if gw.spec.servers.is_empty() {
        s.error("spec.servers", "a gateway needs at least one server");
    }
    let mut port_names: HashMap<&str, usize> = HashMap::new();
    for (i, server) in gw.spec.servers.iter().enumerate() {
        let path = format!("spec.servers[{i}]");
        validate_server(&mut s, &path, server);
        if let Some(port) = &server.port
            && !port.name.is_empty()
        {
            if let Some(first) = port_names.get(port.name.as_str()) {
                s.error(
                    &format!("{path}.port.name"),
                    format!(
                        "port name `{}` is already used by spec.servers[{first}]; port names must be unique in a gateway",
                        port.name
                    ),
                );
            } else {
                port_names.insert(&port.name, i);
            }
        }
    }
}

fn validate_server(s: &mut Sink<'_, Gateway>, path: &str, server: &Server) {
    if server.hosts.is_empty() {
        s.error(&format!("{path}.hosts"), "a server needs at least one host");
    }
    for (j, host) in server.hosts.iter().enumerate() {
        check_gateway_host(s, &format!("{path}.hosts[{j}]"), host);
    }
    let unix_bind = server.bind.starts_with("unix://");
    if !server.bind.is_empty() && !unix_bind && !is_ip(&server.bind) {
        s.error(
            &format!("{path}.bind"),
            format!(
                "bind `{}` must be an IP address or a unix:// path",
                server.bind
            ),
        );
    }
    let Some(port) = &server.port else {
        s.error(path, "a server needs a port");
        return;
    };
    let protocol = Protocol::parse(&port.protocol);
    if protocol.is_none() {
        let hint = match nearest(&port.protocol, Protocol::NAMES) {
            Some(near) => format!("did you mean `{near}`?"),
            None => format!("expected one of {}", quoted_list(Protocol::NAMES)),
        };
        s.error(
            &format!("{path}.port.protocol"),
            format!("unknown protocol `{}`; {hint}", port.protocol),
        );
    }
    if unix_bind {
        s.error(
            &format!("{path}.bind"),
            "unix domain socket listeners are not served by meshgate's data plane yet; bind an IP address",
        );
        if port.number != 0 {
            s.error(
                &format!("{path}.port.number"),
                format!(
                    "port number must be 0 when binding a unix domain socket, not {}",
                    port.number
                ),
            );
        }
    } else {
        s.check(&format!("{path}.port.number"), check_port(port.number));
    }
    if port.target_port > 0 {
        s.error(
            &format!("{path}.port.targetPort"),
            "targetPort has no effect on Gateways",
        );
    }
    if port.name.is_empty() {
        s.error(&format!("{path}.port.name"), "port name must be set");
    }
    if !server.default_endpoint.is_empty() {
        check_default_endpoint(
            s,
            &format!("{path}.defaultEndpoint"),
            &server.default_endpoint,
        );
    }
    let Some(protocol) = protocol else {
        if let Some(tls) = &server.tls {
            validate_tls(s, &format!("{path}.tls"), tls);
        }
        return;
    };
    match &server.tls {
        None if protocol.is_tls() => s.error(
            path,
            format!(
                "a {} server needs `tls` settings",
                port.protocol.to_ascii_uppercase()
            ),
        ),
        None => {}
        Some(tls) => {
            let tls_path = format!("{path}.tls");
            if !protocol.is_tls() {
                let only_redirect = tls.https_redirect
                    && matches!(tls.mode, None | Some(ServerTlsMode::Passthrough))
                    && tls.server_certificate.is_empty()
                    && tls.private_key.is_empty()
                    && tls.ca_certificates.is_empty()
                    && tls.credential_name.is_empty();
                if protocol.is_http() && !only_redirect {
                    s.error(
                        &tls_path,
                        "a plain-text HTTP server can only use `tls.httpsRedirect`; serve TLS with protocol HTTPS",
                    );
                } else if !protocol.is_http() {
                    s.error(
                        &tls_path,
                        format!("a {} server cannot have TLS settings", port.protocol),
                    );
                }
            } else if tls.https_redirect {
                s.warning(
                    &format!("{tls_path}.httpsRedirect"),
                    "httpsRedirect only makes sense on plain HTTP servers; requests here are already HTTPS",
                );
            }
            validate_tls(s, &tls_path, tls);
        }
    }
}

/// Gateway hosts are `host` or `namespace/host`, with namespace `*`, `.` or a name; the
/// host must be a FQDN, `*`, or `*.suffix` (short names and partial wildcards are not
/// allowed); an IP address is accepted.
fn check_gateway_host(s: &mut Sink<'_, Gateway>, field: &str, entry: &str) {
    let host = match entry.split_once('/') {
        Some((ns, host)) => {
            if ns.is_empty() || host.is_empty() {
                s.error(
                    field,
                    format!("`{entry}`: namespace and host in `namespace/host` cannot be empty"),
                );
                return;
            }
            if ns != "*" && ns != "." && !is_dns1123_label(ns) {
                s.error(
                    field,
                    format!("`{entry}`: `{ns}` is not `*`, `.` or a namespace name"),
                );
            }
            host
        }
        None => entry,
    };
    if is_ip(host) {
        return;
    }
    if host != "*" && !host.contains('.') {
        s.error(
            field,
            format!("`{host}` is a short name; gateway hosts must be fully qualified (e.g. `{host}.example.com`)"),
        );
        return;
    }
    if let Err(message) = check_wildcard_host(host) {
        s.error(field, message);
    } else if is_partial_wildcard(host) {
        s.error(
            field,
            format!(
                "partial wildcard `{host}` is not allowed; use a whole label (`*.{}`)",
                host.split_once('.').map_or("", |(_, rest)| rest)
            ),
        );
    }
}

fn check_default_endpoint(s: &mut Sink<'_, Gateway>, field: &str, endpoint: &str) {
    if endpoint.starts_with("unix://") {
        return;
    }
    let ok = match endpoint.rsplit_once(':') {
        Some((ip, port)) => {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            is_ip(ip) && port.parse::<u32>().is_ok_and(|p| check_port(p).is_ok())
        }
        None => false,
    };
    if !ok {
        s.error(
            field,
            format!("defaultEndpoint `{endpoint}` must be IP:PORT or unix://PATH"),
        );
    }
}

fn validate_tls(s: &mut Sink<'_, Gateway>, path: &str, tls: &ServerTlsSettings) {
    let mode = tls.mode.unwrap_or(ServerTlsMode::Passthrough);
    let field = |name: &str| format!("{path}.{name}");
    if matches!(
        tls.min_protocol_version,
        Some(TlsProtocol::V1_0 | TlsProtocol::V1_1)
    ) && tls.cipher_suites.is_empty()
    {
        s.warning(
            &field("minProtocolVersion"),
            "TLS versions below 1.2 need `cipherSuites` set to ciphers they support",
        );
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && min != TlsProtocol::Auto
        && max != TlsProtocol::Auto
        && min > max
    {
        s.error(
            &field("maxProtocolVersion"),
            format!("maxProtocolVersion {max} is below minProtocolVersion {min}"),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, cipher) in tls.cipher_suites.iter().enumerate() {
        if !seen.insert(cipher) {
            s.warning(
                &format!("{path}.cipherSuites[{i}]"),
                format!("cipher suite `{cipher}` is listed twice"),
            );
        }
    }
    let has_files = !tls.server_certificate.is_empty() || !tls.private_key.is_empty();
    match mode {
        ServerTlsMode::IstioMutual => {
            for (name, set) in [
                ("serverCertificate", !tls.server_certificate.is_empty()),
                ("privateKey", !tls.private_key.is_empty()),
                ("caCertificates", !tls.ca_certificates.is_empty()),
                ("tlsCertificates", !tls.tls_certificates.is_empty()),
                ("credentialName", !tls.credential_name.is_empty()),
                ("credentialNames", !tls.credential_names.is_empty()),
            ] {
                if set {
                    s.error(
                        &field(name),
                        format!("ISTIO_MUTUAL uses mesh certificates; `{name}` must not be set"),
                    );
                }
            }
            return;
        }
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough => {
            if has_files
                || !tls.ca_certificates.is_empty()
                || !tls.ca_crl.is_empty()
                || !tls.tls_certificates.is_empty()
                || !tls.credential_name.is_empty()
                || !tls.credential_names.is_empty()
            {
                s.warning(
                    path,
                    format!("{mode} does not terminate TLS; the certificates given are ignored"),
                );
            }
        }
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {}
    }
    let sources = [
        !tls.server_certificate.is_empty() && !tls.private_key.is_empty(),
        !tls.credential_name.is_empty(),
        !tls.credential_names.is_empty(),
        !tls.tls_certificates.is_empty(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        s.error(
            path,
            "set only one of credentialName, credentialNames, serverCertificate/privateKey, tlsCertificates",
        );
    }
    if tls.credential_names.len() > 2 || tls.tls_certificates.len() > 2 {
        s.warning(
            path,
            "at most 2 server certificates (e.g. one RSA and one ECDSA) are used",
        );
    }
    let terminating = matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    let by_secret = !tls.credential_name.is_empty() || !tls.credential_names.is_empty();
    if terminating && !by_secret {
        if tls.tls_certificates.is_empty() {
            if tls.server_certificate.is_empty() {
                s.error(
                    path,
                    format!(
                        "{mode} TLS needs `credentialName`, or `serverCertificate` and `privateKey`"
                    ),
                );
            } else if tls.private_key.is_empty() {
                s.error(
                    &field("serverCertificate"),
                    format!("{mode} TLS needs `privateKey` with `serverCertificate`"),
                );
            }
            if !tls.private_key.is_empty() && tls.server_certificate.is_empty() {
                s.error(
                    &field("privateKey"),
                    format!("{mode} TLS needs `serverCertificate` with `privateKey`"),
                );
            }
        }
        for (i, cert) in tls.tls_certificates.iter().enumerate() {
            if cert.server_certificate.is_empty() || cert.private_key.is_empty() {
                s.error(
                    &format!("{path}.tlsCertificates[{i}]"),
                    "each tlsCertificates entry needs serverCertificate and privateKey",
                );
            }
        }
        if matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
            && tls.ca_certificates.is_empty()
        {
            s.error(
                path,
                format!("{mode} TLS needs `caCertificates` (or `credentialName`) to verify client certificates"),
            );
        }
    }
    if !tls.ca_crl.is_empty() {
        if !tls.credential_name.is_empty() {
            s.error(
                &field("caCrl"),
                "caCrl cannot be used with credentialName; put the CRL in the secret",
            );
        }
        if mode == ServerTlsMode::Simple {
            s.error(
                &field("caCrl"),
                "caCrl needs client certificates; it has no use with SIMPLE TLS",
            );
        }
    }
}
