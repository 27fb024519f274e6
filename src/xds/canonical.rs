//! Deterministic protobuf encoding.
//!
//! prost writes a map field in the iteration order of its `HashMap`, and two maps with
//! equal content iterate differently. Envoy resources hold maps (metadata `Struct`s,
//! `typed_per_filter_config`, extension options), so the same translation encoded twice
//! gives different bytes, and content hashes (delta xDS versions) would see a change
//! where there is none: every push would resend every resource.
//!
//! [`canonicalize`] rewrites an encoded message with the entries of every map sorted,
//! recursing into nested messages and into `Any` values whose type the descriptor pool
//! knows. It works on the wire format with the message's descriptor, without decoding
//! into dynamic messages, so it costs about one copy of the bytes.
use prost_reflect::{Kind, MessageDescriptor};

/// The canonical encoding of `bytes`, a message of type `desc`. Malformed input is
/// returned unchanged (it is hashed and sent as it is).
pub fn canonicalize(desc: &MessageDescriptor, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    match walk(desc, bytes, &mut out, 0) {
        Ok(()) => out,
        Err(()) => bytes.to_vec(),
    }
}

/// The canonical encoding of a message known by its fully qualified name; `bytes`
/// unchanged if the pool does not know the type.
pub fn canonicalize_named(full_name: &str, bytes: &[u8]) -> Vec<u8> {
    match crate::xds::json::pool().get_message_by_name(full_name) {
        Some(desc) => canonicalize(&desc, bytes),
        None => bytes.to_vec(),
    }
}

/// Nesting beyond this is left as it is (Envoy's own limit is far lower).
const MAX_DEPTH: usize = 100;

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, ()> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or(())?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(())
}

fn write_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One field occurrence: its tag bytes and its payload (for LEN, without the length).
struct Field<'a> {
    number: u32,
    wire: u64,
    tag: &'a [u8],
    payload: &'a [u8],
}

fn next_field<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Field<'a>, ()> {
    let start = *pos;
    let key = read_varint(buf, pos)?;
    let tag = &buf[start..*pos];
    let number = u32::try_from(key >> 3).map_err(|_| ())?;
    let wire = key & 7;
    let payload_start = *pos;
    match wire {
        VARINT => {
            read_varint(buf, pos)?;
        }
        FIXED64 => *pos += 8,
        FIXED32 => *pos += 4,
        LEN => {
            let len = usize::try_from(read_varint(buf, pos)?).map_err(|_| ())?;
            let payload_start = *pos;
            *pos = pos.checked_add(len).ok_or(())?;
            if *pos > buf.len() {
                return Err(());
            }
            return Ok(Field {
                number,
                wire,
                tag,
                payload: &buf[payload_start..*pos],
            });
        }
        _ => return Err(()),
    }
    if *pos > buf.len() {
        return Err(());
    }
    Ok(Field {
        number,
        wire,
        tag,
        payload: &buf[payload_start..*pos],
    })
}

fn emit_len(tag: &[u8], payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(tag);
    write_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// A map field's entries being gathered: (field number, tag, encoded entries).
type PendingMap<'a> = (u32, &'a [u8], Vec<Vec<u8>>);

fn walk(desc: &MessageDescriptor, buf: &[u8], out: &mut Vec<u8>, depth: usize) -> Result<(), ()> {
    if depth > MAX_DEPTH {
        out.extend_from_slice(buf);
        return Ok(());
    }
    let is_any = desc.full_name() == "google.protobuf.Any";
    let mut any_type: Option<&[u8]> = None;
    let mut pos = 0;
    // A map field's entries, gathered to be written sorted where the map's first entry was.
    let mut map: Option<PendingMap> = None;
    while pos < buf.len() {
        let f = next_field(buf, &mut pos)?;
        if let Some((number, tag, entries)) = map.take() {
            if number == f.number && f.wire == LEN {
                map = Some((number, tag, entries));
            } else {
                flush_map(tag, entries, out);
            }
        }
        if f.wire != LEN {
            out.extend_from_slice(f.tag);
            out.extend_from_slice(f.payload);
            continue;
        }
        if is_any {
            match f.number {
                1 => any_type = Some(f.payload),
                2 => {
                    let inner = any_type
                        .and_then(|t| std::str::from_utf8(t).ok())
                        .map(|t| t.rsplit('/').next().unwrap_or(t))
                        .and_then(|name| desc.parent_pool().get_message_by_name(name));
                    if let Some(inner) = inner {
                        let mut value = Vec::with_capacity(f.payload.len());
                        walk(&inner, f.payload, &mut value, depth + 1)?;
                        emit_len(f.tag, &value, out);
                        continue;
                    }
                }
                _ => {}
            }
            emit_len(f.tag, f.payload, out);
            continue;
        }
        let Some(field) = desc.get_field(f.number) else {
            // Unknown to this descriptor: kept as it is.
            emit_len(f.tag, f.payload, out);
            continue;
        };
        let Kind::Message(child) = field.kind() else {
            // Strings, bytes, packed scalars.
            emit_len(f.tag, f.payload, out);
            continue;
        };
        let mut value = Vec::with_capacity(f.payload.len());
        walk(&child, f.payload, &mut value, depth + 1)?;
        if field.is_map() {
            match &mut map {
                Some((_, _, entries)) => entries.push(value),
                None => map = Some((f.number, f.tag, vec![value])),
            }
        } else {
            emit_len(f.tag, &value, out);
        }
    }
    if let Some((_, tag, entries)) = map {
        flush_map(tag, entries, out);
    }
    Ok(())
}

