//! `junit.xml` in the results directory: a testsuite for the job, a testcase per stage,
//! with a failing stage's message and the tail of its output, then a testsuite per stage
//! with the task's own test cases (`reports.junit`), for CI dashboards that read JUnit
//! reports.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;

use super::record::JobRecord;
use super::record::status_word;
use super::reporter::{Sink, SinkError, writing};
use crate::events::{Event, StageKind, StageStatus, TestStatus, TestSummary};

/// Output lines kept per stage for a failure's body.
const TAIL_LINES: usize = 40;

/// At most this much of them: what junit.xml holds stays small however long the lines.
const TAIL_BYTES: usize = 16 * 1024;

pub struct JUnit {
    path: PathBuf,
    tails: HashMap<usize, Tail>,
}

/// A stage's last lines.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    fn push(&mut self, line: &str) {
        let mut start = line.len().saturating_sub(TAIL_BYTES);
        while !line.is_char_boundary(start) {
            start += 1;
        }
        self.lines.push_back(line[start..].to_owned());
        self.bytes += line.len() - start;
        while self.lines.len() > TAIL_LINES || self.bytes > TAIL_BYTES {
            let dropped = self.lines.pop_front().map_or(0, |l| l.len());
            self.bytes -= dropped;
        }
    }
}

impl JUnit {
    /// Writes `path` when the job finishes.
    pub fn new(path: PathBuf) -> Self {
        JUnit {
            path,
            tails: HashMap::new(),
        }
    }

    fn render(&self, record: &JobRecord) -> String {
        let mut cases = String::new();
        let (mut failures, mut errors, mut skipped) = (0, 0, 0);
        for (index, stage) in record.stages.iter().enumerate() {
            let seconds = stage.seconds().unwrap_or(0.0);
            let class = match stage.kind {
                StageKind::Collect => "collect",
                StageKind::Build => "build",
                StageKind::Run => "run",
            };
            let _ = write!(
                cases,
                "    <testcase classname=\"{class}\" name=\"{}\" time=\"{seconds:.3}\"",
                escape(&stage.name)
            );
            let outcome = stage.outcome.as_ref();
            let status = outcome.map(|o| o.status);
            let message = outcome
                .and_then(|o| o.message.clone())
                .or_else(|| {
                    outcome
                        .and_then(|o| o.exit_code)
                        .map(|c| format!("exit code {c}"))
                })
                .unwrap_or_else(|| status_word(status).to_owned());
            let tail = self
                .tails
                .get(&index)
                .map(|t| t.lines.iter().map(String::as_str).collect::<String>())
                .unwrap_or_default();
            let element = match status {
                Some(StageStatus::Passed | StageStatus::Cached) => None,
                Some(StageStatus::Failed | StageStatus::TimedOut) => {
                    failures += 1;
                    Some("failure")
                }
                Some(StageStatus::Error) => {
                    errors += 1;
                    Some("error")
                }
                Some(StageStatus::Skipped | StageStatus::Cancelled) | None => {
                    skipped += 1;
                    Some("skipped")
                }
            };
            match element {
                None => cases.push_str("/>\n"),
                Some("skipped") => {
                    let _ = write!(
                        cases,
                        ">\n      <skipped message=\"{}\"/>\n    </testcase>\n",
                        escape(&message)
                    );
                }
                Some(kind) => {
                    let _ = write!(
                        cases,
                        ">\n      <{kind} message=\"{}\">{}</{kind}>\n    </testcase>\n",
                        escape(&message),
                        escape(&tail)
                    );
                }
            }
        }
        // Wall time: stages that ran in parallel overlap.
        let total = record.seconds().unwrap_or(0.0);
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = write!(
            xml,
            "<testsuites>\n  <testsuite name=\"dockhand job {}\" tests=\"{}\" failures=\"{failures}\" \
             errors=\"{errors}\" skipped=\"{skipped}\" time=\"{total:.3}\">\n{cases}  </testsuite>\n",
            escape(&record.job),
            record.stages.len()
        );
        for stage in &record.stages {
            if let Some(tests) = stage.outcome.as_ref().and_then(|o| o.tests.as_ref()) {
                stage_suite(&mut xml, &record.job, &stage.label(), tests);
            }
        }
        xml.push_str("</testsuites>\n");
        xml
    }
}

