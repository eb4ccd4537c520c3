//! Human units: durations (`250ms`, `30s`, `10m`, `1h`, `1h30m`) and sizes (`64Mi`, `1Gi`, bytes).
//!
//! The parsers are public so that command lines can reuse them (`hako run --memory 128Mi`).
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Parses a duration such as `250ms`, `30s`, `10m`, `1h`, `1.5s` or `1h30m`.
///
/// Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`, `d`. Several `NUMBER UNIT` parts add up.
/// A bare `0` is accepted as zero; any other number needs a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration; expected e.g. `30s`".to_owned());
    }
    if text.starts_with('-') {
        return Err(format!(
            "invalid duration `{s}`: durations cannot be negative"
        ));
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!(
                "invalid duration `{s}`: expected a number followed by a unit (ns, us, ms, s, m, h, d)"
            ));
        }
        let (number, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after_unit) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit.trim() {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "d" => 86_400 * 1_000_000_000,
            "" => {
                return Err(format!(
                    "invalid duration `{s}`: `{number}` has no unit; write e.g. `{number}s` or `{number}ms`"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration `{s}`: unknown unit `{other}` (use ns, us, ms, s, m, h or d)"
                ))
            }
        };
        let nanos = scale_decimal(number, unit_nanos)
            .ok_or_else(|| format!("invalid duration `{s}`: `{number}` is not a valid number"))?;
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| format!("invalid duration `{s}`: too large"))?;
        rest = after_unit;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000)
        .map_err(|_| format!("invalid duration `{s}`: too large"))?;
    // The remainder of a division by 10^9 always fits in u32.
    let nanos = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Parses a size in bytes: a plain number (`1048576`), a binary multiple (`64Ki`, `64Mi`, `1Gi`,
/// `Ti`, `Pi`, `Ei`), a decimal multiple (`k`/`K`, `M`, `G`, `T`, `P`, `E`), optionally followed
/// by `B` (`512B`, `64MiB`). Fractions are allowed with a unit (`1.5Gi`) and rounded down to a byte.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty size; expected e.g. `256Mi`".to_owned());
    }
    if text.starts_with('-') {
        return Err(format!("invalid size `{s}`: sizes cannot be negative"));
    }
    let num_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(num_len);
    if number.is_empty() {
        return Err(format!(
            "invalid size `{s}`: expected a number optionally followed by a unit like Ki, Mi, Gi"
        ));
    }
    let unit = unit.trim();
    let unit = unit.strip_suffix('B').unwrap_or(unit);
    let multiplier: u128 = match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        other => {
            return Err(format!(
                "invalid size `{s}`: unknown unit `{other}` (use Ki, Mi, Gi, Ti or k, M, G, T)"
            ))
        }
    };
    if multiplier == 1 && number.contains('.') {
        return Err(format!(
            "invalid size `{s}`: a byte count must be a whole number"
        ));
    }
    let bytes = scale_decimal(number, multiplier)
        .ok_or_else(|| format!("invalid size `{s}`: `{number}` is not a valid number"))?;
    u64::try_from(bytes).map_err(|_| format!("invalid size `{s}`: too large"))
}

/// `number` (digits with at most one dot) times `scale`, rounded down; `None` if malformed.
fn scale_decimal(number: &str, scale: u128) -> Option<u128> {
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut value: u128 = 0;
    for b in int_part.bytes() {
        value = value.checked_mul(10)?.checked_add(u128::from(b - b'0'))?;
    }
    let mut result = value.checked_mul(scale)?;
    // Fraction: keep at most 18 digits, enough below a nanosecond or a byte for every unit.
    let frac: &str = &frac_part[..frac_part.len().min(18)];
    if !frac.is_empty() {
        let mut frac_value: u128 = 0;
        let mut denom: u128 = 1;
        for b in frac.bytes() {
            frac_value = frac_value * 10 + u128::from(b - b'0');
            denom *= 10;
        }
        result = result.checked_add(frac_value.checked_mul(scale)? / denom)?;
    }
    Some(result)
}

