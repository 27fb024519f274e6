//! Request and response header mutations (`*_headers_to_add` / `*_headers_to_remove`) at
//! the route-configuration, virtual-host, route and weighted-cluster levels.
use crate::proxy::compile::{CompileError, Cx, fields};
use crate::proxy::route::format::{FormatContext, Parsed, Side, Template};
use crate::xds::pb::envoy::config::core::v3 as core_pb;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;

/// Envoy's `HeaderAppendAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

/// A header value to add: fixed, or rendered per request from `%COMMAND%` formatters.
#[derive(Debug, Clone)]
pub enum AddValue {
    Literal(HeaderValue),
    Formatted(Arc<Template>),
}

/// One header to add.
#[derive(Debug, Clone)]
pub struct HeaderAdd {
    pub name: HeaderName,
    pub value: AddValue,
    pub action: AppendAction,
    pub keep_empty: bool,
}

/// The mutations of one level: removals first, then additions (Envoy's order, so that a
/// header can be removed and set again).
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    pub remove: Vec<HeaderName>,
    pub add: Vec<HeaderAdd>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Applies the level; formatted values read `fmt` and the headers as they are when
    /// the level starts.
    pub fn apply(&self, headers: &mut HeaderMap, fmt: &FormatContext<'_>) {
        for name in &self.remove {
            headers.remove(name);
        }
        for a in &self.add {
            let rendered;
            let value = match &a.value {
                AddValue::Literal(v) => v,
                AddValue::Formatted(t) => match t.render(fmt, headers) {
                    Some(v) => {
                        rendered = v;
                        &rendered
                    }
                    None => continue,
                },
            };
            if value.is_empty() && !a.keep_empty {
                continue;
            }
            match a.action {
                AppendAction::AppendIfExistsOrAdd => {
                    headers.append(a.name.clone(), value.clone());
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(&a.name) {
                        headers.insert(a.name.clone(), value.clone());
                    }
                }
                AppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(a.name.clone(), value.clone());
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(&a.name) {
                        headers.insert(a.name.clone(), value.clone());
                    }
                }
            }
        }
    }

    /// Compiles one level. `adds_field`/`removes_field` name the fields for errors.
    pub(crate) fn compile(
        cx: &mut Cx,
        adds_field: &str,
        adds: &[core_pb::HeaderValueOption],
        removes_field: &str,
        removes: &[String],
    ) -> Result<HeaderMutations, CompileError> {
        // `request_headers_to_add` or `response_headers_to_add`.
        let side = if adds_field.starts_with("request") {
            Side::Request
        } else {
            Side::Response
        };
        let mut out = HeaderMutations::default();
        for (i, r) in removes.iter().enumerate() {
            let field = format!("{removes_field}[{i}]");
            let name = header_name(cx, &field, r)?;
            out.remove.push(name);
        }
        for (i, a) in adds.iter().enumerate() {
            cx.at(format_args!("{adds_field}[{i}]"), |cx| {
                fields!(
                    cx,
                    a,
                    core_pb::HeaderValueOption {
                        supported: [header, append, append_action, keep_empty_value],
                        ignored: [],
                        unsupported: [],
                    }
                );
                let h = a
                    .header
                    .as_ref()
                    .ok_or_else(|| cx.err("header", "required"))?;
                let name = cx.at("header", |cx| header_name(cx, "key", &h.key))?;
                let raw: &[u8] = if !h.raw_value.is_empty() {
                    &h.raw_value
                } else {
                    h.value.as_bytes()
                };
                let value = header_value(cx, raw, side)?;
                use core_pb::header_value_option::HeaderAppendAction as A;
                #[allow(deprecated)]
                let action = match &a.append {
                    Some(b) if b.value => AppendAction::AppendIfExistsOrAdd,
                    Some(_) => AppendAction::OverwriteIfExistsOrAdd,
                    None => match A::try_from(a.append_action) {
                        Ok(A::AppendIfExistsOrAdd) => AppendAction::AppendIfExistsOrAdd,
                        Ok(A::AddIfAbsent) => AppendAction::AddIfAbsent,
                        Ok(A::OverwriteIfExistsOrAdd) => AppendAction::OverwriteIfExistsOrAdd,
                        Ok(A::OverwriteIfExists) => AppendAction::OverwriteIfExists,
                        Err(_) => return Err(cx.err("append_action", "unknown value")),
                    },
                };
                out.add.push(HeaderAdd {
                    name,
                    value,
                    action,
                    keep_empty: a.keep_empty_value,
                });
                Ok(())
            })?;
        }
        Ok(out)
    }
}

