//! The agent's bookkeeping, without I/O: which jobs run, which wait, and what a new job or
//! a finished one means under each stream's [`OnBusy`] policy and the concurrency limit.
//! Stopping is a sequence kept here too: drain (sources stop, queued jobs dropped, running
//! ones go on for a grace period), then cancel what still runs, then give up waiting for
//! its cleanup. The dispatcher carries out the [`Action`]s.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::job::{Job, OnBusy};

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Start(Job),
    /// A newer job of the same stream supersedes this running one.
    Cancel {
        job: String,
        reason: String,
    },
    Drop {
        job: Job,
        reason: String,
    },
    /// Stop the sources; the running jobs get until `grace_until`.
    StopSources {
        running: usize,
        grace: Duration,
    },
    /// Cancel every running job.
    CancelAll {
        running: usize,
    },
    /// Their cleanup took too long: exit without waiting for it.
    GiveUp {
        running: usize,
    },
}

/// How long stopping may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopLimits {
    /// Running jobs may finish within this after the first stop request.
    pub grace: Duration,
    /// Cancelled jobs may clean up within this before the agent exits anyway.
    pub cleanup: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopping {
    No,
    Draining { until: Instant },
    Cancelling { until: Instant },
    GaveUp,
}

#[derive(Debug)]
struct Running {
    id: String,
    stream: String,
}

#[derive(Debug)]
pub struct AgentState {
    concurrency: usize,
    running: Vec<Running>,
    queue: VecDeque<Job>,
    limits: StopLimits,
    stopping: Stopping,
}

impl AgentState {
    pub fn new(concurrency: usize, limits: StopLimits) -> Self {
        AgentState {
            concurrency: concurrency.max(1),
            running: Vec::new(),
            queue: VecDeque::new(),
            limits,
            stopping: Stopping::No,
        }
    }

    pub fn submit(&mut self, job: Job) -> Vec<Action> {
        if self.is_draining() {
            return vec![Action::Drop {
                job,
                reason: "the agent is shutting down".to_owned(),
            }];
        }
        let mut actions = Vec::new();
        let stream = job.stream.clone();
        let running_here = self.running.iter().any(|r| r.stream == stream);
        let queued_here = self.queue.iter().any(|q| q.stream == stream);
        match job.on_busy {
            OnBusy::Parallel => {}
            OnBusy::Skip if running_here || queued_here => {
                return vec![Action::Drop {
                    job,
                    reason: format!("a run of {stream} has not finished"),
                }];
            }
            OnBusy::Skip => {}
            OnBusy::Queue | OnBusy::Cancel => {
                let (replaced, kept) = std::mem::take(&mut self.queue)
                    .into_iter()
                    .partition(|q| q.stream == stream);
                self.queue = kept;
                actions.extend(replaced.into_iter().map(|old: Job| Action::Drop {
                    job: old,
                    reason: format!("replaced by the newer job {}", job.id),
                }));
                if job.on_busy == OnBusy::Cancel {
                    actions.extend(self.running.iter().filter(|r| r.stream == stream).map(|r| {
                        Action::Cancel {
                            job: r.id.clone(),
                            reason: format!("superseded by {} ({})", job.id, job.trigger),
                        }
                    }));
                }
            }
        }
        self.queue.push_back(job);
        actions.extend(self.fill());
        actions
    }

    pub fn finished(&mut self, id: &str) -> Vec<Action> {
        self.running.retain(|r| r.id != id);
        self.fill()
    }

    /// A stop request. The first drains: sources stop, queued jobs are dropped, running
    /// ones go on for the grace period. The next cancels them.
    pub fn stop(&mut self, now: Instant) -> Vec<Action> {
        if self.stopping != Stopping::No {
            return self.cancel_all(now);
        }
        self.stopping = Stopping::Draining {
            until: now + self.limits.grace,
        };
        let mut actions = vec![Action::StopSources {
            running: self.running.len(),
            grace: self.limits.grace,
        }];
        actions.extend(self.queue.drain(..).map(|job| Action::Drop {
            job,
            reason: "the agent is shutting down".to_owned(),
        }));
        actions
    }

    fn cancel_all(&mut self, now: Instant) -> Vec<Action> {
        match self.stopping {
            Stopping::Cancelling { .. } | Stopping::GaveUp => Vec::new(),
            Stopping::No | Stopping::Draining { .. } => {
                self.stopping = Stopping::Cancelling {
                    until: now + self.limits.cleanup,
                };
                vec![Action::CancelAll {
                    running: self.running.len(),
                }]
            }
        }
    }

