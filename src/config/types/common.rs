//! Pieces shared by several Istio kinds: enums as Istio spells them, `StringMatch`,
//! `Percent`, `PortSelector`, and the helpers that enforce protobuf `oneof`s.
use serde::{Deserialize, Deserializer, Serialize, de};
use std::fmt;

/// Defines a protobuf enum that reads from Istio's names (`ROUND_ROBIN`) or, as protobuf
/// JSON also allows, from the enum's numbers.
macro_rules! istio_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $number:literal => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// The names Istio accepts, in protobuf order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The name as Istio spells it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            /// The protobuf enum number.
            pub fn number(self) -> i32 {
                match self { $($name::$variant => $number,)+ }
            }

            /// The value with this Istio name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($text => Some($name::$variant),)+ _ => None }
            }

            /// The value with this protobuf number.
            pub fn from_number(number: i64) -> Option<Self> {
                match number { $($number => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::config::types::common::deserialize_enum(
                    deserializer,
                    stringify!($name),
                    $name::NAMES,
                    $name::from_name,
                    $name::from_number,
                )
            }
        }
    };
}
pub(crate) use istio_enum;

/// Reads an enum from its name or number, with a did-you-mean hint for near misses.
pub(crate) fn deserialize_enum<'de, D, T>(
    deserializer: D,
    type_name: &'static str,
    names: &'static [&'static str],
    from_name: fn(&str) -> Option<T>,
    from_number: fn(i64) -> Option<T>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct Visitor<T> {
        type_name: &'static str,
        names: &'static [&'static str],
        from_name: fn(&str) -> Option<T>,
        from_number: fn(i64) -> Option<T>,
    }
    impl<T> de::Visitor<'_> for Visitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "one of {}", quoted_list(self.names))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.from_name)(v).ok_or_else(|| {
                E::custom(match nearest(v, self.names) {
                    Some(near) => {
                        format!("unknown {} `{v}`; did you mean `{near}`?", self.type_name)
                    }
                    None => format!(
                        "unknown {} `{v}`; expected one of {}",
                        self.type_name,
                        quoted_list(self.names)
                    ),
                })
            })
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            (self.from_number)(v).ok_or_else(|| {
                E::custom(format!(
                    "{} has no value numbered {v}; expected one of {}",
                    self.type_name,
                    quoted_list(self.names)
                ))
            })
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            match i64::try_from(v) {
                Ok(v) => self.visit_i64(v),
                Err(_) => Err(E::custom(format!(
                    "{} has no value numbered {v}",
                    self.type_name
                ))),
            }
        }
    }
    deserializer.deserialize_any(Visitor {
        type_name,
        names,
        from_name,
        from_number,
    })
}

/// `a`, `b`, `c` with backticks, for messages.
pub fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The candidate closest to `input`, if it is close enough to be a plausible typo.
///
/// Case and `_`/`-` are ignored first (so `credential_name` finds `credentialName` and
/// `round_robin` finds `ROUND_ROBIN`), then a small edit distance is allowed.
pub fn nearest<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let want = norm(input);
    if let Some(exact) = candidates.iter().find(|c| norm(c) == want) {
        return Some(exact);
    }
    let limit = (want.chars().count() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(&want, &norm(c)), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Fails when more than one member of a protobuf `oneof` is set.
pub(crate) fn check_oneof<E: de::Error>(members: &[(&str, bool)]) -> Result<(), E> {
    let set: Vec<&str> = members
        .iter()
        .filter(|(_, s)| *s)
        .map(|(n, _)| *n)
        .collect();
    if set.len() > 1 {
        let all: Vec<&str> = members.iter().map(|(n, _)| *n).collect();
        return Err(E::custom(format!(
            "only one of {} may be set, found {}",
            quoted_list(&all),
            quoted_list(&set)
        )));
    }
    Ok(())
}

/// Istio's `StringMatch`: exactly one of `exact`, `prefix`, `regex`.
///
/// An empty `{}` is allowed by Istio: for headers and query parameters it matches when
/// the header or parameter is present at all.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// The whole value equals this string.
    Exact(String),
    /// The value starts with this string.
    Prefix(String),
    /// The whole value matches this RE2 regular expression.
    Regex(String),
    /// `{}`: no condition on the value (presence for headers and query parameters).
    #[serde(rename = "present")]
    Empty,
}

impl StringMatch {
    /// The YAML name of the member that is set (`exact`, `prefix`, `regex`), if any.
    pub fn member(&self) -> Option<&'static str> {
        match self {
            StringMatch::Exact(_) => Some("exact"),
            StringMatch::Prefix(_) => Some("prefix"),
            StringMatch::Regex(_) => Some("regex"),
            StringMatch::Empty => None,
        }
    }
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            exact: Option<String>,
            prefix: Option<String>,
            regex: Option<String>,
        }
        let f = Fields::deserialize(deserializer)?;
        check_oneof::<D::Error>(&[
            ("exact", f.exact.is_some()),
            ("prefix", f.prefix.is_some()),
            ("regex", f.regex.is_some()),
        ])?;
        Ok(match (f.exact, f.prefix, f.regex) {
            (Some(v), _, _) => StringMatch::Exact(v),
            (_, Some(v), _) => StringMatch::Prefix(v),
            (_, _, Some(v)) => StringMatch::Regex(v),
            _ => StringMatch::Empty,
        })
    }
}

