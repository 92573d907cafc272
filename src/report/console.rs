//! The console: each output line prefixed with its stage, a line when a stage starts and
//! ends, and a summary table at the end. On a terminal, a status line below the output
//! shows the running stages, a build's current step and how long each has run.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Instant;

use super::palette::Palette;
use super::record::{JobRecord, status_word};
use super::reporter::{Sink, SinkError, writing};
use crate::events::{Event, LogStream, TestSummary};

pub struct Console<W: Write + Send> {
    out: io::BufWriter<W>,
    width: usize,
    /// `"   build base | "` per stage, made once: output lines are the hot path.
    prefixes: Vec<Vec<u8>>,
    /// Only on a terminal.
    progress: Option<Progress>,
    /// The reader went away (`dockhand run | head`): nothing more is written, and the job
    /// and its other records go on.
    closed: bool,
    palette: Palette,
}

/// The running stages, for the status line.
#[derive(Default)]
struct Progress {
    /// Stage index → when it started and its latest `Step N/M`.
    running: BTreeMap<usize, (Instant, Option<String>)>,
    shown: bool,
    columns: usize,
}

impl<W: Write + Send> Console<W> {
    /// `terminal`: whether `out` is one a person watches, which gets the status line.
    pub fn new(out: W, terminal: bool, palette: Palette) -> Self {
        let columns = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(100);
        Console {
            out: io::BufWriter::with_capacity(256 * 1024, out),
            width: 0,
            prefixes: Vec::new(),
            progress: terminal.then(|| Progress {
                columns,
                ..Progress::default()
            }),
            closed: false,
            palette,
        }
    }

    /// A closed reader closes the console; any other write error is the sink's failure.
    fn settle(&mut self, written: io::Result<()>) -> Result<(), SinkError> {
        match written {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other.map_err(writing(STDOUT)),
        }
    }

    fn track(&mut self, event: &Event) {
        let Some(progress) = &mut self.progress else {
            return;
        };
        match event {
            Event::StageStarted { stage, .. } => {
                progress.running.insert(*stage, (Instant::now(), None));
            }
            Event::StageFinished { stage, .. } => {
                progress.running.remove(stage);
            }
            Event::Log {
                stage,
                stream: LogStream::Build,
                bytes,
            } => {
                if let Some((_, step)) = progress.running.get_mut(stage) {
                    let text = String::from_utf8_lossy(bytes);
                    if let Some(line) = text.lines().rev().find(|l| l.starts_with("Step ")) {
                        let step_of = line.split(' ').nth(1).unwrap_or_default();
                        *step = Some(format!("step {step_of}"));
                    }
                }
            }
            Event::JobFinished { .. } => progress.running.clear(),
            Event::JobStarted { .. } | Event::Log { .. } => {}
        }
    }

    /// Clears the status line before output is written over it.
    fn clear_status(&mut self) -> io::Result<()> {
        if let Some(progress) = &mut self.progress
            && progress.shown
        {
            self.out.write_all(b"\r\x1b[K")?;
            progress.shown = false;
        }
        Ok(())
    }

    fn draw_status(&mut self, record: &JobRecord) -> io::Result<()> {
        let Some(progress) = &mut self.progress else {
            return Ok(());
        };
        if progress.running.is_empty() {
            return Ok(());
        }
        let parts: Vec<String> = progress
            .running
            .iter()
            .map(|(stage, (since, step))| {
                let label = record
                    .stages
                    .get(*stage)
                    .map(|s| s.label())
                    .unwrap_or_default();
                let step = step.as_deref().map(|s| format!(" {s}")).unwrap_or_default();
                format!("{label}{step} ({}s)", since.elapsed().as_secs())
            })
            .collect();
        let line: String = format!("… {}", parts.join(" · "))
            .chars()
            .take(progress.columns.saturating_sub(1))
            .collect();
        self.out.write_all(line.as_bytes())?;
        progress.shown = true;
        Ok(())
    }
}

/// What the console sink writes to, for its errors.
const STDOUT: &str = "the console (standard output)";

