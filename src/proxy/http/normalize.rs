//! Path normalization of the connection manager (`normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action`), applied before routing like Envoy does.

/// The path is not in origin form (does not start with `/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("path does not start with /")]
pub struct NotOriginForm;

/// Removes `.` and `..` segments (also written `%2e`), turns `\` into `/`. `None` when
/// the path is already normal (the common case allocates nothing). `Err` when the path
/// cannot be normalized (not starting with `/`).
pub fn normalize(path: &str) -> Result<Option<String>, NotOriginForm> {
    if !path.starts_with('/') {
        return Err(NotOriginForm);
    }
    let b = path.as_bytes();
    let needs =
        b.contains(&b'\\') || path.contains("/.") || path.contains("%2e") || path.contains("%2E");
    if !needs {
        return Ok(None);
    }
    let replaced = path.replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = replaced[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        let is_dot = seg.eq_ignore_ascii_case(".") || seg.eq_ignore_ascii_case("%2e");
        let is_dotdot = matches!(
            seg.to_ascii_lowercase().as_str(),
            ".." | ".%2e" | "%2e." | "%2e%2e"
        );
        if is_dot {
            trailing_slash = i == last;
            continue;
        }
        if is_dotdot {
            out.pop();
            trailing_slash = i == last;
            continue;
        }
        trailing_slash = false;
        out.push(seg);
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    Ok(if s == path { None } else { Some(s) })
}

/// Collapses runs of `/`.
pub fn merge_slashes(path: &str) -> Option<String> {
    if !path.contains("//") {
        return None;
    }
    let mut s = String::with_capacity(path.len());
    let mut prev_slash = false;
    for c in path.chars() {
        if c == '/' && prev_slash {
            continue;
        }
        prev_slash = c == '/';
        s.push(c);
    }
    Some(s)
}

/// Whether the path holds an escaped slash or backslash (`%2F`, `%5C`, any case).
pub fn has_escaped_slash(path: &str) -> bool {
    let b = path.as_bytes();
    b.windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'2' && (w[2] == b'f' || w[2] == b'F'))
                || (w[1] == b'5' && (w[2] == b'c' || w[2] == b'C')))
    })
}

/// Replaces `%2F`/`%5C` by `/` and `\`; everything else is copied as it is.
pub fn unescape_slashes(path: &str) -> String {
    let mut s = String::with_capacity(path.len());
    let b = path.as_bytes();
    let (mut i, mut copied) = (0, 0);
    while i + 2 < b.len() {
        if b[i] == b'%' {
            let c = match [b[i + 1].to_ascii_uppercase(), b[i + 2].to_ascii_uppercase()] {
                [b'2', b'F'] => Some('/'),
                [b'5', b'C'] => Some('\\'),
                _ => None,
            };
            if let Some(c) = c {
                // `%` and the two ASCII digits are whole characters: both ends of the
                // copied range are character boundaries.
                s.push_str(&path[copied..i]);
                s.push(c);
                i += 3;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    s.push_str(&path[copied..]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_rfc3986() {
        let cases = [
            ("/a/b", None),
            ("/a/../b", Some("/b")),
            ("/a/./b", Some("/a/b")),
            ("/a/%2e%2e/b", Some("/b")),
            ("/a/%2E/b", Some("/a/b")),
            ("/../../x", Some("/x")),
            ("/a/..", Some("/")),
            ("/a/b/.", Some("/a/b/")),
            ("/a\\b", Some("/a/b")),
            ("/a//b", None),
            ("/.hidden", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).unwrap().as_deref(), want, "{input}");
        }
        assert!(normalize("a").is_err());
    }

    #[test]
    fn slashes() {
        assert_eq!(merge_slashes("/a//b///c").as_deref(), Some("/a/b/c"));
        assert_eq!(merge_slashes("/a/b"), None);
        assert!(has_escaped_slash("/a%2fb"));
        assert!(has_escaped_slash("/a%5Cb"));
        assert!(!has_escaped_slash("/a%20b"));
        assert_eq!(unescape_slashes("/a%2Fb%5cc"), "/a/b\\c");
        assert_eq!(unescape_slashes("/é%2f"), "/é/");
        assert_eq!(unescape_slashes("/%2"), "/%2");
    }
}
