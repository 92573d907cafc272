//! `--json`: the event stream as JSON lines on stdout.

use std::io::{self, Write};

use super::record::JobRecord;
use super::reporter::Sink;
use crate::events::Event;

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

impl<W: Write + Send> Sink for JsonLines<W> {
    fn event(&mut self, event: &Event, _: &JobRecord) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")?;
        if !matches!(event, Event::Log { .. }) {
            self.out.flush()?;
        }
        Ok(())
    }
}
