//! The job server's metrics (README, "Operating") and what it knows of its agents. Counts
//! of events (claims, lapses, webhook deliveries) are counted where they happen; what the
//! store holds (jobs by state, log bytes) and who is connected are computed at each scrape,
//! so they are right across restarts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::store::StoreStats;
use crate::metrics::{SourceLabel, duration_buckets};
use crate::protocol::JobState;

/// How long after its last claim an agent counts as connected: a long poll lasts at most
/// `claim_wait`, and the agent claims again at once.
const ONLINE_MARGIN: Duration = Duration::from_secs(15);

/// An agent not heard from for this long is forgotten (agents that register again get a
/// new id); one busy with a job renews its lease instead of claiming.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    state: &'static str,
    /// The job's labels, sorted and joined by commas: the sets an admin gives jobs.
    labels: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `github`, `gitea`, or `other` for any other path.
    pub forge: &'static str,
    pub outcome: &'static str,
}

pub struct ServerMetrics {
    registry: Registry,
    jobs: Family<JobLabels, Gauge>,
    jobs_no_agent: Gauge,
    log_bytes: Gauge,
    agents_connected: Gauge,
    free_slots: Gauge,
    pub submitted: Family<SourceLabel, Counter>,
    pub queue_wait: Histogram,
    pub job_duration: Family<StateLabel, Histogram>,
    pub claims: Counter,
    pub offers: Counter,
    pub offers_lapsed: Counter,
    pub jobs_lost: Counter,
    pub webhooks: Family<WebhookLabels, Counter>,
    /// One scrape at a time sets the computed gauges and encodes them.
    scrape: Mutex<()>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dockhand_server");
        let jobs = Family::<JobLabels, Gauge>::default();
        let jobs_no_agent = Gauge::default();
        let log_bytes = Gauge::default();
        let agents_connected = Gauge::default();
        let free_slots = Gauge::default();
        let submitted = Family::<SourceLabel, Counter>::default();
        let queue_wait = Histogram::new(exponential_buckets(0.05, 2.5, 14));
        let job_duration = Family::<StateLabel, Histogram>::new_with_constructor(duration_buckets);
        let (claims, offers, offers_lapsed, jobs_lost): (Counter, Counter, Counter, Counter) =
            Default::default();
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "jobs",
            "Jobs in the store, by state and label set",
            jobs.clone(),
        );
        registry.register(
            "jobs_no_agent",
            "Queued jobs whose labels no connected agent has",
            jobs_no_agent.clone(),
        );
        registry.register_with_unit(
            "log",
            "Job log bytes stored",
            Unit::Bytes,
            log_bytes.clone(),
        );
        registry.register(
            "agents_connected",
            "Agents that claimed within the claim wait, or hold a running job",
            agents_connected.clone(),
        );
        registry.register(
            "agent_free_slots",
            "Free job slots the connected agents last reported",
            free_slots.clone(),
        );
        registry.register(
            "jobs_submitted",
            "Jobs created, by source (api, webhook)",
            submitted.clone(),
        );
        registry.register_with_unit(
            "queue_wait",
            "From a job's submission to its accept by an agent",
            Unit::Seconds,
            queue_wait.clone(),
        );
        registry.register_with_unit(
            "job_duration",
            "From a job's accept to its result, by final state",
            Unit::Seconds,
            job_duration.clone(),
        );
        registry.register("claims", "Claims agents made", claims.clone());
        registry.register("offers", "Jobs offered to agents", offers.clone());
        registry.register(
            "offers_lapsed",
            "Offers not accepted in time (their jobs queued again)",
            offers_lapsed.clone(),
        );
        registry.register(
            "jobs_lost",
            "Running jobs whose lease lapsed",
            jobs_lost.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by forge and outcome",
            webhooks.clone(),
        );
        ServerMetrics {
            registry,
            jobs,
            jobs_no_agent,
            log_bytes,
            agents_connected,
            free_slots,
            submitted,
            queue_wait,
            job_duration,
            claims,
            offers,
            offers_lapsed,
            jobs_lost,
            webhooks,
            scrape: Mutex::new(()),
        }
    }
}

impl ServerMetrics {
    /// The exposition, with the computed gauges set from `stats` and `agents`.
    pub fn scrape(&self, stats: &StoreStats, agents: &[Present]) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.jobs.clear();
        let mut no_agent = 0;
        for (state, labels, count) in &stats.jobs {
            let mut sorted = labels.clone();
            sorted.sort();
            let key = JobLabels {
                state: state.as_str(),
                labels: sorted.join(","),
            };
            self.jobs.get_or_create(&key).inc_by(*count as i64);
            if *state == JobState::Queued && !covered(labels, agents) {
                no_agent += *count as i64;
            }
        }
        self.jobs_no_agent.set(no_agent);
        self.log_bytes.set(stats.log_bytes as i64);
        self.agents_connected.set(agents.len() as i64);
        self.free_slots
            .set(agents.iter().map(|a| i64::from(a.free_slots)).sum());
        crate::metrics::encode(&self.registry)
    }
}

/// A connected agent as its last claim described it.
#[derive(Clone, Debug)]
pub struct Present {
    pub labels: Vec<String>,
    pub free_slots: u32,
    seen: Instant,
}

/// The agents the server has heard from, by id.
#[derive(Default)]
pub struct Presence {
    agents: Mutex<HashMap<String, Present>>,
}

impl Presence {
    /// An agent claims (at the start and at the end of its long poll).
    pub fn seen(&self, agent: &str, labels: &[String], free_slots: u32) {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents.retain(|_, agent| agent.seen.elapsed() < FORGET_AFTER);
        agents.insert(
            agent.to_owned(),
            Present {
                labels: labels.to_vec(),
                free_slots,
                seen: Instant::now(),
            },
        );
    }

    /// Agents that claimed within `claim_wait` (and a margin), or hold one of the running
    /// jobs' leases (`running`: their agents' ids), which renew instead of claiming.
    pub fn online(&self, claim_wait: Duration, running: &[String]) -> Vec<Present> {
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents
            .iter()
            .filter(|(id, agent)| {
                agent.seen.elapsed() <= claim_wait + ONLINE_MARGIN || running.contains(id)
            })
            .map(|(_, agent)| agent.clone())
            .collect()
    }
}

/// Whether one of `agents` has every label of a job's `labels`: it could be offered.
pub fn covered(labels: &[String], agents: &[Present]) -> bool {
    agents
        .iter()
        .any(|agent| labels.iter().all(|l| agent.labels.contains(l)))
}
