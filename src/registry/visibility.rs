//! `exportTo`: which namespaces see a service (or a routing resource).
use std::collections::BTreeSet;

/// Where a resource is visible, from its `exportTo` list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Visibility {
    /// `*` or no `exportTo`: every namespace (Istio's default).
    #[default]
    Public,
    /// `~`: no namespace.
    None,
    /// `.` and/or named namespaces; `.` is resolved to the owner's namespace.
    Namespaces(BTreeSet<String>),
}

impl Visibility {
    /// Reads an `exportTo` list of a resource in `namespace`.
    pub fn from_export_to(export_to: &[String], namespace: &str) -> Visibility {
        if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
            return Visibility::Public;
        }
        let names: BTreeSet<String> = export_to
            .iter()
            .filter(|e| e.as_str() != "~")
            .map(|e| {
                if e == "." {
                    namespace.to_string()
                } else {
                    e.clone()
                }
            })
            .collect();
        if names.is_empty() {
            Visibility::None
        } else {
            Visibility::Namespaces(names)
        }
    }

    /// Whether a proxy in `namespace` sees the resource.
    pub fn includes(&self, namespace: &str) -> bool {
        match self {
            Visibility::Public => true,
            Visibility::None => false,
            Visibility::Namespaces(names) => names.contains(namespace),
        }
    }
}
