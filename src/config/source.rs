//! YAML (and JSON) text to positioned trees.
//!
//! `saphyr-parser` yields events with spans; this module builds a small tree whose every
//! node remembers its line and column, so that errors found much later (by serde or by
//! validation, as a field path like `spec.http[0].route[1].weight`) can be pointed at the
//! exact place in the file. Scalars are typed with YAML 1.2's core schema (a quoted "80"
//! is a string, a plain 80 an integer), as Kubernetes would read them.
//!
//! Untrusted input is bounded: nesting depth, number of nodes after alias expansion
//! (no "billion laughs"), and integer range are checked with positioned errors.
use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Deepest nesting of collections accepted in one document.
pub const MAX_DEPTH: usize = 64;
/// Most nodes one document may hold, counting every alias expansion.
pub const MAX_NODES: usize = 500_000;

/// A 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

impl Pos {
    fn from_span(span: &Span, first_line: u32) -> Pos {
        Pos {
            line: u32::try_from(span.start.line())
                .unwrap_or(u32::MAX)
                .saturating_add(first_line - 1),
            column: u32::try_from(span.start.col())
                .unwrap_or(u32::MAX)
                .saturating_add(1),
        }
    }
}

/// A node of a parsed document with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// What it holds.
    pub value: NodeValue,
}

/// The value of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeValue {
    /// `null`, `~` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number that fits i64/u64/f64.
    Number(Number),
    /// A string.
    String(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping; keys are strings (scalar keys keep their text), with their positions.
    Map(Vec<MapEntry>),
}

/// One entry of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct MapEntry {
    /// The key's text.
    pub key: String,
    /// Where the key is.
    pub key_pos: Pos,
    /// The value.
    pub value: Node,
}

/// One document of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Where the document's content starts (or its `---`).
    pub pos: Pos,
    /// The content; `None` for an empty document.
    pub root: Option<Node>,
}

/// A syntax or limit error, positioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    /// Where the problem is.
    pub pos: Pos,
    /// What it is.
    pub message: String,
}

/// Parses every document of a YAML (or JSON) text.
///
/// Documents are split on `---` lines first and parsed one by one, so a broken document
/// yields one error and the others still load.
pub fn parse(text: &str) -> Vec<Result<Document, SourceError>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (first_line, chunk) in split_documents(text) {
        match parse_chunk(chunk, first_line) {
            Ok(docs) => out.extend(docs.into_iter().map(Ok)),
            Err(e) => out.push(Err(e)),
        }
    }
    out
}

/// Splits a stream at lines that start with `---` (a document marker can only be at
/// column 0, and nothing in a document can be at column 0 and begin with `---`).
fn split_documents(text: &str) -> Vec<(u32, &str)> {
    let mut chunks = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u32;
    let mut line_no = 1u32;
    let mut offset = 0usize;
    for line in text.split_inclusive('\n') {
        let is_marker = line.starts_with("---")
            && line[3..]
                .chars()
                .next()
                .is_none_or(|c| c == ' ' || c == '\t' || c == '\r' || c == '\n');
        if is_marker && offset > start {
            chunks.push((start_line, &text[start..offset]));
            start = offset;
            start_line = line_no;
        }
        offset += line.len();
        line_no = line_no.saturating_add(1);
    }
    if start < text.len() || chunks.is_empty() {
        chunks.push((start_line, &text[start..]));
    }
    chunks
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<MapEntry>,
        key: Option<(String, Pos)>,
    },
}

struct Builder {
    first_line: u32,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    docs: Vec<Document>,
    doc_pos: Option<Pos>,
    root: Option<Node>,
}

fn err(pos: Pos, message: impl Into<String>) -> SourceError {
    SourceError {
        pos,
        message: message.into(),
    }
}

fn scan_error(e: &ScanError, first_line: u32) -> SourceError {
    let m = e.marker();
    err(
        Pos {
            line: u32::try_from(m.line())
                .unwrap_or(u32::MAX)
                .saturating_add(first_line - 1),
            column: u32::try_from(m.col()).unwrap_or(u32::MAX).saturating_add(1),
        },
        format!("YAML syntax error: {}", e.info()),
    )
}