/// A port protocol as Istio names it (`HTTP`, `HTTPS`, `GRPC`, ...), read
/// case-insensitively as Istio does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 (and HTTP/2 with prior knowledge).
    Http,
    /// HTTP over TLS.
    Https,
    /// HTTP/2.
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// gRPC-Web.
    GrpcWeb,
    /// Explicit HTTP proxy.
    HttpProxy,
    /// Opaque TCP.
    Tcp,
    /// TLS, routed by SNI.
    Tls,
    /// UDP.
    Udp,
    /// MongoDB.
    Mongo,
    /// Redis.
    Redis,
    /// MySQL.
    Mysql,
}

impl Protocol {
    /// Protocol names Istio accepts.
    pub const NAMES: &'static [&'static str] = &[
        "HTTP",
        "HTTPS",
        "HTTP2",
        "GRPC",
        "GRPC-WEB",
        "HTTP_PROXY",
        "TCP",
        "TLS",
        "UDP",
        "MONGO",
        "REDIS",
        "MYSQL",
    ];

    /// Reads a protocol name, ignoring case.
    pub fn parse(name: &str) -> Option<Protocol> {
        Some(match name.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "https" => Protocol::Https,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "http_proxy" => Protocol::HttpProxy,
            "tcp" => Protocol::Tcp,
            "tls" => Protocol::Tls,
            "udp" => Protocol::Udp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            _ => return None,
        })
    }

    /// Protocols carried over HTTP.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Http2
                | Protocol::Grpc
                | Protocol::GrpcWeb
                | Protocol::HttpProxy
        )
    }

    /// Protocols carried over TLS (`HTTPS`, `TLS`).
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    /// Protocols proxied as TCP streams.
    pub fn is_tcp(self) -> bool {
        matches!(
            self,
            Protocol::Tcp
                | Protocol::Https
                | Protocol::Tls
                | Protocol::Mongo
                | Protocol::Redis
                | Protocol::Mysql
        )
    }
}

/// A percentage as a double, `{value: 12.5}`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    /// Percentage in `[0.0, 100.0]`.
    #[serde(default)]
    pub value: f64,
}

/// Selects a port of a service by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// Port number.
    #[serde(default)]
    pub number: u32,
}

/// Bytes written as base64 (protobuf JSON's `bytes`, Kubernetes Secret `data`).
pub(crate) mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        decode(&text).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// Decodes standard or URL-safe base64, padded or not, ignoring line breaks.
    pub fn decode(text: &str) -> Result<Vec<u8>, String> {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let mut first_error = None;
        for engine in engines {
            match engine.decode(&compact) {
                Ok(bytes) => return Ok(bytes),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(match first_error {
            Some(e) => format!("invalid base64: {e}"),
            None => "invalid base64".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    istio_enum! {
        /// Test enum.
        Color { Red = 0 => "RED", DarkBlue = 3 => "DARK_BLUE", }
    }

    fn enum_from(v: serde_json::Value) -> Result<Color, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn enums_read_names_and_numbers() {
        assert_eq!(enum_from(serde_json::json!("RED")), Ok(Color::Red));
        assert_eq!(enum_from(serde_json::json!(3)), Ok(Color::DarkBlue));
        assert_eq!(Color::DarkBlue.number(), 3);
        assert_eq!(
            enum_from(serde_json::json!("dark_blue")),
            Err("unknown Color `dark_blue`; did you mean `DARK_BLUE`?".into())
        );
        assert_eq!(
            enum_from(serde_json::json!("GREEN")),
            Err("unknown Color `GREEN`; expected one of `RED`, `DARK_BLUE`".into())
        );
        assert_eq!(
            enum_from(serde_json::json!(7)),
            Err("Color has no value numbered 7; expected one of `RED`, `DARK_BLUE`".into())
        );
        assert!(enum_from(serde_json::json!(true)).is_err());
    }

    #[test]
    fn string_match_is_a_oneof() {
        let ok: StringMatch = serde_json::from_value(serde_json::json!({"prefix": "/a"})).unwrap();
        assert_eq!(ok, StringMatch::Prefix("/a".into()));
        let empty: StringMatch = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(empty, StringMatch::Empty);
        let two =
            serde_json::from_value::<StringMatch>(serde_json::json!({"exact": "a", "regex": "b"}))
                .unwrap_err();
        assert_eq!(
            two.to_string(),
            "only one of `exact`, `prefix`, `regex` may be set, found `exact`, `regex`"
        );
        assert!(
            serde_json::from_value::<StringMatch>(serde_json::json!({"exactly": "a"})).is_err()
        );
    }

    #[test]
    fn protocols_ignore_case() {
        assert_eq!(Protocol::parse("http"), Some(Protocol::Http));
        assert_eq!(Protocol::parse("GRPC-Web"), Some(Protocol::GrpcWeb));
        assert_eq!(Protocol::parse("QUIC"), None);
        assert!(Protocol::Https.is_tls() && Protocol::Https.is_tcp() && !Protocol::Https.is_http());
        assert!(Protocol::Grpc.is_http() && !Protocol::Grpc.is_tcp());
    }

    #[test]
    fn nearest_finds_plausible_typos_only() {
        let names = ["hosts", "gateways", "http", "tls", "tcp", "exportTo"];
        assert_eq!(nearest("hots", &names), Some("hosts"));
        assert_eq!(nearest("export_to", &names), Some("exportTo"));
        assert_eq!(nearest("Gateway", &names), Some("gateways"));
        assert_eq!(nearest("completelydifferent", &names), None);
    }

    #[test]
    fn base64_accepts_common_forms() {
        assert_eq!(base64_bytes::decode("aGVsbG8="), Ok(b"hello".to_vec()));
        assert_eq!(base64_bytes::decode("aGVsbG8"), Ok(b"hello".to_vec()));
        assert_eq!(base64_bytes::decode("aGVs\nbG8="), Ok(b"hello".to_vec()));
        assert!(base64_bytes::decode("!!!").is_err());
    }
}
