//! Running the server: the store opened and migrated, the API on a listener, and a ticker
//! that returns lapsed offers to the queue and marks jobs with lapsed leases `lost`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::api::{AppState, router};
use super::settings::ServerSettings;
use super::store::{Store, StoreError};

/// How often offers and leases are checked for lapses.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Serves until `shutdown`; `ready` gets the bound address (port 0 picks one).
pub async fn serve(
    settings: ServerSettings,
    shutdown: CancellationToken,
    ready: impl FnOnce(std::net::SocketAddr),
) -> Result<(), ServeError> {
    let store = Arc::new(Store::open(&settings.database).await?);
    let listener =
        TcpListener::bind(settings.listen)
            .await
            .map_err(|source| ServeError::Listen {
                address: settings.listen.to_string(),
                source,
            })?;
    let address = listener.local_addr().map_err(ServeError::Serve)?;
    let state = AppState {
        store: store.clone(),
        settings: Arc::new(settings),
        jobs_waiting: Arc::new(Notify::new()),
    };
    let expiry = tokio::spawn(expire_lapsed(state.clone(), shutdown.clone()));
    ready(address);
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    let _ = expiry.await;
    served.map_err(ServeError::Serve)
}

async fn expire_lapsed(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match state.store.expire().await {
            Ok((returned, lost)) => {
                if returned > 0 {
                    tracing::info!("{returned} offer(s) lapsed; their jobs are queued again");
                    state.jobs_waiting.notify_waiters();
                }
                if lost > 0 {
                    tracing::warn!("{lost} job(s) lost: their agents stopped renewing the lease");
                }
            }
            Err(e) => tracing::error!("expiring offers and leases failed: {e}"),
        }
    }
}