fn parse_chunk(chunk: &str, first_line: u32) -> Result<Vec<Document>, SourceError> {
    let mut parser = Parser::new_from_str(chunk);
    let mut b = Builder {
        first_line,
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        docs: Vec::new(),
        doc_pos: None,
        root: None,
    };
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| scan_error(&e, first_line))?;
        b.on_event(event, &span)?;
    }
    Ok(b.docs)
}

impl Builder {
    fn on_event(&mut self, event: Event<'_>, span: &Span) -> Result<(), SourceError> {
        let pos = Pos::from_span(span, self.first_line);
        match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
            Event::DocumentStart(_) => {
                self.doc_pos = Some(pos);
                self.root = None;
                self.anchors.clear();
                self.nodes = 0;
            }
            Event::DocumentEnd => {
                let root = self.root.take().filter(|r| r.value != NodeValue::Null);
                let pos = root.as_ref().map_or(self.doc_pos.unwrap_or(pos), |r| r.pos);
                self.docs.push(Document { pos, root });
            }
            Event::Scalar(text, style, anchor, tag) => {
                let value = resolve_scalar(&text, style, tag.as_deref(), pos)?;
                let key_text = text.into_owned();
                self.count(1, pos)?;
                self.complete(Node { pos, value }, anchor, Some(key_text))?;
            }
            Event::Alias(id) => {
                let Some((node, size)) = self.anchors.get(&id).cloned() else {
                    return Err(err(pos, "alias refers to an unknown anchor"));
                };
                self.count(size, pos)?;
                if self.stack.len() + depth(&node) > MAX_DEPTH {
                    return Err(err(pos, format!("nesting deeper than {MAX_DEPTH} levels")));
                }
                self.complete(node, 0, None)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.enter(pos)?;
                self.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                self.enter(pos)?;
                self.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return Err(err(pos, "unbalanced collection end"));
                };
                // Trees are kept for positions as long as their files are cached: no spare
                // capacity (a map of three entries would hold room for four).
                let (node, anchor) = match frame {
                    Frame::Seq {
                        pos,
                        anchor,
                        mut items,
                    } => {
                        items.shrink_to_fit();
                        (
                            Node {
                                pos,
                                value: NodeValue::Seq(items),
                            },
                            anchor,
                        )
                    }
                    Frame::Map {
                        pos,
                        anchor,
                        entries,
                        ..
                    } => {
                        let mut entries = merge_keys(entries);
                        entries.shrink_to_fit();
                        (
                            Node {
                                pos,
                                value: NodeValue::Map(entries),
                            },
                            anchor,
                        )
                    }
                };
                self.count(1, pos)?;
                self.complete(node, anchor, None)?;
            }
        }
        Ok(())
    }

    fn enter(&self, pos: Pos) -> Result<(), SourceError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(err(pos, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn count(&mut self, n: usize, pos: Pos) -> Result<(), SourceError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(err(
                pos,
                format!("document has more than {MAX_NODES} nodes (counting alias expansions)"),
            ));
        }
        Ok(())
    }

    /// A node is finished: record its anchor and put it where it belongs.
    fn complete(
        &mut self,
        node: Node,
        anchor: usize,
        key_text: Option<String>,
    ) -> Result<(), SourceError> {
        if anchor > 0 {
            // The stored copy counts against the budget too, so that nested anchors
            // cannot multiply memory use.
            let size = size(&node);
            self.count(size, node.pos)?;
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    let Some(text) = key_text
                        .filter(|_| !matches!(node.value, NodeValue::Seq(_) | NodeValue::Map(_)))
                    else {
                        return Err(err(node.pos, "mapping keys must be scalars"));
                    };
                    if entries.iter().any(|e| e.key == text) && text != "<<" {
                        return Err(err(node.pos, format!("duplicate key `{text}`")));
                    }
                    let mut text = text;
                    text.shrink_to_fit();
                    *key = Some((text, node.pos));
                }
                Some((k, key_pos)) => entries.push(MapEntry {
                    key: k,
                    key_pos,
                    value: node,
                }),
            },
        }
        Ok(())
    }
}

