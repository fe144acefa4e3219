//! When a scheduled job runs: cron's five fields (or six, with seconds first) and the words
//! cron and systemd share (`hourly`, `daily`, …), read once into sets of values so that one
//! schedule means the same under both installers. From the sets come the crontab's fields,
//! systemd's `OnCalendar=` expressions and the next run that `check` and `jobs` print.
//!
//! Vixie cron's rule for the two day fields is kept: when both are restricted (neither starts
//! with `*`), a day matches either; otherwise both. systemd's calendar events match all of
//! their parts, so the "either" case is written as two `OnCalendar=` lines.

use std::fmt;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer};

/// How far ahead the next run is looked for: a schedule of 29 February runs within 8 years.
const LOOKAHEAD_DAYS: i32 = 8 * 366;

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const SYSTEMD_DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// One field's allowed values, and whether it was written starting with `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    values: Vec<u8>,
    star: bool,
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    text: String,
    seconds: Field,
    minutes: Field,
    hours: Field,
    days: Field,
    months: Field,
    /// 0 is Sunday.
    weekdays: Field,
}

impl Calendar {
    pub fn parse(text: &str) -> Result<Calendar> {
        let trimmed = text.trim();
        let word = trimmed.trim_start_matches('@').to_ascii_lowercase();
        let expanded = match word.as_str() {
            "minutely" => "* * * * *",
            "hourly" => "0 * * * *",
            "daily" | "midnight" => "0 0 * * *",
            "weekly" => "0 0 * * 0",
            "monthly" => "0 0 1 * *",
            "yearly" | "annually" => "0 0 1 1 *",
            "reboot" => bail!(
                "`@reboot` is not a schedule ats-hook installs: start it with the app instead"
            ),
            _ if trimmed.starts_with('@') => bail!(
                "unknown word `{trimmed}`: write cron's five fields (\"*/5 * * * *\") or one of hourly, daily, weekly, monthly, yearly"
            ),
            _ => trimmed,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (seconds, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            0 => bail!("the schedule is empty"),
            n => bail!(
                "`{trimmed}` has {n} fields: cron has five (minute hour day month weekday), or six with seconds first"
            ),
        };
        let seconds = field(seconds, 0, 59, &[], "second")?;
        let calendar = Calendar {
            text: trimmed.to_string(),
            seconds,
            minutes: field(rest[0], 0, 59, &[], "minute")?,
            hours: field(rest[1], 0, 23, &[], "hour")?,
            days: field(rest[2], 1, 31, &[], "day of the month")?,
            months: field(rest[3], 1, 12, &MONTHS, "month")?,
            weekdays: weekday_field(rest[4])?,
        };
        if calendar
            .next_after(&jiff::Timestamp::UNIX_EPOCH.to_zoned(jiff::tz::TimeZone::UTC))
            .is_none()
        {
            bail!("`{trimmed}` names a day that never comes (like 30 February)");
        }
        Ok(calendar)
    }

    /// As the config wrote it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether it runs at a second other than the start of a minute (cron cannot).
    pub fn needs_seconds(&self) -> bool {
        self.seconds.values != [0]
    }

    /// The five fields of a crontab line.
    pub fn cron_fields(&self) -> Result<String> {
        if self.needs_seconds() {
            bail!(
                "`{}` runs at seconds within a minute, which cron cannot: use systemd timers (`[jobs] installer = \"systemd\"`), or a five-field schedule",
                self.text
            );
        }
        let list = |field: &Field, all: std::ops::RangeInclusive<u8>| -> String {
            let (first, span) = (*all.start(), all.end() - all.start() + 1);
            if field.star && field.values.iter().copied().eq(all) {
                "*".into()
            } else if field.star {
                step_form(&field.values, first, span)
            } else {
                join(&field.values, |v| v.to_string())
            }
        };
        // A restricted field that was written with `*` (`*/2`) keeps the star's meaning for
        // the day rule: written out as a list it would lose it, so it keeps its step form.
        let days = if self.days.star && self.days.values.len() != 31 {
            step_form(&self.days.values, 1, 31)
        } else {
            list(&self.days, 1..=31)
        };
        let weekdays = if self.weekdays.star && self.weekdays.values.len() != 7 {
            step_form(&self.weekdays.values, 0, 7)
        } else {
            list(&self.weekdays, 0..=6)
        };
        Ok(format!(
            "{} {} {days} {} {weekdays}",
            list(&self.minutes, 0..=59),
            list(&self.hours, 0..=23),
            list(&self.months, 1..=12),
        ))
    }

    /// systemd's `OnCalendar=` expressions; a timer runs at any of them.
    pub fn on_calendar(&self) -> Vec<String> {
        let list = |field: &Field, full: usize, pad: bool| -> String {
            if field.values.len() == full {
                "*".into()
            } else if pad {
                join(&field.values, |v| format!("{v:02}"))
            } else {
                join(&field.values, |v| v.to_string())
            }
        };
        let time = format!(
            "{}:{}:{}",
            list(&self.hours, 24, true),
            list(&self.minutes, 60, true),
            list(&self.seconds, 60, true)
        );
        let months = list(&self.months, 12, true);
        let days = list(&self.days, 31, true);
        let weekdays = (self.weekdays.values.len() != 7).then(|| {
            join(&self.weekdays.values, |v| {
                SYSTEMD_DAYS[v as usize].to_string()
            })
        });
        let event = |weekdays: Option<&str>, days: &str| match weekdays {
            Some(w) => format!("{w} *-{months}-{days} {time}"),
            None => format!("*-{months}-{days} {time}"),
        };
        if self.either_day() {
            vec![event(None, &days), event(weekdays.as_deref(), "*")]
        } else {
            vec![event(weekdays.as_deref(), &days)]
        }
    }

    /// Cron's rule: both day fields restricted means either may match.
    fn either_day(&self) -> bool {
        !self.days.star && !self.weekdays.star
    }

    fn day_matches(&self, date: jiff::civil::Date) -> bool {
        let day = self.days.values.contains(&(date.day() as u8));
        let weekday = date.weekday().to_sunday_zero_offset() as u8;
        let weekday = self.weekdays.values.contains(&weekday);
        if self.either_day() {
            day || weekday
        } else {
            day && weekday
        }
    }

    /// The first run strictly after `after`, in its time zone: a local time that a clock
    /// change skips runs at the moment after the change, as cron and systemd do.
    pub fn next_after(&self, after: &jiff::Zoned) -> Option<jiff::Zoned> {
        let tz = after.time_zone().clone();
        let start = after.datetime();
        let mut date = start.date();
        for _ in 0..LOOKAHEAD_DAYS {
            if self.months.values.contains(&(date.month() as u8)) && self.day_matches(date) {
                for &hour in &self.hours.values {
                    for &minute in &self.minutes.values {
                        for &second in &self.seconds.values {
                            let Ok(time) =
                                jiff::civil::Time::new(hour as i8, minute as i8, second as i8, 0)
                            else {
                                continue;
                            };
                            let candidate = date.to_datetime(time);
                            if candidate <= start {
                                continue;
                            }
                            match candidate.to_zoned(tz.clone()) {
                                Ok(zoned) if zoned > *after => return Some(zoned),
                                _ => {}
                            }
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The next run from now, in the server's time zone.
    pub fn next_run(&self) -> Option<jiff::Zoned> {
        self.next_after(&jiff::Zoned::now())
    }
}

impl fmt::Display for Calendar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Calendar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Calendar::parse(&text)
            .map_err(|err| serde::de::Error::custom(format!("invalid schedule: {err:#}")))
    }
}

fn join(values: &[u8], show: impl Fn(u8) -> String) -> String {
    values
        .iter()
        .map(|&v| show(v))
        .collect::<Vec<_>>()
        .join(",")
}

/// `*/N` when the values are every Nth from `first` (`first` alone: a step of `span`), else the
/// list.
fn step_form(values: &[u8], first: u8, span: u8) -> String {
    if values == [first] {
        return format!("*/{span}");
    }
    if let [a, b, ..] = values {
        let step = b - a;
        if *a == first && values.windows(2).all(|w| w[1] - w[0] == step) {
            return format!("*/{step}");
        }
    }
    join(values, |v| v.to_string())
}

/// One field: `*`, `*/N`, `A`, `A-B`, `A-B/N`, `A/N`, or a comma list of those; `names` are
/// accepted for the values from `min` on (months, weekdays), in any case.
fn field(text: &str, min: u8, max: u8, names: &[&str], what: &str) -> Result<Field> {
    let parse_value = |item: &str| -> Result<u8> {
        let lower = item.to_ascii_lowercase();
        if let Some(index) = names.iter().position(|name| *name == lower) {
            return Ok(min + index as u8);
        }
        let value: u8 = item
            .parse()
            .ok()
            .with_context(|| format!("`{item}` is not a {what}"))?;
        if value < min || value > max {
            bail!("{what} `{value}` is out of range ({min}-{max})");
        }
        Ok(value)
    };
    let mut values = Vec::new();
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u8 =
                    step.parse().ok().filter(|s| *s > 0).with_context(|| {
                        format!("`{step}` in `{item}` is not a step (1 or more)")
                    })?;
                (range, Some(step))
            }
            None => (item, None),
        };
        let (low, high) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (parse_value(a)?, parse_value(b)?);
            if a > b {
                bail!("the range `{range}` of the {what} runs backwards");
            }
            (a, b)
        } else {
            let a = parse_value(range)?;
            // cron reads `A/N` as from A to the end, every N.
            (a, if step.is_some() { max } else { a })
        };
        let mut value = low;
        while value <= high {
            values.push(value);
            match value.checked_add(step.unwrap_or(1)) {
                Some(next) => value = next,
                None => break,
            }
        }
    }
    if text.is_empty() {
        bail!("an empty {what} field");
    }
    values.sort_unstable();
    values.dedup();
    Ok(Field {
        values,
        star: text.starts_with('*'),
    })
}

/// The weekday field: 0 to 7 (7 is Sunday again), or names.
fn weekday_field(text: &str) -> Result<Field> {
    let mut parsed = field(text, 0, 7, &DAYS, "weekday")?;
    if parsed.values.last() == Some(&7) {
        parsed.values.pop();
        if !parsed.values.contains(&0) {
            parsed.values.insert(0, 0);
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> jiff::Zoned {
        format!("{text}[UTC]").parse().unwrap()
    }

    fn next(schedule: &str, after: &str) -> String {
        Calendar::parse(schedule)
            .unwrap()
            .next_after(&at(after))
            .unwrap()
            .datetime()
            .to_string()
    }

    #[test]
    fn words_and_fields() {
        assert_eq!(next("daily", "2026-12-07T10:00:00"), "2026-12-08T00:00:00");
        assert_eq!(
            next("@hourly", "2026-12-07T10:00:00"),
            "2026-12-07T11:00:00"
        );
        assert_eq!(
            next("*/5 * * * *", "2026-12-07T10:01:00"),
            "2026-12-07T10:05:00"
        );
        assert_eq!(
            next("30 2 * * mon-fri", "2026-12-05T00:00:00"),
            "2026-12-07T02:30:00"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-12-05T00:00:00"),
            "2028-02-29T00:00:00"
        );
        assert_eq!(
            next("*/2 * * * * *", "2026-12-07T10:00:01"),
            "2026-12-07T10:00:02"
        );
        assert_eq!(
            next("0 12 * * 7", "2026-12-07T00:00:00"),
            "2026-12-13T12:00:00"
        );
    }

    #[test]
    fn the_two_day_fields_follow_cron() {
        // Both restricted: the 1st of the month or any Monday.
        assert_eq!(
            next("0 0 1 * mon", "2026-12-01T01:00:00"),
            "2026-12-07T00:00:00"
        );
        // A starred day field: Mondays that are odd days of the month (7 December is one).
        assert_eq!(
            next("0 0 */2 * mon", "2026-12-01T01:00:00"),
            "2026-12-07T00:00:00"
        );
        assert_eq!(
            next("0 0 */2 * mon", "2026-12-07T01:00:00"),
            "2026-12-21T00:00:00"
        );
        let either = Calendar::parse("0 0 1 * mon").unwrap();
        assert_eq!(
            either.on_calendar(),
            ["*-*-01 00:00:00", "Mon *-*-* 00:00:00"]
        );
        let both = Calendar::parse("0 0 */2 * mon").unwrap();
        assert_eq!(both.on_calendar().len(), 1);
        assert_eq!(both.cron_fields().unwrap(), "0 0 */2 * 1");
    }

    #[test]
    fn crontab_fields_and_calendar_events() {
        let c = Calendar::parse("*/15 9-17 * * 1-5").unwrap();
        assert_eq!(
            c.cron_fields().unwrap(),
            "*/15 9,10,11,12,13,14,15,16,17 * * 1,2,3,4,5"
        );
        assert_eq!(
            c.on_calendar(),
            ["Mon,Tue,Wed,Thu,Fri *-*-* 09,10,11,12,13,14,15,16,17:00,15,30,45:00"]
        );
        assert_eq!(
            Calendar::parse("hourly").unwrap().cron_fields().unwrap(),
            "0 * * * *"
        );
        let seconds = Calendar::parse("*/2 * * * * *").unwrap();
        assert!(seconds.needs_seconds());
        let err = seconds.cron_fields().unwrap_err().to_string();
        assert!(err.contains("cron cannot"), "{err}");
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (text, says) in [
            ("61 * * * *", "minute `61` is out of range"),
            ("* * *", "has 3 fields"),
            ("@reboot", "not a schedule"),
            ("@often", "unknown word"),
            ("*/0 * * * *", "is not a step"),
            ("0 0 30 2 *", "never comes"),
            ("0 0 * foo *", "`foo` is not a month"),
            ("5-1 * * * *", "runs backwards"),
            ("", "empty"),
        ] {
            let err = format!("{:#}", Calendar::parse(text).unwrap_err());
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    /// Our next run is systemd's next elapse for the expressions we write, when
    /// systemd-analyze is here to ask.
    #[test]
    fn systemd_reads_the_events_as_cron_does() {
        if std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "systemd-analyze is missing"
            );
            return;
        }
        for schedule in [
            "*/5 * * * *",
            "30 2 * * mon-fri",
            "0 0 1 * mon",
            "0 0 */2 * mon",
            "17 */3 1-10 jan,jul *",
            "weekly",
        ] {
            let calendar = Calendar::parse(schedule).unwrap();
            let base = at("2026-12-07T10:00:00");
            let ours = calendar.next_after(&base).unwrap();
            let mut theirs: Option<jiff::Timestamp> = None;
            for event in calendar.on_calendar() {
                let out = std::process::Command::new("systemd-analyze")
                    .args([
                        "calendar",
                        "--base-time=2026-12-07 10:00:00 UTC",
                        &format!("{event} UTC"),
                    ])
                    .env("TZ", "UTC")
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "{event}: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let line = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Next elapse: "))
                    .unwrap_or_else(|| panic!("{event}: {text}"));
                // "Mon 2026-12-07 10:05:00 UTC"
                let stamp = line
                    .split_whitespace()
                    .skip(1)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join("T");
                let t = at(&stamp).timestamp();
                theirs = Some(theirs.map_or(t, |m| m.min(t)));
            }
            assert_eq!(Some(ours.timestamp()), theirs, "{schedule}");
        }
    }
}
