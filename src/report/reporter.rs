//! The reporter loop: events in, whole lines and the job record out to every sink.

use std::collections::HashMap;
use std::io;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::record::JobRecord;
use crate::events::{Event, LogStream};

/// Something that reports a job. `Event::Log` carries whole lines only (one or more, each
/// ending in `\n`); a stage's unfinished last line arrives, terminated, before its
/// `StageFinished`.
pub trait Sink: Send {
    fn event(&mut self, event: &Event, record: &JobRecord) -> io::Result<()>;
}

/// Runs until the sender side closes; returns the final record. A sink that fails (or
/// panics) is reported once and dropped, so one full disk does not stop the console and a
/// console bug does not lose the results directory.
pub fn report(mut rx: mpsc::Receiver<Event>, mut sinks: Vec<Box<dyn Sink>>) -> JobRecord {
    let mut record = JobRecord::default();
    let mut partial: HashMap<(usize, LogStream), BytesMut> = HashMap::new();
    let deliver = |event: &Event, record: &JobRecord, sinks: &mut Vec<Box<dyn Sink>>| {
        sinks.retain_mut(|sink| {
            let delivered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                sink.event(event, record)
            }));
            match delivered {
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
    };
    while let Some(event) = rx.blocking_recv() {
        match event {
            Event::Log {
                stage,
                stream,
                bytes,
            } => {
                let pending = partial.entry((stage, stream)).or_default();
                let Some(last_newline) = memchr::memrchr(b'\n', &bytes) else {
                    pending.extend_from_slice(&bytes);
                    continue;
                };
                let lines = if pending.is_empty() {
                    bytes.slice(..=last_newline)
                } else {
                    pending.extend_from_slice(&bytes[..=last_newline]);
                    pending.split().freeze()
                };
                pending.extend_from_slice(&bytes[last_newline + 1..]);
                deliver(
                    &Event::Log {
                        stage,
                        stream,
                        bytes: lines,
                    },
                    &record,
                    &mut sinks,
                );
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
                            bytes: Bytes::from(rest),
                        };
                        deliver(&line, &record, &mut sinks);
                    }
                }
                record.apply(&event);
                deliver(&event, &record, &mut sinks);
            }
            other => {
                record.apply(&other);
                deliver(&other, &record, &mut sinks);
            }
        }
    }
    record
}
