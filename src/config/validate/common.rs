//! Checks shared by several kinds: host names, ports, labels, regexes (RE2's dialect),
//! durations, header names and values, `exportTo`.
use crate::config::diag::{Diagnostic, Severity};
use crate::config::duration::Duration;
use crate::config::types::{Kind, Resource};
use regex_syntax::ast::{self, Ast};
use std::net::IpAddr;

/// Longest regex Istio accepts (it approximates Envoy's RE2 program size by length).
pub const MAX_REGEX_LENGTH: usize = 1024;
/// Envoy's default `re2.max_program_size.error_level`.
pub const ENVOY_DEFAULT_MAX_PROGRAM_SIZE: usize = 100;
/// RE2's largest counted repetition (`a{1000}`).
pub const RE2_MAX_REPEAT: u32 = 1000;

/// Collects diagnostics about one resource.
pub struct Sink<'a, T: Kind> {
    /// The resource being checked.
    pub resource: &'a Resource<T>,
    /// Where diagnostics go.
    pub out: &'a mut Vec<Diagnostic>,
}

impl<'a, T: Kind> Sink<'a, T> {
    /// A sink for `resource`.
    pub fn new(resource: &'a Resource<T>, out: &'a mut Vec<Diagnostic>) -> Self {
        Sink { resource, out }
    }

    /// Records an error at a field.
    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        self.out
            .push(self.resource.diagnostic(Severity::Error, field, message));
    }

    /// Records a warning at a field.
    pub fn warning(&mut self, field: &str, message: impl Into<String>) {
        self.out
            .push(self.resource.diagnostic(Severity::Warning, field, message));
    }

    /// Records an error if `result` is one.
    pub fn check(&mut self, field: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.error(field, message);
        }
    }
}

/// A DNS-1123 label as Istio checks it: letters, digits and `-`, not starting or ending
/// with `-`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// A Kubernetes resource/namespace name label: lower-case DNS-1123 label.
pub fn is_lowercase_dns1123_label(s: &str) -> bool {
    is_dns1123_label(s) && !s.bytes().any(|c| c.is_ascii_uppercase())
}

/// Whether a string is an IP address.
pub fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// Checks a fully qualified domain name (no wildcard).
pub fn check_fqdn(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty host name".to_string());
    }
    if host.len() > 255 {
        return Err(format!("host name `{host}` is longer than 255 characters"));
    }
    check_labels(host, host)
}

fn check_labels(full: &str, labels: &str) -> Result<(), String> {
    let parts: Vec<&str> = labels.split('.').collect();
    if let Some(tld) = parts.last()
        && !tld.is_empty()
        && tld.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "host name `{full}` is invalid: the top-level label `{tld}` cannot be all digits"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        // A trailing dot (`example.com.`) is allowed.
        if i == parts.len() - 1 && label.is_empty() && i > 0 {
            break;
        }
        if label.contains('*') {
            return Err(format!(
                "host name `{full}` is invalid: `*` is only allowed as the whole leftmost label (`*.example.com`)"
            ));
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "host name `{full}` is invalid: label `{label}` must be 1-63 letters, digits or `-`, not starting or ending with `-`"
            ));
        }
    }
    Ok(())
}

/// Checks a host that may start with a wildcard label (`*`, `*.example.com`).
///
/// Istio also accepts partial wildcards such as `*foo.example.com`; they are reported
/// through `partial_wildcard` so that each kind can decide how bad that is.
pub fn check_wildcard_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty host name".to_string());
    }
    if host.len() > 255 {
        return Err(format!("host name `{host}` is longer than 255 characters"));
    }
    let (first, rest) = match host.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (host, None),
    };
    let first_ok = if let Some(after) = first.strip_prefix('*') {
        let after = after.strip_prefix('-').unwrap_or(after);
        after.is_empty() || is_dns1123_label(after)
    } else {
        is_dns1123_label(first)
    };
    if !first_ok {
        if first.contains('*') {
            return Err(format!(
                "host name `{host}` is invalid: `*` is only allowed at the start of the leftmost label (`*.example.com`)"
            ));
        }
        return Err(format!(
            "host name `{host}` is invalid: label `{first}` must be 1-63 letters, digits or `-`, not starting or ending with `-`"
        ));
    }
    match rest {
        Some(rest) => check_labels(host, rest),
        None => Ok(()),
    }
}

