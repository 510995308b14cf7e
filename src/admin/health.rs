//! Backend health for `/readyz`: every backend is checked on an interval by opening a fresh connection (the
//! proxy's own handshake: `hello`, and SCRAM when the backend has credentials) and sending `ping`.
//!
//! What it must never do: use or disturb a client's backend connection, or report a backend's address or error
//! text in `/readyz` (only its name, and whether its last check answered).

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

use bson::rawdoc;
use tenantwall_protocol::{MsgFlags, OpMsg};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::server::Shared;

/// The last check of each backend: `true` when it answered.
#[derive(Default)]
pub struct Health {
    backends: RwLock<BTreeMap<String, bool>>,
}

impl Health {
    /// `Ok` when every backend of the policy in force answered its last check; else the names of those that did
    /// not (or were not checked yet).
    pub fn ready(&self, backends: impl Iterator<Item = String>) -> Result<(), Vec<String>> {
        let known = self.backends.read().unwrap_or_else(|e| e.into_inner());
        let failing: Vec<String> = backends.filter(|name| known.get(name) != Some(&true)).collect();
        if failing.is_empty() {
            Ok(())
        } else {
            Err(failing)
        }
    }

    fn set(&self, name: &str, up: bool) {
        let mut known = self.backends.write().unwrap_or_else(|e| e.into_inner());
        let before = known.insert(name.to_owned(), up);
        match (before, up) {
            (Some(true), false) | (None, false) => warn!(backend = name, "backend health check failed"),
            (Some(false), true) => info!(backend = name, "backend answers its health check again"),
            _ => {}
        }
    }
}

/// Checks every backend of the current policy every `interval`, until the server is dropped.
pub(crate) async fn check_backends(shared: std::sync::Weak<Shared>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let generation = shared.current();
        let timeout = generation.policy.limits.backend_connect_timeout().min(interval);
        let mut checks = JoinSet::new();
        for (name, target) in &generation.backends {
            let (name, target) = (name.clone(), target.clone());
            checks.spawn(async move {
                let check = async {
                    let mut conn = target.connect(timeout).await.ok()?;
                    let ping = OpMsg::new(MsgFlags::default(), rawdoc! {"ping": 1, "$db": "admin"});
                    let id = conn.send(&ping).await.ok()?;
                    let (_, reply) = conn.read_reply(id).await.ok()?;
                    let ok =
                        reply.body().get("ok").ok().flatten().and_then(|v| v.as_f64().or(v.as_i32().map(f64::from)));
                    Some(ok == Some(1.0))
                };
                let up = tokio::time::timeout(timeout, check).await.ok().flatten().unwrap_or(false);
                (name, up)
            });
        }
        drop(generation);
        while let Some(done) = checks.join_next().await {
            if let Ok((name, up)) = done {
                shared.health.set(&name, up);
            }
        }
    }
}