/// Header names Envoy refuses to mutate through headers_to_add/remove.
fn header_name(cx: &Cx, field: &str, name: &str) -> Result<HeaderName, CompileError> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with(':') || lower == "host" {
        return Err(cx.err(
            field,
            format!("{name:?}: pseudo-headers and host may not be modified"),
        ));
    }
    HeaderName::from_bytes(lower.as_bytes())
        .map_err(|_| cx.err(field, format!("invalid header name {name:?}")))
}

/// A header value, with Envoy's `%COMMAND%` formatters parsed (`%%` is a literal `%`).
fn header_value(cx: &Cx, raw: &[u8], side: Side) -> Result<AddValue, CompileError> {
    let invalid = || cx.err("header.value", "invalid header value");
    if !raw.contains(&b'%') {
        return HeaderValue::from_bytes(raw)
            .map(AddValue::Literal)
            .map_err(|_| invalid());
    }
    let text = std::str::from_utf8(raw).map_err(|_| invalid())?;
    match Template::parse(text, side).map_err(|e| cx.err("header.value", e.0))? {
        Parsed::Literal(s) => HeaderValue::from_str(&s)
            .map(AddValue::Literal)
            .map_err(|_| invalid()),
        Parsed::Formatted(t) => Ok(AddValue::Formatted(Arc::new(t))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(json: serde_json::Value) -> core_pb::HeaderValueOption {
        crate::xds::json::from_json(&json).unwrap()
    }

    #[test]
    fn append_actions_like_envoy() {
        use serde_json::json;
        let adds = vec![
            opt(json!({"header": {"key": "a", "value": "1"}})),
            opt(json!({"header": {"key": "b", "value": "1"}, "append_action": "ADD_IF_ABSENT"})),
            opt(
                json!({"header": {"key": "c", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}),
            ),
            opt(
                json!({"header": {"key": "d", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS"}),
            ),
            opt(
                json!({"header": {"key": "e", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS"}),
            ),
            opt(json!({"header": {"key": "f", "value": ""}})),
            opt(json!({"header": {"key": "g", "value": ""}, "keep_empty_value": true})),
            opt(json!({"header": {"key": "h", "value": "new"}, "append": false})),
            opt(json!({"header": {"key": "r", "value": "set"}})),
        ];
        let m = HeaderMutations::compile(
            &mut Cx::new("route_configuration", "t"),
            "request_headers_to_add",
            &adds,
            "request_headers_to_remove",
            &["r".to_string()],
        )
        .unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("a", "0"),
            ("b", "0"),
            ("c", "0"),
            ("d", "0"),
            ("h", "old"),
            ("r", "gone"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let peer = crate::proxy::http::request::Peer {
            remote: "127.0.0.1:1".parse().unwrap(),
            local: "127.0.0.1:2".parse().unwrap(),
            remote_ip: HeaderValue::from_static("127.0.0.1"),
            xff_ip: HeaderValue::from_static("127.0.0.1"),
            https: false,
        };
        let fmt = FormatContext {
            peer: &peer,
            tls: None,
            version: http::Version::HTTP_11,
            upstream: None,
        };
        m.apply(&mut h, &fmt);
        let all = |k: &str| -> Vec<String> {
            h.get_all(k)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(all("a"), ["0", "1"]);
        assert_eq!(all("b"), ["0"]);
        assert_eq!(all("c"), ["1"]);
        assert_eq!(all("d"), ["1"]);
        assert!(all("e").is_empty());
        assert!(all("f").is_empty());
        assert_eq!(all("g"), [""]);
        assert_eq!(all("h"), ["new"]);
        assert_eq!(all("r"), ["set"]);
    }

    #[test]
    fn rejects_host_and_unknown_formatters() {
        use serde_json::json;
        let cx = &mut Cx::new("route_configuration", "t");
        let e = HeaderMutations::compile(
            cx,
            "x",
            &[opt(json!({"header": {"key": "Host", "value": "a"}}))],
            "y",
            &[],
        )
        .unwrap_err();
        assert!(e.message.contains("may not be modified"), "{e}");
        let e = HeaderMutations::compile(
            cx,
            "x",
            &[opt(
                json!({"header": {"key": "a", "value": "%NOT_A_COMMAND%"}}),
            )],
            "y",
            &[],
        )
        .unwrap_err();
        assert!(e.message.contains("NOT_A_COMMAND"), "{e}");
        let ok = HeaderMutations::compile(
            cx,
            "x",
            &[opt(json!({"header": {"key": "a", "value": "100%%"}}))],
            "y",
            &[],
        )
        .unwrap();
        assert!(matches!(&ok.add[0].value, AddValue::Literal(v) if v == "100%"));
    }
}
