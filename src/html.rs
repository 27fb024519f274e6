//! Server-rendered HTML for the status pages of the control plane and the gateway: one
//! self-contained page (inline CSS, no script, no external asset), readable on a phone,
//! and every piece of text escaped, since resource names, labels and NACK messages are
//! user input.
use std::fmt::Write as _;
use std::time::SystemTime;

/// `s` escaped for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// How a state is shown: a coloured badge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Warn,
    Bad,
    Neutral,
}

impl Tone {
    fn class(self) -> &'static str {
        match self {
            Tone::Good => "good",
            Tone::Warn => "warn",
            Tone::Bad => "bad",
            Tone::Neutral => "neutral",
        }
    }
}

/// A badge: `text` (escaped) in the tone's colour.
pub fn badge(tone: Tone, text: &str) -> String {
    format!(
        "<span class=\"badge {}\">{}</span>",
        tone.class(),
        escape(text)
    )
}

/// Text items (escaped), one per line in a cell.
pub fn lines<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| escape(s.as_ref()))
        .collect::<Vec<_>>()
        .join("<br>")
}

/// Muted text (escaped).
pub fn muted(text: &str) -> String {
    format!("<span class=\"muted\">{}</span>", escape(text))
}

/// A time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// How long ago `t` was, short (`42 s`, `3 min`, `2 h`, `5 d`).
pub fn ago(t: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    duration(secs)
}

/// A number of seconds, short.
pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// A time as a cell: relative, with the absolute time under it.
pub fn when(t: SystemTime) -> String {
    format!(
        "{} ago<br><span class=\"muted\">{}</span>",
        escape(&ago(t)),
        escape(&utc(t))
    )
}

/// One page being written.
pub struct Page {
    out: String,
}

const CSS: &str = "\
:root{--bg:#f4f6f8;--fg:#1d2733;--card:#fff;--line:#e1e6eb;--muted:#66717d;--head:#0f3d5e;\
--good:#1b7f3b;--goodbg:#e3f4e8;--warn:#8a5a00;--warnbg:#fdf1d6;--bad:#b3261e;--badbg:#fbe4e2;\
--nbg:#eceff2}\
@media (prefers-color-scheme:dark){:root{--bg:#11161c;--fg:#e3e8ee;--card:#1a2129;--line:#2c3641;\
--muted:#95a1ad;--head:#0b2a40;--goodbg:#183d25;--good:#8ee0a8;--warnbg:#43340f;--warn:#f4cf7a;\
--badbg:#4a1c1a;--bad:#ffb0a8;--nbg:#2a323b}}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,\
'Segoe UI',Roboto,sans-serif}\
header{background:var(--head);color:#fff;padding:14px 20px}\
header h1{margin:0;font-size:19px;font-weight:600}\
header p{margin:4px 0 0;opacity:.85;font-size:13px}\
header a{color:#fff}\
main{padding:12px 16px 32px;max-width:1400px;margin:0 auto}\
section{background:var(--card);border:1px solid var(--line);border-radius:8px;margin:14px 0;\
padding:12px 14px}\
h2{font-size:16px;margin:0 0 8px;display:flex;gap:8px;align-items:baseline;flex-wrap:wrap}\
h2 small{font-weight:400;color:var(--muted);font-size:13px}\
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}\
table{border-collapse:collapse;width:100%;font-size:13px}\
th,td{text-align:left;vertical-align:top;padding:6px 8px;border-bottom:1px solid var(--line)}\
th{color:var(--muted);font-weight:600;white-space:nowrap;font-size:12px;text-transform:uppercase;\
letter-spacing:.03em}\
tr:last-child td{border-bottom:0}\
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}\
.nw{white-space:nowrap}.brk{overflow-wrap:anywhere}.minw{min-width:13em}\
.badge{display:inline-block;padding:1px 7px;border-radius:10px;font-size:12px;font-weight:600;\
white-space:nowrap;margin:1px 2px 1px 0}\
.good{background:var(--goodbg);color:var(--good)}.warn{background:var(--warnbg);color:var(--warn)}\
.bad{background:var(--badbg);color:var(--bad)}.neutral{background:var(--nbg);color:var(--muted)}\
.muted{color:var(--muted);font-size:12px}\
.empty{color:var(--muted);font-style:italic;margin:4px 0}\
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}\
.tile{border:1px solid var(--line);border-radius:6px;padding:8px 10px}\
.tile b{display:block;font-size:20px;font-variant-numeric:tabular-nums}\
.tile span{color:var(--muted);font-size:12px}\
.err{color:var(--bad);overflow-wrap:anywhere}\
@media (max-width:640px){main{padding:6px 6px 24px}section{padding:10px 8px;margin:10px 0}\
header{padding:12px}.tiles{grid-template-columns:repeat(auto-fill,minmax(110px,1fr))}\
table,tbody,tr,td{display:block;width:100%}thead{display:none}\
tr{border:1px solid var(--line);border-radius:6px;margin:0 0 8px;padding:4px 0}\
td{border:0;padding:3px 10px}td:empty{display:none}\
td::before{content:attr(data-label);display:block;color:var(--muted);font-size:10px;\
text-transform:uppercase;letter-spacing:.04em}\
td.num{text-align:left}.minw{min-width:0}.err{overflow-wrap:anywhere}}";

