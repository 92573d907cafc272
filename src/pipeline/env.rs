//! What a job may see of the environment it was started from.

use std::collections::{BTreeSet, HashMap};

/// A job's environment in two parts: `public` variables (the caller's whole environment
/// for `dockhand run`; the `agent.pass_env` variables and the job's own values for an
/// agent) and `secrets` (an agent's), of which tasks get only those the config names.
/// Nothing else of an agent's environment (its tokens included) reaches a job.
#[derive(Clone, Debug, Default)]
pub struct JobEnv {
    pub public: HashMap<String, String>,
    pub secrets: HashMap<String, String>,
}

impl JobEnv {
    /// For `{NAME:from_env}`: every secret may be read while collecting, and
    /// [`JobEnv::unnamed_secrets_read`] then refuses the config that read one it does not
    /// name.
    pub fn for_collect(&self) -> HashMap<String, String> {
        let mut env = self.secrets.clone();
        env.extend(self.public.clone());
        env
    }

    /// For the tasks' `NAME` env entries: the public part and the secrets `named`.
    pub fn for_tasks(&self, named: &[String]) -> HashMap<String, String> {
        let mut env = self.public.clone();
        for name in named {
            if let Some(value) = self.secrets.get(name).filter(|_| !env.contains_key(name)) {
                env.insert(name.clone(), value.clone());
            }
        }
        env
    }

    /// The secrets a config read while collecting without naming them in `secrets:`.
    pub fn unnamed_secrets_read(&self, read: &BTreeSet<String>, named: &[String]) -> Vec<String> {
        read.iter()
            .filter(|name| self.secrets.contains_key(*name) && !self.public.contains_key(*name))
            .filter(|name| !named.contains(name))
            .cloned()
            .collect()
    }
}