/// Applies YAML merge keys (`<<: *base`): entries of the merged mappings that the mapping
/// does not set itself are added.
fn merge_keys(entries: Vec<MapEntry>) -> Vec<MapEntry> {
    if !entries.iter().any(|e| e.key == "<<") {
        return entries;
    }
    let (merges, mut own): (Vec<MapEntry>, Vec<MapEntry>) =
        entries.into_iter().partition(|e| e.key == "<<");
    for merge in merges {
        let sources = match merge.value.value {
            NodeValue::Map(m) => vec![m],
            NodeValue::Seq(items) => items
                .into_iter()
                .filter_map(|n| match n.value {
                    NodeValue::Map(m) => Some(m),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        for source in sources {
            for entry in source {
                if !own.iter().any(|e| e.key == entry.key) {
                    own.push(entry);
                }
            }
        }
    }
    own
}

fn size(node: &Node) -> usize {
    match &node.value {
        NodeValue::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
        NodeValue::Map(entries) => 1 + entries.iter().map(|e| 1 + size(&e.value)).sum::<usize>(),
        _ => 1,
    }
}

fn depth(node: &Node) -> usize {
    match &node.value {
        NodeValue::Seq(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        NodeValue::Map(entries) => 1 + entries.iter().map(|e| depth(&e.value)).max().unwrap_or(0),
        _ => 0,
    }
}

/// Types a scalar with the YAML 1.2 core schema.
fn resolve_scalar(
    text: &str,
    style: ScalarStyle,
    tag: Option<&saphyr_parser::Tag>,
    pos: Pos,
) -> Result<NodeValue, SourceError> {
    if let Some(tag) = tag {
        if tag.is_yaml_core_schema() {
            match tag.suffix.as_str() {
                "str" => return Ok(NodeValue::String(text.to_string())),
                "null" | "bool" | "int" | "float" => {
                    return resolve_plain(text, pos).and_then(|v| {
                        match (&v, tag.suffix.as_str()) {
                            (NodeValue::Null, "null")
                            | (NodeValue::Bool(_), "bool")
                            | (NodeValue::Number(_), "int" | "float") => Ok(v),
                            _ => Err(err(
                                pos,
                                format!("`{text}` is not a valid !!{}", tag.suffix),
                            )),
                        }
                    });
                }
                _ => {}
            }
        }
        if style != ScalarStyle::Plain {
            return Ok(NodeValue::String(text.to_string()));
        }
    }
    if style != ScalarStyle::Plain {
        return Ok(NodeValue::String(text.to_string()));
    }
    resolve_plain(text, pos)
}

fn resolve_plain(text: &str, pos: Pos) -> Result<NodeValue, SourceError> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(NodeValue::Null),
        "true" | "True" | "TRUE" => return Ok(NodeValue::Bool(true)),
        "false" | "False" | "FALSE" => return Ok(NodeValue::Bool(false)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => {
            return Err(err(pos, format!("`{text}` is not a finite number")));
        }
        _ => {}
    }
    let out_of_range = || err(pos, format!("integer `{text}` is out of range"));
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    if is_decimal_int(text) {
        if let Some(rest) = text.strip_prefix('-') {
            let _ = rest;
            return text
                .parse::<i64>()
                .map(|v| NodeValue::Number(v.into()))
                .map_err(|_| out_of_range());
        }
        return unsigned
            .parse::<u64>()
            .map(|v| NodeValue::Number(v.into()))
            .map_err(|_| out_of_range());
    }
    if let Some(digits) = text
        .strip_prefix("0o")
        .filter(|d| !d.is_empty() && d.bytes().all(|b| (b'0'..=b'7').contains(&b)))
    {
        return u64::from_str_radix(digits, 8)
            .map(|v| NodeValue::Number(v.into()))
            .map_err(|_| out_of_range());
    }
    if let Some(digits) = text
        .strip_prefix("0x")
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return u64::from_str_radix(digits, 16)
            .map(|v| NodeValue::Number(v.into()))
            .map_err(|_| out_of_range());
    }
    if is_float(text) {
        return match text.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) if n.as_f64().is_some_and(f64::is_finite) => Ok(NodeValue::Number(n)),
            _ => Err(err(pos, format!("number `{text}` is out of range"))),
        };
    }
    Ok(NodeValue::String(text.to_string()))
}

