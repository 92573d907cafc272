//! The sinks of a job run on this machine, started together: the console (or JSON lines),
//! the results directory and junit.xml, behind one reporter thread and one secret masker.

use std::io;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::console::Console;
use super::event_file::EventFile;
use super::jsonl::JsonLines;
use super::junit::JUnit;
use super::mask::Masker;
use super::metrics::StageMetrics;
use super::palette::Palette;
use super::record::JobRecord;
use super::reporter::{Sink, report};
use super::results::{JobInfo, ResultsDir};
use crate::events::Emitter;

/// The events of a job (all but output), beside log.txt, when asked for.
pub const EVENTS_FILE: &str = "events.jsonl";

/// Events buffered between a job and its reporter.
const EVENT_BUFFER: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleOutput {
    /// Prefixed lines and a summary table, statuses in the palette's colours.
    Lines(Palette),
    /// The event stream as JSON lines.
    Json,
}

/// A running reporter; [`LocalReport::finish`] waits for it once the job's emitter is gone.
pub struct LocalReport {
    handle: JoinHandle<JobRecord>,
    /// `<results root>/<job id>`.
    pub dir: PathBuf,
}

impl LocalReport {
    /// Creates the job's results directory and starts the reporter, with `events.jsonl`
    /// when `event_file`. Returns the emitter the job sends its events to.
    pub fn start(
        results_root: &Path,
        job_id: &str,
        info: JobInfo,
        console: ConsoleOutput,
        masker: Masker,
        event_file: bool,
    ) -> io::Result<(Emitter, LocalReport)> {
        let results = ResultsDir::create(results_root, job_id, info)?;
        let dir = results.dir().to_path_buf();
        let console: Box<dyn Sink> = match console {
            ConsoleOutput::Lines(palette) => {
                let terminal = io::IsTerminal::is_terminal(&io::stdout());
                Box::new(Console::new(io::stdout(), terminal, palette))
            }
            ConsoleOutput::Json => Box::new(JsonLines::new(io::stdout())),
        };
        // The order sinks see the job's end in: a file that cannot be written then still
        // makes result.json and the console, last, say the job ended in error.
        let mut sinks: Vec<Box<dyn Sink>> = vec![
            Box::new(StageMetrics),
            Box::new(JUnit::new(dir.join("junit.xml"))),
        ];
        if event_file {
            sinks.push(Box::new(EventFile::create(&dir.join(EVENTS_FILE))?));
        }
        sinks.push(Box::new(results));
        sinks.push(console);
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let handle = tokio::task::spawn_blocking(move || report(rx, sinks, &masker));
        Ok((Emitter::new(tx), LocalReport { handle, dir }))
    }

    /// The final record, once every emitter of the job is dropped. Its status and exit
    /// code are the job's: `error` (202) with a message when the results could not be
    /// written, whatever the stages did.
    pub async fn finish(self) -> JobRecord {
        self.handle
            .await
            .unwrap_or_else(|e| JobRecord::failed(format!("the reporter failed: {e}")))
    }
}