/// Whether a host is a partial wildcard such as `*foo.example.com`.
pub fn is_partial_wildcard(host: &str) -> bool {
    host.contains('*') && host != "*" && !host.starts_with("*.")
}

/// Checks a port number.
pub fn check_port(port: u32) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("port number {port} must be in the range 1..65535"))
    }
}

/// Checks a duration the way Istio does for timeouts and intervals: at least 1ms, in
/// whole milliseconds.
pub fn check_duration(d: Duration) -> Result<(), String> {
    let d = d.get();
    if d < std::time::Duration::from_millis(1) {
        return Err(format!("duration {} must be at least 1ms", Duration(d)));
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(format!(
            "duration {} must be a whole number of milliseconds",
            Duration(d)
        ));
    }
    Ok(())
}

/// Checks a percentage (`Percent.value`) as Istio does.
pub fn check_percentage(value: f64) -> Result<(), String> {
    if !(0.0..=100.0).contains(&value) || (value > 0.0 && value < 0.0001) {
        return Err(format!(
            "percentage {value} must be 0 or in the range [0.0001, 100]"
        ));
    }
    Ok(())
}

/// Checks a Kubernetes label map: keys `[prefix/]name`, values at most 63 characters.
pub fn check_labels_map<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (key, value) in labels {
        let (prefix, name) = match key.rsplit_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key.as_str()),
        };
        if let Some(prefix) = prefix
            && (prefix.len() > 253 || check_fqdn(prefix).is_err())
        {
            problems.push((
                key.clone(),
                format!("label key `{key}` has an invalid prefix `{prefix}`"),
            ));
        }
        if !is_label_value(name) || name.is_empty() {
            problems.push((
                key.clone(),
                format!("label key `{key}` is invalid: the name must be 1-63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit"),
            ));
        }
        if !is_label_value(value) {
            problems.push((
                key.clone(),
                format!("label value `{value}` of `{key}` is invalid: at most 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit"),
            ));
        }
    }
    problems
}

fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    if b.is_empty() {
        return true;
    }
    b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Checks an HTTP header name (RFC 9110 token).
pub fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".to_string());
    }
    let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    let body = name.strip_prefix(':').unwrap_or(name);
    if body.is_empty() || !body.bytes().all(token) {
        return Err(format!("`{name}` is not a valid header name"));
    }
    Ok(())
}

/// Checks a header value Envoy will be given: no control characters, and `%` only in
/// Envoy's `%VARIABLE%` form or doubled (`%%`).
pub fn check_header_value(value: &str) -> Result<(), String> {
    if value.bytes().any(|c| (c < 0x20 && c != b'\t') || c == 0x7f) {
        return Err(format!(
            "header value {value:?} contains control characters"
        ));
    }
    let mut rest = value;
    while let Some(i) = rest.find('%') {
        let after = &rest[i + 1..];
        if let Some(after_double) = after.strip_prefix('%') {
            rest = after_double;
            continue;
        }
        match after.find('%') {
            Some(end) if end > 0 => rest = &after[end + 1..],
            _ => {
                return Err(format!(
                    "header value {value:?} has an unmatched `%`: write `%%` for a literal percent sign"
                ));
            }
        }
    }
    Ok(())
}

