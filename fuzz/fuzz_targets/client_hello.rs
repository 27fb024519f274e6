//! Fuzzes the ClientHello parser used to pick filter chains by SNI and for TLS
//! passthrough: any bytes, any split into reads, must give an answer, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::tls::client_hello::parse_client_hello;

fuzz_target!(|data: &[u8]| {
    let limit = 16 * 1024;
    let whole = parse_client_hello(data, limit);
    if let Ok(Some(info)) = &whole {
        assert!(info.len <= data.len());
        if let Some(name) = &info.server_name {
            assert!(!name.is_empty() && name.len() <= 255);
        }
    }
    // Prefixes (what a reader sees after a partial read) never claim more than the
    // whole input and never panic.
    if let Some(&cut) = data.first() {
        let cut = (cut as usize * data.len()) / 256;
        if let Ok(Some(info)) = parse_client_hello(&data[..cut], limit) {
            assert!(info.len <= cut);
        }
    }
});
