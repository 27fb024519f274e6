//! B3 propagation, as Envoy's Zipkin tracer reads and writes it: the multi-header form
//! (`x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags`)
//! and the single `b3` header (`TRACEID-SPANID[-SAMPLED[-PARENTSPANID]]`, or only the
//! sampling state). A context that is present but malformed makes no span at all, as
//! in Envoy (its extractor throws and the request gets a null span).
use http::{HeaderMap, HeaderName, HeaderValue};

pub static X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub static X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub static X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
pub static B3: HeaderName = HeaderName::from_static("b3");

/// A span's identity as B3 carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpanContext {
    /// The high 64 bits of a 128-bit trace id (0 for a 64-bit one).
    pub trace_id_high: u64,
    pub trace_id: u64,
    pub id: u64,
    /// 0 when the span has no parent.
    pub parent_id: u64,
    pub sampled: bool,
}

/// A received context, and whether it came in the single `b3` header (the answer is
/// written in the same form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extracted {
    pub context: SpanContext,
    pub single: bool,
}

/// The B3 context of a request is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

fn hex64(s: &[u8]) -> Result<u64, Malformed> {
    if s.len() != 16 {
        return Err(Malformed);
    }
    let s = std::str::from_utf8(s).map_err(|_| Malformed)?;
    u64::from_str_radix(s, 16).map_err(|_| Malformed)
}

/// A 64- or 128-bit trace id as (high, low).
fn trace_id(s: &[u8]) -> Result<(u64, u64), Malformed> {
    match s.len() {
        16 => Ok((0, hex64(s)?)),
        32 => Ok((hex64(&s[..16])?, hex64(&s[16..])?)),
        _ => Err(Malformed),
    }
}

fn sampling_state(s: &[u8]) -> Result<bool, Malformed> {
    match s {
        b"1" | b"d" | b"true" => Ok(true),
        b"0" | b"false" => Ok(false),
        _ => Err(Malformed),
    }
}

/// The sampling state the request carries, if any (`x-b3-flags: 1` is debug, which
/// samples; `x-b3-sampled`; else the single header's).
pub fn sampled(h: &HeaderMap) -> Result<Option<bool>, Malformed> {
    if h.get(&X_B3_FLAGS).is_some_and(|f| f.as_bytes() == b"1") {
        return Ok(Some(true));
    }
    if let Some(s) = h.get(&X_B3_SAMPLED) {
        return Ok(Some(matches!(s.as_bytes(), b"1" | b"d" | b"true")));
    }
    let Some(b3) = h.get(&B3) else {
        return Ok(None);
    };
    let v = b3.as_bytes();
    if v.len() == 1 {
        return sampling_state(v).map(Some);
    }
    let mut parts = v.split(|b| *b == b'-');
    let (_, _) = (parts.next(), parts.next());
    match parts.next() {
        Some(s) => sampling_state(s).map(Some),
        None => Ok(None),
    }
}

/// The received span context: from the multi headers when both ids are present, else
/// from the single `b3` header; `sampled` is the state to give it.
pub fn extract(h: &HeaderMap, sampled: bool) -> Result<Option<Extracted>, Malformed> {
    if let (Some(t), Some(s)) = (h.get(&X_B3_TRACE_ID), h.get(&X_B3_SPAN_ID)) {
        let (high, low) = trace_id(t.as_bytes())?;
        let id = hex64(s.as_bytes())?;
        let parent_id = match h.get(&X_B3_PARENT_SPAN_ID) {
            Some(p) => hex64(p.as_bytes())?,
            None => 0,
        };
        return Ok(Some(Extracted {
            context: SpanContext {
                trace_id_high: high,
                trace_id: low,
                id,
                parent_id,
                sampled,
            },
            single: false,
        }));
    }
    let Some(b3) = h.get(&B3) else {
        return Ok(None);
    };
    let v = b3.as_bytes();
    if v.len() == 1 {
        // Only a sampling decision.
        sampling_state(v)?;
        return Ok(None);
    }
    let mut parts = v.split(|b| *b == b'-');
    let (high, low) = trace_id(parts.next().ok_or(Malformed)?)?;
    let id = hex64(parts.next().ok_or(Malformed)?)?;
    let mut parent_id = 0;
    if let Some(s) = parts.next() {
        sampling_state(s)?;
        if let Some(p) = parts.next() {
            parent_id = hex64(p)?;
        }
    }
    if parts.next().is_some() {
        return Err(Malformed);
    }
    Ok(Some(Extracted {
        context: SpanContext {
            trace_id_high: high,
            trace_id: low,
            id,
            parent_id,
            sampled,
        },
        single: true,
    }))
}