/// Formats a duration the way it is written in the configuration (`250ms`, `30s`, `1h30m`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let nanos = d.as_nanos();
    if nanos % 1_000_000_000 != 0 {
        if nanos % 1_000_000 == 0 {
            return format!("{}ms", nanos / 1_000_000);
        }
        if nanos % 1_000 == 0 {
            return format!("{}us", nanos / 1_000);
        }
        return format!("{nanos}ns");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [("h", 3600u64), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

/// Formats a size with the largest binary unit that divides it (`256Mi`, `1Gi`, `1000`).
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [
        ("Ei", 60u32),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ] {
        let m = 1u64 << shift;
        if bytes >= m && bytes % m == 0 {
            return format!("{}{unit}", bytes / m);
        }
    }
    bytes.to_string()
}

/// serde: an optional duration (`~` is none).
pub(crate) fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    d.deserialize_any(OrNull(DurationVisitor))
}

/// Wraps a visitor so that a YAML null gives `None`.
struct OrNull<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for OrNull<V> {
    type Value = Option<V::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.0.visit_str(v).map(Some)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.0.visit_u64(v).map(Some)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.0.visit_i64(v).map(Some)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.0.visit_f64(v).map(Some)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration like `250ms`, `30s`, `10m` or `1h`")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        if v == 0 {
            Ok(Duration::ZERO)
        } else {
            Err(E::custom(format!(
                "invalid duration `{v}`: a duration needs a unit, e.g. `{v}s` or `{v}ms`"
            )))
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        if v < 0 {
            Err(E::custom(format!(
                "invalid duration `{v}`: durations cannot be negative"
            )))
        } else {
            self.visit_u64(v.unsigned_abs())
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "invalid duration `{v}`: a duration needs a unit, e.g. `{v}s`"
        )))
    }
}

/// A size as read from YAML: `negative` keeps `-1Gi` apart so that validation can say
/// "must be greater than zero" instead of stopping at a type error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RawSize {
    pub bytes: u64,
    pub negative: bool,
}

impl RawSize {
    pub(crate) const fn bytes(bytes: u64) -> Self {
        RawSize {
            bytes,
            negative: false,
        }
    }
}

/// serde: an optional size (`~` is none).
pub(crate) fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RawSize>, D::Error> {
    d.deserialize_any(OrNull(SizeVisitor))
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = RawSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size like `64Mi`, `1Gi` or a number of bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
        let t = v.trim();
        if let Some(positive) = t.strip_prefix('-') {
            let bytes = parse_size(positive).map_err(E::custom)?;
            return Ok(RawSize {
                bytes,
                negative: bytes != 0,
            });
        }
        parse_size(t).map(RawSize::bytes).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
        Ok(RawSize::bytes(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
        Ok(RawSize {
            bytes: v.unsigned_abs(),
            negative: v < 0,
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawSize, E> {
        Err(E::custom(format!(
            "invalid size `{v}`: a byte count must be a whole number (or use a unit, e.g. `{v}Gi`)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("20us"), Ok(Duration::from_micros(20)));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("30x")
            .unwrap_err()
            .contains("unknown unit `x`"));
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1..2s").is_err());
        assert!(parse_duration("99999999999999999999999h").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64Mi"), Ok(64 << 20));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2k"), Ok(2000));
        assert_eq!(parse_size("512B"), Ok(512));
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("12Qi").unwrap_err().contains("unknown unit"));
        assert!(parse_size("-1Gi").is_err());
        assert!(parse_size("100Ei").unwrap_err().contains("too large"));
    }

    #[test]
    fn formatting_round_trips() {
        for d in ["250ms", "30s", "10m", "1h", "1h30m5s", "20us"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
        for s in ["256Mi", "1Gi", "1000", "3Ki"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
    }
}
