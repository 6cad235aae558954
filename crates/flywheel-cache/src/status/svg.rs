//! Inline SVG plots for the status page: drawn on the server, so they need no script and no
//! second request. Each point carries a `<title>` (a tooltip, and text for screen readers).

use std::fmt::Write;

use super::html::escape;

pub const PASS: &str = "#1f883d";
pub const FAIL: &str = "#cf222e";
pub const SKIP: &str = "#8c959f";
pub const BLUE: &str = "#0969da";
pub const ORANGE: &str = "#bc4c00";

/// One line of a plot: points (x, y) in any order of x.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// A line plot of `series` against time (x: unix seconds), `label` naming the y unit and
/// `fmt` writing a y value; the y axis reaches `y_max` when given (100 for percentages), else a
/// tenth above the highest point.
pub fn time_plot(
    title: &str,
    series: &[Series<'_>],
    label: &str,
    y_max: Option<f64>,
    fmt: &dyn Fn(f64) -> String,
) -> String {
    const W: f64 = 560.0;
    const H: f64 = 160.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 8.0;
    const TOP: f64 = 22.0;
    const BOTTOM: f64 = 22.0;
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"plot\" role=\"img\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title>",
        escape(title)
    );
    let _ = write!(s, "<text x=\"{LEFT}\" y=\"14\" font-size=\"12\" fill=\"#1b1f24\">{}</text>", escape(title));
    if x0 > x1 {
        let _ =
            write!(s, "<text x=\"{LEFT}\" y=\"{}\" font-size=\"12\" fill=\"{SKIP}\">no data yet</text></svg>", H / 2.0);
        return s;
    }
    let y1 = match y_max {
        Some(m) if m > 0.0 => m.max(y1),
        _ if y1 > 0.0 => y1 * 1.1,
        _ => 1.0,
    };
    let span = if x1 > x0 { x1 - x0 } else { 1.0 };
    let px = |x: f64| if x1 > x0 { LEFT + (x - x0) / span * (W - LEFT - RIGHT) } else { (LEFT + W - RIGHT) / 2.0 };
    let py = |y: f64| TOP + (1.0 - y / y1) * (H - TOP - BOTTOM);
    // Axes, the top value and the time span.
    let _ = write!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#d0d7de\"/><line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{}\" stroke=\"#d0d7de\"/>",
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"#57606a\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"#57606a\">0</text>",
        LEFT - 4.0,
        TOP + 4.0,
        escape(&fmt(y1)),
        LEFT - 4.0,
        H - BOTTOM
    );
    let _ = write!(
        s,
        "<text x=\"{LEFT}\" y=\"{}\" font-size=\"11\" fill=\"#57606a\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"#57606a\">{} ({})</text>",
        H - 6.0,
        escape(&time(x0)),
        W - RIGHT,
        H - 6.0,
        escape(&time(x1)),
        escape(label)
    );
    // Legends follow the title (about 6.5 px a character at 12 px).
    let mut legend_x = LEFT + 6.5 * title.chars().count() as f64 + 16.0;
    for line in series {
        let mut points = line.points.clone();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
            line.color,
            path.join(" ")
        );
        for &(x, y) in &points {
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{}\"><title>{}: {} at {}</title></circle>",
                px(x),
                py(y),
                line.color,
                escape(line.name),
                escape(&fmt(y)),
                escape(&time(x))
            );
        }
        let _ = write!(
            s,
            "<rect x=\"{legend_x}\" y=\"6\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"15\" font-size=\"11\" fill=\"#1b1f24\">{}</text>",
            line.color,
            legend_x + 14.0,
            escape(line.name)
        );
        legend_x += 14.0 + 7.0 * line.name.chars().count() as f64 + 16.0;
    }
    s.push_str("</svg>");
    s
}

/// A run in a pass/fail timeline.
pub struct Mark {
    pub color: &'static str,
    pub title: String,
    pub href: Option<String>,
}

