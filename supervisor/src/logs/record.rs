//! One log line of an instance ([`Record`]), its on-disk text form and the UTC timestamps it
//! carries.
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which descriptor of the instance a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    /// The syslog priority journald records: 6 (info) for stdout, 3 (err) for stderr.
    pub fn priority(self) -> u8 {
        match self {
            Stream::Stdout => 6,
            Stream::Stderr => 3,
        }
    }

    fn parse(s: &str) -> Option<Stream> {
        match s {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// One line an instance printed (without its newline; at most
/// [`MAX_LINE`](super::frame::MAX_LINE) bytes), or a marker hako inserted (`hako: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Microseconds since the Unix epoch, when hako read the line.
    pub ts_us: u64,
    pub app: Arc<str>,
    /// The instance's name, as `hako ps` shows it (`web-3`).
    pub instance: Arc<str>,
    pub stream: Stream,
    pub text: String,
}

/// Bytes a record is accounted for in bounded queues and rings (text plus a fixed overhead).
pub fn weight(r: &Record) -> usize {
    r.text.len() + 96
}

/// Now, in microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Days since 1970-01-01 to a (year, month, day) civil date (proleptic Gregorian; Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2025-05-01T12:00:00.123456Z`: fixed width, so that timestamps compare as strings.
pub fn format_ts(ts_us: u64) -> String {
    let secs = (ts_us / 1_000_000) as i64;
    let micros = ts_us % 1_000_000;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// The line written to `state_dir/logs/APP.log` (and sent by the admin endpoint):
/// `TIMESTAMP INSTANCE STREAM TEXT\n`. The text never holds a newline (lines are framed on
/// it), so every record is one line.
pub fn to_line(r: &Record) -> String {
    let mut s = String::with_capacity(r.text.len() + 64);
    s.push_str(&format_ts(r.ts_us));
    s.push(' ');
    s.push_str(&r.instance);
    s.push(' ');
    s.push_str(r.stream.as_str());
    s.push(' ');
    s.push_str(&r.text);
    s.push('\n');
    s
}

/// The parts of a line written by [`to_line`]: (timestamp, instance, stream, text).
pub fn parse_line(line: &str) -> Option<(&str, &str, Stream, &str)> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let mut it = line.splitn(4, ' ');
    let ts = it.next()?;
    let instance = it.next()?;
    let stream = Stream::parse(it.next()?)?;
    let text = it.next().unwrap_or("");
    (ts.len() == 27 && ts.ends_with('Z')).then_some((ts, instance, stream, text))
}

/// Which records a reader asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only records at or after this time (as [`format_ts`] writes it).
    pub since: Option<String>,
    /// Only this instance: its name (`web-3`) or its number (`3`).
    pub instance: Option<String>,
}

impl Filter {
    fn instance_matches(&self, app: &str, instance: &str) -> bool {
        match &self.instance {
            None => true,
            Some(want) => {
                instance == want
                    || instance
                        .strip_prefix(app)
                        .and_then(|r| r.strip_prefix('-'))
                        .is_some_and(|n| n == want)
            }
        }
    }

    /// Whether a stored line (of `app`) passes.
    pub fn line_matches(&self, app: &str, line: &str) -> bool {
        let Some((ts, instance, _, _)) = parse_line(line) else {
            return false;
        };
        self.since.as_deref().is_none_or(|s| ts >= s) && self.instance_matches(app, instance)
    }

    /// Whether a record passes.
    pub fn matches(&self, r: &Record) -> bool {
        self.since
            .as_deref()
            .is_none_or(|s| format_ts(r.ts_us).as_str() >= s)
            && self.instance_matches(&r.app, &r.instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts_us: u64, instance: &str, text: &str) -> Record {
        Record {
            ts_us,
            app: "web".into(),
            instance: instance.into(),
            stream: Stream::Stderr,
            text: text.into(),
        }
    }

    #[test]
    fn timestamps_are_utc_rfc3339_with_microseconds() {
        assert_eq!(format_ts(0), "1970-01-01T00:00:00.000000Z");
        // 2024-02-29T23:59:59.5Z (a leap day).
        assert_eq!(
            format_ts(1_709_251_199_500_000),
            "2024-02-29T23:59:59.500000Z"
        );
        assert_eq!(
            format_ts(951_782_400_000_001),
            "2000-02-29T00:00:00.000001Z"
        );
        // Later times compare greater as strings.
        assert!(format_ts(1_709_251_199_500_000) > format_ts(951_782_400_000_001));
    }

    #[test]
    fn a_line_round_trips_and_keeps_spaces_in_the_text() {
        let r = rec(1_700_000_000_000_000, "web-3", "hello  world ");
        let line = to_line(&r);
        assert_eq!(
            line,
            "2023-11-14T22:13:20.000000Z web-3 stderr hello  world \n"
        );
        let (ts, inst, stream, text) = parse_line(&line).expect("parses");
        assert_eq!(
            (ts, inst, stream, text),
            (
                "2023-11-14T22:13:20.000000Z",
                "web-3",
                Stream::Stderr,
                "hello  world "
            )
        );
        assert_eq!(parse_line("garbage"), None);
        assert_eq!(
            parse_line("2023-11-14T22:13:20.000000Z web-3 stdin x"),
            None
        );
    }

    #[test]
    fn filter_by_time_and_instance_name_or_number() {
        let f = Filter {
            since: Some(format_ts(2_000_000)),
            instance: Some("3".into()),
        };
        assert!(f.matches(&rec(2_000_000, "web-3", "x")));
        assert!(!f.matches(&rec(1_999_999, "web-3", "x")));
        assert!(!f.matches(&rec(3_000_000, "web-13", "x")));
        assert!(f.line_matches("web", &to_line(&rec(3_000_000, "web-3", "x"))));
        assert!(!f.line_matches("web", &to_line(&rec(3_000_000, "web-4", "x"))));
        let by_name = Filter {
            since: None,
            instance: Some("web-4".into()),
        };
        assert!(by_name.line_matches("web", &to_line(&rec(1, "web-4", "x"))));
    }
}