/// Writes a map's entries sorted. An entry encodes its key first, so sorting the encoded
/// entries orders them by key.
fn flush_map(tag: &[u8], mut entries: Vec<Vec<u8>>, out: &mut Vec<u8>) {
    entries.sort_unstable();
    for e in &entries {
        emit_len(tag, e, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::pb::envoy::config::cluster::v3::Cluster;
    use crate::xds::pb::envoy::config::core::v3::Metadata;
    use crate::xds::pb::google::protobuf::{Struct, Value, value};
    use prost::Message;
    use std::collections::HashMap;

    fn cluster_with_metadata(keys: &[&str]) -> Cluster {
        let mut fields = HashMap::new();
        for k in keys {
            fields.insert(
                k.to_string(),
                Value {
                    kind: Some(value::Kind::StringValue(format!("value of {k}"))),
                },
            );
        }
        let mut filter_metadata = HashMap::new();
        filter_metadata.insert(
            "istio".to_string(),
            Struct {
                fields: fields.clone(),
            },
        );
        filter_metadata.insert("other".to_string(), Struct { fields });
        Cluster {
            name: "c".into(),
            metadata: Some(Metadata {
                filter_metadata,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn equal_messages_encode_to_equal_bytes() {
        let keys: Vec<String> = (0..20).map(|i| format!("key{i}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let desc = crate::xds::json::pool()
            .get_message_by_name("envoy.config.cluster.v3.Cluster")
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut raw = std::collections::HashSet::new();
        for _ in 0..20 {
            // A new map each time: a new iteration order.
            let bytes = cluster_with_metadata(&keys).encode_to_vec();
            raw.insert(bytes.clone());
            let canonical = canonicalize(&desc, &bytes);
            // Same content: decodes to the same message.
            assert_eq!(
                Cluster::decode(&canonical[..]).unwrap(),
                cluster_with_metadata(&keys)
            );
            seen.insert(canonical);
        }
        assert!(raw.len() > 1, "prost's map order was expected to vary");
        assert_eq!(seen.len(), 1, "canonical bytes differ");
    }

    #[test]
    fn maps_inside_any_are_sorted_too() {
        use crate::xds::pb::envoy::config::route::v3::{Route, VirtualHost};
        use crate::xds::pb::google::protobuf::Any;
        let desc = crate::xds::json::pool()
            .get_message_by_name("envoy.config.route.v3.VirtualHost")
            .unwrap();
        let make = || {
            let mut per_filter = HashMap::new();
            for i in 0..10 {
                per_filter.insert(
                    format!("filter{i}"),
                    Any {
                        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                        value: cluster_with_metadata(&["a", "b", "c", "d"]).encode_to_vec(),
                    },
                );
            }
            VirtualHost {
                name: "vh".into(),
                routes: vec![Route {
                    name: "r".into(),
                    typed_per_filter_config: per_filter,
                    ..Default::default()
                }],
                ..Default::default()
            }
        };
        let all: std::collections::HashSet<Vec<u8>> = (0..10)
            .map(|_| canonicalize(&desc, &make().encode_to_vec()))
            .collect();
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn malformed_input_is_kept() {
        let desc = crate::xds::json::pool()
            .get_message_by_name("envoy.config.cluster.v3.Cluster")
            .unwrap();
        let bad = [0x0a, 0x10, 0x01];
        assert_eq!(canonicalize(&desc, &bad), bad.to_vec());
    }
}