/// Squares, oldest left, newest right.
pub fn timeline(marks: &[Mark]) -> String {
    const SIDE: usize = 14;
    const GAP: usize = 4;
    let w = marks.len().max(1) * (SIDE + GAP);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"timeline\" role=\"img\" viewBox=\"0 0 {w} {SIDE}\" width=\"{w}\" height=\"{SIDE}\" xmlns=\"http://www.w3.org/2000/svg\"><title>runs, oldest first</title>"
    );
    for (i, m) in marks.iter().enumerate() {
        let rect = format!(
            "<rect x=\"{}\" y=\"0\" width=\"{SIDE}\" height=\"{SIDE}\" rx=\"2\" fill=\"{}\"><title>{}</title></rect>",
            i * (SIDE + GAP),
            m.color,
            escape(&m.title)
        );
        match &m.href {
            Some(href) if href.starts_with("https://") || href.starts_with("http://") => {
                let _ = write!(s, "<a href=\"{}\">{rect}</a>", escape(href));
            }
            _ => s.push_str(&rect),
        }
    }
    s.push_str("</svg>");
    s
}

/// A small line of values, oldest first, for a table cell.
pub fn sparkline(values: &[f64], title: &str) -> String {
    const W: f64 = 120.0;
    const H: f64 = 22.0;
    let max = values.iter().copied().fold(0.0f64, f64::max);
    let max = if max > 0.0 { max } else { 1.0 };
    let step = if values.len() > 1 { (W - 4.0) / (values.len() - 1) as f64 } else { 0.0 };
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", 2.0 + i as f64 * step, 2.0 + (1.0 - v / max) * (H - 4.0)))
        .collect();
    format!(
        "<svg class=\"spark\" role=\"img\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title><polyline fill=\"none\" stroke=\"{BLUE}\" stroke-width=\"1.5\" points=\"{}\"/></svg>",
        escape(title),
        points.join(" ")
    )
}

/// `YYYY-MM-DD HH:MM` UTC.
pub fn time(unix: f64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0.0) as u64);
    let text = humantime::format_rfc3339_seconds(at).to_string();
    text.get(..16).unwrap_or(&text).replace('T', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_place_points_within_the_frame_and_escape_names() {
        let series = [Series { name: "<h2d>", color: BLUE, points: vec![(0.0, 1.0), (3600.0, 3.0), (7200.0, 2.0)] }];
        let svg = time_plot("bandwidth & co", &series, "GB/s", None, &|v| format!("{v:.1}"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("&lt;h2d&gt;: 3.0 at 1970-01-01 01:00") && !svg.contains("<h2d>"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 3);
        // The highest point is below the top margin, the lowest above the axis.
        let ys: Vec<f64> =
            svg.split("cy=\"").skip(1).filter_map(|s| s.split('"').next()).filter_map(|s| s.parse().ok()).collect();
        assert!(ys.iter().all(|&y| (22.0..=138.0).contains(&y)), "{ys:?}");
        assert!(time_plot("t", &[], "x", None, &|v| v.to_string()).contains("no data yet"));
        let pct = [Series { name: "rate", color: PASS, points: vec![(0.0, 50.0)] }];
        let svg = time_plot("rate", &pct, "%", Some(100.0), &|v| format!("{v:.0}%"));
        assert!(svg.contains(">100%</text>") && svg.contains("cy=\"80.0\""), "{svg}");
    }

    #[test]
    fn timelines_link_only_web_addresses() {
        let marks = [
            Mark { color: PASS, title: "a".into(), href: Some("https://github.com/o/r/actions/runs/1".into()) },
            Mark { color: FAIL, title: "b".into(), href: Some("javascript:alert(1)".into()) },
        ];
        let svg = timeline(&marks);
        assert_eq!(svg.matches("<a href").count(), 1);
        assert!(!svg.contains("javascript:"));
        assert_eq!(svg.matches("<rect").count(), 2);
    }
}
