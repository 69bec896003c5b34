//! Wall-clock instants as stored and shown by keygate: milliseconds since the
//! Unix epoch, serialized as RFC 3339 strings.
//!
//! Pure code takes a `Timestamp` for "now" as a parameter instead of reading
//! the clock, so that tests can drive time explicitly.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }

    pub fn from_millis(ms: i64) -> Timestamp {
        Timestamp(ms)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn to_system(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_millis(self.0.unsigned_abs())
        }
    }

    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    pub fn minus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// Time left until `later`, zero if it has passed.
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0).max(0) as u64)
    }

    /// Always three fractional digits (`2026-01-02T03:04:05.060Z`), so that
    /// timestamps sort correctly as text. Years 0000-9999; outside them
    /// (never a real clock) the milliseconds are written as a number.
    ///
    /// Formatted by hand: every audit record formats its time twice, and
    /// this is several times cheaper than a general formatter.
    pub fn to_rfc3339(self) -> String {
        let mut out = String::with_capacity(24);
        self.push_rfc3339(&mut out);
        out
    }

    /// [`Timestamp::to_rfc3339`], appended to `out`.
    pub fn push_rfc3339(self, out: &mut String) {
        let (days, ms_of_day) = (self.0.div_euclid(86_400_000), self.0.rem_euclid(86_400_000));
        let (year, month, day) = civil_from_days(days);
        if !(0..=9999).contains(&year) {
            out.push_str(&self.0.to_string());
            return;
        }
        let secs = ms_of_day / 1000;
        let mut text = [0u8; 24];
        let mut put = |at: usize, value: i64, width: usize| {
            let mut v = value;
            for i in (0..width).rev() {
                text[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, year, 4);
        put(5, month, 2);
        put(8, day, 2);
        put(11, secs / 3600, 2);
        put(14, secs / 60 % 60, 2);
        put(17, secs % 60, 2);
        put(20, ms_of_day % 1000, 3);
        for (at, sep) in [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (23, b'Z'),
        ] {
            text[at] = sep;
        }
        // ASCII by construction, so this never fails (and its check is cheap).
        out.push_str(std::str::from_utf8(&text).unwrap_or_default());
    }

    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .ok()
            .map(Timestamp)
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_with_millis() {
        let t = Timestamp::from_millis(1_795_000_000_123);
        let s = t.to_rfc3339();
        assert_eq!(s, "2026-11-18T11:06:40.123Z");
        assert_eq!(Timestamp::parse_rfc3339(&s), Some(t));
    }

    #[test]
    fn timestamps_have_a_fixed_width_so_text_order_is_time_order() {
        let a = Timestamp::from_millis(1_795_000_000_470);
        let b = Timestamp::from_millis(1_795_000_000_000);
        assert_eq!(a.to_rfc3339(), "2026-11-18T11:06:40.470Z");
        assert_eq!(b.to_rfc3339(), "2026-11-18T11:06:40.000Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-18T11:06:40.47Z"),
            Some(a),
            "the older, shorter spelling still parses"
        );
    }

    #[test]
    fn hand_formatting_agrees_with_the_time_crate() {
        let fixed = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        // Leap days, century rules, epoch edges, before 1970, far future.
        let mut samples = vec![
            0,
            -1,
            1,
            951_782_400_000,
            4_107_542_400_999,
            -2_208_988_800_000,
        ];
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x.rem_euclid(253_402_300_800_000)); // up to 9999-12-31
            samples.push(-(x.rem_euclid(62_135_596_800_000))); // back to 0000
        }
        for ms in samples {
            let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .expect("in range");
            let expected = t.format(&fixed).expect("formats");
            assert_eq!(Timestamp::from_millis(ms).to_rfc3339(), expected, "{ms}");
        }
    }

    #[test]
    fn until_is_zero_for_the_past() {
        let t = Timestamp::from_millis(10_000);
        assert_eq!(t.until(Timestamp::from_millis(5_000)), Duration::ZERO);
        assert_eq!(
            t.until(t.plus(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
    }
}
