//! Copying out of a finished task's container through the engine's archive API, read on
//! the blocking pool as it streams in: the copy stops at a byte budget, the deadline or a
//! cancel, whichever comes first. Test reports are read here, artifacts written by
//! [`crate::artifacts`]; every problem with either is a warning in its summary, never the
//! job's error.

use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::engine::ContainerEngine;
use crate::artifacts::Limits;
use crate::collector::{Artifacts, Reports};
use crate::docker::{Archive, DockerError};
use crate::events::{ArtifactSummary, TestSummary};
use crate::testreport::{self, Pattern};
use crate::util::off_runtime;

/// How long copying a task's reports, or its artifacts, out may take in all.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Chunks of the archive already received are handed over in batches up to this size.
const BATCH_BYTES: usize = 1 << 20;

/// Reads the files `reports.junit` names in container `id`.
pub async fn reports<E: ContainerEngine>(
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

/// Copies what `artifacts.paths` names in container `id` into `dest`. Returns what was
/// copied and the paths that matched nothing, for the caller to judge under `required`.
pub async fn artifacts<E: ContainerEngine>(
    engine: &E,
    id: &str,
    artifacts: &Artifacts,
    dest: &Path,
    cancel: &CancellationToken,
) -> Result<(ArtifactSummary, Vec<String>), DockerError> {
    let workdir = engine.working_dir(id).await?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut summary = ArtifactSummary::default();
    let mut missing = Vec::new();
    let mut limits = Limits {
        bytes: artifacts.max_size,
        files: artifacts.max_files,
        max_bytes: artifacts.max_size,
        max_files: artifacts.max_files,
    };
    // What the engine may send in all: the content allowed, twice over for what the
    // patterns do not pick in the directories they name, and the tar headers.
    let mut budget = artifacts
        .max_size
        .saturating_mul(2)
        .saturating_add(64 << 20);
    let dir = dest.to_owned();
    if let Err(e) = off_runtime(move || std::fs::create_dir_all(dir)).await {
        testreport::push_warning(
            &mut summary.warnings,
            format!("{}: cannot be made: {e}", dest.display()),
        );
        return Ok((summary, missing));
    }
    for text in &artifacts.paths {
        let pattern = match Pattern::new(text, &workdir) {
            Ok(pattern) => pattern,
            Err(reason) => {
                testreport::push_warning(&mut summary.warnings, format!("{text}: {reason}"));
                continue;
            }
        };
        let Some(archive) = engine.archive(id, &pattern.base).await? else {
            missing.push(text.clone());
            continue;
        };
        let (dir, workdir) = (dest.to_owned(), workdir.clone());
        let ((done, read), stopped) = read_off_runtime(
            archive,
            budget,
            "a task's artifacts",
            deadline,
            cancel,
            move |reader| {
                let mut part = ArtifactSummary::default();
                let mut limits = limits;
                let matched = crate::artifacts::extract(
                    reader,
                    &pattern,
                    &workdir,
                    &dir,
                    &mut limits,
                    &mut part,
                );
                (part, limits, matched)
            },
        )
        .await;
        let (part, left, matched) = done;
        budget = budget.saturating_sub(read);
        limits = left;
        summary.files += part.files;
        summary.bytes += part.bytes;
        summary.capped |= part.capped;
        for warning in part.warnings {
            testreport::push_warning(&mut summary.warnings, warning);
        }
        if let Some(why) = stopped {
            testreport::push_warning(
                &mut summary.warnings,
                format!("{text}: the copy stopped: {why}"),
            );
        }
        if matched == 0 {
            missing.push(text.clone());
        }
        if summary.capped {
            break;
        }
    }
    Ok((summary, missing))
}

/// Feeds `archive` to the report reader on the blocking pool; returns the summary and the
/// bytes read.
async fn stream_into(
    archive: Archive,
    pattern: Pattern,
    summary: TestSummary,
    budget: u64,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> (TestSummary, u64) {
    let text = pattern.text.clone();
    let ((mut summary, read), stopped) = read_off_runtime(
        archive,
        budget,
        "a task's reports",
        deadline,
        cancel,
        move |reader| {
            let mut summary = summary;
            testreport::read_archive(reader, &pattern, &mut summary);
            summary
        },
    )
    .await;
    if let Some(why) = stopped {
        testreport::warn(&mut summary, format!("{text}: the copy stopped: {why}"));
    }
    (summary, read)
}

/// Runs `work` on the blocking pool over `archive` as it streams in through a bounded
/// channel, at most `budget` bytes of it (`what` says whose, in the error past it). Returns
/// what `work` returned with the bytes it read, and why the copy stopped early, if it did
/// (an engine error, the deadline, a cancel).
pub async fn read_off_runtime<T: Send + 'static>(
    mut archive: Archive,
    budget: u64,
    what: &'static str,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
    work: impl FnOnce(&mut ChannelReader) -> T + Send + 'static,
) -> ((T, u64), Option<String>) {
    let (tx, rx) = mpsc::channel(8);
    let reader = off_runtime(move || {
        let mut reader = ChannelReader {
            rx,
            chunk: Bytes::new(),
            left: budget,
            budget,
            what,
        };
        let done = work(&mut reader);
        (done, budget - reader.left)
    });
    // The pump owns the sender: when it stops, the reader sees the end of the stream.
    let pump = async move {
        loop {
            let chunk = tokio::select! {
                chunk = archive.next() => chunk,
                () = cancel.cancelled() => return Some("cancelled".to_owned()),
                () = tokio::time::sleep_until(deadline) => {
                    return Some("it ran past its deadline".to_owned());
                }
            };
            let mut batch = match chunk {
                Some(Ok(bytes)) => BytesMut::from(bytes),
                Some(Err(e)) => return Some(e.to_string()),
                None => return None,
            };
            // Chunks already arrived go over together: one wake-up of the reader each.
            let mut ended = None;
            while batch.len() < BATCH_BYTES {
                match archive.next().now_or_never() {
                    Some(Some(Ok(bytes))) => batch.extend_from_slice(&bytes),
                    Some(Some(Err(e))) => {
                        ended = Some(Some(e.to_string()));
                        break;
                    }
                    Some(None) => {
                        ended = Some(None);
                        break;
                    }
                    None => break,
                }
            }
            if tx.send(batch.freeze()).await.is_err() {
                return None;
            }
            if let Some(why) = ended {
                return why;
            }
        }
    };
    let (stopped, done) = tokio::join!(pump, reader);
    (done, stopped)
}

/// The blocking side of the channel, as a reader that refuses to go past its byte budget.
pub struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
    left: u64,
    budget: u64,
    what: &'static str,
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
                "over the {} MiB {} may copy",
                self.budget >> 20,
                self.what
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