impl<W: Write + Send> Sink for Console<W> {
    fn event(&mut self, event: &Event, record: &JobRecord) -> Result<(), SinkError> {
        if self.closed {
            return Ok(());
        }
        let shown = self.show(event, record);
        self.settle(shown)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if self.closed {
            return Ok(());
        }
        let flushed = self.out.flush();
        self.settle(flushed)
    }
}

impl<W: Write + Send> Console<W> {
    fn show(&mut self, event: &Event, record: &JobRecord) -> io::Result<()> {
        self.clear_status()?;
        self.track(event);
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
                let line = record.stages[*stage].outcome_line(outcome, self.palette);
                writeln!(self.out, "{line}")?;
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
                    let status = s.outcome.as_ref().map(|o| o.status);
                    let word = format!("{:<9}", status_word(status));
                    writeln!(
                        self.out,
                        "{:<w$}  {}  {exit:>4}  {time:>7}",
                        s.label(),
                        self.palette.stage(status, &word),
                        w = self.width
                    )?;
                }
                for s in &record.stages {
                    if let Some(tests) = s.outcome.as_ref().and_then(|o| o.tests.as_ref()) {
                        writeln!(self.out, "{}", tests_line(&s.label(), tests))?;
                        for case in tests.failures.iter().take(SHOWN_FAILURES) {
                            writeln!(self.out, "    failed: {}", case.label())?;
                        }
                        if tests.failures.len() > SHOWN_FAILURES {
                            writeln!(
                                self.out,
                                "    ... and {} more in result.json",
                                tests.failures.len() - SHOWN_FAILURES
                            )?;
                        }
                    }
                }
                let verdict = record.verdict_line(*status, *exit_code, self.palette);
                writeln!(self.out, "{verdict}")?;
                if let Some(message) = &record.message {
                    writeln!(self.out, "    {message}")?;
                }
            }
        }
        self.draw_status(record)
    }
}

/// Failed test names the summary lists per stage; result.json has them all.
const SHOWN_FAILURES: usize = 20;

/// `run test: 12 passed, 1 failed, 0 errors, 2 skipped in 3.4s`.
fn tests_line(label: &str, tests: &TestSummary) -> String {
    format!(
        "{label}: {} passed, {} failed, {} errors, {} skipped in {:.1}s",
        tests.passed,
        tests.failed,
        tests.errors,
        tests.skipped,
        tests.duration_ms as f64 / 1000.0
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;

    use super::*;
    use crate::events::{LogStream, StageKind, StageOutcome, StageStatus, Timestamp};

    #[derive(Clone, Default)]
    struct Screen(Arc<Mutex<Vec<u8>>>);

    impl Write for Screen {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn show(terminal: bool) -> String {
        let screen = Screen::default();
        let mut console = Console::new(screen.clone(), terminal, Palette::PLAIN);
        let mut record = JobRecord::default();
        let events = [
            Event::JobStarted {
                job: "j".into(),
                stages: vec![("app".into(), StageKind::Build)],
                at: Timestamp::now(),
            },
            Event::StageStarted {
                stage: 0,
                at: Timestamp::now(),
            },
            Event::Log {
                stage: 0,
                stream: LogStream::Build,
                bytes: Bytes::from_static(b"Step 2/3 : RUN make\n"),
            },
            Event::StageFinished {
                stage: 0,
                outcome: StageOutcome::new(StageStatus::Passed),
                at: Timestamp::now(),
            },
        ];
        for event in &events {
            record.apply(event);
            console.event(event, &record).unwrap();
            console.flush().unwrap();
        }
        String::from_utf8(screen.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_terminal_gets_a_status_line_and_a_pipe_plain_lines() {
        let terminal = show(true);
        assert!(
            terminal.contains("… build app step 2/3 (0s)\r\x1b[K"),
            "{terminal:?}"
        );
        assert!(terminal.contains("build app | Step 2/3 : RUN make\n"));
        let plain = show(false);
        assert!(!plain.contains('\x1b') && !plain.contains('…'), "{plain:?}");
        assert_eq!(
            plain,
            terminal
                .replace("… build app (0s)\r\x1b[K", "")
                .replace("… build app step 2/3 (0s)\r\x1b[K", "")
        );
    }
}
