//! Calendar dates for room expiry times and the names of daily log files, on the
//! `time` crate: days since 1970-01-01 (UTC) to a date and back, and RFC 3339.

use time::{Date, Month, OffsetDateTime};

/// The Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// Days since 1970-01-01 of a date; `None` for one that does not exist (2001-02-29).
pub fn days_from_civil(year: i32, month: u8, day: u8) -> Option<i64> {
    let date = Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
    Some(i64::from(date.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY)
}

/// The (year, month, day) of days since 1970-01-01; `None` beyond `time`'s range
/// (±9999 years).
pub(crate) fn civil_from_days(days: i64) -> Option<(i32, u8, u8)> {
    let julian = i32::try_from(days.checked_add(UNIX_EPOCH_JULIAN_DAY)?).ok()?;
    let date = Date::from_julian_day(julian).ok()?;
    Some((date.year(), u8::from(date.month()), date.day()))
}

/// Unix seconds as an RFC 3339 UTC timestamp, `2026-01-02T03:04:05Z`; times past the
/// year 9999 are written as its last second.
pub fn rfc3339(unix: u64) -> String {
    let t = i64::try_from(unix)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or_else(|| {
            Date::MAX
                .with_hms(23, 59, 59)
                .map_or(OffsetDateTime::UNIX_EPOCH, |d| d.assume_utc())
        });
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 2, 29), Some(11_016));
        assert_eq!(days_from_civil(2001, 2, 29), None);
        assert_eq!(days_from_civil(2000, 13, 1), None);
        for day in [-1, 0, 11_016, 20_000, 20_426, 47_482] {
            let (y, m, d) = civil_from_days(day).expect("in range");
            assert_eq!(days_from_civil(y, m, d), Some(day));
        }
        assert_eq!(civil_from_days(i64::MAX), None);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }
}
