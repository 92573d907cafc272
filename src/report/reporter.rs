//! The reporter loop: events in, whole lines and the job record out to every sink.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::mpsc;

use super::mask::Masker;
use super::record::JobRecord;
use crate::events::{Event, JobStatus, LogStream};
use crate::exit_code::INFRASTRUCTURE;

/// How long output may wait in a sink's buffer: sinks are flushed when events pause this
/// long, at least this often while output keeps coming, and after every other event.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The longest unfinished line kept: a task printing without newlines has its output
/// delivered as lines of this length (longer by the rest of a secret across the cut), so
/// memory stays bounded however much it prints. A line that arrives whole in one batch of
/// output is delivered whole: the batch is bounded already.
pub const LINE_PART: usize = 64 * 1024;

/// Something that reports a job. `Event::Log` carries whole lines only (one or more, each
/// ending in `\n`); a stage's unfinished last line arrives, terminated, before its
/// `StageFinished`, and a line longer than [`LINE_PART`] arrives as several lines.
pub trait Sink: Send {
    /// Output may stay buffered until [`Sink::flush`], which follows every event but
    /// output at once: flushing every batch of a chatty task costs a write call per sink.
    /// After a sink has failed it gets only `JobFinished`, its chance to record that the
    /// job ended in error.
    fn event(&mut self, event: &Event, record: &JobRecord) -> Result<(), SinkError>;

