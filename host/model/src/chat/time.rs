//! `strftime_now`, which templates use to date their system prompts.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// `strftime_now(format)`: the current time, formatted like Python's
/// `datetime.now().strftime(format)`. The time is UTC, which is also what
/// Python gives in a container without a configured time zone.
pub(super) fn strftime_now(format: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(format, secs)
}

const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// C-locale `strftime` of the UTC time `unix_secs`, with glibc's `%-x`
/// (no padding). A naive datetime has no zone, so `%Z` and `%z` are empty,
/// as in Python.
pub fn strftime(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.next_if_eq(&'-').is_some();
        let Some(spec) = chars.next() else {
            out.push('%');
            if unpadded {
                out.push('-');
            }
            break;
        };
        let num = |out: &mut String, n: i64, width: usize| {
            let _ = if unpadded {
                write!(out, "{n}")
            } else {
                write!(out, "{n:0width$}")
            };
        };
        match spec {
            'a' => out.push_str(&DAYS[weekday][..3]),
            'A' => out.push_str(DAYS[weekday]),
            'b' | 'h' => out.push_str(&MONTHS[month as usize - 1][..3]),
            'B' => out.push_str(MONTHS[month as usize - 1]),
            'd' => num(&mut out, day, 2),
            'e' => {
                let _ = write!(out, "{day:2}");
            }
            'H' => num(&mut out, hour, 2),
            'I' => num(&mut out, hour12, 2),
            'j' => num(&mut out, yday, 3),
            'm' => num(&mut out, month, 2),
            'M' => num(&mut out, minute, 2),
            'S' => num(&mut out, second, 2),
            'p' => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            'y' => num(&mut out, year.rem_euclid(100), 2),
            'Y' => {
                let _ = write!(out, "{year}");
            }
            'C' => num(&mut out, year.div_euclid(100), 2),
            'u' => {
                let _ = write!(out, "{}", if weekday == 0 { 7 } else { weekday });
            }
            'w' => {
                let _ = write!(out, "{weekday}");
            }
            'F' => {
                let _ = write!(out, "{year}-{month:02}-{day:02}");
            }
            'D' | 'x' => {
                let _ = write!(out, "{month:02}/{day:02}/{:02}", year.rem_euclid(100));
            }
            'T' | 'X' => {
                let _ = write!(out, "{hour:02}:{minute:02}:{second:02}");
            }
            'R' => {
                let _ = write!(out, "{hour:02}:{minute:02}");
            }
            'c' => {
                let _ = write!(
                    out,
                    "{} {} {day:2} {hour:02}:{minute:02}:{second:02} {year}",
                    &DAYS[weekday][..3],
                    &MONTHS[month as usize - 1][..3]
                );
            }
            'n' => out.push('\n'),
            't' => out.push('\t'),
            '%' => out.push('%'),
            'Z' | 'z' => {}
            other => {
                out.push('%');
                if unpadded {
                    out.push('-');
                }
                out.push(other);
            }
        }
    }
    out
}

/// (year, month, day) of the proleptic Gregorian calendar for a day count
/// since 1970-01-01.
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

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_matches_python() {
        // 2024-02-29 13:05:09 UTC, a Thursday, day 60 of a leap year.
        let t = 1_709_211_909;
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t), "2024-02-29 13:05:09");
        assert_eq!(strftime("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(
            strftime("%A %B %-d, %-I:%M %p (%j) %%", t),
            "Thursday February 29, 1:05 PM (060) %"
        );
        assert_eq!(strftime("%c|%Z%z|%q", t), "Thu Feb 29 13:05:09 2024||%q");
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        assert_eq!(strftime("%Y-%m-%d %a", -86_400), "1969-12-31 Wed");
    }
}
