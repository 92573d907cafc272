//! The console: each output line prefixed with its stage, a line when a stage starts and
//! ends, and a summary table at the end.

use std::io::{self, Write};

use super::record::JobRecord;
use super::reporter::Sink;
use crate::events::{Event, StageStatus};

pub struct Console<W: Write + Send> {
    out: io::BufWriter<W>,
    width: usize,
    /// `"   build base | "` per stage, made once: output lines are the hot path.
    prefixes: Vec<Vec<u8>>,
}

impl<W: Write + Send> Console<W> {
    pub fn new(out: W) -> Self {
        Console {
            out: io::BufWriter::with_capacity(256 * 1024, out),
            width: 0,
            prefixes: Vec::new(),
        }
    }
}

pub fn status_word(status: Option<StageStatus>) -> &'static str {
    match status {
        None => "not run",
        Some(StageStatus::Passed) => "passed",
        Some(StageStatus::Cached) => "cached",
        Some(StageStatus::Failed) => "failed",
        Some(StageStatus::Skipped) => "skipped",
        Some(StageStatus::Cancelled) => "cancelled",
        Some(StageStatus::TimedOut) => "timed out",
        Some(StageStatus::Error) => "error",
    }
}

impl<W: Write + Send> Sink for Console<W> {
    fn event(&mut self, event: &Event, record: &JobRecord) -> io::Result<()> {
        match event {
            Event::JobStarted { job, .. } => {
                self.width = record
                    .stages
                    .iter()
                    .map(|s| s.label().len())
                    .max()
                    .unwrap_or(0);
                self.prefixes = record
                    .stages
                    .iter()
                    .map(|s| format!("{:>w$} | ", s.label(), w = self.width).into_bytes())
                    .collect();
                writeln!(self.out, "job {job}: {} stage(s)", record.stages.len())?;
            }
            Event::StageStarted { stage, .. } => {
                writeln!(self.out, "==> {}", record.stages[*stage].label())?;
            }
            Event::Log { stage, bytes, .. } => {
                let prefix = &self.prefixes[*stage];
                let mut start = 0;
                for end in memchr::memchr_iter(b'\n', bytes) {
                    self.out.write_all(prefix)?;
                    self.out.write_all(&bytes[start..=end])?;
                    start = end + 1;
                }
            }
            Event::StageFinished { stage, outcome, .. } => {
                let s = &record.stages[*stage];
                let time = s
                    .seconds()
                    .map(|t| format!(" in {t:.1}s"))
                    .unwrap_or_default();
                let code = outcome
                    .exit_code
                    .filter(|&c| c != 0)
                    .map(|c| format!(" (exit code {c})"))
                    .unwrap_or_default();
                writeln!(
                    self.out,
                    "<== {} {}{code}{time}",
                    s.label(),
                    status_word(Some(outcome.status))
                )?;
                if !outcome.status.passed()
                    && let Some(message) = &outcome.message
                {
                    writeln!(self.out, "    {}", message.replace('\n', "\n    "))?;
                }
            }
            Event::JobFinished {
                status, exit_code, ..
            } => {
                writeln!(self.out)?;
                writeln!(
                    self.out,
                    "{:<w$}  {:<9}  {:>4}  {:>7}",
                    "stage",
                    "status",
                    "exit",
                    "time",
                    w = self.width
                )?;
                for s in &record.stages {
                    let exit = s
                        .outcome
                        .as_ref()
                        .and_then(|o| o.exit_code)
                        .map(|c| c.to_string())
                        .unwrap_or_default();
                    let time = s.seconds().map(|t| format!("{t:.1}s")).unwrap_or_default();
                    writeln!(
                        self.out,
                        "{:<w$}  {:<9}  {exit:>4}  {time:>7}",
                        s.label(),
                        status_word(s.outcome.as_ref().map(|o| o.status)),
                        w = self.width
                    )?;
                }
                let total = match (record.started_at, record.finished_at) {
                    (Some(a), Some(b)) => {
                        b.0.duration_since(a.0)
                            .map(|d| format!(" in {:.1}s", d.as_secs_f64()))
                            .unwrap_or_default()
                    }
                    _ => String::new(),
                };
                writeln!(
                    self.out,
                    "job {} {}{total} (exit code {exit_code})",
                    record.job,
                    serde_json::to_value(status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )?;
            }
        }
        self.out.flush()
    }
}
