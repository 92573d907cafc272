//! A finished task's test reports, copied out of its container through the engine's archive
//! API and read on the blocking pool as they stream in: the copy stops at the byte cap, the
//! deadline or a cancel, whichever comes first, and every problem is a warning in the
//! summary, never the job's error.

use std::io::{self, Read};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::engine::ContainerEngine;
use crate::collector::Reports;
use crate::docker::{Archive, DockerError};
use crate::events::TestSummary;
use crate::testreport::{self, Pattern};
use crate::util::off_runtime;

/// How long copying a task's reports out may take in all.
const DEADLINE: Duration = Duration::from_secs(120);

/// Reads the files `reports.junit` names in container `id`.
pub async fn read<E: ContainerEngine>(
    engine: &E,
    id: &str,
    reports: &Reports,
    cancel: &CancellationToken,
) -> Result<TestSummary, DockerError> {
    let workdir = engine.working_dir(id).await?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut summary = TestSummary::default();
    let mut budget = testreport::MAX_ARCHIVE_BYTES;
    for text in &reports.junit {
        let pattern = match Pattern::new(text, &workdir) {
            Ok(pattern) => pattern,
            Err(reason) => {
                testreport::warn(&mut summary, format!("{text}: {reason}"));
                continue;
            }
        };
        let Some(archive) = engine.archive(id, &pattern.base).await? else {
            testreport::warn(&mut summary, format!("{text}: not found in the container"));
            continue;
        };
        let read;
        (summary, read) = stream_into(archive, pattern, summary, budget, deadline, cancel).await;
        budget = budget.saturating_sub(read);
    }
    Ok(summary)
}

/// Feeds `archive` to the report reader on the blocking pool through a bounded channel;
/// returns the summary and the bytes read.
async fn stream_into(
    mut archive: Archive,
    pattern: Pattern,
    mut summary: TestSummary,
    budget: u64,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> (TestSummary, u64) {
    let (tx, rx) = mpsc::channel(8);
    let text = pattern.text.clone();
    let reader = off_runtime(move || {
        let mut reader = ChannelReader {
            rx,
            chunk: Bytes::new(),
            left: budget,
        };
        testreport::read_archive(&mut reader, &pattern, &mut summary);
        (summary, budget - reader.left)
    });
    let pump = async move {
        loop {
            let chunk = tokio::select! {
                chunk = archive.next() => chunk,
                () = cancel.cancelled() => return Some("cancelled".to_owned()),
                () = tokio::time::sleep_until(deadline) => {
                    return Some(format!("not copied within {DEADLINE:?}"));
                }
            };
            match chunk {
                Some(Ok(bytes)) => {
                    if tx.send(bytes).await.is_err() {
                        return None;
                    }
                }
                Some(Err(e)) => return Some(e.to_string()),
                None => return None,
            }
        }
    };
    // The pump owns the sender: when it stops, the reader sees the end of the stream.
    let (stopped, (mut summary, read)) = tokio::join!(pump, reader);
    if let Some(why) = stopped {
        testreport::warn(&mut summary, format!("{text}: the copy stopped: {why}"));
    }
    (summary, read)
}

/// The blocking side of the channel, as a reader that refuses to go past its byte budget.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
    left: u64,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        if self.left == 0 {
            return Err(io::Error::other(format!(
                "over the {} MiB a task's reports may have",
                testreport::MAX_ARCHIVE_BYTES / 1024 / 1024
            )));
        }
        let n = buf
            .len()
            .min(self.chunk.len())
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        self.left -= n as u64;
        Ok(n)
    }
}
