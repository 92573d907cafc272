//! `--json`: the event stream as JSON lines on stdout, each naming its job (an agent's jobs
//! share stdout).

use std::io::{self, Write};

use super::record::JobRecord;
use super::reporter::{Sink, SinkError, writing};
use crate::events::Event;

const STDOUT: &str = "the JSON lines (standard output)";

pub struct JsonLines<W: Write + Send> {
    out: io::BufWriter<W>,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: W) -> Self {
        JsonLines {
            out: io::BufWriter::new(out),
        }
    }
}

#[derive(serde::Serialize)]
struct Line<'a> {
    /// `job_started` carries its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<&'a str>,
    #[serde(flatten)]
    event: &'a Event,
}

impl<W: Write + Send> Sink for JsonLines<W> {
    fn event(&mut self, event: &Event, record: &JobRecord) -> Result<(), SinkError> {
        let job = (!matches!(event, Event::JobStarted { .. })).then_some(record.job.as_str());
        serde_json::to_writer(&mut self.out, &Line { job, event })
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(writing(STDOUT))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(writing(STDOUT))
    }
}
