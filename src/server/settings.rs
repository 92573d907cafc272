//! What `dockhand server` is told: where to listen and store, its tokens, and the protocol
//! timings it hands agents.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use super::webhook::BuiltRepository;

#[derive(Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub database: Database,
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
    /// A connection that has not sent a request's headers within this is closed.
    pub header_timeout: Duration,
    /// A request body that has not arrived whole within this is answered 408.
    pub body_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Whether jobs may name the agent's own disk (`path`, `file://`, absolute paths).
    pub allow_local_sources: bool,
    /// What a push webhook may start jobs for.
    pub repositories: Vec<BuiltRepository>,
}

/// Tokens never appear in debug output.
impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("listen", &self.listen)
            .field("database", &self.database.to_string())
            .field("offer_ttl", &self.offer_ttl)
            .field("lease", &self.lease)
            .field("claim_wait", &self.claim_wait)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("max_connections", &self.max_connections)
            .field("allow_local_sources", &self.allow_local_sources)
            .field("repositories", &self.repositories)
            .finish_non_exhaustive()
    }
}

/// Where the jobs are kept.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file, for one server; job logs go to `logs/` beside it.
    Sqlite(PathBuf),
    /// A `postgres://` URL, for any number of replicas sharing it.
    Postgres(String),
}

impl std::str::FromStr for Database {
    type Err = std::convert::Infallible;

    /// A `postgres://` or `postgresql://` URL, else a file path.
    fn from_str(text: &str) -> Result<Database, Self::Err> {
        Ok(
            if ["postgres://", "postgresql://"]
                .iter()
                .any(|scheme| text.starts_with(scheme))
            {
                Database::Postgres(text.to_owned())
            } else {
                Database::Sqlite(PathBuf::from(text))
            },
        )
    }
}

/// The path, or the URL without its password: fit for logs.
impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => match reqwest::Url::parse(url) {
                Ok(mut url) => {
                    if url.password().is_some() {
                        let _ = url.set_password(Some("***"));
                    }
                    write!(f, "{url}")
                }
                Err(_) => f.write_str("postgres://(unparsable URL)"),
            },
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_selects_postgres_and_never_shows_its_password() {
        let db: Database = "postgres://dockhand:secret@db:5432/jobs".parse().unwrap();
        assert_eq!(db.to_string(), "postgres://dockhand:***@db:5432/jobs");
        assert!(matches!(db, Database::Postgres(url) if url.contains("secret")));
        let file: Database = ".dockhand/server/jobs.db".parse().unwrap();
        assert_eq!(file, Database::Sqlite(".dockhand/server/jobs.db".into()));
    }
}
