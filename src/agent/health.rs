//! What the agent serves on `agent.metrics_listen`: `/healthz` (the dispatcher loop itself
//! answers, so a stuck loop fails it), `/readyz` (the engine answers, sources run, not
//! draining) and `/metrics`.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::docker::Engine;

/// Probes waiting for the loop.
const PROBES: usize = 8;

/// How long a probe waits for the loop or the engine before answering 503.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// A question to the dispatcher loop, answered from inside it.
pub struct Probe(pub oneshot::Sender<LoopState>);

/// What the loop says of itself.
#[derive(Clone, Copy, Debug)]
pub struct LoopState {
    pub sources: usize,
    pub draining: bool,
}

pub fn probes() -> (mpsc::Sender<Probe>, mpsc::Receiver<Probe>) {
    mpsc::channel(PROBES)
}

#[derive(Clone)]
struct Checks {
    probes: mpsc::Sender<Probe>,
    engine: Engine,
}

/// Serves until `cancel`.
pub async fn serve(
    listener: TcpListener,
    probes: mpsc::Sender<Probe>,
    engine: Engine,
    cancel: CancellationToken,
) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Checks { probes, engine });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::warn!("serving metrics_listen failed: {e}");
    }
}

/// The loop's answer, or why there is none.
async fn ask(probes: &mpsc::Sender<Probe>) -> Result<LoopState, String> {
    let (tx, rx) = oneshot::channel();
    let asked = async {
        probes.send(Probe(tx)).await.ok()?;
        rx.await.ok()
    };
    match tokio::time::timeout(ANSWER_WAIT, asked).await {
        Ok(Some(state)) => Ok(state),
        Ok(None) => Err("the dispatcher loop has ended".to_owned()),
        Err(_) => Err(format!(
            "the dispatcher loop did not answer within {ANSWER_WAIT:?}"
        )),
    }
}

fn unavailable(reason: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
}

async fn healthz(State(checks): State<Checks>) -> Response {
    match ask(&checks.probes).await {
        Ok(_) => "ok\n".into_response(),
        Err(reason) => unavailable(&reason),
    }
}

async fn readyz(State(checks): State<Checks>) -> Response {
    let state = match ask(&checks.probes).await {
        Ok(state) => state,
        Err(reason) => return unavailable(&reason),
    };
    if state.draining {
        return unavailable("draining: no new jobs");
    }
    if state.sources == 0 {
        return unavailable("no source is running");
    }
    match tokio::time::timeout(ANSWER_WAIT, checks.engine.ping()).await {
        Ok(Ok(())) => "ready\n".into_response(),
        Ok(Err(e)) => unavailable(&e.to_string()),
        Err(_) => unavailable(&format!(
            "the Docker engine did not answer within {ANSWER_WAIT:?}"
        )),
    }
}

async fn metrics() -> Response {
    let text = crate::metrics::encode(&crate::metrics::agent().registry);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn health_is_the_loops_own_answer() {
        let (tx, mut rx) = probes();
        let answering = tokio::spawn(async move {
            let Some(Probe(reply)) = rx.recv().await else {
                panic!("no probe");
            };
            let _ = reply.send(LoopState {
                sources: 1,
                draining: false,
            });
            rx
        });
        assert_eq!(ask(&tx).await.map(|s| s.sources), Ok(1));
        let rx = answering.await.unwrap();
        assert_eq!(
            ask(&tx).await.map(|s| s.sources),
            Err("the dispatcher loop did not answer within 2s".to_owned()),
            "a loop that does not serve its probes is not healthy"
        );
        drop(rx);
        assert_eq!(
            ask(&tx).await.map(|s| s.sources),
            Err("the dispatcher loop has ended".to_owned())
        );
    }
}
