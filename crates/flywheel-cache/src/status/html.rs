//! The status page: server-rendered HTML with inline CSS and no scripts, so it works with
//! scripts off and in any dashboard that embeds it. Every text from the index or the request
//! goes through [`escape`].

use std::fmt::Write;

use super::svg::{self, Mark, Series};
use super::{CacheStatus, LaneStatus, Status};
use crate::canary_runs::CanaryRun;

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
         .pass{color:#1f883d}.fail{color:#cf222e}.skip{color:#57606a}svg{display:block;margin:.5rem 0}\
         td svg{display:inline;margin:0}.failure{border-left:4px solid #cf222e;padding:.25rem .75rem;background:#fff5f5}\
         </style></head><body>\n<h1>flywheel cache</h1>\n",
    );
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(status.generated_at).unwrap_or(0));
    let (n, l) = (status.caches.len(), status.lanes.len());
    let _ = writeln!(
        h,
        "<p>{n} cache{}, {l} lane{}, as of {} UTC.</p>",
        if n == 1 { "" } else { "s" },
        if l == 1 { "" } else { "s" },
        humantime::format_rfc3339_seconds(at).to_string().trim_end_matches('Z').replace('T', " ")
    );
    if !status.lanes.is_empty() {
        h.push_str("<h2>Lanes</h2>\n");
    }
    for lane in &status.lanes {
        lane_section(&mut h, lane);
    }
    for c in &status.caches {
        cache_section(&mut h, c);
    }
    if let Some(g) = &status.last_gc {
        let _ = writeln!(
            h,
            "<p>Last garbage collection: {} UTC, {:.1} s: unlinked {} NARs and {} orphans, {} freed; forgot {} abandoned uploads and {} canary runs.</p>",
            svg::time(g.at as f64),
            g.seconds,
            g.nars.files,
            g.orphans.files,
            bytes(g.freed_bytes()),
            g.expired_uploads,
            g.canary_runs_removed
        );
    }
    h.push_str("<p>JSON: <a href=\"/api/v1/status\">/api/v1/status</a>; a lane's runs: <code>/api/v1/canary/runs?lane=NAME</code>.</p>\n</body></html>\n");
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
        if let Some(g) = &f.last_gc {
            let _ = writeln!(
                h,
                "<tr><th>Last collection</th><td>removed {} paths ({}), kept {} ({})</td></tr>",
                g.removed.paths,
                bytes(g.removed.bytes),
                g.kept.paths,
                bytes(g.kept.bytes)
            );
        }
        h.push_str("</table>\n");
        let rate: Vec<(f64, f64)> =
            f.hourly.iter().filter_map(|x| x.hit_rate.map(|r| (x.hour as f64, r * 100.0))).collect();
        h.push_str(&svg::time_plot(
            "narinfo hit rate by the hour",
            &[Series { name: "hit rate", color: svg::PASS, points: rate }],
            "%",
            Some(100.0),
            &|v| format!("{v:.0}%"),
        ));
        let served: Vec<(f64, f64)> = f.hourly.iter().map(|x| (x.hour as f64, x.bytes_served as f64)).collect();
        h.push_str(&svg::time_plot(
            "NAR bytes served by the hour",
            &[Series { name: "served", color: svg::BLUE, points: served }],
            "bytes",
            None,
            &|v| bytes(v as u64),
        ));
        h.push('\n');
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

fn status_class(status: &str) -> &'static str {
    match status {
        "pass" => "pass",
        "fail" => "fail",
        _ => "skip",
    }
}

fn color(status: &str) -> &'static str {
    match status {
        "pass" => svg::PASS,
        "fail" => svg::FAIL,
        _ => svg::SKIP,
    }
}

