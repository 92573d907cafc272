//! Spare job networks, made ahead of time: creating a network costs 60–230 ms on this
//! engine, which a job from the job server would otherwise wait for before its first
//! container. Each job takes a fresh one (never used before) and removes it when it ends;
//! the pool makes another in the background.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::docker::{Engine, Owner};

/// How long after a job takes a spare the next one is made.
const REFILL_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

pub struct NetworkPool {
    engine: Engine,
    agent: String,
    driver: String,
    size: usize,
    spare: Mutex<Vec<String>>,
    /// The one being made: a sweep meanwhile must not take it for a leftover.
    making: Mutex<Option<String>>,
    taken: Notify,
}

impl NetworkPool {
    pub fn new(engine: Engine, agent: &str, driver: &str, size: usize) -> Arc<NetworkPool> {
        Arc::new(NetworkPool {
            engine,
            agent: agent.to_owned(),
            driver: driver.to_owned(),
            size,
            spare: Mutex::new(Vec::new()),
            making: Mutex::new(None),
            taken: Notify::new(),
        })
    }

    /// A spare network for one job, if one is ready.
    pub fn take(&self) -> Option<String> {
        let name = lock(&self.spare).pop();
        self.taken.notify_one();
        name
    }

    /// The spares, which a sweep must leave alone.
    pub fn spares(&self) -> HashSet<String> {
        let mut names: HashSet<String> = lock(&self.spare).iter().cloned().collect();
        names.extend(lock(&self.making).clone());
        names
    }

    /// Keeps `size` spares until `cancel`, then removes them.
    pub async fn keep_filled(self: Arc<Self>, cancel: CancellationToken) {
        let owner = Owner {
            agent: self.agent.clone(),
            job: String::new(),
            stage: "spare-network".to_owned(),
        };
        loop {
            let missing = self.size > lock(&self.spare).len();
            if missing && !cancel.is_cancelled() {
                let Ok(suffix) = crate::util::random_hex() else {
                    break;
                };
                let name = format!("dockhand-net-{}", &suffix[..12]);
                *lock(&self.making) = Some(name.clone());
                let made = self
                    .engine
                    .create_network(&name, &self.driver, &owner)
                    .await;
                if made.is_ok() {
                    lock(&self.spare).push(name);
                }
                *lock(&self.making) = None;
                match made {
                    Ok(()) => continue,
                    Err(e) => tracing::warn!("cannot make a spare job network: {e}"),
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.taken.notified() => {
                    // The job that took one is starting its containers now; the engine
                    // serialises network and container setup, so make the next one after.
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(REFILL_DELAY) => {}
                    }
                }
                () = tokio::time::sleep(std::time::Duration::from_secs(30)), if missing => {}
            }
        }
        let spares = std::mem::take(&mut *lock(&self.spare));
        for name in spares {
            if let Err(e) = self.engine.remove_network(&name).await {
                tracing::warn!("cannot remove the spare network {name}: {e}");
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