/// Checks `exportTo`: `.`, `*` or namespace names; `*` alone.
pub fn check_export_to(export_to: &[String]) -> Vec<(usize, String)> {
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, ns) in export_to.iter().enumerate() {
        let ns_name = ns.strip_prefix('~').unwrap_or(ns);
        if ns != "." && ns != "*" && !is_lowercase_dns1123_label(ns_name) {
            problems.push((i, format!("`{ns}` is not `.`, `*` or a namespace name")));
        }
        if !seen.insert(ns.as_str()) {
            problems.push((i, format!("`{ns}` is listed twice")));
        }
    }
    if export_to.len() > 1 && export_to.iter().any(|n| n == "*") {
        problems.push((
            0,
            "`*` exports to every namespace and cannot be combined with others".to_string(),
        ));
    }
    problems
}

/// What is wrong with a regex for Envoy, which compiles it with RE2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegexProblem {
    /// RE2 (and so Envoy) rejects it.
    Invalid(String),
    /// It compiles, but its program is probably larger than Envoy's default limit.
    TooLarge(usize),
}

/// Checks a regex in RE2's dialect.
///
/// The `regex` crate is close to RE2 and rejects what RE2 rejects for look-around and
/// backreferences; the differences it would let through (class set operations, nested
/// classes, the `x`/`R`/`u` flags, `\<`/`\>`, counted repetition above 1000) are
/// rejected here explicitly.
pub fn check_regex(re: &str) -> Result<(), RegexProblem> {
    if re.len() > MAX_REGEX_LENGTH {
        return Err(RegexProblem::Invalid(format!(
            "regex is {} characters long; the limit is {MAX_REGEX_LENGTH}",
            re.len()
        )));
    }
    let parsed = ast::parse::ParserBuilder::new()
        .nest_limit(100)
        .build()
        .parse(re)
        .map_err(|e| {
            RegexProblem::Invalid(format!("invalid regex: {}", first_line(&e.to_string())))
        })?;
    ast::visit(&parsed, Re2Dialect).map_err(RegexProblem::Invalid)?;
    regex::Regex::new(re).map_err(|e| {
        RegexProblem::Invalid(format!("invalid regex: {}", first_line(&e.to_string())))
    })?;
    if let Some(size) = estimated_program_size(re)
        && size > ENVOY_DEFAULT_MAX_PROGRAM_SIZE
    {
        return Err(RegexProblem::TooLarge(size));
    }
    Ok(())
}

fn first_line(s: &str) -> String {
    // regex errors draw the pattern with a caret over several lines; keep the reason.
    s.lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .map(|l| l.trim_start_matches("error:").trim().to_string())
        .unwrap_or_else(|| s.lines().next().unwrap_or("").to_string())
}

/// RE2 compiles to byte-level instructions with ASCII-only `\w`, `\d`, `\s`; a Thompson
/// NFA built the same way has about as many states as RE2's program has instructions.
fn estimated_program_size(re: &str) -> Option<usize> {
    use regex_automata::nfa::thompson;
    use regex_automata::util::syntax;
    let nfa = thompson::Compiler::new()
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .configure(
            thompson::Config::new()
                .utf8(false)
                .shrink(true)
                .nfa_size_limit(Some(1 << 20)),
        )
        .build(re)
        .ok()?;
    Some(nfa.states().len())
}

struct Re2Dialect;

