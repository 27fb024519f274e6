//! Request and response header mutations (`*_headers_to_add` / `*_headers_to_remove`) at
//! the route-configuration, virtual-host, route and weighted-cluster levels.
use crate::proxy::compile::{CompileError, Cx, fields};
use crate::proxy::route::format::{FormatContext, Template};
use crate::xds::pb::envoy::config::core::v3 as core_pb;
use http::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

/// Envoy's `HeaderAppendAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

/// One header to add.
#[derive(Debug, Clone)]
pub struct HeaderAdd {
    pub name: HeaderName,
    /// The value when it has no `%COMMAND%` (then `format` is `None`).
    pub value: HeaderValue,
    /// The value's substitution format, rendered per request.
    pub format: Option<Template>,
    pub action: AppendAction,
    pub keep_empty: bool,
}

/// The mutations of one level: removals first, then additions (Envoy's order, so that a
/// header can be removed and set again).
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    pub remove: Vec<HeaderName>,
    pub add: Vec<HeaderAdd>,
    /// Some value has a format, or a name is added twice: the additions are then
    /// evaluated all first and applied overwrites before appends, as Envoy does. Without
    /// either, applying them one by one gives the same result at no cost.
    staged: bool,
    /// Some format reads the request (`%REQ()%`).
    reads_request: bool,
}

/// One addition decided by [`HeaderMutations::apply`]'s first pass.
struct Staged {
    index: usize,
    overwrite: bool,
    rendered: Option<HeaderValue>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Whether applying these to a response reads the request's headers or line.
    pub fn reads_request(&self) -> bool {
        self.reads_request
    }

    /// Applies the level to `headers`: the request's (`response` false) or the
    /// response's. Removals first; then, as Envoy's header parser, every value is
    /// rendered and every condition judged against the headers as they are, and only then
    /// are overwrites applied, then appends.
    pub fn apply(&self, headers: &mut HeaderMap, cx: &FormatContext<'_>, response: bool) {
        for name in &self.remove {
            headers.remove(name);
        }
        if !self.staged {
            self.apply_in_order(headers);
            return;
        }
        let mut staged: SmallVec<[Staged; 8]> = SmallVec::new();
        let mut buf = Vec::new();
        for (index, a) in self.add.iter().enumerate() {
            let rendered = match &a.format {
                None => None,
                Some(t) => {
                    buf.clear();
                    t.render(cx, headers, response, &mut buf);
                    // Formats render header values and literals from a valid value;
                    // anything else is left out rather than sent.
                    match HeaderValue::from_bytes(&buf) {
                        Ok(v) => Some(v),
                        Err(_) => continue,
                    }
                }
            };
            let empty = rendered.as_ref().unwrap_or(&a.value).is_empty();
            if empty && !a.keep_empty {
                continue;
            }
            let overwrite = match a.action {
                AppendAction::AppendIfExistsOrAdd => false,
                AppendAction::AddIfAbsent => {
                    if headers.contains_key(&a.name) {
                        continue;
                    }
                    false
                }
                AppendAction::OverwriteIfExists => {
                    if !headers.contains_key(&a.name) {
                        continue;
                    }
                    true
                }
                AppendAction::OverwriteIfExistsOrAdd => true,
            };
            staged.push(Staged {
                index,
                overwrite,
                rendered,
            });
        }
        for pass_overwrite in [true, false] {
            for s in staged.iter_mut().filter(|s| s.overwrite == pass_overwrite) {
                let a = &self.add[s.index];
                let v = s.rendered.take().unwrap_or_else(|| a.value.clone());
                if s.overwrite {
                    headers.insert(a.name.clone(), v);
                } else {
                    headers.append(a.name.clone(), v);
                }
            }
        }
    }

