//! Arbitrary bytes as a configuration file: loading and validating must never panic,
//! whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let outcome = meshgate::config::load_bytes("fuzz.yaml", data);
    for d in &outcome.diagnostics {
        // Rendering is part of what users see; it must not panic either.
        let _ = d.to_string();
    }
    let _ = meshgate::config::validate(&outcome.config);
});
