//! The dashboard's HTML: escaping, the page layout and the formatting of
//! times, durations and payloads. Pages are rendered on the server as
//! plain HTML forms and links, with no script, so that there is nothing to
//! build and every view has a URL.

use std::fmt::Write as _;

/// Text made safe for HTML element content and quoted attribute values.
pub(super) fn esc(s: &str) -> String {
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

/// Percent-encodes `s` for a URL path segment or query value (everything
/// but RFC 3986's unreserved characters).
pub(super) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// The link to a workflow's page.
pub(super) fn workflow_link(base: &str, id: &str) -> String {
    format!("<a href=\"{base}{}\">{}</a>", workflow_path(id), esc(id))
}

/// A workflow page's path below the base path.
pub(super) fn workflow_path(id: &str) -> String {
    format!("/workflows/{}", enc(id))
}

/// An instant (ms since the epoch) in UTC, to the second.
pub(super) fn time(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => ts.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => ms.to_string(),
    }
}

/// An optional instant, or a dash.
pub(super) fn time_or_dash(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), time)
}

/// A duration in its two largest units (`850 ms`, `12.3 s`, `4 m 10 s`,
/// `3 h 5 m`, `2 d 4 h`).
pub(super) fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        return format!("{ms} ms");
    }
    if ms < 60_000 {
        return format!("{:.1} s", ms as f64 / 1000.0);
    }
    let s = ms / 1000;
    if s < 3_600 {
        return format!("{} m {} s", s / 60, s % 60);
    }
    if s < 86_400 {
        return format!("{} h {} m", s / 3_600, (s % 3_600) / 60);
    }
    format!("{} d {} h", s / 86_400, (s % 86_400) / 3_600)
}

/// A status as a coloured badge.
pub(super) fn status_badge(status: &str) -> String {
    format!(
        "<span class=\"status s-{}\">{}</span>",
        esc(&status.to_ascii_lowercase()),
        esc(status)
    )
}

/// How much of a payload a page shows before linking to the whole.
pub(super) const PREVIEW_CHARS: usize = 2_000;

/// JSON text pretty-printed (or as is, if it does not parse).
pub(super) fn pretty_json(json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| json.to_owned())
}

/// A payload in a `<pre>`, cut at [`PREVIEW_CHARS`] with a link to the
/// whole text at `whole_href`.
pub(super) fn payload(text: &str, whole_href: &str) -> String {
    let pretty = pretty_json(text);
    let total = pretty.chars().count();
    if total <= PREVIEW_CHARS {
        return format!("<pre class=\"payload\">{}</pre>", esc(&pretty));
    }
    let cut: String = pretty.chars().take(PREVIEW_CHARS).collect();
    format!(
        "<pre class=\"payload\">{}…</pre><p class=\"more\">Showing {} of {} characters. \
         <a class=\"whole\" href=\"{}\">Show it whole</a></p>",
        esc(&cut),
        PREVIEW_CHARS,
        total,
        esc(whole_href)
    )
}

/// One line of text cut at `max` characters (for tables).
pub(super) fn short(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return esc(&flat);
    }
    let cut: String = flat.chars().take(max).collect();
    format!("{}…", esc(&cut))
}

/// A whole page: title, navigation, a notice (after an action) and body.
pub(super) fn page(
    base: &str,
    title: &str,
    active: &str,
    writable: bool,
    notice: Option<&str>,
    body: &str,
) -> String {
    let mut nav = String::new();
    for (href, label) in [
        ("workflows", "Workflows"),
        ("queues", "Queues"),
        ("executors", "Executors"),
        ("schedules", "Schedules"),
    ] {
        let class = if href == active {
            " class=\"active\""
        } else {
            ""
        };
        let _ = write!(nav, "<a{class} href=\"{base}/{href}\">{label}</a>");
    }
    let mode = if writable {
        format!("<span class=\"mode write\">write mode</span> <a href=\"{base}/login\">sign in</a>")
    } else {
        "<span class=\"mode\">read-only</span>".to_owned()
    };
    let notice = notice
        .map(|n| format!("<p class=\"notice\" id=\"notice\">{}</p>", esc(n)))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Tandem</title><style>{CSS}</style></head><body>\
         <header><a class=\"brand\" href=\"{base}/workflows\">Tandem</a><nav>{nav}</nav>\
         <span class=\"right\">{mode}</span></header><main>{notice}{body}</main></body></html>",
        esc(title)
    )
}

/// The stylesheet, inline: one request per page, nothing to fetch.
const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{display:flex;gap:24px;align-items:center;padding:10px 24px;background:#1d2330;color:#fff}
header a{color:#c9d1e0;text-decoration:none;margin-right:16px}header a.active,header a:hover{color:#fff}
.brand{font-weight:700;color:#fff!important}.right{margin-left:auto}
main{padding:16px 24px;max-width:1400px}
h1{font-size:20px;margin:8px 0 12px}h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e8}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceff3;vertical-align:top}
th{background:#f0f2f5;font-weight:600;font-size:12px;text-transform:uppercase;color:#4a5263}
td.num{text-align:right;font-variant-numeric:tabular-nums}
a{color:#1f5fbf}
.status{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600}
.s-enqueued{background:#e8eefc;color:#284b9c}.s-running{background:#fff2d6;color:#8a5a00}
.s-success{background:#ddf5e3;color:#17672f}.s-error{background:#fde2e1;color:#9c1c17}
.s-cancelled,.s-expired{background:#e9e9ec;color:#4a4a55}.s-live{background:#ddf5e3;color:#17672f}
.counts a{display:inline-block;margin:0 8px 8px 0;padding:4px 10px;border:1px solid #dde1e8;border-radius:6px;background:#fff;text-decoration:none;color:#1d2330}
.counts a.active{border-color:#1f5fbf;box-shadow:0 0 0 1px #1f5fbf}
form.filters{display:flex;flex-wrap:wrap;gap:10px;align-items:end;margin-bottom:12px}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#4a5263}
input,select,button{font:inherit;padding:4px 6px}
button{cursor:pointer;border:1px solid #9aa3b5;border-radius:4px;background:#fff}
button.danger{border-color:#c0392b;color:#c0392b}
dl.fields{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;background:#fff;padding:10px 14px;border:1px solid #dde1e8;margin:0}
dl.fields dt{color:#4a5263}dl.fields dd{margin:0}
pre.payload{background:#fff;border:1px solid #dde1e8;padding:8px;overflow:auto;max-height:360px;margin:4px 0}
.bar-cell{width:30%;min-width:160px}.track{position:relative;height:12px;background:#eef1f5;border-radius:3px}
.bar{position:absolute;top:0;height:12px;border-radius:3px;background:#3f7be0;min-width:2px}
.bar.err{background:#d4483f}
.actions{display:flex;gap:12px;margin:12px 0;flex-wrap:wrap}.actions form{display:flex;gap:6px;align-items:center}
.notice{background:#ddf5e3;border:1px solid #9fd6ad;padding:6px 10px}
.error-box{background:#fde2e1;border:1px solid #f0a8a4;padding:6px 10px}
.mode{font-size:12px;padding:2px 8px;border-radius:9px;background:#39414f}.mode.write{background:#9c1c17}
.muted{color:#6b7385}.pager{margin:10px 0}
";