    /// Literal values, each name once: one pass, no rendering.
    fn apply_in_order(&self, headers: &mut HeaderMap) {
        for a in &self.add {
            if a.value.is_empty() && !a.keep_empty {
                continue;
            }
            match a.action {
                AppendAction::AppendIfExistsOrAdd => {
                    headers.append(a.name.clone(), a.value.clone());
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(&a.name) {
                        headers.insert(a.name.clone(), a.value.clone());
                    }
                }
                AppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(a.name.clone(), a.value.clone());
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(&a.name) {
                        headers.insert(a.name.clone(), a.value.clone());
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
                let mut literal = Vec::new();
                let format =
                    Template::parse(raw, &mut literal).map_err(|e| cx.err("header.value", e.0))?;
                let value = match &format {
                    Some(_) => HeaderValue::from_static(""),
                    None => HeaderValue::from_bytes(&literal)
                        .map_err(|_| cx.err("header.value", "invalid header value"))?,
                };
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
                out.staged |= format.is_some()
                    || out
                        .add
                        .iter()
                        .any(|earlier: &HeaderAdd| earlier.name == name);
                out.reads_request |= format.as_ref().is_some_and(Template::reads_request);
                out.add.push(HeaderAdd {
                    name,
                    value,
                    format,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(json: serde_json::Value) -> core_pb::HeaderValueOption {
        crate::xds::json::from_json(&json).unwrap()
    }

    fn test_cx() -> FormatContext<'static> {
        FormatContext {
            remote: "10.1.2.3:40000".parse().unwrap(),
            direct: "10.1.2.3:40000".parse().unwrap(),
            local: "127.0.0.1:8080".parse().unwrap(),
            tls: None,
            version: http::Version::HTTP_11,
            started: tokio::time::Instant::now(),
            cluster: Some("backend"),
            cluster_observability_name: None,
            upstream: None,
            request: None,
            line: None,
            status: None,
        }
    }

    fn compile(adds: &[serde_json::Value]) -> Result<HeaderMutations, CompileError> {
        let adds: Vec<_> = adds.iter().cloned().map(opt).collect();
        HeaderMutations::compile(
            &mut Cx::new("route_configuration", "t"),
            "request_headers_to_add",
            &adds,
            "request_headers_to_remove",
            &[],
        )
    }

    fn values(h: &HeaderMap, k: &str) -> Vec<String> {
        h.get_all(k)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn formats_render_per_request_and_empty_values_are_left_out() {
        use serde_json::json;
        let m = compile(&[
            json!({"header": {"key": "x-client", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}),
            json!({"header": {"key": "x-both", "value": "ip=%DOWNSTREAM_REMOTE_ADDRESS% via %UPSTREAM_CLUSTER%"}}),
            // No upstream yet on a request: empty, so left out ...
            json!({"header": {"key": "x-up", "value": "%UPSTREAM_HOST%"}}),
            // ... unless kept.
            json!({"header": {"key": "x-up-kept", "value": "%UPSTREAM_HOST%"}, "keep_empty_value": true}),
            // Formats read the headers as they were before this level.
            json!({"header": {"key": "x-copy", "value": "%REQ(x-orig)%"}}),
            json!({"header": {"key": "x-orig", "value": "new"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}),
            json!({"header": {"key": "x-pct", "value": "100%%"}}),
        ])
        .unwrap();
        assert!(m.add[0].format.is_some());
        assert!(m.add[6].format.is_none(), "a literal stays a literal");
        let mut h = HeaderMap::new();
        h.insert("x-orig", HeaderValue::from_static("old"));
        m.apply(&mut h, &test_cx(), false);
        assert_eq!(values(&h, "x-client"), ["10.1.2.3"]);
        assert_eq!(values(&h, "x-both"), ["ip=10.1.2.3:40000 via backend"]);
        assert!(values(&h, "x-up").is_empty());
        assert_eq!(values(&h, "x-up-kept"), [""]);
        assert_eq!(values(&h, "x-copy"), ["old"]);
        assert_eq!(values(&h, "x-orig"), ["new"]);
        assert_eq!(values(&h, "x-pct"), ["100%"]);
    }

    #[test]
    fn one_level_overwrites_before_it_appends() {
        use serde_json::json;
        let m = compile(&[
            json!({"header": {"key": "x-dup", "value": "1"}}),
            json!({"header": {"key": "x-dup", "value": "2"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}),
            json!({"header": {"key": "x-absent", "value": "a"}, "append_action": "ADD_IF_ABSENT"}),
            json!({"header": {"key": "x-absent", "value": "b"}, "append_action": "ADD_IF_ABSENT"}),
        ])
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-dup", HeaderValue::from_static("0"));
        m.apply(&mut h, &test_cx(), false);
        assert_eq!(values(&h, "x-dup"), ["2", "1"]);
        assert_eq!(values(&h, "x-absent"), ["a", "b"]);
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
        m.apply(&mut h, &test_cx(), false);
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
    fn rejects_host_and_formatters() {
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
            &[opt(json!({"header": {"key": "a", "value": "%NOPE%"}}))],
            "y",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.path, "x[0].header.value");
        assert_eq!(e.message, "Not supported field in StreamInfo: NOPE");
        let ok = HeaderMutations::compile(
            cx,
            "x",
            &[opt(json!({"header": {"key": "a", "value": "100%%"}}))],
            "y",
            &[],
        )
        .unwrap();
        assert_eq!(ok.add[0].value, "100%");
    }
}
