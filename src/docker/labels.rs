//! The labels on every object dockhand creates, so leftovers can be found and removed.

use std::collections::HashMap;

pub const AGENT: &str = "dockhand.agent";
pub const JOB: &str = "dockhand.job";
pub const STAGE: &str = "dockhand.stage";
/// On agent-wide objects no job owns (the isolated network).
pub const SHARED: &str = "dockhand.shared";

/// Who owns an object: the agent, the job and the stage.
#[derive(Clone, Debug)]
pub struct Owner {
    pub agent: String,
    pub job: String,
    pub stage: String,
}

impl Owner {
    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (AGENT.to_owned(), self.agent.clone()),
            (JOB.to_owned(), self.job.clone()),
            (STAGE.to_owned(), self.stage.clone()),
        ])
    }
}
