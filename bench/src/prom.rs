//! A small parser for the Prometheus text exposition format, the scrape of hako's admin
//! endpoint, and deltas between two scrapes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Label set of a sample, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (including `_bucket`, `_sum`, ... suffixes).
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Value.
    pub value: f64,
}

/// A malformed exposition line.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PromError {
    /// The line cannot be parsed.
    #[error("line {line}: {reason}: {text:?}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
        /// The line.
        text: String,
    },
    /// The scrape failed.
    #[error("scrape of {url} failed: {reason}")]
    Scrape {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parses the text format: comments and blank lines are skipped; label values may contain
/// escaped `\\`, `\"` and `\n`; an optional timestamp after the value is ignored.
pub fn parse(text: &str) -> Result<Vec<Sample>, PromError> {
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason| PromError::Syntax {
            line: idx + 1,
            reason,
            text: raw.to_string(),
        };
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| err("missing value"))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(err("invalid metric name"));
        }
        let mut labels = Labels::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let consumed;
            loop {
                // Skip spaces and commas.
                while let Some((_, c)) = chars.peek() {
                    if *c == ',' || c.is_whitespace() {
                        chars.next();
                    } else {
                        break;
                    }
                }
                match chars.peek() {
                    Some((i, '}')) => {
                        consumed = i + 1;
                        break;
                    }
                    None => return Err(err("unterminated label set")),
                    _ => {}
                }
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                let key = key.trim().to_string();
                if !valid_name(&key) {
                    return Err(err("invalid label name"));
                }
                if !matches!(chars.next(), Some((_, '"'))) {
                    return Err(err("label value must be quoted"));
                }
                let mut val = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.next() {
                            Some((_, 'n')) => val.push('\n'),
                            Some((_, '\\')) => val.push('\\'),
                            Some((_, '"')) => val.push('"'),
                            Some((_, other)) => {
                                val.push('\\');
                                val.push(other);
                            }
                            None => return Err(err("unterminated label value")),
                        },
                        c => val.push(c),
                    }
                }
                if !closed {
                    return Err(err("unterminated label value"));
                }
                labels.insert(key, val);
            }
            rest = &r[consumed..];
        }
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_value)
            .ok_or_else(|| err("invalid value"))?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err("invalid timestamp"))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing garbage"));
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// Sum of all samples of `name` (over all label sets).
pub fn sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// Change of one metric between two scrapes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricDelta {
    /// Metric name.
    pub name: String,
    /// Sum over all label sets, after minus before.
    pub total: f64,
    /// Per label set (rendered `k="v",...`), after minus before; zero changes omitted.
    pub by_labels: BTreeMap<String, f64>,
}

fn render_labels(l: &Labels) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Deltas of `name` between `before` and `after` (a label set missing in `before` counts from 0).
pub fn delta(before: &[Sample], after: &[Sample], name: &str) -> MetricDelta {
    let mut by: BTreeMap<String, f64> = BTreeMap::new();
    for s in after.iter().filter(|s| s.name == name) {
        *by.entry(render_labels(&s.labels)).or_insert(0.0) += s.value;
    }
    for s in before.iter().filter(|s| s.name == name) {
        *by.entry(render_labels(&s.labels)).or_insert(0.0) -= s.value;
    }
    by.retain(|_, v| *v != 0.0);
    MetricDelta {
        name: name.to_string(),
        total: sum(after, name) - sum(before, name),
        by_labels: by,
    }
}

/// The hako counters reported by `--scrape`.
pub const HAKO_COUNTERS: [&str; 3] = [
    "hako_boots_total",
    "hako_instance_stops_total",
    "hako_limit_changes_total",
];

/// Deltas of [`HAKO_COUNTERS`].
pub fn hako_deltas(before: &[Sample], after: &[Sample]) -> Vec<MetricDelta> {
    HAKO_COUNTERS
        .iter()
        .map(|n| delta(before, after, n))
        .collect()
}

/// Renders deltas as text lines.
pub fn deltas_text(d: &[MetricDelta]) -> String {
    let mut s = String::new();
    for m in d {
        s.push_str(&format!("  {} +{}\n", m.name, m.total));
        for (l, v) in &m.by_labels {
            s.push_str(&format!("    {{{l}}} +{v}\n"));
        }
    }
    s
}

/// GETs `url` and parses the exposition.
pub async fn scrape(url: &str) -> Result<Vec<Sample>, PromError> {
    let bad = |reason: String| PromError::Scrape {
        url: url.to_string(),
        reason,
    };
    let body = crate::engine::get_body(url, Duration::from_secs(5))
        .await
        .map_err(bad)?;
    parse(&String::from_utf8_lossy(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP hako_boots_total Boots.
# TYPE hako_boots_total counter
hako_boots_total{app="a",result="ok"} 3
hako_boots_total{app="b",result="ok"} 1 1700000000000
hako_boots_total{app="b",result="error"} 2
hako_instances{app="a", state="ready"} 1
hako_up 1
weird{path="C:\\dir",msg="say \"hi\"\nbye",} 4.5e1
hako_boot_duration_seconds_bucket{app="a",le="+Inf"} 3
nan_metric NaN
"#;

    #[test]
    fn parses_names_labels_values() {
        let s = parse(TEXT).unwrap();
        assert_eq!(s.len(), 8);
        assert_eq!(s[0].name, "hako_boots_total");
        assert_eq!(s[0].labels["app"], "a");
        assert_eq!(s[0].labels["result"], "ok");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].value, 1.0, "timestamp ignored");
        assert_eq!(s[3].labels["state"], "ready");
        assert!(s[4].labels.is_empty());
        assert_eq!(s[5].labels["path"], "C:\\dir");
        assert_eq!(s[5].labels["msg"], "say \"hi\"\nbye");
        assert_eq!(s[5].value, 45.0);
        assert_eq!(s[6].labels["le"], "+Inf");
        assert!(s[7].value.is_nan());
        assert_eq!(sum(&s, "hako_boots_total"), 6.0);
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "hako_x",
            "hako_x{a=\"b\" 1",
            "hako_x{a=b} 1",
            "hako_x abc",
            "1bad 1",
            "hako_x 1 notatimestamp",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(
                matches!(e, PromError::Syntax { line: 1, .. }),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn deltas_sum_and_per_label() {
        let before = parse(TEXT).unwrap();
        let after = parse(
            r#"hako_boots_total{app="a",result="ok"} 5
hako_boots_total{app="b",result="ok"} 1
hako_boots_total{app="b",result="error"} 2
hako_boots_total{app="c",result="ok"} 1
hako_instance_stops_total{app="a",reason="idle"} 2
"#,
        )
        .unwrap();
        let d = hako_deltas(&before, &after);
        assert_eq!(d[0].name, "hako_boots_total");
        assert_eq!(d[0].total, 3.0);
        assert_eq!(d[0].by_labels.len(), 2);
        assert_eq!(d[0].by_labels[r#"app="a",result="ok""#], 2.0);
        assert_eq!(d[0].by_labels[r#"app="c",result="ok""#], 1.0);
        assert_eq!(d[1].total, 2.0);
        assert_eq!(d[2].total, 0.0);
        assert!(deltas_text(&d).contains("hako_boots_total +3"));
    }
}