    /// When [`AgentState::deadline_passed`] has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        match self.stopping {
            Stopping::Draining { until } | Stopping::Cancelling { until } => Some(until),
            Stopping::No | Stopping::GaveUp => None,
        }
    }

    /// The grace period over: cancel; the cleanup limit over: give up.
    pub fn deadline_passed(&mut self, now: Instant) -> Vec<Action> {
        match self.stopping {
            Stopping::Draining { until } if now >= until => self.cancel_all(now),
            Stopping::Cancelling { until } if now >= until => {
                self.stopping = Stopping::GaveUp;
                vec![Action::GiveUp {
                    running: self.running.len(),
                }]
            }
            _ => Vec::new(),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.stopping != Stopping::No
    }

    /// Whether the loop is over: stopping (or out of sources) with nothing running, or
    /// given up waiting.
    pub fn is_done(&self, sources_left: bool) -> bool {
        self.stopping == Stopping::GaveUp
            || ((self.is_draining() || !sources_left) && self.running.is_empty())
    }

    pub fn set_concurrency(&mut self, concurrency: usize) -> Vec<Action> {
        self.concurrency = concurrency.max(1);
        self.fill()
    }

    pub fn running(&self) -> impl Iterator<Item = &str> {
        self.running.iter().map(|r| r.id.as_str())
    }

    /// Jobs that could start now without waiting: what the job server is told.
    pub fn free_slots(&self) -> usize {
        self.concurrency
            .saturating_sub(self.running.len() + self.queue.len())
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.queue.is_empty()
    }

    /// Starts queued jobs in arrival order while there is room. A job waits while its
    /// stream runs, unless its stream runs in parallel.
    fn fill(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut index = 0;
        while index < self.queue.len() && self.running.len() < self.concurrency {
            let job = &self.queue[index];
            let blocked = job.on_busy != OnBusy::Parallel
                && self.running.iter().any(|r| r.stream == job.stream);
            if blocked {
                index += 1;
                continue;
            }
            let Some(job) = self.queue.remove(index) else {
                break;
            };
            self.running.push(Running {
                id: job.id.clone(),
                stream: job.stream.clone(),
            });
            actions.push(Action::Start(job));
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Origin;

    fn job(id: &str, stream: &str, on_busy: OnBusy) -> Job {
        Job {
            id: id.to_owned(),
            stream: stream.to_owned(),
            origin: Origin::Path { path: ".".into() },
            config_file: "config.yml".into(),
            tasks: Vec::new(),
            env: Default::default(),
            timeout: None,
            trigger: "test".to_owned(),
            on_busy,
            remote: None,
            build_cache: None,
            trust: Default::default(),
        }
    }

    const LIMITS: StopLimits = StopLimits {
        grace: Duration::from_secs(30),
        cleanup: Duration::from_secs(60),
    };

    /// `S:id`, `C:id`, `D:id` for each action.
    fn names(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Start(j) => format!("S:{}", j.id),
                Action::Cancel { job, .. } => format!("C:{job}"),
                Action::Drop { job, .. } => format!("D:{}", job.id),
                Action::StopSources { running, .. } => format!("stop:{running}"),
                Action::CancelAll { running } => format!("cancel:{running}"),
                Action::GiveUp { running } => format!("give up:{running}"),
            })
            .collect()
    }

    #[test]
    fn concurrency_bounds_running_jobs() {
        let mut state = AgentState::new(2, LIMITS);
        let mut started = Vec::new();
        for id in ["a", "b", "c", "d"] {
            started.extend(names(&state.submit(job(id, id, OnBusy::Cancel))));
        }
        assert_eq!(started, ["S:a", "S:b"]);
        assert_eq!(names(&state.finished("a")), ["S:c"]);
        assert_eq!(names(&state.finished("c")), ["S:d"]);
        assert_eq!(names(&state.finished("b")), Vec::<String>::new());
        state.finished("d");
        assert!(state.is_idle());
    }

    #[test]
    fn a_change_cancels_the_running_job_and_waits_for_it() {
        let mut state = AgentState::new(2, LIMITS);
        assert_eq!(names(&state.submit(job("1", "w", OnBusy::Cancel))), ["S:1"]);
        assert_eq!(names(&state.submit(job("2", "w", OnBusy::Cancel))), ["C:1"]);
        assert_eq!(
            names(&state.submit(job("3", "w", OnBusy::Cancel))),
            ["D:2", "C:1"]
        );
        assert_eq!(names(&state.finished("1")), ["S:3"]);
    }

    #[test]
    fn queue_keeps_only_the_newest_waiting_job() {
        let mut state = AgentState::new(4, LIMITS);
        state.submit(job("1", "w", OnBusy::Queue));
        assert!(state.submit(job("2", "w", OnBusy::Queue)).is_empty());
        assert_eq!(names(&state.submit(job("3", "w", OnBusy::Queue))), ["D:2"]);
        assert_eq!(names(&state.finished("1")), ["S:3"]);
    }

    #[test]
    fn skip_drops_a_schedule_firing_during_its_last_run_and_parallel_does_not() {
        let mut state = AgentState::new(4, LIMITS);
        state.submit(job("1", "s", OnBusy::Skip));
        assert_eq!(names(&state.submit(job("2", "s", OnBusy::Skip))), ["D:2"]);
        assert_eq!(
            names(&state.submit(job("3", "p", OnBusy::Parallel))),
            ["S:3"]
        );
        assert_eq!(
            names(&state.submit(job("4", "p", OnBusy::Parallel))),
            ["S:4"]
        );
    }

    #[test]
    fn draining_drops_waiting_and_new_jobs() {
        let mut state = AgentState::new(1, LIMITS);
        state.submit(job("1", "a", OnBusy::Cancel));
        state.submit(job("2", "b", OnBusy::Cancel));
        assert_eq!(names(&state.stop(Instant::now())), ["stop:1", "D:2"]);
        assert_eq!(names(&state.submit(job("3", "c", OnBusy::Cancel))), ["D:3"]);
        assert_eq!(state.running().collect::<Vec<_>>(), ["1"]);
        assert!(!state.is_done(true));
        assert!(state.finished("1").is_empty());
        assert!(state.is_idle());
        assert!(state.is_done(true));
    }

    #[test]
    fn the_grace_period_ends_in_cancelling_then_giving_up() {
        let start = Instant::now();
        let mut state = AgentState::new(2, LIMITS);
        state.submit(job("1", "a", OnBusy::Cancel));
        assert_eq!(state.deadline(), None);
        state.stop(start);
        assert_eq!(state.deadline(), Some(start + LIMITS.grace));
        assert!(
            state
                .deadline_passed(start + Duration::from_secs(29))
                .is_empty()
        );
        let grace_over = start + LIMITS.grace;
        assert_eq!(names(&state.deadline_passed(grace_over)), ["cancel:1"]);
        assert_eq!(state.deadline(), Some(grace_over + LIMITS.cleanup));
        assert!(!state.is_done(true));
        let cleanup_over = grace_over + LIMITS.cleanup;
        assert_eq!(names(&state.deadline_passed(cleanup_over)), ["give up:1"]);
        assert_eq!(state.deadline(), None);
        assert!(
            state.is_done(true),
            "the agent exits though job 1 still runs"
        );
    }

    #[test]
    fn a_second_stop_cancels_at_once_and_a_third_changes_nothing() {
        let start = Instant::now();
        let mut state = AgentState::new(2, LIMITS);
        state.submit(job("1", "a", OnBusy::Cancel));
        state.submit(job("2", "b", OnBusy::Cancel));
        assert_eq!(names(&state.stop(start)), ["stop:2"]);
        assert_eq!(names(&state.stop(start)), ["cancel:2"]);
        assert!(state.stop(start).is_empty());
        assert_eq!(state.deadline(), Some(start + LIMITS.cleanup));
        state.finished("1");
        state.finished("2");
        assert!(state.is_done(true));
    }

    #[test]
    fn without_sources_the_agent_ends_when_its_jobs_do() {
        let mut state = AgentState::new(1, LIMITS);
        assert!(state.is_done(false));
        state.submit(job("1", "a", OnBusy::Cancel));
        assert!(!state.is_done(false));
        assert!(!state.is_done(true) && !state.is_draining());
        state.finished("1");
        assert!(state.is_done(false));
    }

    #[test]
    fn a_waiting_job_does_not_hold_up_other_streams() {
        let mut state = AgentState::new(2, LIMITS);
        state.submit(job("1", "w", OnBusy::Cancel));
        state.submit(job("2", "w", OnBusy::Queue));
        assert_eq!(names(&state.submit(job("3", "x", OnBusy::Cancel))), ["S:3"]);
        assert_eq!(names(&state.set_concurrency(3)), Vec::<String>::new());
    }
}
