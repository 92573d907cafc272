//! What `dockhand server` is told: where to listen and store, its tokens, and the protocol
//! timings it hands agents.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use super::webhook::BuiltRepository;

#[derive(Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// The SQLite file; job logs go to `logs/` beside it.
    pub database: PathBuf,
    /// Exchanged by agents for their own token at registration.
    pub registration_token: String,
    /// For submitting, listing, reading and cancelling jobs.
    pub admin_token: String,
    /// How long an offer waits for its accept before the job returns to the queue.
    pub offer_ttl: Duration,
    /// How long a lease lasts without renewal before its job is `lost`.
    pub lease: Duration,
    /// The longest a claim may wait for a job.
    pub claim_wait: Duration,
    pub log_flush: Duration,
    pub log_chunk_max: usize,
    /// Shared with the forges; webhooks are refused without one.
    pub webhook_secret: Option<String>,
    /// What a push webhook may start jobs for.
    pub repositories: Vec<BuiltRepository>,
}

/// Tokens never appear in debug output.
impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("listen", &self.listen)
            .field("database", &self.database)
            .field("offer_ttl", &self.offer_ttl)
            .field("lease", &self.lease)
            .field("claim_wait", &self.claim_wait)
            .field("repositories", &self.repositories)
            .finish_non_exhaustive()
    }
}