fn is_decimal_int(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn is_float(text: &str) -> bool {
    let s = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            int.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit())
                && !(int.is_empty() && frac.is_empty())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|b| b.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let d = e.strip_prefix(['-', '+']).unwrap_or(e);
        !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

impl Node {
    /// The node as a JSON value. Mapping entries whose value is null are left out, as the
    /// Kubernetes API treats them as unset.
    pub fn to_value(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Number(n) => Value::Number(n.clone()),
            NodeValue::String(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            NodeValue::Map(entries) => {
                let mut map = Map::new();
                for e in entries {
                    if e.value.value != NodeValue::Null {
                        map.insert(e.key.clone(), e.value.to_value());
                    }
                }
                Value::Object(map)
            }
        }
    }

    /// The entry of a mapping node with this key.
    pub fn get(&self, key: &str) -> Option<&MapEntry> {
        match &self.value {
            NodeValue::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// The position of a field path such as `spec.http[0].route[1].weight`: the key of a
    /// mapping entry, the start of a sequence item. When the path goes further than the
    /// document (a missing field), the deepest position that exists is returned.
    pub fn locate(&self, path: &str) -> Pos {
        let mut node = self;
        let mut pos = self.pos;
        let mut rest = path.strip_prefix('.').unwrap_or(path);
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('[') {
                let Some((index, tail)) = after.split_once(']') else {
                    break;
                };
                let (Ok(i), NodeValue::Seq(items)) = (index.parse::<usize>(), &node.value) else {
                    break;
                };
                let Some(item) = items.get(i) else {
                    break;
                };
                node = item;
                pos = item.pos;
                rest = tail;
            } else {
                let NodeValue::Map(entries) = &node.value else {
                    break;
                };
                // Keys may contain dots (`app.kubernetes.io/name`): take the longest key
                // that the path continues with.
                let found = entries
                    .iter()
                    .filter(|e| {
                        rest.strip_prefix(e.key.as_str()).is_some_and(|t| {
                            t.is_empty() || t.starts_with('.') || t.starts_with('[')
                        })
                    })
                    .max_by_key(|e| e.key.len());
                let Some(entry) = found else {
                    break;
                };
                node = &entry.value;
                pos = entry.key_pos;
                rest = &rest[entry.key.len()..];
            }
            rest = rest.strip_prefix('.').unwrap_or(rest);
        }
        pos
    }
}

/// A shared handle on a document's tree, kept by every resource loaded from it.
pub type SharedNode = Arc<Node>;

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let mut docs = parse(text);
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs.remove(0).unwrap().root.unwrap()
    }

    fn error(text: &str) -> SourceError {
        parse(text)
            .into_iter()
            .find_map(Result::err)
            .unwrap_or_else(|| panic!("no error for {text:?}"))
    }

    #[test]
    fn core_schema_typing() {
        let cases: &[(&str, Value)] = &[
            ("a: 80", serde_json::json!({"a": 80})),
            ("a: \"80\"", serde_json::json!({"a": "80"})),
            ("a: '80'", serde_json::json!({"a": "80"})),
            ("a: -5", serde_json::json!({"a": -5})),
            ("a: 1.5", serde_json::json!({"a": 1.5})),
            ("a: 1e3", serde_json::json!({"a": 1000.0})),
            ("a: 0x1F", serde_json::json!({"a": 31})),
            ("a: 0o17", serde_json::json!({"a": 15})),
            ("a: true", serde_json::json!({"a": true})),
            ("a: yes", serde_json::json!({"a": "yes"})),
            ("a: ~\nb: 1", serde_json::json!({"b": 1})),
            ("a: !!str 80", serde_json::json!({"a": "80"})),
            ("a: 1.2.3", serde_json::json!({"a": "1.2.3"})),
            ("a: 5s", serde_json::json!({"a": "5s"})),
            ("80: x", serde_json::json!({"80": "x"})),
            (
                "{\"a\": [1, \"b\", null]}",
                serde_json::json!({"a": [1, "b", null]}),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&one(text).to_value(), want, "{text}");
        }
    }

    #[test]
    fn multi_document_streams_keep_going_after_a_broken_document() {
        let docs = parse("a: 1\n---\nb: [1\n---\n# only a comment\n---\nc: 3\n...\n");
        assert_eq!(docs.len(), 4, "{docs:?}");
        assert_eq!(docs[0].as_ref().unwrap().pos, Pos { line: 1, column: 1 });
        let e = docs[1].as_ref().unwrap_err();
        assert!(e.message.starts_with("YAML syntax error"), "{e:?}");
        assert!(e.pos.line >= 3, "{e:?}");
        assert_eq!(docs[2].as_ref().unwrap().root, None);
        assert_eq!(docs[3].as_ref().unwrap().pos, Pos { line: 7, column: 1 });
    }

    #[test]
    fn positions_of_field_paths() {
        let text = "spec:\n  http:\n  - route:\n    - weight: 50\n    - weight: 60\n  labels:\n    app.kubernetes.io/name: x\n";
        let root = one(text);
        assert_eq!(
            root.locate("spec.http[0].route[1].weight"),
            Pos { line: 5, column: 7 }
        );
        assert_eq!(
            root.locate("spec.http[0].route[1]"),
            Pos { line: 5, column: 7 }
        );
        assert_eq!(root.locate("spec.http[0]"), Pos { line: 3, column: 5 });
        assert_eq!(
            root.locate("spec.labels.app.kubernetes.io/name"),
            Pos { line: 7, column: 5 }
        );
        // Missing fields point at the deepest existing one.
        assert_eq!(
            root.locate("spec.http[0].route[7].weight"),
            Pos { line: 3, column: 5 }
        );
        assert_eq!(root.locate("."), Pos { line: 1, column: 1 });
    }

    #[test]
    fn aliases_expand_and_merge_keys_apply() {
        let root = one("base: &b {x: 1, y: 2}\nuse: *b\nmerged:\n  <<: *b\n  y: 3\n");
        assert_eq!(
            root.to_value(),
            serde_json::json!({"base": {"x": 1, "y": 2}, "use": {"x": 1, "y": 2}, "merged": {"y": 3, "x": 1}})
        );
    }

    #[test]
    fn limits_and_bad_input_are_positioned_errors() {
        let laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
        assert!(
            error(laughs).message.contains("nodes"),
            "{:?}",
            error(laughs)
        );
        let deep = "[".repeat(100_000);
        let e = error(&deep);
        assert!(
            e.message.contains("nesting") || e.message.contains("syntax"),
            "{e:?}"
        );
        let e = error("a: 99999999999999999999999");
        assert_eq!(
            e.message,
            "integer `99999999999999999999999` is out of range"
        );
        assert_eq!(e.pos, Pos { line: 1, column: 4 });
        assert_eq!(error("a: 1\na: 2").message, "duplicate key `a`");
        assert_eq!(error("? [a]\n: 1").message, "mapping keys must be scalars");
        assert_eq!(error("a: .inf").message, "`.inf` is not a finite number");
        assert!(error("a: *nope").message.contains("anchor"));
        // Anchors nested in anchors: each stored copy counts, or 60 nested anchors
        // around a wide list would hold 60 copies of it.
        let leaf = vec!["x"; 200_000].join(", ");
        let mut nested = format!("[{leaf}]");
        for i in 0..60 {
            nested = format!("&a{i} [{nested}]");
        }
        let e = error(&format!("a: {nested}\n"));
        assert!(e.message.contains("nodes"), "{e:?}");
    }
}
