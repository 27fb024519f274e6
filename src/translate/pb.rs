//! Small constructors for the protobuf pieces every translator file needs.
use crate::xds::pb::envoy::config::core::v3 as core;
use crate::xds::pb::envoy::r#type::matcher::v3 as matcher;
use crate::xds::pb::envoy::r#type::v3 as types;
use crate::xds::pb::google::protobuf as wkt;
use prost::{Message, Name};
use std::collections::BTreeMap;

/// Packs a message into an `Any`.
pub fn any<M: Message + Name>(m: &M) -> wkt::Any {
    wkt::Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// A protobuf duration.
pub fn duration(d: std::time::Duration) -> wkt::Duration {
    wkt::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf duration of whole seconds.
pub fn seconds(s: u64) -> wkt::Duration {
    duration(std::time::Duration::from_secs(s))
}

/// `google.protobuf.UInt32Value`.
pub fn u32v(value: u32) -> wkt::UInt32Value {
    wkt::UInt32Value { value }
}

/// `google.protobuf.UInt64Value`.
pub fn u64v(value: u64) -> wkt::UInt64Value {
    wkt::UInt64Value { value }
}

/// `google.protobuf.BoolValue`.
pub fn boolv(value: bool) -> wkt::BoolValue {
    wkt::BoolValue { value }
}

/// A string `google.protobuf.Value`.
pub fn string_value(s: &str) -> wkt::Value {
    wkt::Value {
        kind: Some(wkt::value::Kind::StringValue(s.to_string())),
    }
}

/// A struct `google.protobuf.Value` of string fields.
pub fn string_map_value(map: &BTreeMap<String, String>) -> wkt::Value {
    wkt::Value {
        kind: Some(wkt::value::Kind::StructValue(wkt::Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), string_value(v)))
                .collect(),
        })),
    }
}

/// A `FractionalPercent` from a percentage that may have decimals (`12.5`), in
/// millionths the way Istio writes it.
pub fn percent_of_million(value: f64) -> types::FractionalPercent {
    types::FractionalPercent {
        numerator: (value * 10_000.0).clamp(0.0, 1_000_000.0) as u32,
        denominator: types::fractional_percent::DenominatorType::Million as i32,
    }
}

/// A `FractionalPercent` from an integer percentage.
pub fn percent_of_hundred(value: u32) -> types::FractionalPercent {
    types::FractionalPercent {
        numerator: value.min(100),
        denominator: types::fractional_percent::DenominatorType::Hundred as i32,
    }
}

/// A configuration source meaning "over the ADS stream this proxy already has", with no
/// initial fetch timeout: Istio's setting for RDS, EDS and SDS.
pub fn ads_config_source() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        initial_fetch_timeout: Some(seconds(0)),
        resource_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// A socket address.
pub fn socket_address(address: &str, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: address.to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// A Unix domain socket address.
pub fn pipe_address(path: &str) -> core::Address {
    core::Address {
        address: Some(core::address::Address::Pipe(core::Pipe {
            path: path.to_string(),
            mode: 0,
        })),
    }
}

/// An exact string matcher.
pub fn exact(s: &str) -> matcher::StringMatcher {
    matcher::StringMatcher {
        match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(s.to_string())),
        ignore_case: false,
    }
}

/// A RE2 regex matcher.
pub fn regex(s: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher {
        regex: s.to_string(),
        ..Default::default()
    }
}

/// A header to add, replacing (`append` false) or appending to existing values.
pub fn header_value_option(key: &str, value: &str, append: bool) -> core::HeaderValueOption {
    use core::header_value_option::HeaderAppendAction;
    core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: if append {
            HeaderAppendAction::AppendIfExistsOrAdd as i32
        } else {
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        },
        ..Default::default()
    }
}