impl Page {
    /// Starts a page titled `title` (escaped), with `subtitle` (HTML) under it; reloaded
    /// every `refresh` seconds when given.
    pub fn new(title: &str, subtitle: &str, refresh: Option<u32>) -> Page {
        let mut out = String::with_capacity(16 * 1024);
        out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
        out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
        if let Some(r) = refresh {
            let _ = write!(out, "<meta http-equiv=\"refresh\" content=\"{r}\">");
        }
        let _ = write!(
            out,
            "<title>{}</title><style>{CSS}</style></head><body><header><h1>{}</h1><p>{subtitle}</p></header><main>",
            escape(title),
            escape(title)
        );
        Page { out }
    }

    /// A section with a heading (escaped), a note (escaped) beside it, and `body` (HTML).
    pub fn section(&mut self, id: &str, title: &str, note: &str, body: &str) {
        let _ = write!(
            self.out,
            "<section id=\"{}\"><h2>{}<small>{}</small></h2>{body}</section>",
            escape(id),
            escape(title),
            escape(note)
        );
    }

    /// The page's HTML.
    pub fn finish(mut self) -> String {
        self.out.push_str("</main></body></html>\n");
        self.out
    }
}

/// A table: column headers (escaped; a leading `#` right-aligns the column, for numbers)
/// and rows of cells (HTML). An empty table shows `empty` (escaped) instead.
pub fn table(headers: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"empty\">{}</p>", escape(empty));
    }
    let mut out = String::from("<div class=\"scroll\"><table><thead><tr>");
    let numeric: Vec<bool> = headers.iter().map(|h| h.starts_with('#')).collect();
    for h in headers {
        match h.strip_prefix('#') {
            Some(h) => {
                let _ = write!(out, "<th class=\"num\">{}</th>", escape(h));
            }
            None => {
                let _ = write!(out, "<th>{}</th>", escape(h));
            }
        }
    }
    out.push_str("</tr></thead><tbody>");
    let labels: Vec<String> = headers
        .iter()
        .map(|h| escape(h.trim_start_matches('#')))
        .collect();
    for row in rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            // The label heads the cell where rows are shown as cards (narrow screens).
            let label = labels.get(i).map(String::as_str).unwrap_or("");
            if cell.is_empty() {
                out.push_str("<td></td>");
            } else if numeric.get(i).copied().unwrap_or(false) {
                let _ = write!(out, "<td class=\"num\" data-label=\"{label}\">{cell}</td>");
            } else {
                let _ = write!(out, "<td data-label=\"{label}\">{cell}</td>");
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// Summary tiles: (value, label), both escaped.
pub fn tiles(items: &[(String, &str)]) -> String {
    let mut out = String::from("<div class=\"tiles\">");
    for (value, label) in items {
        let _ = write!(
            out,
            "<div class=\"tile\"><b>{}</b><span>{}</span></div>",
            escape(value),
            escape(label)
        );
    }
    out.push_str("</div>");
    out
}

/// The `refresh` query parameter (seconds, 1 to 3600), if given.
pub fn refresh_param(query: &str) -> Option<u32> {
    query.split('&').find_map(|kv| {
        let v = kv.strip_prefix("refresh=")?;
        v.parse::<u32>().ok().filter(|r| (1..=3600).contains(r))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>alert(\"x\" & 'y')</script>"),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        let t = table(&["a", "#n"], &[vec![escape("<b>"), "1".into()]], "none");
        assert!(
            t.contains(
                "<td data-label=\"a\">&lt;b&gt;</td><td class=\"num\" data-label=\"n\">1</td>"
            ),
            "{t}"
        );
        assert!(table(&["a"], &[], "<none>").contains("&lt;none&gt;"));
    }

    #[test]
    fn refresh_is_bounded() {
        assert_eq!(refresh_param("refresh=5"), Some(5));
        assert_eq!(refresh_param("x=1&refresh=0"), None);
        assert_eq!(refresh_param("refresh=99999"), None);
        assert_eq!(refresh_param(""), None);
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(5), "5 s");
        assert_eq!(duration(600), "10 min");
        assert_eq!(duration(7200), "2 h");
        assert_eq!(duration(3 * 86_400), "3 d");
        assert_eq!(utc(std::time::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
    }
}
