//! Cron expressions with their time zone: checked when agent.toml is read, walked by the
//! schedule source.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron `{cron}`: {reason}")]
    Cron { cron: String, reason: String },
    #[error("cron `{cron}` never fires")]
    NeverFires { cron: String },
    #[error("timezone `{0}` is not an IANA zone name like \"Europe/Berlin\"")]
    Timezone(String),
}

/// The fields of a five-field expression with their ranges (a sixth, leading one is seconds).
const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
];

/// Which field of `cron` has a number outside its range, or the wrong number of fields:
/// clearer than the cron parser's own "Number out of bounds".
fn field_out_of_range(cron: &str) -> Option<String> {
    let parts: Vec<&str> = cron.split_whitespace().collect();
    if parts.len() == 1 && parts[0].starts_with('@') {
        return None;
    }
    let fields: Vec<(&str, u32, u32)> = match parts.len() {
        5 => FIELDS.to_vec(),
        6 => std::iter::once(("second", 0, 59)).chain(FIELDS).collect(),
        n => {
            return Some(format!(
                "{n} field(s); a cron expression has five: minute hour day-of-month month day-of-week"
            ));
        }
    };
    parts
        .iter()
        .zip(fields)
        .find_map(|(part, (name, low, high))| {
            let values = part
                .split(',')
                .flat_map(|item| item.split('/').next().unwrap_or_default().split('-'));
            values
                .filter_map(|value| value.parse::<u32>().ok())
                .find(|value| !(low..=high).contains(value))
                .map(|value| format!("the {name} field `{part}` has {value}, outside {low}–{high}"))
        })
}

/// When a cron expression fires, in its zone (UTC unless named).
#[derive(Clone, Debug)]
pub struct CronTimes {
    cron: Cron,
    zone: Tz,
}

impl CronTimes {
    /// Refuses an expression that does not parse or never fires, and unknown zones.
    pub fn parse(cron: &str, timezone: Option<&str>) -> Result<CronTimes, ScheduleError> {
        let parsed = Cron::from_str(cron.trim()).map_err(|e| ScheduleError::Cron {
            cron: cron.to_owned(),
            reason: field_out_of_range(cron).unwrap_or_else(|| e.to_string()),
        })?;
        let zone = match timezone {
            Some(name) => {
                Tz::from_str(name).map_err(|_| ScheduleError::Timezone(name.to_owned()))?
            }
            None => Tz::UTC,
        };
        let times = CronTimes { cron: parsed, zone };
        if times.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::NeverFires {
                cron: cron.to_owned(),
            });
        }
        Ok(times)
    }

    /// The first due time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The last due time at or before `t`.
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.zone);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use super::CronTimes;

    #[test]
    fn a_bad_field_is_named_with_its_range() {
        for (cron, expected) in [
            ("0 61 * * *", "the hour field `61` has 61, outside 0–23"),
            ("75 3 * * *", "the minute field `75` has 75, outside 0–59"),
            (
                "0 3 1-40 * *",
                "the day-of-month field `1-40` has 40, outside 1–31",
            ),
            ("0 3 * 13 *", "the month field `13` has 13, outside 1–12"),
            ("0 3 * *", "4 field(s); a cron expression has five"),
        ] {
            let e = CronTimes::parse(cron, None).unwrap_err().to_string();
            assert!(e.contains(expected), "{cron}: {e}");
        }
        assert!(CronTimes::parse("*/15 3 * * 1-5", None).is_ok());
    }
}
