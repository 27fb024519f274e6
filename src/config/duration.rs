//! Durations as Istio's YAML writes them: Go's `time.ParseDuration` forms (`5s`, `1.5s`,
//! `100ms`, `1m30s`, `2h`, `500us`), which include protobuf JSON's `1.000340012s`.
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::fmt;

/// A non-negative duration read from a Go/protobuf duration string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing to parse.
    #[error("empty duration")]
    Empty,
    /// A minus sign: Istio has no use for negative durations.
    #[error("duration `{0}` is negative")]
    Negative(String),
    /// A number without a unit (other than a bare `0`).
    #[error("duration `{0}` has a number without a unit (use ns, us, ms, s, m or h)")]
    MissingUnit(String),
    /// A unit Go does not know.
    #[error("duration `{input}` has unknown unit `{unit}` (use ns, us, ms, s, m or h)")]
    UnknownUnit { input: String, unit: String },
    /// Not a number where one was expected.
    #[error("invalid duration `{0}` (expected forms like 5s, 1.5s, 100ms, 1m30s, 2h)")]
    Invalid(String),
    /// More than the largest duration.
    #[error("duration `{0}` is too large")]
    Overflow(String),
}

const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

impl Duration {
    /// Parses a Go-style duration string.
    pub fn parse(input: &str) -> Result<Duration, DurationError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        let s = match s.strip_prefix('+') {
            Some(rest) => rest,
            None if s.starts_with('-') => {
                return Err(DurationError::Negative(input.to_string()));
            }
            None => s,
        };
        if s == "0" {
            return Ok(Duration::default());
        }
        let mut total: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            let int_part = &rest[..int_len];
            rest = &rest[int_len..];
            let mut frac_part = "";
            if let Some(after_dot) = rest.strip_prefix('.') {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                frac_part = &after_dot[..frac_len];
                rest = &after_dot[frac_len..];
            }
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(DurationError::Invalid(input.to_string()));
            }
            let unit_len = rest
                .char_indices()
                .find(|(_, c)| c.is_ascii_digit() || *c == '.')
                .map_or(rest.len(), |(i, _)| i);
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            if unit.is_empty() {
                return Err(DurationError::MissingUnit(input.to_string()));
            }
            let Some(&(_, nanos_per_unit)) = UNITS.iter().find(|(name, _)| *name == unit) else {
                return Err(DurationError::UnknownUnit {
                    input: input.to_string(),
                    unit: unit.to_string(),
                });
            };
            let overflow = || DurationError::Overflow(input.to_string());
            let whole: u128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| overflow())?
            };
            let mut nanos = whole.checked_mul(nanos_per_unit).ok_or_else(overflow)?;
            // Fractions finer than a nanosecond are dropped, as Go does.
            let mut scale = nanos_per_unit;
            for digit in frac_part.bytes() {
                scale /= 10;
                if scale == 0 {
                    break;
                }
                nanos += u128::from(digit - b'0') * scale;
            }
            total = total.checked_add(nanos).ok_or_else(overflow)?;
            if total > u128::from(u64::MAX) {
                return Err(overflow());
            }
        }
        let secs = (total / 1_000_000_000) as u64;
        let nanos = (total % 1_000_000_000) as u32;
        Ok(Duration(std::time::Duration::new(secs, nanos)))
    }

    /// The value as a `std::time::Duration`.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl fmt::Display for Duration {
    /// Protobuf JSON's form: seconds with up to nine fraction digits, e.g. `1.5s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else {
            let frac = format!("{nanos:09}");
            write!(f, "{secs}.{}s", frac.trim_end_matches('0'))
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as 5s, 1.5s, 100ms or 1m30s")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn parses_go_forms() {
        let cases: &[(&str, Std)] = &[
            ("5s", Std::from_secs(5)),
            ("1.5s", Std::from_millis(1500)),
            ("100ms", Std::from_millis(100)),
            ("1m30s", Std::from_secs(90)),
            ("2h", Std::from_secs(7200)),
            ("500us", Std::from_micros(500)),
            ("500µs", Std::from_micros(500)),
            ("10ns", Std::from_nanos(10)),
            ("0", Std::ZERO),
            ("0s", Std::ZERO),
            ("+3s", Std::from_secs(3)),
            (".5s", Std::from_millis(500)),
            ("1.000340012s", Std::new(1, 340_012)),
            ("1h2m3s4ms", Std::new(3723, 4_000_000)),
            ("1.5h", Std::from_secs(5400)),
        ];
        for (input, want) in cases {
            assert_eq!(Duration::parse(input), Ok(Duration(*want)), "{input}");
        }
    }

    #[test]
    fn rejects_with_a_precise_error() {
        let cases: &[(&str, &str)] = &[
            ("", "empty duration"),
            (
                "5",
                "duration `5` has a number without a unit (use ns, us, ms, s, m or h)",
            ),
            ("-1s", "duration `-1s` is negative"),
            (
                "5sec",
                "duration `5sec` has unknown unit `sec` (use ns, us, ms, s, m or h)",
            ),
            (
                "1d",
                "duration `1d` has unknown unit `d` (use ns, us, ms, s, m or h)",
            ),
            (
                "s",
                "invalid duration `s` (expected forms like 5s, 1.5s, 100ms, 1m30s, 2h)",
            ),
            (
                "1.s.",
                "invalid duration `1.s.` (expected forms like 5s, 1.5s, 100ms, 1m30s, 2h)",
            ),
            (
                "99999999999999999999999h",
                "duration `99999999999999999999999h` is too large",
            ),
            ("9999999999999h", "duration `9999999999999h` is too large"),
        ];
        for (input, want) in cases {
            let err = Duration::parse(input).expect_err(input);
            assert_eq!(err.to_string(), *want, "{input}");
        }
    }

    #[test]
    fn displays_as_protobuf_json() {
        assert_eq!(Duration(Std::from_millis(1500)).to_string(), "1.5s");
        assert_eq!(Duration(Std::from_secs(90)).to_string(), "90s");
        assert_eq!(Duration(Std::from_nanos(1)).to_string(), "0.000000001s");
    }
}
