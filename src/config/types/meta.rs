//! What every loaded resource carries besides its spec: Kubernetes object metadata, and
//! where in which file it came from.
use crate::config::diag::{Diagnostic, Severity};
use crate::config::source::{Node, Pos};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The namespace of resources that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

/// Kubernetes object metadata. Fields that only the API server manages (`uid`,
/// `resourceVersion`, ...) are accepted, so that `kubectl get -o yaml` output loads, and
/// ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Name, unique per kind and namespace.
    #[serde(default)]
    pub name: String,
    /// Namespace; `default` when not given.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing)]
    uid: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    resource_version: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    generation: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    creation_timestamp: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    deletion_timestamp: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    deletion_grace_period_seconds: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    generate_name: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    self_link: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    managed_fields: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    owner_references: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    finalizers: Option<IgnoredAny>,
}

impl ObjectMeta {
    /// Metadata with a name and namespace and nothing else.
    pub fn new(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: name.to_string(),
            namespace: namespace.to_string(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            uid: None,
            resource_version: None,
            generation: None,
            creation_timestamp: None,
            deletion_timestamp: None,
            deletion_grace_period_seconds: None,
            generate_name: None,
            self_link: None,
            managed_fields: None,
            owner_references: None,
            finalizers: None,
        }
    }
}

impl Default for ObjectMeta {
    fn default() -> Self {
        ObjectMeta::new(DEFAULT_NAMESPACE, "")
    }
}

/// Where a resource came from: its file, the start of its document, and the document's
/// positioned tree to find any field inside it.
#[derive(Clone)]
pub struct Origin {
    /// The file, as given or found in a directory.
    pub file: Arc<str>,
    /// 1-based line where the resource starts.
    pub line: u32,
    /// 1-based column where the resource starts.
    pub column: u32,
    tree: Option<Arc<Node>>,
}

impl Origin {
    /// An origin at a position, with the resource's positioned tree.
    pub fn new(file: Arc<str>, tree: Arc<Node>) -> Origin {
        Origin {
            file,
            line: tree.pos.line,
            column: tree.pos.column,
            tree: Some(tree),
        }
    }

    /// An origin for resources built in code rather than read from a file.
    pub fn synthetic(name: &str) -> Origin {
        Origin {
            file: Arc::from(name),
            line: 0,
            column: 0,
            tree: None,
        }
    }

    /// The resource's positioned tree, as written in its file.
    pub fn tree(&self) -> Option<&Node> {
        self.tree.as_deref()
    }

    /// Line and column of a field path inside the resource, e.g.
    /// `spec.http[0].route[1].weight`; the nearest existing parent when the field is
    /// absent, the resource's start when the path is empty.
    pub fn position(&self, field: &str) -> (u32, u32) {
        match &self.tree {
            Some(tree) => {
                let Pos { line, column } = tree.locate(field);
                (line, column)
            }
            None => (self.line, self.column),
        }
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

impl PartialEq for Origin {
    fn eq(&self, other: &Self) -> bool {
        self.file == other.file && self.line == other.line && self.column == other.column
    }
}

/// The Kubernetes kind of a spec type.
pub trait Kind {
    /// The kind as written in YAML, e.g. `VirtualService`.
    const KIND: &'static str;
}

/// A loaded resource: metadata, spec and origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource<T> {
    /// Name, namespace, labels, annotations.
    pub meta: ObjectMeta,
    /// The resource's spec (for a Secret, its data).
    pub spec: T,
    /// Where it was read from.
    pub origin: Origin,
}

impl<T: Kind> Resource<T> {
    /// `Kind/namespace/name`, as diagnostics name resources.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", T::KIND, self.meta.namespace, self.meta.name)
    }

    /// A diagnostic about a field of this resource, positioned at that field.
    pub fn diagnostic(
        &self,
        severity: Severity,
        field: &str,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line, column) = self.origin.position(field);
        Diagnostic {
            file: self.origin.file.to_string(),
            line,
            column,
            severity,
            resource: Some(self.id()),
            field: (!field.is_empty()).then(|| field.to_string()),
            message: message.into(),
        }
    }

    /// An error about a field of this resource.
    pub fn error(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        self.diagnostic(Severity::Error, field, message)
    }

    /// A warning about a field of this resource.
    pub fn warning(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        self.diagnostic(Severity::Warning, field, message)
    }
}
