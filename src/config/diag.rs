//! Diagnostics: one positioned problem found while loading or validating configuration.
//!
//! Rendered as `file:line:column: error|warning: Kind/ns/name: field: message`, the form
//! compilers use, so that editors and CI annotate the offending line directly.
use serde::Serialize;
use std::fmt;

/// How bad a problem is: errors make `meshgate validate` fail, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The configuration is wrong and would be rejected.
    Error,
    /// The configuration loads, but something in it is suspicious or not acted upon.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem, with where it is.
///
/// `line` and `column` are 1-based; 0 means the position is unknown (for example a file
/// that could not be read), and the position is then left out of the rendered line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file the problem is in, as given on the command line or found in a directory.
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: u32,
    /// 1-based column, 0 when unknown.
    pub column: u32,
    /// Error or warning.
    pub severity: Severity,
    /// The resource concerned, as `Kind/namespace/name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The field concerned, as a path such as `spec.http[0].match[0].uri.regex`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong, in a sentence without a trailing period.
    pub message: String,
}

impl Diagnostic {
    /// An error in a file, not tied to a resource.
    pub fn file_error(
        file: impl Into<String>,
        line: u32,
        column: u32,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.into(),
            line,
            column,
            severity: Severity::Error,
            resource: None,
            field: None,
            message: message.into(),
        }
    }

    /// Whether this is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The order diagnostics are printed in: by file, line, column, then severity and text.
    pub fn sort(diagnostics: &mut [Diagnostic]) {
        diagnostics.sort_by(|a, b| {
            (
                &a.file,
                a.line,
                a.column,
                a.severity,
                &a.resource,
                &a.field,
                &a.message,
            )
                .cmp(&(
                    &b.file,
                    b.line,
                    b.column,
                    b.severity,
                    &b.resource,
                    &b.field,
                    &b.message,
                ))
        });
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        write!(f, ": {}: ", self.severity)?;
        if let Some(resource) = &self.resource {
            write!(f, "{resource}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_every_part_that_is_present() {
        let full = Diagnostic {
            file: "a.yaml".into(),
            line: 3,
            column: 7,
            severity: Severity::Error,
            resource: Some("VirtualService/shop/reviews".into()),
            field: Some("spec.http[0].route[1].weight".into()),
            message: "weights sum to 90, not 100".into(),
        };
        assert_eq!(
            full.to_string(),
            "a.yaml:3:7: error: VirtualService/shop/reviews: spec.http[0].route[1].weight: weights sum to 90, not 100"
        );
        let bare = Diagnostic::file_error("b.yaml", 0, 0, "cannot read");
        assert_eq!(bare.to_string(), "b.yaml: error: cannot read");
        let warn = Diagnostic {
            severity: Severity::Warning,
            field: None,
            ..full.clone()
        };
        assert_eq!(
            warn.to_string(),
            "a.yaml:3:7: warning: VirtualService/shop/reviews: weights sum to 90, not 100"
        );
    }

    #[test]
    fn json_leaves_out_absent_parts() {
        let d = Diagnostic::file_error("b.yaml", 1, 2, "bad");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(
            json,
            r#"{"file":"b.yaml","line":1,"column":2,"severity":"error","message":"bad"}"#
        );
    }
}
