//! A self-contained SVG chart of per-second throughput and p99 latency.

use std::fmt::Write as _;

use crate::report::SecondReport;

const W: f64 = 800.0;
const H: f64 = 400.0;
const ML: f64 = 70.0;
const MR: f64 = 70.0;
const MT: f64 = 40.0;
const MB: f64 = 50.0;

/// A "nice" upper bound for an axis (1, 2, 5 × 10^k).
pub fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let exp = v.log10().floor();
    let base = 10f64.powf(exp);
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * base {
            return m * base;
        }
    }
    10.0 * base
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn polyline(points: &[(f64, f64)], color: &str) -> String {
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    format!(
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
        pts.join(" ")
    )
}

/// Renders the chart; `title` is shown on top.
pub fn chart(title: &str, timeline: &[SecondReport]) -> String {
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let n = timeline.len().max(2) as f64 - 1.0;
    let max_rps = nice_max(
        timeline
            .iter()
            .map(|s| s.responses as f64)
            .fold(0.0, f64::max),
    );
    let max_p99 = nice_max(timeline.iter().map(|s| s.p99_ms).fold(0.0, f64::max));
    let x = |i: usize| ML + pw * i as f64 / n;
    let y = |v: f64, max: f64| MT + ph * (1.0 - v / max);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        W / 2.0,
        escape(title)
    );
    // Grid and axis labels.
    for t in 0..=5 {
        let f = t as f64 / 5.0;
        let gy = MT + ph * (1.0 - f);
        let _ = writeln!(
            s,
            "<line x1=\"{ML}\" y1=\"{gy:.1}\" x2=\"{:.1}\" y2=\"{gy:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#1f77b4\">{}</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d62728\">{}</text>",
            ML + pw,
            ML - 6.0,
            gy + 4.0,
            fmt_num(max_rps * f),
            ML + pw + 6.0,
            gy + 4.0,
            fmt_num(max_p99 * f)
        );
    }
    let step = (timeline.len() / 10).max(1);
    for i in (0..timeline.len()).step_by(step) {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}s</text>",
            x(i),
            MT + ph + 18.0,
            i
        );
    }
    let _ = writeln!(
        s,
        "<rect x=\"{ML}\" y=\"{MT}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#333\"/>\n\
         <text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\" fill=\"#1f77b4\">responses/s</text>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" transform=\"rotate(90 {:.1} {:.1})\" text-anchor=\"middle\" fill=\"#d62728\">p99 latency (ms)</text>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">time (s)</text>",
        MT + ph / 2.0,
        MT + ph / 2.0,
        W - 16.0,
        MT + ph / 2.0,
        W - 16.0,
        MT + ph / 2.0,
        ML + pw / 2.0,
        H - 10.0
    );
    let rps: Vec<(f64, f64)> = timeline
        .iter()
        .enumerate()
        .map(|(i, t)| (x(i), y(t.responses as f64, max_rps)))
        .collect();
    let p99: Vec<(f64, f64)> = timeline
        .iter()
        .enumerate()
        .map(|(i, t)| (x(i), y(t.p99_ms, max_p99)))
        .collect();
    s.push_str(&polyline(&rps, "#1f77b4"));
    s.push_str(&polyline(&p99, "#d62728"));
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#1f77b4\">— throughput</text>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d62728\">— p99</text>\n</svg>",
        ML + 10.0,
        MT + 16.0,
        ML + 120.0,
        MT + 16.0
    );
    s
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(1234.0), 2000.0);
        assert_eq!(nice_max(0.3), 0.5);
        assert_eq!(nice_max(5000.0), 5000.0);
    }

    #[test]
    fn chart_has_both_lines_scaled() {
        let tl: Vec<SecondReport> = (0..5)
            .map(|i| SecondReport {
                second: i,
                responses: 1000 * (i + 1),
                errors: 0,
                p99_ms: 2.0,
            })
            .collect();
        let svg = chart("a <b>", &tl);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;b&gt;"));
        // Highest throughput (5000, axis max 5000) sits on the top edge of the plot.
        assert!(svg.contains(&format!("{:.1},{:.1}", W - MR, MT)));
        // No external references: self-contained.
        assert!(!svg.contains("href"));
    }
}
