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
            reason: e.to_string(),
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
