//! Cancellation that says why: a [`Cancel`] is a [`CancellationToken`] tree whose nodes
//! remember the first [`CancelReason`] given to them, so the job that ends can say whether
//! it was cancelled by someone, timed out, superseded, stopped by a shutdown or lost its
//! lease — without flags kept on the side.

use std::fmt;
use std::sync::{Arc, OnceLock};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Why work was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// Someone asked: a signal to `dockhand run`, the job server, `dockhand cancel`.
    Requested,
    /// A time limit passed.
    TimedOut,
    /// A newer job of the same stream replaces this one.
    Superseded,
    /// The agent is stopping.
    Shutdown,
    /// The job server no longer counts this agent as the job's runner.
    LeaseLost,
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CancelReason::Requested => "cancelled",
            CancelReason::TimedOut => "timed out",
            CancelReason::Superseded => "superseded by a newer job",
            CancelReason::Shutdown => "cancelled: the agent is stopping",
            CancelReason::LeaseLost => "cancelled: the job server took the job back",
        })
    }
}

/// One node of a cancellation tree. Cancelling a node cancels its children; a child's
/// [`Cancel::reason`] is its own if it was cancelled itself, else its nearest cancelled
/// ancestor's.
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    token: CancellationToken,
    node: Arc<Node>,
}

#[derive(Debug, Default)]
struct Node {
    reason: OnceLock<CancelReason>,
    parent: Option<Arc<Node>>,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    pub fn child(&self) -> Cancel {
        Cancel {
            token: self.token.child_token(),
            node: Arc::new(Node {
                reason: OnceLock::new(),
                parent: Some(self.node.clone()),
            }),
        }
    }

    /// Cancels this node and its children. The first reason given sticks.
    pub fn cancel(&self, reason: CancelReason) {
        let _ = self.node.reason.set(reason);
        self.token.cancel();
    }

    /// Why this node is cancelled; `None` while it is not.
    pub fn reason(&self) -> Option<CancelReason> {
        if !self.token.is_cancelled() {
            return None;
        }
        let mut node = Some(&self.node);
        while let Some(current) = node {
            if let Some(reason) = current.reason.get() {
                return Some(*reason);
            }
            node = current.parent.as_ref();
        }
        Some(CancelReason::Requested)
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// The plain token, for code that only needs to stop (not to say why).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_reports_its_own_reason_before_its_ancestors() {
        let root = Cancel::new();
        let job = root.child();
        let stage = job.child();
        assert_eq!(stage.reason(), None);
        job.cancel(CancelReason::TimedOut);
        assert!(stage.is_cancelled());
        assert_eq!(stage.reason(), Some(CancelReason::TimedOut));
        root.cancel(CancelReason::Shutdown);
        assert_eq!(stage.reason(), Some(CancelReason::TimedOut));
        assert_eq!(root.child().reason(), Some(CancelReason::Shutdown));
    }

    #[test]
    fn the_first_reason_sticks() {
        let job = Cancel::new();
        job.cancel(CancelReason::Superseded);
        job.cancel(CancelReason::Shutdown);
        assert_eq!(job.reason(), Some(CancelReason::Superseded));
    }
}