fn push_hex(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

/// A 64-bit id as 16 lower-case hex digits.
pub fn hex_id(v: u64) -> String {
    let mut out = Vec::with_capacity(16);
    push_hex(&mut out, v);
    String::from_utf8(out).unwrap_or_default()
}

/// The trace id as B3 writes it: 32 digits when it has high bits, else 16.
pub fn hex_trace_id(c: &SpanContext) -> String {
    let mut out = Vec::with_capacity(32);
    if c.trace_id_high != 0 {
        push_hex(&mut out, c.trace_id_high);
    }
    push_hex(&mut out, c.trace_id);
    String::from_utf8(out).unwrap_or_default()
}

fn value(bytes: Vec<u8>) -> HeaderValue {
    HeaderValue::from_bytes(&bytes).unwrap_or(HeaderValue::from_static("0"))
}

/// Writes the context for the next hop, in the single header or the multi headers.
pub fn inject(h: &mut HeaderMap, c: &SpanContext, single: bool) {
    let mut trace = Vec::with_capacity(32);
    if c.trace_id_high != 0 {
        push_hex(&mut trace, c.trace_id_high);
    }
    push_hex(&mut trace, c.trace_id);
    if single {
        let mut v = trace;
        v.push(b'-');
        push_hex(&mut v, c.id);
        v.extend_from_slice(if c.sampled { b"-1" } else { b"-0" });
        if c.parent_id != 0 {
            v.push(b'-');
            push_hex(&mut v, c.parent_id);
        }
        h.insert(B3.clone(), value(v));
        return;
    }
    h.insert(X_B3_TRACE_ID.clone(), value(trace));
    let mut id = Vec::with_capacity(16);
    push_hex(&mut id, c.id);
    h.insert(X_B3_SPAN_ID.clone(), value(id));
    if c.parent_id != 0 {
        let mut p = Vec::with_capacity(16);
        push_hex(&mut p, c.parent_id);
        h.insert(X_B3_PARENT_SPAN_ID.clone(), value(p));
    }
    h.insert(
        X_B3_SAMPLED.clone(),
        HeaderValue::from_static(if c.sampled { "1" } else { "0" }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn multi_headers_are_read_and_written_back() {
        let h = headers(&[
            ("x-b3-traceid", "0000000000000001000000000000000a"),
            ("x-b3-spanid", "000000000000000b"),
            ("x-b3-sampled", "1"),
        ]);
        assert_eq!(sampled(&h), Ok(Some(true)));
        let e = extract(&h, true).unwrap().unwrap();
        assert!(!e.single);
        assert_eq!(
            e.context,
            SpanContext {
                trace_id_high: 1,
                trace_id: 10,
                id: 11,
                parent_id: 0,
                sampled: true
            }
        );
        let mut out = HeaderMap::new();
        inject(
            &mut out,
            &SpanContext {
                id: 0x5c,
                parent_id: 11,
                ..e.context
            },
            false,
        );
        assert_eq!(out["x-b3-traceid"], "0000000000000001000000000000000a");
        assert_eq!(out["x-b3-spanid"], "000000000000005c");
        assert_eq!(out["x-b3-parentspanid"], "000000000000000b");
        assert_eq!(out["x-b3-sampled"], "1");
    }

    #[test]
    fn the_single_header_is_read_and_written_back() {
        let h = headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]);
        assert_eq!(sampled(&h), Ok(Some(true)));
        let e = extract(&h, true).unwrap().unwrap();
        assert!(e.single);
        assert_eq!(e.context.id, 0xe457b5a2e4d86bd1);
        assert_eq!(e.context.parent_id, 0x05e3ac9a4f6e3b90);
        let mut out = HeaderMap::new();
        inject(
            &mut out,
            &SpanContext {
                id: 0xed3b15147e754cbc,
                parent_id: e.context.id,
                ..e.context
            },
            true,
        );
        assert_eq!(
            out["b3"],
            "80f198ee56343ba864fe8b2a57d3eff7-ed3b15147e754cbc-1-e457b5a2e4d86bd1"
        );
        assert!(!out.contains_key("x-b3-traceid"));
        // Sampling state only: no context.
        assert_eq!(extract(&headers(&[("b3", "0")]), false), Ok(None));
        assert_eq!(sampled(&headers(&[("b3", "0")])), Ok(Some(false)));
    }

    #[test]
    fn malformed_contexts_are_refused() {
        for h in [
            headers(&[("x-b3-traceid", "xyz"), ("x-b3-spanid", "000000000000000b")]),
            headers(&[("x-b3-traceid", "000000000000000a"), ("x-b3-spanid", "b")]),
            headers(&[
                ("x-b3-traceid", "000000000000000a"),
                ("x-b3-spanid", "000000000000000b"),
                ("x-b3-parentspanid", "zz"),
            ]),
            headers(&[("b3", "nope-nope")]),
            headers(&[("b3", "000000000000000a-000000000000000b-x")]),
        ] {
            assert_eq!(extract(&h, false), Err(Malformed), "{h:?}");
        }
        // A trace id without a span id is no context (a new trace starts).
        assert_eq!(
            extract(&headers(&[("x-b3-traceid", "000000000000000a")]), true),
            Ok(None)
        );
    }
}