fn seconds(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn run_time(r: &CanaryRun) -> f64 {
    r.started_at_unix().unwrap_or(0) as f64
}

/// A run's start as `YYYY-MM-DD HH:MM UTC`.
fn started(r: &CanaryRun) -> String {
    shown_time(&r.started_at)
}

fn shown_time(rfc3339: &str) -> String {
    crate::canary_runs::unix_of(rfc3339).map_or_else(|| rfc3339.to_string(), |t| format!("{} UTC", svg::time(t as f64)))
}

fn lane_section(h: &mut String, lane: &LaneStatus) {
    let name = escape(&lane.lane);
    let _ = writeln!(h, "<section class=\"lane\"><h3>Lane {name}</h3>");
    let Some(newest) = lane.runs.first() else {
        h.push_str("<p>No runs.</p></section>\n");
        return;
    };
    let _ = writeln!(
        h,
        "<p>Last run <span class=\"{}\">{}</span> at {} on {} ({}). {} passed and {} failed of the last {}, oldest first:</p>",
        status_class(&newest.status),
        escape(&newest.status),
        started(newest),
        escape(&newest.runner),
        seconds(newest.duration_ms),
        lane.passed,
        lane.failed,
        lane.runs.len()
    );
    let oldest_first: Vec<&CanaryRun> = lane.runs.iter().rev().collect();
    let marks: Vec<Mark> = oldest_first
        .iter()
        .map(|r| Mark {
            color: color(&r.status),
            title: format!(
                "{} {} at {} on {}{}",
                r.run_id,
                r.status,
                started(r),
                r.runner,
                r.failed_step().map(|s| format!(": {} failed", s.name)).unwrap_or_default()
            ),
            href: r.url.clone(),
        })
        .collect();
    h.push_str(&svg::timeline(&marks));
    h.push_str("<table>\n");
    let _ = writeln!(
        h,
        "<tr><th>Image</th><td><code>{}</code></td></tr><tr><th>Driver</th><td>{}</td></tr>",
        escape(lane.image_digest.as_deref().unwrap_or("unknown")),
        escape(lane.driver_version.as_deref().unwrap_or("unknown"))
    );
    h.push_str("</table>\n");
    if let Some(f) = &lane.last_failure {
        let _ = write!(
            h,
            "<div class=\"failure\"><p><strong>Last failure</strong>: run {} at {} on {}",
            escape(&f.run_id),
            escape(&shown_time(&f.started_at)),
            escape(&f.runner)
        );
        if let Some(step) = &f.step {
            let _ = write!(h, ", step <strong>{}</strong>", escape(step));
        }
        h.push_str(".</p>");
        if let Some(reason) = &f.reason {
            let _ = write!(h, "<p>{}</p>", escape(reason));
        }
        if let Some(remedy) = &f.remedy {
            let _ = write!(h, "<p>What to do: {}</p>", escape(remedy));
        }
        h.push_str("</div>\n");
    }
    // Step times: the newest run's steps, each with its time over the runs shown.
    h.push_str("<table><tr><th>Step</th><th>Last</th><th>Time</th><th>Over the runs</th></tr>\n");
    for step in &newest.steps {
        let times: Vec<f64> = oldest_first
            .iter()
            .filter_map(|r| r.steps.iter().find(|s| s.name == step.name))
            .map(|s| s.duration_ms as f64 / 1000.0)
            .collect();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&step.name),
            status_class(&step.status),
            escape(&step.status),
            seconds(step.duration_ms),
            svg::sparkline(&times, &format!("{} seconds, oldest first", step.name))
        );
    }
    h.push_str("</table>\n");
    let points = |f: &dyn Fn(&CanaryRun) -> Option<f64>| -> Vec<(f64, f64)> {
        oldest_first.iter().filter_map(|r| f(r).map(|v| (run_time(r), v))).collect()
    };
    h.push_str(&svg::time_plot(
        "pinned copy bandwidth (slowest GPU)",
        &[
            Series { name: "H2D", color: svg::BLUE, points: points(&|r| r.h2d_bytes_per_second.map(|v| v / 1e9)) },
            Series { name: "D2H", color: svg::ORANGE, points: points(&|r| r.d2h_bytes_per_second.map(|v| v / 1e9)) },
        ],
        "GB/s",
        None,
        &|v| format!("{v:.1} GB/s"),
    ));
    h.push_str(&svg::time_plot(
        "cache pull rate",
        &[Series {
            name: "pull",
            color: svg::PASS,
            points: points(&|r| r.cache_pull_bytes_per_second.map(|v| v / 1e6)),
        }],
        "MB/s",
        None,
        &|v| format!("{v:.0} MB/s"),
    ));
    h.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Visibility;
    use crate::status::{CacheStatus, Figures, Hour};

    #[test]
    fn hostile_names_are_escaped_everywhere() {
        let evil = "<script>alert('x')</script>&\"";
        let mut run = crate::canary_runs::sample(evil, evil, "2026-11-25T09:00:00Z", false);
        run.steps[0].name = evil.into();
        run.steps[0].reason = Some(evil.into());
        run.steps[0].remedy = Some(evil.into());
        run.runner = evil.into();
        run.image_digest = Some(evil.into());
        run.url = Some(format!("https://x/{evil}"));
        let lane = super::super::lane_status(evil.into(), vec![run]);
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
                    hourly: vec![Hour { hour: 3600, hit_rate: Some(0.5), bytes_served: 10, ..Hour::default() }],
                    last_gc: None,
                }),
                nix_conf: vec![format!("extra-substituters = http://h/{evil}")],
            }],
            lanes: vec![lane],
            last_gc: None,
        };
        let page = render(&status);
        assert!(!page.contains("<script>") && !page.contains("'x'"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"));
        assert!(page.contains("75.0%") && page.contains("20.0% of 10 B"), "{page}");
        assert!(page.contains("Last failure") && page.contains("What to do: &lt;script&gt;"), "{page}");
    }
}
