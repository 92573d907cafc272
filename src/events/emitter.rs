//! Sending events to the reporter over a bounded channel: a slow sink slows the job down
//! instead of growing memory.

use bytes::Bytes;
use tokio::sync::mpsc;

use super::event::{Event, LogStream, StageOutcome, Timestamp};

#[derive(Clone, Debug)]
pub struct Emitter {
    tx: mpsc::Sender<Event>,
}

impl Emitter {
    pub fn new(tx: mpsc::Sender<Event>) -> Self {
        Emitter { tx }
    }

    /// Sends an event; if the reporter is gone there is no one left to tell.
    pub async fn send(&self, event: Event) {
        let _ = self.tx.send(event).await;
    }

    pub fn stage(&self, stage: usize) -> StageLog {
        StageLog {
            emitter: self.clone(),
            stage,
        }
    }
}

/// One stage's side of the emitter.
#[derive(Clone, Debug)]
pub struct StageLog {
    emitter: Emitter,
    pub stage: usize,
}

impl StageLog {
    pub async fn started(&self) {
        let event = Event::StageStarted {
            stage: self.stage,
            at: Timestamp::now(),
        };
        self.emitter.send(event).await;
    }

    pub async fn output(&self, stream: LogStream, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        let event = Event::Log {
            stage: self.stage,
            stream,
            bytes,
        };
        self.emitter.send(event).await;
    }

    /// A line of dockhand's own about this stage.
    pub async fn note(&self, text: impl AsRef<str>) {
        let mut line = text.as_ref().to_owned();
        line.push('\n');
        self.output(LogStream::System, Bytes::from(line)).await;
    }

    pub async fn finished(&self, outcome: StageOutcome) {
        let event = Event::StageFinished {
            stage: self.stage,
            outcome,
            at: Timestamp::now(),
        };
        self.emitter.send(event).await;
    }
}
