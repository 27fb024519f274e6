//! Tables of cases for every validation rule: each case is a small configuration and
//! the exact diagnostic lines it must produce.
use crate::config::{load, load_str, validate};
use std::path::Path;

fn lines(text: &str) -> Vec<String> {
    let outcome = load_str("t.yaml", text);
    let mut all: Vec<String> = outcome
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    all.extend(validate(&outcome.config).iter().map(ToString::to_string));
    all
}

#[test]
fn sample_configurations_are_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/valid");
    let outcome = load(&dir);
    assert!(outcome.diagnostics.is_empty(), "{:?}", outcome.diagnostics);
    assert!(outcome.config.len() >= 10);
    let diags: Vec<String> = validate(&outcome.config)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(diags.is_empty(), "{diags:#?}");
}
