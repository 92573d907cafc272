//! Running the server: the store opened and migrated, the API on a listener, and a ticker
//! that returns lapsed offers to the queue and marks jobs with lapsed leases `lost`.
//! Connections are served by hyper directly so that none can be held open for free: headers
//! must arrive within `header_timeout`, a body within `body_timeout` and under
//! [`BODY_LIMIT`], and at most `max_connections` are served at once.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::api::{AppState, router};
use super::forge::Reporter;
use super::settings::{Database, ServerSettings};
use super::store::{JobStore, PgStore, SqliteStore, StoreError};

/// How often offers and leases are checked for lapses.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

/// The largest request body taken: a log chunk (`log_chunk_max`, 1 MiB) with room to spare.
pub const BODY_LIMIT: usize = 2 << 20;

/// How long open requests get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {address}: {error}")]
    Listen {
        address: String,
        error: std::io::Error,
    },
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
}

/// Serves until `shutdown`; `ready` gets the bound address (port 0 picks one).
pub async fn serve(
    settings: ServerSettings,
    shutdown: CancellationToken,
    ready: impl FnOnce(std::net::SocketAddr),
) -> Result<(), ServeError> {
    let jobs_waiting = Arc::new(Notify::new());
    match &settings.database {
        Database::Sqlite(path) => {
            let store = SqliteStore::open(path).await?;
            serve_store(store, jobs_waiting, settings, shutdown, ready).await
        }
        Database::Postgres(url) => {
            let store = PgStore::connect(url, settings.database_pool, jobs_waiting.clone()).await?;
            serve_store(store, jobs_waiting, settings, shutdown, ready).await
        }
    }
}

/// Serves from an open store; `jobs_waiting` is what wakes long polls.
async fn serve_store<S: JobStore>(
    store: S,
    jobs_waiting: Arc<Notify>,
    settings: ServerSettings,
    shutdown: CancellationToken,
    ready: impl FnOnce(std::net::SocketAddr),
) -> Result<(), ServeError> {
    let store = Arc::new(store);
    let graced = store.grant_grace(settings.lease).await?;
    let listener =
        TcpListener::bind(settings.listen)
            .await
            .map_err(|error| ServeError::Listen {
                address: settings.listen.to_string(),
                error,
            })?;
    let address = listener.local_addr().map_err(ServeError::Serve)?;
    let state = AppState {
        store: store.clone(),
        settings: Arc::new(settings),
        jobs_waiting,
        metrics: Arc::default(),
        presence: Arc::default(),
    };
    let expiry = tokio::spawn(expire_lapsed(state.clone(), shutdown.clone()));
    let base_url =
        (state.settings.public_url.clone()).unwrap_or_else(|| format!("http://{address}"));
    let reporter = Reporter::new(store.clone(), state.settings.clone(), base_url);
    let reports = tokio::spawn(reporter.run(shutdown.clone()));
    let (header_timeout, max_connections) = (
        state.settings.header_timeout,
        state.settings.max_connections,
    );
    let app = router(state.clone())
        .layer(axum::middleware::from_fn_with_state(
            state.settings.body_timeout,
            read_body,
        ))
        .layer(axum::middleware::from_fn(access_log));
    ready(address);
    if graced > 0 {
        tracing::info!("{graced} running job(s): their agents have a lease's time to renew");
    }
    let connections = Arc::new(Semaphore::new(max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    shutdown.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open requests did not finish within {SHUTDOWN_GRACE:?}; closing them");
    }
    let _ = expiry.await;
    let _ = reports.await;
    Ok(())
}

/// Reads the whole request body before any handler sees it: within `timeout` (408) and
/// at most [`BODY_LIMIT`] bytes (413, at once when Content-Length says so).
async fn read_body(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let refuse = |status: StatusCode, message: String| {
        (
            status,
            [(header::CONNECTION, "close")],
            axum::Json(serde_json::json!({ "error": message })),
        )
            .into_response()
    };
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {BODY_LIMIT} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Err(_) => refuse(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {timeout:?}"),
        ),
        // Over the limit, or the client went away (then nobody reads the answer).
        Ok(Err(_)) => too_large(),
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}

/// One debug line per request: method, path, status, time taken.
async fn access_log(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

async fn expire_lapsed<S: JobStore>(state: AppState<S>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match state.store.expire().await {
            Ok(expired) => {
                for job in &expired.returned {
                    state.metrics.offers_lapsed.inc();
                    tracing::info!(job, "the offer lapsed; the job is queued again");
                }
                if !expired.returned.is_empty() {
                    state.jobs_waiting.notify_waiters();
                }
                for job in &expired.lost {
                    state.metrics.jobs_lost.inc();
                    tracing::warn!(job, "the lease lapsed: the job is lost");
                }
            }
            Err(e) => tracing::error!("expiring offers and leases failed: {e}"),
        }
    }
}
