//! Timestamps for humans: milliseconds since the Unix epoch (what Tandem
//! stores) to and from RFC 3339 in UTC, and durations in short units.
//!
//! Hand-rolled (Howard Hinnant's civil-from-days algorithms) because the CLI
//! needs only these three conversions, which do not justify a date crate.

/// Days from 1970-01-01 to the proleptic Gregorian date `y-m-d`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `ms` since the epoch as RFC 3339 in UTC with milliseconds, for example
/// `2026-03-01T09:30:00.250Z`.
pub fn format_ms(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let (h, min, s, milli) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

/// Parses a point in time given as milliseconds since the epoch (digits
/// only), an RFC 3339 timestamp (`2026-03-01T09:30:00Z`, fractions and
/// `+02:00` offsets allowed, `T` or a space between date and time), or a
/// bare date (midnight UTC).
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map_err(|_| format!("{s:?} is too large for milliseconds since the epoch"));
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!(
            "{s:?} is neither an RFC 3339 time (like 2026-03-01T09:30:00Z) \
             nor milliseconds since the epoch"
        )
    })
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (i64::from(num(0..4)?), num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    let mut ms = days_from_civil(y, m, d) * 86_400_000;
    if b.len() == 10 {
        return Some(ms);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // 60 is a leap second; RFC 3339 allows it, and counting it as the next
    // second's start is close enough for filtering.
    if h > 23 || min > 59 || sec > 60 {
        return None;
    }
    ms += i64::from(h * 3_600_000 + min * 60_000 + sec * 1000);
    let mut rest = &s[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds are the stored precision; finer digits are dropped.
        let milli = format!("{:0<3}", &fraction[..digits.min(3)]);
        ms += i64::from(milli.parse::<u32>().ok()?);
        rest = &fraction[digits..];
    }
    let offset_ms = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            // `rest` is the last six bytes of `s`: sign, hours, colon, minutes.
            let n = s.len();
            let (oh, om) = (num(n - 5..n - 3)?, num(n - 2..n)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let offset = i64::from(oh * 3_600_000 + om * 60_000);
            if *sign == b'+' { offset } else { -offset }
        }
        _ => return None,
    };
    // `12:00+02:00` is 10:00 UTC.
    Some(ms - offset_ms)
}

/// A duration in milliseconds in short units: `850ms`, `2.35s`, `4m05s`,
/// `3h07m`, `2d04h`.
pub fn format_duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.2}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        3_600_000..86_400_000 => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
        _ => format!("{}d{:02}h", ms / 86_400_000, ms / 3_600_000 % 24),
    }
}

/// A duration as a number and a unit, `ms`, `s`, `m`, `h` or `d`
/// (`500ms`, `90m`, `30d`), in milliseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let digits = s.chars().take_while(char::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let scale = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if scale > 0 => n
            .checked_mul(scale)
            .ok_or_else(|| format!("{s:?} is too long")),
        _ => Err(format!(
            "{s:?} is not a duration: a whole number and a unit, ms, s, m, h or d (for example 30d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_with_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("90m"), Ok(5_400_000));
        assert_eq!(parse_duration("30d"), Ok(2_592_000_000));
        assert_eq!(parse_duration("0s"), Ok(0));
        for bad in [
            "",
            "30",
            "d",
            "1.5h",
            "-1d",
            "3 weeks",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_ms(1_709_285_400_250), "2024-03-01T09:30:00.250Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_what_it_formats_and_common_spellings() {
        for ms in [0, 1, 951_782_400_000, 1_709_285_400_250, 4_102_444_799_999] {
            assert_eq!(parse_time(&format_ms(ms)), Ok(ms));
        }
        let check = |s: &str, ms: i64| assert_eq!(parse_time(s), Ok(ms), "{s}");
        check("1709285400250", 1_709_285_400_250);
        check("2024-03-01", 1_709_251_200_000);
        check("2024-03-01T09:30:00Z", 1_709_285_400_000);
        check("2024-03-01 09:30:00.25z", 1_709_285_400_250);
        check("2024-03-01T09:30:00.123456Z", 1_709_285_400_123);
        check("2024-03-01T11:30:00+02:00", 1_709_285_400_000);
        check("2024-03-01T04:00:00.5-05:30", 1_709_285_400_500);
        for bad in [
            "",
            "yesterday",
            "2024-02-30",
            "2023-02-29",
            "2024-13-01",
            "2024-03-01T24:00:00Z",
            "2024-03-01T09:30:00",
            "2024-03-01T09:30:00.Z",
            "2024-03-01T09:30:00+2:00",
            "-5",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn durations_pick_a_readable_unit() {
        let cases = [
            (0, "0ms"),
            (850, "850ms"),
            (2350, "2.35s"),
            (245_000, "4m05s"),
            (11_220_000, "3h07m"),
            (187_200_000, "2d04h"),
            (-5, "0ms"),
        ];
        for (ms, text) in cases {
            assert_eq!(format_duration_ms(ms), text);
        }
    }
}
