//! `events.jsonl` in the results directory: every event but output (which is in log.txt),
//! one JSON line each, written as it happens. A job from the job server uploads it; a line's
//! number is the event's sequence number.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::record::JobRecord;
use super::reporter::{Sink, SinkError, writing};
use crate::events::Event;

pub struct EventFile {
    file: File,
    path: PathBuf,
}

impl EventFile {
    pub fn create(path: &Path) -> io::Result<EventFile> {
        Ok(EventFile {
            file: File::create(path)?,
            path: path.to_path_buf(),
        })
    }
}

impl Sink for EventFile {
    fn event(&mut self, event: &Event, _: &JobRecord) -> Result<(), SinkError> {
        if matches!(event, Event::Log { .. }) {
            return Ok(());
        }
        let mut line = serde_json::to_vec(event).expect("events serialise");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(writing(self.path.display()))
    }
}
