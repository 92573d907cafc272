//! The reporter loop: events in, whole lines and the job record out to every sink.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::mpsc;

use super::mask::Masker;
use super::record::JobRecord;
use crate::events::{Event, LogStream};

/// How long output may wait in a sink's buffer: sinks are flushed when events pause this
/// long, at least this often while output keeps coming, and after every other event.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The longest unfinished line kept: a task printing without newlines has its output
/// delivered as lines of about this length (plus what a secret across the cut needs), so
/// memory stays bounded however much it prints.
pub const LINE_PART: usize = 64 * 1024;

/// Something that reports a job. `Event::Log` carries whole lines only (one or more, each
/// ending in `\n`); a stage's unfinished last line arrives, terminated, before its
/// `StageFinished`, and a line longer than [`LINE_PART`] arrives as several lines.
pub trait Sink: Send {
    /// Output may stay buffered until [`Sink::flush`], which follows every event but
    /// output at once: flushing every batch of a chatty task costs a write call per sink.
    fn event(&mut self, event: &Event, record: &JobRecord) -> io::Result<()>;

    /// Writes out buffered output (see [`FLUSH_EVERY`]).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs until the sender side closes; returns the final record. Secrets are masked here,
/// in whole lines and stage messages, before any sink or the record sees them. A sink that
/// fails (or panics) is reported once and dropped, so one full disk does not stop the
/// console and a console bug does not lose the results directory.
pub fn report(
    mut rx: mpsc::Receiver<Event>,
    mut sinks: Vec<Box<dyn Sink>>,
    masker: &Masker,
) -> JobRecord {
    let mut record = JobRecord::default();
    let mut partial: HashMap<(usize, LogStream), BytesMut> = HashMap::new();
    let deliver = |event: &Event, record: &JobRecord, sinks: &mut Vec<Box<dyn Sink>>| {
        each_sink(sinks, |sink| sink.event(event, record));
    };
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
                each_sink(&mut sinks, |sink| sink.flush());
                flushed = Instant::now();
                continue;
            }
        };
        if flushed.elapsed() >= FLUSH_EVERY {
            each_sink(&mut sinks, |sink| sink.flush());
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
                    deliver(&lines, &record, &mut sinks);
                } else {
                    pending.extend_from_slice(&bytes);
                }
                while pending.len() >= LINE_PART {
                    let (head, cut) = masker.mask_head(&pending[..]);
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
                    deliver(&part, &record, &mut sinks);
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
                        deliver(&line, &record, &mut sinks);
                    }
                }
                let event = mask_message(event, masker);
                record.apply(&event);
                deliver(&event, &record, &mut sinks);
                each_sink(&mut sinks, |sink| sink.flush());
                flushed = Instant::now();
            }
            other => {
                record.apply(&other);
                deliver(&other, &record, &mut sinks);
                each_sink(&mut sinks, |sink| sink.flush());
                flushed = Instant::now();
            }
        }
    }
    each_sink(&mut sinks, |sink| sink.flush());
    record
}

/// Runs `action` on every sink, dropping (once reported) a sink that fails or panics.
fn each_sink(
    sinks: &mut Vec<Box<dyn Sink>>,
    mut action: impl FnMut(&mut Box<dyn Sink>) -> io::Result<()>,
) {
    sinks.retain_mut(|sink| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| action(sink))) {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!("a report sink failed and was dropped: {e}");
                false
            }
            Err(_) => {
                tracing::error!("a report sink panicked and was dropped");
                false
            }
        }
    });
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
        fn event(&mut self, event: &Event, _: &JobRecord) -> io::Result<()> {
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
        fn event(&mut self, _: &Event, _: &JobRecord) -> io::Result<()> {
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
            assert!(part.ends_with('\n') && part.len() <= LINE_PART + 1000 + secret.len());
        }
        let joined: String = got.iter().map(|(_, p)| p.trim_end_matches('\n')).collect();
        assert_eq!(joined, text.replace(secret, MASK));
    }
}
