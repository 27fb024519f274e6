//! Fuzzes what meshgate itself does with the raw bytes and the path of an HTTP/1 request
//! before routing: the request-head scan (fragments, Content-Length next to
//! Transfer-Encoding) at any split into reads, and path normalization, which must be
//! idempotent and keep paths in origin form.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::proxy::http::head_scan;
use meshgate::proxy::http::normalize::{merge_slashes, normalize, unescape_slashes};

fuzz_target!(|data: &[u8]| {
    let whole = head_scan::scan(data, true);
    if let Some(&cut) = data.first() {
        let cut = (cut as usize * data.len()) / 256;
        let (a, b) = data.split_at(cut);
        let _ = head_scan::scan(a, true) | head_scan::scan(b, false);
    }
    // Without a line break there are no header lines to find.
    if !data.contains(&b'\n') {
        assert_eq!(whole & !head_scan::FRAGMENT, 0);
    }

    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    match normalize(path) {
        Err(_) => assert!(!path.starts_with('/')),
        Ok(None) => {}
        Ok(Some(n)) => {
            assert!(n.starts_with('/'), "{path:?} -> {n:?}");
            assert_eq!(normalize(&n), Ok(None), "not idempotent: {path:?} -> {n:?}");
        }
    }
    if let Some(m) = merge_slashes(path) {
        assert!(!m.contains("//"), "{path:?} -> {m:?}");
        assert!(m.len() < path.len());
    }
    let u = unescape_slashes(path);
    assert!(u.len() <= path.len());
});
