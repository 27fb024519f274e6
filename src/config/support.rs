//! Fields meshgate reads but does not act on yet.
//!
//! Every field of Istio's API parses, but not every one changes what meshgate does. Each
//! such field the user sets gets a warning naming it, so that nothing is silently
//! ignored. This table is the one place to edit when a feature lands: remove its row.
//!
//! Patterns are field paths as diagnostics print them, with `[*]` for any list item, `*`
//! for any map key and `**` for any depth.
use super::diag::{Diagnostic, Severity};
use super::load::Config;
use super::source::{Node, NodeValue};
use super::types::{Kind, Resource};

/// One field that is parsed but not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported {
    /// The resource kind, e.g. `VirtualService`.
    pub kind: &'static str,
    /// The field path pattern, e.g. `spec.http[*].match[*].sourceLabels`.
    pub field: &'static str,
    /// Why it has no effect, in a few words.
    pub reason: &'static str,
}

const fn row(kind: &'static str, field: &'static str, reason: &'static str) -> Unsupported {
    Unsupported {
        kind,
        field,
        reason,
    }
}

/// The fields meshgate parses but does not act on yet.
pub const UNSUPPORTED: &[Unsupported] = &[
    // Gateway
    row(
        "Gateway",
        "spec.servers[*].defaultEndpoint",
        "default endpoints (sidecar ingress) are not supported",
    ),
    // VirtualService
    // DestinationRule
    row(
        "DestinationRule",
        "spec.**.tunnel",
        "tunnelling through HTTP CONNECT/POST is not supported yet",
    ),
    row(
        "DestinationRule",
        "spec.**.loadBalancer.zoneAwareLbSetting",
        "zone-aware load balancing is not supported yet",
    ),
    // ServiceEntry
    row(
        "ServiceEntry",
        "spec.endpoints[*].network",
        "multi-network meshes are not supported yet",
    ),
    // WorkloadEntry
    row(
        "WorkloadEntry",
        "spec.network",
        "multi-network meshes are not supported yet",
    ),
];

/// Warns about every field of `config` listed in [`UNSUPPORTED`] that is set.
pub fn check(config: &Config, out: &mut Vec<Diagnostic>) {
    check_kind(&config.gateways, out);
    check_kind(&config.virtual_services, out);
    check_kind(&config.destination_rules, out);
    check_kind(&config.service_entries, out);
    check_kind(&config.workload_entries, out);
}

fn check_kind<T: Kind>(resources: &[Resource<T>], out: &mut Vec<Diagnostic>) {
    let rows: Vec<&Unsupported> = UNSUPPORTED.iter().filter(|r| r.kind == T::KIND).collect();
    if rows.is_empty() {
        return;
    }
    for resource in resources {
        let Some(tree) = resource.origin.tree() else {
            continue;
        };
        for row in &rows {
            let mut found = Vec::new();
            find(tree, &tokens(row.field), String::new(), &mut found);
            let mut seen = std::collections::HashSet::new();
            found.retain(|p| seen.insert(p.clone()));
            for path in found {
                let leaf = path.rsplit('.').next().unwrap_or(&path).to_string();
                out.push(resource.diagnostic(
                    Severity::Warning,
                    &path,
                    format!("`{leaf}` is parsed but not acted on yet: {}", row.reason),
                ));
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Key(String),
    AnyKey,
    AnyIndex,
    Deep,
}

fn tokens(pattern: &str) -> Vec<Token> {
    let mut out = Vec::new();
    for segment in pattern.split('.') {
        let (name, indexed) = match segment.strip_suffix("[*]") {
            Some(name) => (name, true),
            None => (segment, false),
        };
        out.push(match name {
            "*" => Token::AnyKey,
            "**" => Token::Deep,
            _ => Token::Key(name.to_string()),
        });
        if indexed {
            out.push(Token::AnyIndex);
        }
    }
    out
}

fn is_set(node: &Node) -> bool {
    match &node.value {
        NodeValue::Null => false,
        NodeValue::Bool(b) => *b,
        NodeValue::Number(n) => n.as_f64() != Some(0.0),
        NodeValue::String(s) => !s.is_empty(),
        NodeValue::Seq(items) => !items.is_empty(),
        NodeValue::Map(entries) => !entries.is_empty(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn find(node: &Node, tokens: &[Token], path: String, found: &mut Vec<String>) {
    let Some((first, rest)) = tokens.split_first() else {
        if is_set(node) {
            found.push(path);
        }
        return;
    };
    match (first, &node.value) {
        (Token::Key(key), NodeValue::Map(entries)) => {
            if let Some(e) = entries.iter().find(|e| &e.key == key) {
                find(&e.value, rest, join(&path, key), found);
            }
        }
        (Token::AnyKey, NodeValue::Map(entries)) => {
            for e in entries {
                find(&e.value, rest, join(&path, &e.key), found);
            }
        }
        (Token::AnyIndex, NodeValue::Seq(items)) => {
            for (i, item) in items.iter().enumerate() {
                find(item, rest, format!("{path}[{i}]"), found);
            }
        }
        (Token::Deep, _) => {
            // Zero levels, then one more level and `**` again.
            find(node, rest, path.clone(), found);
            match &node.value {
                NodeValue::Map(entries) => {
                    for e in entries {
                        find(&e.value, tokens, join(&path, &e.key), found);
                    }
                }
                NodeValue::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        find(item, tokens, format!("{path}[{i}]"), found);
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    #[test]
    fn every_row_names_a_field_of_its_kind() {
        for row in UNSUPPORTED {
            assert!(
                [
                    "Gateway",
                    "VirtualService",
                    "DestinationRule",
                    "ServiceEntry",
                    "WorkloadEntry"
                ]
                .contains(&row.kind),
                "{row:?}"
            );
            assert!(row.field.starts_with("spec."), "{row:?}");
            assert!(!row.reason.is_empty());
        }
    }

    #[test]
    fn set_fields_are_reported_with_their_position() {
        let text = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: a.example.com\n  exportTo: []\n  trafficPolicy:\n    tunnel: {targetHost: p, targetPort: 3128}\n  subsets:\n  - name: v1\n    trafficPolicy:\n      proxyProtocol: {version: V2}\n";
        let outcome = load_str("t.yaml", text);
        assert!(outcome.diagnostics.is_empty(), "{:?}", outcome.diagnostics);
        let mut out = Vec::new();
        check(&outcome.config, &mut out);
        let lines: Vec<String> = out.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "t.yaml:8:5: warning: DestinationRule/default/r: spec.trafficPolicy.tunnel: `tunnel` is parsed but not acted on yet: tunnelling through HTTP CONNECT/POST is not supported yet",
            ]
        );
    }
}