impl ast::Visitor for Re2Dialect {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_pre(&mut self, node: &Ast) -> Result<(), String> {
        match node {
            Ast::Repetition(rep) => {
                if let Ast::Repetition(inner) = &*rep.ast {
                    return Err(format!(
                        "RE2 does not allow a repetition operator right after another (`{}` then `{}`); possessive quantifiers such as `a++` are not supported",
                        op_text(&inner.op.kind),
                        op_text(&rep.op.kind)
                    ));
                }
                if let ast::RepetitionKind::Range(range) = &rep.op.kind {
                    let (ast::RepetitionRange::Exactly(n)
                    | ast::RepetitionRange::AtLeast(n)
                    | ast::RepetitionRange::Bounded(_, n)) = *range;
                    if n > RE2_MAX_REPEAT {
                        return Err(format!(
                            "RE2 does not allow counted repetition above {RE2_MAX_REPEAT} (found {n})"
                        ));
                    }
                }
            }
            Ast::Flags(set) => check_flags(&set.flags)?,
            Ast::Group(group) => {
                if let ast::GroupKind::NonCapturing(flags) = &group.kind {
                    check_flags(flags)?;
                }
            }
            Ast::Assertion(a) => {
                use ast::AssertionKind as K;
                if matches!(
                    a.kind,
                    K::WordBoundaryStart
                        | K::WordBoundaryEnd
                        | K::WordBoundaryStartAngle
                        | K::WordBoundaryEndAngle
                        | K::WordBoundaryStartHalf
                        | K::WordBoundaryEndHalf
                ) {
                    return Err(
                        "RE2 has no `\\<`, `\\>` or `\\b{...}` word-boundary forms; use `\\b`"
                            .to_string(),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn visit_class_set_item_pre(&mut self, item: &ast::ClassSetItem) -> Result<(), String> {
        if matches!(item, ast::ClassSetItem::Bracketed(_)) {
            return Err("RE2 does not support nested character classes".to_string());
        }
        Ok(())
    }

    fn visit_class_set_binary_op_pre(&mut self, _op: &ast::ClassSetBinaryOp) -> Result<(), String> {
        Err("RE2 does not support character class set operations (`&&`, `--`, `~~`)".to_string())
    }
}

fn op_text(kind: &ast::RepetitionKind) -> String {
    match kind {
        ast::RepetitionKind::ZeroOrOne => "?".to_string(),
        ast::RepetitionKind::ZeroOrMore => "*".to_string(),
        ast::RepetitionKind::OneOrMore => "+".to_string(),
        ast::RepetitionKind::Range(ast::RepetitionRange::Exactly(n)) => format!("{{{n}}}"),
        ast::RepetitionKind::Range(ast::RepetitionRange::AtLeast(n)) => format!("{{{n},}}"),
        ast::RepetitionKind::Range(ast::RepetitionRange::Bounded(a, b)) => format!("{{{a},{b}}}"),
    }
}

fn check_flags(flags: &ast::Flags) -> Result<(), String> {
    for item in &flags.items {
        if let ast::FlagsItemKind::Flag(flag) = item.kind {
            let name = match flag {
                ast::Flag::IgnoreWhitespace => "x",
                ast::Flag::CRLF => "R",
                ast::Flag::Unicode => "u",
                _ => continue,
            };
            return Err(format!(
                "RE2 does not support the `{name}` flag (only i, m, s and U)"
            ));
        }
    }
    Ok(())
}

/// Reports a regex problem at `field`: RE2 rejections as errors, size as a warning.
pub fn report_regex<T: Kind>(sink: &mut Sink<'_, T>, field: &str, re: &str) {
    if re.is_empty() {
        sink.error(field, "regex must not be empty");
        return;
    }
    match check_regex(re) {
        Ok(()) => {}
        Err(RegexProblem::Invalid(message)) => {
            sink.error(field, format!("{message}; Envoy uses RE2 syntax (https://github.com/google/re2/wiki/Syntax)"))
        }
        Err(RegexProblem::TooLarge(size)) => sink.warning(
            field,
            format!(
                "regex program size is about {size}, above Envoy's default re2 max_program_size of {ENVOY_DEFAULT_MAX_PROGRAM_SIZE}; Envoy rejects it unless that limit is raised"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let ok = [
            "example.com",
            "a-b.example.com",
            "*.example.com",
            "*",
            "reviews",
            "example.com.",
            "*foo.example.com",
        ];
        for h in ok {
            assert_eq!(check_wildcard_host(h), Ok(()), "{h}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "empty host name"),
            (
                "a.*.com",
                "host name `a.*.com` is invalid: `*` is only allowed as the whole leftmost label (`*.example.com`)",
            ),
            (
                "foo*.com",
                "host name `foo*.com` is invalid: `*` is only allowed at the start of the leftmost label (`*.example.com`)",
            ),
            (
                "-a.com",
                "host name `-a.com` is invalid: label `-a` must be 1-63 letters, digits or `-`, not starting or ending with `-`",
            ),
            (
                "a..com",
                "host name `a..com` is invalid: label `` must be 1-63 letters, digits or `-`, not starting or ending with `-`",
            ),
            (
                "a.com.123",
                "host name `a.com.123` is invalid: the top-level label `123` cannot be all digits",
            ),
            (
                "a_b.com",
                "host name `a_b.com` is invalid: label `a_b` must be 1-63 letters, digits or `-`, not starting or ending with `-`",
            ),
        ];
        for (h, want) in bad {
            assert_eq!(check_wildcard_host(h), Err(want.to_string()), "{h}");
        }
        assert!(check_wildcard_host(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(check_wildcard_host(&format!("{}.com", "a.".repeat(130))).is_err());
        assert!(check_fqdn("*.example.com").is_err());
        assert!(
            is_partial_wildcard("*foo.com")
                && !is_partial_wildcard("*.foo.com")
                && !is_partial_wildcard("*")
        );
    }

    #[test]
    fn regexes_in_re2_dialect() {
        let ok = [
            "^/api/v[0-9]+/.*$",
            "(?i)/Foo",
            "[[:alpha:]]+",
            "a{2,10}",
            "\\d+\\.\\w*",
        ];
        for re in ok {
            assert_eq!(check_regex(re), Ok(()), "{re}");
        }
        let invalid = [
            "(",
            "a(?=b)",
            "(a)\\1",
            "a++",
            "(?x) a b",
            "[a-z&&[^aeiou]]",
            "[a[bc]]",
            "a{1001}",
            "\\<word\\>",
            "(?<!a)b",
        ];
        for re in invalid {
            assert!(
                matches!(check_regex(re), Err(RegexProblem::Invalid(_))),
                "{re}: {:?}",
                check_regex(re)
            );
        }
        assert!(matches!(
            check_regex("(abc|def|ghi|jkl|mno|pqr|stu|vwx|yz0|123|456|789){3}[a-z]{5,20}"),
            Err(RegexProblem::TooLarge(_))
        ));
        assert!(matches!(
            check_regex(&"a".repeat(1025)),
            Err(RegexProblem::Invalid(_))
        ));
    }

    #[test]
    fn durations_headers_percentages() {
        assert!(check_duration(Duration(std::time::Duration::from_millis(1))).is_ok());
        assert!(check_duration(Duration(std::time::Duration::from_micros(500))).is_err());
        assert!(check_duration(Duration(std::time::Duration::from_micros(1500))).is_err());
        assert!(check_header_name("x-user").is_ok());
        assert!(check_header_name(":authority").is_ok());
        assert!(check_header_name("bad header").is_err());
        assert!(check_header_value("100%%").is_ok());
        assert!(check_header_value("%HOSTNAME% x").is_ok());
        assert!(check_header_value("abc%123").is_err());
        assert!(check_header_value("a\nb").is_err());
        assert!(check_percentage(50.0).is_ok() && check_percentage(0.0).is_ok());
        assert!(
            check_percentage(100.5).is_err()
                && check_percentage(-1.0).is_err()
                && check_percentage(0.00001).is_err()
        );
        assert_eq!(
            check_port(0),
            Err("port number 0 must be in the range 1..65535".into())
        );
        assert!(check_port(65536).is_err() && check_port(443).is_ok());
    }

    #[test]
    fn labels_and_export_to() {
        let mut m = std::collections::BTreeMap::new();
        m.insert("app.kubernetes.io/name".to_string(), "web".to_string());
        m.insert("version".to_string(), "v1".to_string());
        assert!(check_labels_map(&m).is_empty());
        m.insert("bad key!".to_string(), "x".to_string());
        m.insert("k".to_string(), "-bad".to_string());
        assert_eq!(check_labels_map(&m).len(), 2);
        assert!(check_export_to(&[".".into(), "shop".into()]).is_empty());
        assert_eq!(check_export_to(&["*".into(), "shop".into()]).len(), 1);
        assert_eq!(check_export_to(&["Shop_1".into()]).len(), 1);
    }
}
