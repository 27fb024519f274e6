//! Fuzzes the ClientHello parser used to pick filter chains by SNI and for TLS
//! passthrough: any bytes, any split into reads, must give an answer, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::tls::client_hello::parse_client_hello;

fn check(data: &[u8]) {
    let limit = 16 * 1024;
    if let Ok(Some(info)) = parse_client_hello(data, limit) {
        assert!(info.len <= data.len());
        if let Some(name) = &info.server_name {
            assert!(!name.is_empty() && name.len() <= 255);
        }
    }
    // Prefixes (what a reader sees after a partial read) never claim more than they hold.
    if let Some(&cut) = data.first() {
        let cut = (cut as usize * data.len()) / 256;
        if let Ok(Some(info)) = parse_client_hello(&data[..cut], limit) {
            assert!(info.len <= cut);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // The same bytes as the body of a well-framed ClientHello, split into records of a
    // size taken from the input, so that the body parser (extensions, SNI, ALPN) is
    // reached by most inputs.
    if data.len() < 2 || data.len() > 12_000 {
        return;
    }
    let record = 1 + data[0] as usize * 64;
    let mut msg = vec![1];
    msg.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(data);
    let mut framed = Vec::new();
    for chunk in msg.chunks(record) {
        framed.extend_from_slice(&[22, 3, 1]);
        framed.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        framed.extend_from_slice(chunk);
    }
    check(&framed);
});
