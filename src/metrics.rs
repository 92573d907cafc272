//! Prometheus metrics (`prometheus-client`, the Prometheus text format 0.0.4): the one encoding both the
//! server and the agent answer `/metrics` with, and the agent's metrics, process-wide so
//! the layers that see an event (the report, the engine client, the upload) count it
//! where it happens. The server's metrics are its own (`server::metrics`). Label values
//! are bounded sets (statuses, kinds, sources), never ids or free text.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// What `/metrics` answers with.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The registry in the Prometheus text format, which every scraper and `promtool` read.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, registry);
    text
}

/// Buckets for durations from a second to about nine hours.
pub fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.5, 15))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

/// The agent's metrics (README, "Operating").
pub struct AgentMetrics {
    pub registry: Registry,
    pub jobs_running: Gauge,
    pub jobs_finished: Family<StatusLabel, Counter>,
    pub stage_duration: Family<KindLabel, Histogram>,
    pub builds: Family<OutcomeLabel, Counter>,
    pub context_bytes: Counter,
    pub docker_errors: Counter,
    pub upload_backlog_bytes: Gauge,
    pub upload_backlog_events: Gauge,
    pub secrets_masked: Counter,
    pub triggers: Family<SourceLabel, Counter>,
}

impl AgentMetrics {
    fn new() -> AgentMetrics {
        let metrics = AgentMetrics {
            registry: Registry::default(),
            jobs_running: Gauge::default(),
            jobs_finished: Family::default(),
            stage_duration: Family::new_with_constructor(duration_buckets),
            builds: Family::default(),
            context_bytes: Counter::default(),
            docker_errors: Counter::default(),
            upload_backlog_bytes: Gauge::default(),
            upload_backlog_events: Gauge::default(),
            secrets_masked: Counter::default(),
            triggers: Family::default(),
        };
        let mut registry = Registry::with_prefix("dockhand_agent");
        registry.register(
            "jobs_running",
            "Jobs running now",
            metrics.jobs_running.clone(),
        );
        registry.register(
            "jobs_finished",
            "Jobs ended, by status",
            metrics.jobs_finished.clone(),
        );
        registry.register_with_unit(
            "stage_duration",
            "How long stages took, by kind (collect, build, run)",
            Unit::Seconds,
            metrics.stage_duration.clone(),
        );
        registry.register(
            "builds",
            "Image builds by outcome: cached (the build key matched) or built",
            metrics.builds.clone(),
        );
        registry.register_with_unit(
            "build_context",
            "Bytes of build context sent to the engine",
            Unit::Bytes,
            metrics.context_bytes.clone(),
        );
        registry.register(
            "docker_errors",
            "Calls to the Docker Engine API that failed",
            metrics.docker_errors.clone(),
        );
        registry.register_with_unit(
            "upload_backlog",
            "Log bytes not yet committed by the job server",
            Unit::Bytes,
            metrics.upload_backlog_bytes.clone(),
        );
        registry.register(
            "upload_backlog_events",
            "Job events not yet acknowledged by the job server",
            metrics.upload_backlog_events.clone(),
        );
        registry.register(
            "secrets_masked",
            "Secret values replaced by *** in job output",
            metrics.secrets_masked.clone(),
        );
        registry.register(
            "triggers",
            "Jobs arrived, by source (watch, schedule, http)",
            metrics.triggers.clone(),
        );
        AgentMetrics {
            registry,
            ..metrics
        }
    }
}

/// The process's agent metrics.
pub fn agent() -> &'static AgentMetrics {
    static METRICS: LazyLock<AgentMetrics> = LazyLock::new(AgentMetrics::new);
    &METRICS
}