    /// Writes out buffered output (see [`FLUSH_EVERY`]).
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A sink could not write: the job ends in error with this as its message.
#[derive(Debug, thiserror::Error)]
#[error("writing {what}: {cause}")]
pub struct SinkError {
    /// The file (or stream) it was writing.
    pub what: String,
    pub cause: io::Error,
}

/// `.map_err(writing(&path))`: an I/O error of a sink, with where it was writing.
pub fn writing(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> SinkError {
    move |cause| SinkError {
        what: what.to_string(),
        cause,
    }
}

/// Runs until the sender side closes; returns the final record. Secrets are masked here,
/// in whole lines and stage messages, before any sink or the record sees them. A sink that
/// fails gets no more output (and one that panics is dropped), so one full disk does not
/// stop the console; the job then ends `error` with the failure as its message, and every
/// sink that still can records that.
pub fn report(rx: mpsc::Receiver<Event>, sinks: Vec<Box<dyn Sink>>, masker: &Masker) -> JobRecord {
    let mut sinks = Sinks {
        list: sinks
            .into_iter()
            .map(|sink| Attached {
                sink,
                failed: false,
            })
            .collect(),
        failure: None,
    };
    let mut rx = rx;
    let mut record = JobRecord::default();
    let mut partial: HashMap<(usize, LogStream), BytesMut> = HashMap::new();
    // Inside the runtime (always, but in unit tests) a receive can time out, which is when
    // sinks are flushed; the runtime's own thread drives the timer.
    let runtime = tokio::runtime::Handle::try_current().ok();
    let mut flushed = Instant::now();
    loop {
        let received = match &runtime {
            Some(handle) => handle.block_on(tokio::time::timeout(FLUSH_EVERY, rx.recv())),
            None => Ok(rx.blocking_recv()),
        };
        let event = match received {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(_paused) => {
                sinks.flush();
                flushed = Instant::now();
                continue;
            }
        };
        if flushed.elapsed() >= FLUSH_EVERY {
            sinks.flush();
            flushed = Instant::now();
        }
        match event {
            Event::Log {
                stage,
                stream,
                bytes,
            } => {
                let pending = partial.entry((stage, stream)).or_default();
                if let Some(last_newline) = memchr::memrchr(b'\n', &bytes) {
                    let lines = if pending.is_empty() {
                        bytes.slice(..=last_newline)
                    } else {
                        pending.extend_from_slice(&bytes[..=last_newline]);
                        pending.split().freeze()
                    };
                    pending.extend_from_slice(&bytes[last_newline + 1..]);
                    let lines = match masker.mask(&lines) {
                        Cow::Borrowed(_) => lines,
                        Cow::Owned(masked) => Bytes::from(masked),
                    };
                    let lines = Event::Log {
                        stage,
                        stream,
                        bytes: lines,
                    };
                    sinks.deliver(&lines, &record);
                } else {
                    pending.extend_from_slice(&bytes);
                }
                while pending.len() >= LINE_PART {
                    let (head, cut) = masker.mask_head(&pending[..], LINE_PART);
                    if cut == 0 {
                        break; // a secret longer than a part: wait for more of it
                    }
                    let mut part = BytesMut::with_capacity(head.len() + 1);
                    part.extend_from_slice(&head);
                    part.extend_from_slice(b"\n");
                    let part = Event::Log {
                        stage,
                        stream,
                        bytes: part.freeze(),
                    };
                    sinks.deliver(&part, &record);
                    pending.advance(cut);
                }
            }
            Event::StageFinished { stage, .. } => {
                let keys: Vec<(usize, LogStream)> = partial
                    .keys()
                    .filter(|(s, _)| *s == stage)
                    .copied()
                    .collect();
                for key in keys {
                    if let Some(mut rest) = partial.remove(&key).filter(|r| !r.is_empty()) {
                        rest.extend_from_slice(b"\n");
                        let line = Event::Log {
                            stage,
                            stream: key.1,
                            bytes: Bytes::from(masker.mask(&rest).into_owned()),
                        };
                        sinks.deliver(&line, &record);
                    }
                }
                let event = mask_message(event, masker);
                record.apply(&event);
                sinks.deliver(&event, &record);
                sinks.flush();
                flushed = Instant::now();
            }
            Event::JobFinished { .. } => {
                sinks.finish(event, &mut record);
                flushed = Instant::now();
            }
            other => {
                record.apply(&other);
                sinks.deliver(&other, &record);
                sinks.flush();
                flushed = Instant::now();
            }
        }
    }
    sinks.flush();
    record
}

struct Attached {
    sink: Box<dyn Sink>,
    failed: bool,
}

/// The job's sinks and the first failure among them.
struct Sinks {
    list: Vec<Attached>,
    failure: Option<String>,
}

impl Sinks {
    fn deliver(&mut self, event: &Event, record: &JobRecord) {
        self.each(|sink| sink.event(event, record));
    }

    fn flush(&mut self) {
        self.each(|sink| sink.flush());
    }

    /// `JobFinished`, turned into an error when a sink has failed. Each sink gets it (and
    /// is flushed) in turn, so a sink that fails only now still changes what the ones
    /// after it record; sinks that failed earlier get it too.
    fn finish(&mut self, mut event: Event, record: &mut JobRecord) {
        self.flush();
        for index in 0..self.list.len() {
            if let Some(failure) = &self.failure
                && let Event::JobFinished {
                    status,
                    exit_code,
                    message,
                    ..
                } = &mut event
            {
                *status = JobStatus::Error;
                *exit_code = INFRASTRUCTURE;
                message.get_or_insert_with(|| failure.clone());
            }
            record.apply(&event);
            let Some(attached) = self.list.get_mut(index) else {
                break;
            };
            let failed = attached.failed;
            let outcome = Self::guarded(&mut attached.sink, |sink| {
                sink.event(&event, record)?;
                sink.flush()
            });
            self.settle(index, outcome, failed);
        }
    }

    /// Runs `action` on every sink that has not failed.
    fn each(&mut self, mut action: impl FnMut(&mut Box<dyn Sink>) -> Result<(), SinkError>) {
        for index in 0..self.list.len() {
            let attached = &mut self.list[index];
            if attached.failed {
                continue;
            }
            let outcome = Self::guarded(&mut attached.sink, &mut action);
            self.settle(index, outcome, false);
        }
    }

    fn guarded(
        sink: &mut Box<dyn Sink>,
        action: impl FnOnce(&mut Box<dyn Sink>) -> Result<(), SinkError>,
    ) -> Result<(), String> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| action(sink))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("a report sink panicked".to_owned()),
        }
    }

    /// Marks a sink failed (the first failure becomes the job's message); a later failure
    /// of a sink that had already failed is only logged.
    fn settle(&mut self, index: usize, outcome: Result<(), String>, failed_before: bool) {
        let Err(message) = outcome else { return };
        if failed_before {
            tracing::debug!("a failed report sink failed again: {message}");
            return;
        }
        tracing::error!("{message}");
        self.list[index].failed = true;
        self.failure.get_or_insert(message);
    }
}

