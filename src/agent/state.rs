//! The agent's bookkeeping, without I/O: which jobs run, which wait, and what a new job or
//! a finished one means under each stream's [`OnBusy`] policy and the concurrency limit.
//! The dispatcher carries out the [`Action`]s.

use std::collections::VecDeque;

use crate::job::{Job, OnBusy};

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Start(Job),
    Cancel { job: String, reason: String },
    Drop { job: Job, reason: String },
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
    draining: bool,
}

impl AgentState {
    pub fn new(concurrency: usize) -> Self {
        AgentState {
            concurrency: concurrency.max(1),
            running: Vec::new(),
            queue: VecDeque::new(),
            draining: false,
        }
    }

    pub fn submit(&mut self, job: Job) -> Vec<Action> {
        if self.draining {
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

    /// Stops taking work: queued jobs are dropped, running ones go on.
    pub fn drain(&mut self) -> Vec<Action> {
        self.draining = true;
        self.queue
            .drain(..)
            .map(|job| Action::Drop {
                job,
                reason: "the agent is shutting down".to_owned(),
            })
            .collect()
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
        }
    }

    /// `S:id`, `C:id`, `D:id` for each action.
    fn names(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Start(j) => format!("S:{}", j.id),
                Action::Cancel { job, .. } => format!("C:{job}"),
                Action::Drop { job, .. } => format!("D:{}", job.id),
            })
            .collect()
    }

    #[test]
    fn concurrency_bounds_running_jobs() {
        let mut state = AgentState::new(2);
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
        let mut state = AgentState::new(2);
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
        let mut state = AgentState::new(4);
        state.submit(job("1", "w", OnBusy::Queue));
        assert!(state.submit(job("2", "w", OnBusy::Queue)).is_empty());
        assert_eq!(names(&state.submit(job("3", "w", OnBusy::Queue))), ["D:2"]);
        assert_eq!(names(&state.finished("1")), ["S:3"]);
    }

    #[test]
    fn skip_drops_a_schedule_firing_during_its_last_run_and_parallel_does_not() {
        let mut state = AgentState::new(4);
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
        let mut state = AgentState::new(1);
        state.submit(job("1", "a", OnBusy::Cancel));
        state.submit(job("2", "b", OnBusy::Cancel));
        assert_eq!(names(&state.drain()), ["D:2"]);
        assert_eq!(names(&state.submit(job("3", "c", OnBusy::Cancel))), ["D:3"]);
        assert_eq!(state.running().collect::<Vec<_>>(), ["1"]);
        assert!(state.finished("1").is_empty());
        assert!(state.is_idle());
    }

    #[test]
    fn a_waiting_job_does_not_hold_up_other_streams() {
        let mut state = AgentState::new(2);
        state.submit(job("1", "w", OnBusy::Cancel));
        state.submit(job("2", "w", OnBusy::Queue));
        assert_eq!(names(&state.submit(job("3", "x", OnBusy::Cancel))), ["S:3"]);
        assert_eq!(names(&state.set_concurrency(3)), Vec::<String>::new());
    }
}
