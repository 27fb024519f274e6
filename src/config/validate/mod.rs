//! Validation: every rule Istio's admission webhook applies to one resource, plus
//! duplicate detection, cross-resource analysis ([`crate::config::analyze`]) and the
//! parsed-but-unsupported warnings ([`crate::config::support`]), as positioned
//! diagnostics.
pub mod authorization_policy;
pub mod common;
pub mod destination_rule;
pub mod gateway;
pub mod peer_authentication;
pub mod rate_limit_policy;
pub mod request_authentication;
pub mod service_entry;
pub mod sidecar;
pub mod telemetry;
pub mod virtual_service;

use super::diag::Diagnostic;
use super::load::Config;
use super::types::{Kind, Resource};
use std::collections::HashMap;

/// Checks a loaded configuration; diagnostics come sorted by file and position.
pub fn validate(config: &Config) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for r in &config.gateways {
        gateway::validate(r, &mut out);
    }
    for r in &config.virtual_services {
        virtual_service::validate(r, &mut out);
    }
    for r in &config.destination_rules {
        destination_rule::validate(r, &mut out);
    }
    for r in &config.service_entries {
        service_entry::validate(r, &mut out);
    }
    for r in &config.workload_entries {
        service_entry::validate_workload_entry(r, &mut out);
    }
    for r in &config.sidecars {
        sidecar::validate(r, &mut out);
    }
    sidecar::conflicts(&config.sidecars, &mut out);
    for r in &config.peer_authentications {
        peer_authentication::validate(r, &mut out);
    }
    peer_authentication::one_per_namespace(&config.peer_authentications, &mut out);
    for r in &config.rate_limit_policies {
        rate_limit_policy::validate(r, &mut out);
    }
    rate_limit_policy::attachments(config, &mut out);
    for r in &config.request_authentications {
        request_authentication::validate(r, &mut out);
    }
    for r in &config.authorization_policies {
        authorization_policy::validate(r, &mut out);
    }
    for r in &config.telemetries {
        telemetry::validate(r, &mut out);
    }
    telemetry::one_per_namespace(&config.telemetries, &mut out);
    names(&config.gateways, &mut out);
    names(&config.virtual_services, &mut out);
    names(&config.destination_rules, &mut out);
    names(&config.service_entries, &mut out);
    names(&config.workload_entries, &mut out);
    names(&config.sidecars, &mut out);
    names(&config.peer_authentications, &mut out);
    names(&config.request_authentications, &mut out);
    names(&config.authorization_policies, &mut out);
    names(&config.telemetries, &mut out);
    names(&config.secrets, &mut out);
    names(&config.acme_certificates, &mut out);
    names(&config.rate_limit_policies, &mut out);
    acme(config, &mut out);
    duplicates(&config.gateways, &mut out);
    duplicates(&config.virtual_services, &mut out);
    duplicates(&config.destination_rules, &mut out);
    duplicates(&config.service_entries, &mut out);
    duplicates(&config.workload_entries, &mut out);
    duplicates(&config.sidecars, &mut out);
    duplicates(&config.peer_authentications, &mut out);
    duplicates(&config.request_authentications, &mut out);
    duplicates(&config.authorization_policies, &mut out);
    duplicates(&config.telemetries, &mut out);
    duplicates(&config.secrets, &mut out);
    duplicates(&config.acme_certificates, &mut out);
    duplicates(&config.rate_limit_policies, &mut out);
    super::analyze::analyze(config, &mut out);
    super::support::check(config, &mut out);
    Diagnostic::sort(&mut out);
    out.dedup();
    out
}

/// `AcmeCertificate`s: each one's own rules, and one issuer per credential (two would
/// overwrite each other's certificate; a Secret of the same name would be shadowed).
fn acme(config: &Config, out: &mut Vec<Diagnostic>) {
    use crate::acme::AcmeCertificate;
    let mut credentials: HashMap<(&str, &str), &str> = HashMap::new();
    for r in &config.acme_certificates {
        // Metadata problems are reported by `names`.
        for e in AcmeCertificate::from_config(r).validate() {
            if e.field.starts_with("spec.") {
                out.push(r.error(&e.field, e.message));
            }
        }
        let key = (r.meta.namespace.as_str(), r.spec.credential_name.as_str());
        if let Some(other) = credentials.insert(key, &r.meta.name) {
            out.push(r.error(
                "spec.credentialName",
                format!(
                    "`{}` is also issued by AcmeCertificate {}/{other}",
                    r.spec.credential_name, r.meta.namespace
                ),
            ));
        }
        if config
            .secrets
            .iter()
            .any(|s| s.meta.namespace == r.meta.namespace && s.meta.name == r.spec.credential_name)
        {
            out.push(r.warning(
                "spec.credentialName",
                format!(
                    "a Secret {}/{} exists too; Gateways get the ACME certificate",
                    r.meta.namespace, r.spec.credential_name
                ),
            ));
        }
    }
}

/// Names and namespaces as Kubernetes accepts them: a namespace is a lower-case DNS-1123
/// label, a name a lower-case DNS-1123 subdomain.
fn names<T: Kind>(resources: &[Resource<T>], out: &mut Vec<Diagnostic>) {
    for r in resources {
        if !common::is_lowercase_dns1123_label(&r.meta.namespace) {
            out.push(r.error(
                "metadata.namespace",
                format!(
                    "namespace `{}` must be a lower-case DNS-1123 label (letters, digits, `-`)",
                    r.meta.namespace
                ),
            ));
        }
        let name = &r.meta.name;
        if name.len() > 253 || !name.split('.').all(common::is_lowercase_dns1123_label) {
            out.push(r.error(
                "metadata.name",
                format!("name `{name}` must be a lower-case DNS-1123 subdomain (letters, digits, `-`, `.`)"),
            ));
        }
    }
}

/// The same kind, namespace and name twice: which one would apply is undefined.
fn duplicates<T: Kind>(resources: &[Resource<T>], out: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<(&str, &str), &Resource<T>> = HashMap::new();
    for r in resources {
        match seen.get(&(r.meta.namespace.as_str(), r.meta.name.as_str())) {
            Some(first) => out.push(r.error(
                "metadata.name",
                format!(
                    "{} {}/{} is already defined at {}:{}",
                    T::KIND,
                    r.meta.namespace,
                    r.meta.name,
                    first.origin.file,
                    first.origin.line
                ),
            )),
            None => {
                seen.insert((&r.meta.namespace, &r.meta.name), r);
            }
        }
    }
}

#[cfg(test)]
mod tests;