fn mask_message(mut event: Event, masker: &Masker) -> Event {
    if let Event::StageFinished { outcome, .. } = &mut event
        && let Some(message) = &mut outcome.message
    {
        *message = masker.mask_str(message);
    }
    event
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::events::{StageKind, StageOutcome, StageStatus, Timestamp};
    use crate::report::MASK;

    /// Records what it is given.
    struct Tape(Arc<Mutex<Vec<(usize, String)>>>);

    impl Sink for Tape {
        fn event(&mut self, event: &Event, _: &JobRecord) -> Result<(), SinkError> {
            if let Event::Log { stage, bytes, .. } = event {
                self.0
                    .lock()
                    .unwrap()
                    .push((*stage, String::from_utf8_lossy(bytes).into_owned()));
            }
            Ok(())
        }
    }

    struct Broken;

    impl Sink for Broken {
        fn event(&mut self, _: &Event, _: &JobRecord) -> Result<(), SinkError> {
            panic!("a buggy sink")
        }
    }

    #[test]
    fn sinks_get_whole_lines_per_stage_and_stream_and_a_panicking_sink_is_dropped() {
        let (tx, rx) = mpsc::channel(16);
        let tape = Arc::new(Mutex::new(Vec::new()));
        let log = |stage, stream, text: &'static str| Event::Log {
            stage,
            stream,
            bytes: Bytes::from_static(text.as_bytes()),
        };
        let events = vec![
            Event::JobStarted {
                job: "j".into(),
                stages: vec![("a".into(), StageKind::Run), ("b".into(), StageKind::Run)],
                at: Timestamp::now(),
            },
            log(0, LogStream::Stdout, "one\ntw"),
            log(1, LogStream::Stdout, "other stage\n"),
            log(0, LogStream::Stderr, "err"),
            log(0, LogStream::Stdout, "o\nthree"),
            log(0, LogStream::Stdout, " and more split-"),
            log(0, LogStream::Stdout, "secret"),
            Event::StageFinished {
                stage: 0,
                outcome: StageOutcome::new(StageStatus::Passed),
                at: Timestamp::now(),
            },
        ];
        for event in events {
            tx.try_send(event).unwrap();
        }
        drop(tx);
        let (masker, _) = Masker::new(["split-secret"]);
        let record = report(
            rx,
            vec![Box::new(Broken), Box::new(Tape(tape.clone()))],
            &masker,
        );
        let got = tape.lock().unwrap().clone();
        let want = [
            (0, "one\n"),
            (1, "other stage\n"),
            (0, "two\n"),
            (0, "err\n"),
            (0, "three and more ***\n"),
        ];
        let want: Vec<(usize, String)> = want.iter().map(|(s, t)| (*s, (*t).to_owned())).collect();
        let mut sorted_got = got.clone();
        sorted_got.sort();
        let mut sorted_want = want.clone();
        sorted_want.sort();
        assert_eq!(sorted_got, sorted_want, "{got:?}");
        assert_eq!(got[..3], want[..3], "lines keep their order");
        assert_eq!(
            record.stages[0].outcome.as_ref().map(|o| o.status),
            Some(StageStatus::Passed)
        );
    }

    #[test]
    fn a_line_without_end_arrives_in_parts_and_a_secret_across_a_cut_is_masked() {
        let secret = "cut-across-secret";
        let mut text = "a".repeat(LINE_PART - 5);
        text.push_str(secret);
        text.push_str(&"b".repeat(3 * LINE_PART));
        let (tx, rx) = mpsc::channel(8);
        let tape = Arc::new(Mutex::new(Vec::new()));
        let sender = {
            let text = text.clone();
            std::thread::spawn(move || {
                tx.blocking_send(Event::JobStarted {
                    job: "j".into(),
                    stages: vec![("a".into(), StageKind::Run)],
                    at: Timestamp::now(),
                })
                .unwrap();
                for chunk in text.as_bytes().chunks(1000) {
                    let bytes = Bytes::copy_from_slice(chunk);
                    let stream = LogStream::Stdout;
                    tx.blocking_send(Event::Log {
                        stage: 0,
                        stream,
                        bytes,
                    })
                    .unwrap();
                }
                let outcome = StageOutcome::new(StageStatus::Passed);
                let at = Timestamp::now();
                tx.blocking_send(Event::StageFinished {
                    stage: 0,
                    outcome,
                    at,
                })
                .unwrap();
            })
        };
        let (masker, _) = Masker::new([secret]);
        report(rx, vec![Box::new(Tape(tape.clone()))], &masker);
        sender.join().unwrap();
        let got = tape.lock().unwrap().clone();
        assert!(got.len() >= 3, "{} parts", got.len());
        for (_, part) in &got {
            assert!(part.ends_with('\n') && part.len() <= LINE_PART + secret.len());
        }
        let joined: String = got.iter().map(|(_, p)| p.trim_end_matches('\n')).collect();
        assert_eq!(joined, text.replace(secret, MASK));
    }

    /// Fails writing output, as on a full disk; keeps the job statuses it was told.
    struct Full(Arc<Mutex<Vec<JobStatus>>>);

    impl Sink for Full {
        fn event(&mut self, event: &Event, _: &JobRecord) -> Result<(), SinkError> {
            match event {
                Event::Log { .. } => Err(writing("results/log.txt")(io::Error::from_raw_os_error(
                    libc::ENOSPC,
                ))),
                Event::JobFinished { status, .. } => {
                    self.0.lock().unwrap().push(*status);
                    Ok(())
                }
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn a_sink_that_cannot_write_ends_the_job_in_error_and_every_sink_records_it() {
        let (tx, rx) = mpsc::channel(16);
        let told = Arc::new(Mutex::new(Vec::new()));
        let tape = Arc::new(Mutex::new(Vec::new()));
        let events = [
            Event::JobStarted {
                job: "j".into(),
                stages: vec![("a".into(), StageKind::Run)],
                at: Timestamp::now(),
            },
            Event::Log {
                stage: 0,
                stream: LogStream::Stdout,
                bytes: Bytes::from_static(b"one\n"),
            },
            Event::Log {
                stage: 0,
                stream: LogStream::Stdout,
                bytes: Bytes::from_static(b"two\n"),
            },
            Event::JobFinished {
                status: JobStatus::Succeeded,
                exit_code: 0,
                message: None,
                at: Timestamp::now(),
            },
        ];
        for event in events {
            tx.try_send(event).unwrap();
        }
        drop(tx);
        let sinks: Vec<Box<dyn Sink>> =
            vec![Box::new(Full(told.clone())), Box::new(Tape(tape.clone()))];
        let record = report(rx, sinks, &Masker::default());
        assert_eq!(record.status, Some(JobStatus::Error));
        assert_eq!(record.exit_code, Some(INFRASTRUCTURE));
        let message = record.message.unwrap_or_default();
        assert!(
            message.starts_with("writing results/log.txt: No space left on device"),
            "{message}"
        );
        assert_eq!(*told.lock().unwrap(), [JobStatus::Error]);
        assert_eq!(tape.lock().unwrap().len(), 2, "the other sink goes on");
    }
}
