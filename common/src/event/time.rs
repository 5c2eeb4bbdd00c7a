//! Time helpers: the clock, and RFC 3339 in and out at millisecond precision.

use chrono::{DateTime, SecondsFormat};

/// The current time, epoch milliseconds UTC.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Parses RFC 3339 (any offset) to epoch milliseconds, truncating finer precision.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The first millisecond of year 0 (`0000-01-01T00:00:00.000Z`): the earliest time
/// [`rfc3339_ascii`] writes.
const YEAR_0_MS: i64 = -62_167_219_200_000;

/// Formats epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`, as chrono's
/// `to_rfc3339_opts(Millis, true)` does.
///
/// Hand-written for years 0–9999 ([`rfc3339_ascii`]) because the generator formats millions of
/// times a second; anything else goes through chrono.
pub fn format_rfc3339_ms(ms: i64) -> String {
    match rfc3339_ascii(ms) {
        // The buffer holds ASCII digits and separators only.
        Some(buf) => String::from_utf8_lossy(&buf).into_owned(),
        None => DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_else(|| ms.to_string()),
    }
}

/// The 24 ASCII bytes of `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time in the years 0–9999; `None`
/// outside them. Written digit by digit: `write!` of seven integers (and, in an HTTP answer,
/// serde's escaping of each piece) costs more than the rest of a profile's JSON.
pub fn rfc3339_ascii(ms: i64) -> Option<[u8; 24]> {
    if !(YEAR_0_MS..=super::MAX_TS_MS).contains(&ms) {
        return None;
    }
    let mut buf = [0u8; 24];
    write_rfc3339_ms(ms, &mut buf);
    Some(buf)
}

/// Writes `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time in the years 0–9999 into `out`.
pub fn write_rfc3339_ms(ms: i64, out: &mut [u8; 24]) {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss, mmm) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    *out = *b"0000-00-00T00:00:00.000Z";
    for (at, width, mut v) in [
        (0, 4, y),
        (5, 2, m),
        (8, 2, d),
        (11, 2, hh),
        (14, 2, mm),
        (17, 2, ss),
        (20, 3, mmm),
    ] {
        for digit in out[at..at + width].iter_mut().rev() {
            *digit = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's `civil_from_days`.
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The UTC date of epoch milliseconds as `YYYY-MM-DD`.
pub fn date_of_ms(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn formatter_matches_chrono(
            ms in (YEAR_0_MS - 1_000_000_000_000)..=(crate::event::MAX_TS_MS + 1_000_000_000_000)
        ) {
            let ours = format_rfc3339_ms(ms);
            let chrono = DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(SecondsFormat::Millis, true);
            prop_assert_eq!(&ours, &chrono);
            // The years 0–9999: what the API shows and events carry.
            if (YEAR_0_MS..=crate::event::MAX_TS_MS).contains(&ms) {
                prop_assert!(rfc3339_ascii(ms).is_some());
                prop_assert_eq!(parse_rfc3339_ms(&ours), Some(ms));
                prop_assert_eq!(date_of_ms(ms), chrono[..10].to_string());
            } else {
                prop_assert_eq!(rfc3339_ascii(ms), None);
            }
        }
    }
}
