//! The status page: server-rendered HTML with inline CSS and no scripts, so it works with
//! scripts off and in any dashboard that embeds it. Every text from the index or the request
//! goes through [`escape`].

use std::fmt::Write;

use super::{CacheStatus, Status};

/// `&`, `<`, `>`, `"` and `'` as entities: safe in text and in quoted attributes.
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

fn bytes(n: u64) -> String {
    flywheel_nix::human_bytes(n)
}

fn percent(f: Option<f64>) -> String {
    f.map_or_else(|| "–".to_string(), |f| format!("{:.1}%", f * 100.0))
}

pub fn render(status: &Status) -> String {
    let mut h = String::new();
    h.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>flywheel cache</title><style>\
         body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#1b1f24}\
         h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem}\
         table{border-collapse:collapse}td,th{padding:.25rem .75rem;text-align:left;border-bottom:1px solid #d0d7de}\
         pre{background:#f6f8fa;padding:.75rem;overflow-x:auto}\
         .bar{background:#d0d7de;height:.6rem;width:12rem;display:inline-block}\
         .bar>span{background:#1f883d;height:100%;display:block}.warn>span{background:#cf222e}\
         </style></head><body>\n<h1>flywheel cache</h1>\n",
    );
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(status.generated_at).unwrap_or(0));
    let n = status.caches.len();
    let _ = writeln!(
        h,
        "<p>{n} cache{}, as of {} UTC.</p>",
        if n == 1 { "" } else { "s" },
        humantime::format_rfc3339_seconds(at).to_string().trim_end_matches('Z').replace('T', " ")
    );
    for c in &status.caches {
        cache_section(&mut h, c);
    }
    h.push_str("<p>JSON: <a href=\"/api/v1/status\">/api/v1/status</a></p>\n</body></html>\n");
    h
}

fn cache_section(h: &mut String, c: &CacheStatus) {
    let name = escape(&c.name);
    let _ = writeln!(h, "<section id=\"cache-{name}\"><h2>{name} <small>({})</small></h2>", c.visibility.as_str());
    if let Some(f) = &c.figures {
        h.push_str("<table>\n");
        let rows = [
            ("Paths", f.paths.to_string()),
            ("Stored", bytes(f.bytes)),
            (
                "narinfo hit rate",
                format!("{} ({} hits, {} misses)", percent(f.hit_rate), f.narinfo_hits, f.narinfo_misses),
            ),
            ("NAR downloads", format!("{} ({} served)", f.nar_downloads, bytes(f.bytes_served))),
        ];
        for (k, v) in rows {
            let _ = writeln!(h, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
        }
        if let (Some(q), Some(used)) = (f.quota_bytes, f.quota_used) {
            let width = (used.clamp(0.0, 1.0) * 100.0).round();
            let class = if used >= 0.9 { "bar warn" } else { "bar" };
            let _ = writeln!(
                h,
                "<tr><th>Quota</th><td><span class=\"{class}\" role=\"img\" aria-label=\"{}\"><span style=\"width:{width}%\"></span></span> {} of {}</td></tr>",
                percent(Some(used)),
                percent(Some(used)),
                bytes(q)
            );
        }
        h.push_str("</table>\n");
    } else {
        h.push_str("<p>A private cache: reading it needs a token.</p>\n");
    }
    let _ = writeln!(h, "<p>Substituter <code>{}</code>, priority {}.</p>", escape(&c.url), c.priority);
    h.push_str("<p>To use it, add to <code>nix.conf</code>:</p>\n<pre>");
    for line in &c.nix_conf {
        let _ = writeln!(h, "{}", escape(line));
    }
    h.push_str("</pre></section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Visibility;
    use crate::status::{CacheStatus, Figures};

    #[test]
    fn hostile_names_are_escaped_everywhere() {
        let evil = "<script>alert('x')</script>&\"";
        let status = Status {
            generated_at: 1,
            caches: vec![CacheStatus {
                name: evil.into(),
                visibility: Visibility::Public,
                priority: 30,
                url: format!("http://h/{evil}"),
                public_key: "k:AA==".into(),
                figures: Some(Figures {
                    paths: 1,
                    bytes: 2,
                    narinfo_hits: 3,
                    narinfo_misses: 1,
                    hit_rate: Some(0.75),
                    nar_downloads: 4,
                    bytes_served: 5,
                    quota_bytes: Some(10),
                    quota_used: Some(0.2),
                }),
                nix_conf: vec![format!("extra-substituters = http://h/{evil}")],
            }],
        };
        let page = render(&status);
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"));
        assert!(page.contains("75.0%") && page.contains("20.0% of 10 B"), "{page}");
    }
}
