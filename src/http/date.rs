//! HTTP dates (RFC 9110 section 5.6.7): the `Date` header value (IMF-fixdate), formatted
//! at most once per second, and the parsing of the three date forms a client may send
//! (`If-Modified-Since`, `If-Range`).

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const DATE_LEN: usize = 29;

thread_local! {
    /// (second, its formatted date) per thread: no lock on the response path.
    static CACHE: Cell<(u64, [u8; DATE_LEN])> = const { Cell::new((u64::MAX, [0; DATE_LEN])) };
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The current time as an IMF-fixdate.
pub fn now() -> [u8; DATE_LEN] {
    let secs = now_secs();
    CACHE.with(|cache| {
        let (cached_secs, text) = cache.get();
        if cached_secs == secs {
            return text;
        }
        let text = format_imf_fixdate(secs);
        cache.set((secs, text));
        text
    })
}

/// Formats seconds since the Unix epoch as `Www, DD Mon YYYY HH:MM:SS GMT`.
pub fn format_imf_fixdate(secs: u64) -> [u8; DATE_LEN] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let mut out = [0u8; DATE_LEN];
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    out[3..5].copy_from_slice(b", ");
    two_digits(&mut out[5..7], day);
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    out[11] = b' ';
    let y = year.clamp(0, 9999) as u32;
    two_digits(&mut out[12..14], y / 100);
    two_digits(&mut out[14..16], y % 100);
    out[16] = b' ';
    two_digits(&mut out[17..19], (rem / 3600) as u32);
    out[19] = b':';
    two_digits(&mut out[20..22], ((rem % 3600) / 60) as u32);
    out[22] = b':';
    two_digits(&mut out[23..25], (rem % 60) as u32);
    out[25..].copy_from_slice(b" GMT");
    out
}

fn two_digits(out: &mut [u8], n: u32) {
    out[0] = b'0' + (n / 10 % 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

/// Proleptic Gregorian (year, month 1-12, day 1-31) for a count of days since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The first second after 9999-12-31 23:59:59 (the last that formats).
const LAST_SECOND: u64 = 253_402_300_800;

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of `civil_from_days`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the Unix epoch of an HTTP date in any of its three forms:
/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850 (`Sunday, 06-Nov-94 08:49:37
/// GMT`) or asctime (`Sun Nov  6 08:49:37 1994`). The weekday is not checked (RFC 9110
/// lets a recipient ignore it); anything else malformed, or before 1970, is `None`.
pub fn parse_http_date(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?.trim();
    let (year, month, day, clock): (i64, u32, u32, &str) =
        if let Some((_, rest)) = text.split_once(", ") {
            let fields: Vec<&str> = rest.split([' ', '-']).collect();
            match fields.as_slice() {
                [day, month, year_text, clock, "GMT"] => {
                    let year: i64 = digits(year_text)?;
                    // RFC 850's two-digit year (dates before 1970 are refused anyway).
                    let year = match year_text.len() {
                        2 if year < 70 => 2000 + year,
                        2 => 1900 + year,
                        _ => year,
                    };
                    (year, month_number(month)?, digits(day)?, *clock)
                }
                _ => return None,
            }
        } else {
            let fields: Vec<&str> = text.split_ascii_whitespace().collect();
            match fields.as_slice() {
                [_weekday, month, day, clock, year] => {
                    (digits(year)?, month_number(month)?, digits(day)?, *clock)
                }
                _ => return None,
            }
        };
    let mut parts = clock.split(':');
    let (h, m, s): (u64, u64, u64) = (
        digits(parts.next()?)?,
        digits(parts.next()?)?,
        digits(parts.next()?)?,
    );
    if parts.next().is_some() || h > 23 || m > 59 || s > 60 || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if days < 0 || civil_from_days(days) != (year, month, day) {
        return None;
    }
    // A leap second on the last day of 9999 would be a year IMF-fixdate cannot write.
    Some(days as u64 * 86_400 + h * 3600 + m * 60 + s).filter(|&secs| secs < LAST_SECOND)
}

fn digits<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn month_number(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    MONTHS.iter().position(|m| *m == name).map(|i| i as u32 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        for form in [
            &b"Sun, 06 Nov 1994 08:49:37 GMT"[..],
            b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(form), Some(784_111_777), "{form:?}");
        }
        assert_eq!(parse_http_date(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date(b"Tue, 29 Feb 2000 00:00:00 GMT"),
            Some(951_782_400)
        );
    }

    #[test]
    fn refuses_malformed_dates() {
        for bad in [
            &b""[..],
            b"yesterday",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 06 Nov 1994 08:49 GMT",
            b"Sun, 31 Feb 1994 08:49:37 GMT",
            b"Sun, 06 Foo 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 24:00:00 GMT",
            b"Sun, 06 Nov 1969 08:49:37 GMT",
            b"Sun, 06 Nov +994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37:01 GMT",
            b"\xff\xfe",
            b"Fri, 31 Dec 9999 23:59:60 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formatting_and_parsing_agree() {
        for secs in [
            0u64,
            59,
            86_399,
            86_400,
            951_782_400,
            1_795_568_400,
            4_102_444_800,
        ] {
            assert_eq!(parse_http_date(&format_imf_fixdate(secs)), Some(secs));
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(&format_imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &format_imf_fixdate(784_111_777),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            &format_imf_fixdate(951_782_400),
            b"Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(
            &format_imf_fixdate(1_795_568_400),
            b"Wed, 25 Nov 2026 01:00:00 GMT"
        );
    }

    #[test]
    fn now_is_well_formed() {
        let d = now();
        assert_eq!(&d[25..], b" GMT");
    }
}