impl Sink for JUnit {
    fn event(&mut self, event: &Event, record: &JobRecord) -> Result<(), SinkError> {
        match event {
            Event::Log { stage, bytes, .. } => {
                let tail = self.tails.entry(*stage).or_default();
                // Only the batch's last lines can be in the tail: a chatty task's output is
                // not copied line by line.
                let start = memchr::memrchr_iter(b'\n', bytes)
                    .nth(TAIL_LINES)
                    .map_or(0, |newline| newline + 1);
                for line in String::from_utf8_lossy(&bytes[start..]).split_inclusive('\n') {
                    tail.push(line);
                }
            }
            Event::JobFinished { .. } => {
                let partial = self.path.with_extension("xml.partial");
                let written = std::fs::write(&partial, self.render(record))
                    .and_then(|()| std::fs::rename(&partial, &self.path));
                if written.is_err() {
                    let _ = std::fs::remove_file(&partial);
                }
                written.map_err(writing(self.path.display()))?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// A task's own test cases, as a suite named after the job and its stage, so a dashboard
/// shows them under the stage that ran them.
fn stage_suite(xml: &mut String, job: &str, stage: &str, tests: &TestSummary) {
    let _ = writeln!(
        xml,
        "  <testsuite name=\"dockhand job {} / {}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" \
         skipped=\"{}\" time=\"{:.3}\">",
        escape(job),
        escape(stage),
        tests.passed + tests.failed + tests.errors + tests.skipped,
        tests.failed,
        tests.errors,
        tests.skipped,
        tests.duration_ms as f64 / 1000.0
    );
    for case in &tests.cases {
        let _ = write!(
            xml,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            escape(&case.class),
            escape(&case.name),
            case.duration_ms as f64 / 1000.0
        );
        let message = escape(case.message.as_deref().unwrap_or_default());
        let _ = match case.status {
            TestStatus::Passed => writeln!(xml, "/>"),
            TestStatus::Skipped => writeln!(
                xml,
                ">\n      <skipped message=\"{message}\"/>\n    </testcase>"
            ),
            TestStatus::Failed | TestStatus::Error => {
                let kind = if case.status == TestStatus::Failed {
                    "failure"
                } else {
                    "error"
                };
                writeln!(
                    xml,
                    ">\n      <{kind} message=\"{message}\">{}</{kind}>\n    </testcase>",
                    escape(&case.output)
                )
            }
        };
    }
    xml.push_str("  </testsuite>\n");
}

/// XML text and attribute escaping; characters XML 1.0 cannot carry become U+FFFD.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::events::{LogStream, StageOutcome, Timestamp};

    #[test]
    fn a_failure_carries_the_last_lines_of_its_stage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junit.xml");
        let mut junit = JUnit::new(path.clone());
        let mut record = JobRecord::default();
        let lines: String = (1..=100).map(|i| format!("line {i} <&>\n")).collect();
        let events = [
            Event::JobStarted {
                job: "j".into(),
                stages: vec![("app".into(), StageKind::Run)],
                at: Timestamp::now(),
            },
            Event::Log {
                stage: 0,
                stream: LogStream::Stdout,
                bytes: Bytes::from(lines),
            },
            Event::Log {
                stage: 0,
                stream: LogStream::Stdout,
                bytes: Bytes::from_static(b"last\n"),
            },
            Event::StageFinished {
                stage: 0,
                outcome: StageOutcome {
                    exit_code: Some(3),
                    ..StageOutcome::new(StageStatus::Failed)
                },
                at: Timestamp::now(),
            },
            Event::JobFinished {
                status: crate::events::JobStatus::Failed,
                exit_code: 3,
                message: None,
                at: Timestamp::now(),
            },
        ];
        for event in &events {
            record.apply(event);
            junit.event(event, &record).unwrap();
        }
        let xml = std::fs::read_to_string(path).unwrap();
        assert!(
            xml.contains(r#"<failure message="exit code 3">line 62 &lt;&amp;&gt;"#),
            "{xml}"
        );
        assert!(
            !xml.contains("line 61 ")
                && xml.contains("line 100 ")
                && xml.contains("last\n</failure>")
        );
        assert!(xml.contains(r#"tests="1" failures="1""#));
    }

    #[test]
    fn the_tail_keeps_the_end_of_long_lines_within_its_budget() {
        let mut tail = Tail::default();
        for i in 0..10 {
            tail.push(&format!("{}{i}\n", "é".repeat(TAIL_BYTES)));
        }
        assert_eq!(tail.lines.len(), 1);
        assert!(tail.bytes <= TAIL_BYTES && tail.lines[0].ends_with("é9\n"));
        tail.push("short\n");
        assert_eq!(tail.lines.back().map(String::as_str), Some("short\n"));
        assert!(tail.bytes <= TAIL_BYTES);
    }

    #[test]
    fn the_suites_time_is_the_jobs_wall_time_not_the_sum_of_parallel_stages() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |s: u64| Timestamp(UNIX_EPOCH + Duration::from_secs(1_000 + s));
        let mut record = JobRecord::default();
        let stages = vec![
            ("a".into(), StageKind::Build),
            ("b".into(), StageKind::Build),
        ];
        let mut events = vec![Event::JobStarted {
            job: "j".into(),
            stages,
            at: at(0),
        }];
        for stage in 0..2 {
            events.push(Event::StageStarted { stage, at: at(0) });
        }
        for stage in 0..2 {
            events.push(Event::StageFinished {
                stage,
                outcome: StageOutcome::new(StageStatus::Passed),
                at: at(2),
            });
        }
        events.push(Event::JobFinished {
            status: crate::events::JobStatus::Succeeded,
            exit_code: 0,
            message: None,
            at: at(2),
        });
        for event in &events {
            record.apply(event);
        }
        let xml = JUnit::new("unused".into()).render(&record);
        assert!(xml.contains(r#"skipped="0" time="2.000">"#), "{xml}");
        assert!(xml.contains(r#"name="a" time="2.000""#), "{xml}");
    }
}
