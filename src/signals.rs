//! Process signals as an event source: SIGINT and SIGTERM ask to stop, SIGHUP to reload
//! (or to stop, where there is nothing to reload). Whoever runs a loop takes a [`Signals`]
//! as an input, so tests drive it through [`Signals::channel`] instead of real signals.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// What a signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop: drain, then cancel on the second time.
    Stop,
    /// Read the settings again.
    Reload,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {signal}: {cause}")]
pub struct SignalsError {
    signal: &'static str,
    cause: std::io::Error,
}

/// Signals received, in order.
pub struct Signals {
    received: mpsc::Receiver<Control>,
}

impl Signals {
    /// Listens for the process's signals from now on (the default actions no longer
    /// apply); SIGHUP becomes `on_hangup`. Needs a tokio runtime.
    pub fn listen(on_hangup: Control) -> Result<Signals, SignalsError> {
        let listen = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|cause| SignalsError {
                signal: name,
                cause,
            })
        };
        let mut terminate = listen(SignalKind::terminate(), "SIGTERM")?;
        let mut interrupt = listen(SignalKind::interrupt(), "SIGINT")?;
        let mut hangup = listen(SignalKind::hangup(), "SIGHUP")?;
        let (sender, signals) = Signals::channel();
        tokio::spawn(async move {
            loop {
                let control = tokio::select! {
                    Some(()) = terminate.recv() => Control::Stop,
                    Some(()) = interrupt.recv() => Control::Stop,
                    Some(()) = hangup.recv() => on_hangup,
                    () = sender.closed() => return,
                };
                if sender.send(control).await.is_err() {
                    return;
                }
            }
        });
        Ok(signals)
    }

    /// Signals sent by hand: for tests, and for code that stops a loop it started.
    pub fn channel() -> (mpsc::Sender<Control>, Signals) {
        let (sender, received) = mpsc::channel(8);
        (sender, Signals { received })
    }

    /// The next signal; `None` once nothing can send any more.
    pub async fn recv(&mut self) -> Option<Control> {
        self.received.recv().await
    }
}
