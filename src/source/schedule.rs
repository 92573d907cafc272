//! Cron schedules: 5-field expressions (or 6 with seconds first), `@daily`-style aliases, a
//! time zone, optional jitter, and one catch-up run for a due time the agent missed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::SourceEvent;
use crate::config::{CronTimes, ScheduleError, ScheduleSource};
use crate::job::{Job, Origin, new_job_id};

/// A parsed schedule and the job it starts.
#[derive(Clone, Debug)]
pub struct Schedule {
    times: CronTimes,
    source: ScheduleSource,
    /// Names the schedule in results and in its state file.
    pub stream: String,
}

impl Schedule {
    pub fn new(source: &ScheduleSource) -> Result<Schedule, ScheduleError> {
        Ok(Schedule {
            times: CronTimes::parse(&source.cron, source.timezone.as_deref())?,
            stream: format!(
                "schedule:{}",
                source.name.clone().unwrap_or_else(|| source.cron.clone())
            ),
            source: source.clone(),
        })
    }

    /// The first due time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.times.next_after(t)
    }

    /// Whether a run is owed at start: a due time passed after the last recorded run.
    pub fn missed(&self, last_run: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        match (last_run, self.times.last_at_or_before(now)) {
            (Some(last), Some(due)) => due > last,
            _ => false,
        }
    }

    fn job(&self, trigger: String) -> Job {
        let source = &self.source;
        let origin = match (&source.path, &source.git) {
            (_, Some(url)) => Origin::Git {
                url: url.clone(),
                reference: source
                    .reference
                    .clone()
                    .unwrap_or_else(|| "HEAD".to_owned()),
            },
            (Some(path), None) => Origin::Path { path: path.clone() },
            (None, None) => unreachable!("agent.toml checks give a schedule a path or git"),
        };
        Job {
            id: new_job_id(),
            stream: self.stream.clone(),
            origin,
            config_file: source.config.clone(),
            tasks: source.tasks.clone(),
            env: Default::default(),
            timeout: source.timeout,
            trigger,
            on_busy: source.overlap,
            remote: None,
            build_cache: None,
            trust: Default::default(),
        }
    }

    fn state_file(&self, state_dir: &Path) -> PathBuf {
        let name = crate::util::short_hash(self.stream.as_bytes());
        state_dir.join(format!("schedule-{name}.last"))
    }
}

/// Fires `schedule` until `cancel`: the catch-up run first when one is owed, then every due
/// time (plus jitter). Each firing is recorded in `state_dir` before its job is sent.
pub async fn run_schedule(
    schedule: Schedule,
    state_dir: PathBuf,
    tx: mpsc::Sender<SourceEvent>,
    cancel: CancellationToken,
) {
    let state = schedule.state_file(&state_dir);
    let last_run = std::fs::read_to_string(&state)
        .ok()
        .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
        .map(|d| d.with_timezone(&Utc));
    let now = Utc::now();
    if schedule.source.catch_up && schedule.missed(last_run, now) {
        let due = schedule.times.last_at_or_before(now).unwrap_or(now);
        let trigger = format!("catch-up for {}", due.format("%Y-%m-%dT%H:%M:%SZ"));
        fire(&schedule, &state, due, trigger, &tx).await;
    } else if last_run.is_none() {
        record(&schedule, &state, now, &tx).await;
    }
    let mut after = now;
    loop {
        let Some(due) = schedule.next_after(after) else {
            return;
        };
        let wait = (due - Utc::now()).to_std().unwrap_or_default() + jitter(schedule.source.jitter);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let trigger = format!(
            "schedule {} at {}",
            schedule.source.cron,
            due.format("%Y-%m-%dT%H:%M:%SZ")
        );
        fire(&schedule, &state, due, trigger, &tx).await;
        after = due;
    }
}

async fn fire(
    schedule: &Schedule,
    state: &Path,
    due: DateTime<Utc>,
    trigger: String,
    tx: &mpsc::Sender<SourceEvent>,
) {
    record(schedule, state, due, tx).await;
    let _ = tx
        .send(SourceEvent::Job(Box::new(schedule.job(trigger))))
        .await;
}

/// A schedule whose state cannot be written still runs; it only loses its catch-up.
async fn record(
    schedule: &Schedule,
    state: &Path,
    due: DateTime<Utc>,
    tx: &mpsc::Sender<SourceEvent>,
) {
    let written = state
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(state, due.to_rfc3339()));
    if let Err(e) = written {
        let message = format!("cannot record the last run in {}: {e}", state.display());
        let _ = tx
            .send(SourceEvent::Problem {
                stream: schedule.stream.clone(),
                message,
            })
            .await;
    }
}

/// A random delay up to `limit`.
fn jitter(limit: Option<Duration>) -> Duration {
    limit.map_or(Duration::ZERO, |l| {
        l.mul_f64(crate::util::random_fraction())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(cron: &str, timezone: Option<&str>) -> ScheduleSource {
        ScheduleSource {
            name: None,
            cron: cron.to_owned(),
            timezone: timezone.map(str::to_owned),
            path: Some(".".into()),
            git: None,
            reference: None,
            config: "config.yml".into(),
            tasks: Vec::new(),
            jitter: None,
            overlap: crate::job::OnBusy::Skip,
            catch_up: true,
            timeout: None,
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn five_fields_aliases_and_seconds() {
        let daily = Schedule::new(&source("0 3 * * *", None)).unwrap();
        assert_eq!(
            daily.next_after(at("2026-11-23T10:00:00Z")),
            Some(at("2026-11-24T03:00:00Z"))
        );
        let alias = Schedule::new(&source("@daily", None)).unwrap();
        assert_eq!(
            alias.next_after(at("2026-11-23T10:00:00Z")),
            Some(at("2026-11-24T00:00:00Z"))
        );
        let seconds = Schedule::new(&source("*/5 * * * * *", None)).unwrap();
        assert_eq!(
            seconds.next_after(at("2026-11-23T10:00:01Z")),
            Some(at("2026-11-23T10:00:05Z"))
        );
    }

    #[test]
    fn time_zone() {
        let berlin = Schedule::new(&source("0 3 * * *", Some("Europe/Berlin"))).unwrap();
        assert_eq!(
            berlin.next_after(at("2026-11-23T10:00:00Z")),
            Some(at("2026-11-24T02:00:00Z"))
        );
    }

    #[test]
    fn refused_expressions() {
        for (cron, zone, expected) in [
            ("0 3 * *", None, "cron `0 3 * *`"),
            ("61 * * * *", None, "cron `61 * * * *`"),
            ("@fortnightly", None, "cron `@fortnightly`"),
            ("0 0 30 2 *", None, "never fires"),
            ("0 3 * * *", Some("Mars/Olympus"), "IANA"),
        ] {
            let e = Schedule::new(&source(cron, zone)).unwrap_err().to_string();
            assert!(e.contains(expected), "{cron}: {e}");
        }
    }

    #[test]
    fn catch_up_only_for_a_missed_due_time() {
        let hourly = Schedule::new(&source("0 * * * *", None)).unwrap();
        let now = at("2026-11-23T10:30:00Z");
        assert!(hourly.missed(Some(at("2026-11-23T09:00:00Z")), now));
        assert!(!hourly.missed(Some(at("2026-11-23T10:00:00Z")), now));
        assert!(!hourly.missed(None, now));
    }
}
