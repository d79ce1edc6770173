//! What every role shares: settings, names, the pool, the clock, metrics,
//! the health of each role, and the outbox's wake-up call.

use std::collections::BTreeMap;
use std::sync::RwLock;

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::broker::Names;
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::settings::Settings;

/// What every role shares.
pub struct Context {
    /// The settings the process started with.
    pub settings: Settings,
    /// The topology's names, with the configured prefix.
    pub names: Names,
    /// The one Postgres connection pool the roles share.
    pub pool: PgPool,
    /// The clock every rule that depends on time reads.
    pub clock: SharedClock,
    /// The metrics that `/metrics` exports.
    pub metrics: Metrics,
    /// Which roles are connected and working; `/readyz` reads it.
    pub health: Health,
    /// Wakes the outbox relay after a commit that wrote webhooks.
    pub outbox_wake: Notify,
    /// Wakes the scheduler for a pass at once (an interim bill is due).
    pub billing_wake: Notify,
    /// This process among its peers: owner of the leases it takes.
    pub instance: String,
}

/// Which roles are connected and working; `/readyz` reads it.
#[derive(Debug, Default)]
pub struct Health {
    roles: RwLock<BTreeMap<&'static str, bool>>,
}

impl Health {
    /// Registers a role as not yet up.
    pub(crate) fn register(&self, role: &'static str) {
        self.write().insert(role, false);
    }

    pub(crate) fn set(&self, role: &'static str, up: bool) {
        self.write().insert(role, up);
    }

    /// The roles that are down.
    pub fn down(&self) -> Vec<&'static str> {
        let roles = self.roles.read().unwrap_or_else(|p| p.into_inner());
        roles.iter().filter(|(_, up)| !**up).map(|(r, _)| *r).collect()
    }

    /// Every registered role.
    pub fn roles(&self) -> Vec<&'static str> {
        let roles = self.roles.read().unwrap_or_else(|p| p.into_inner());
        roles.keys().copied().collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<&'static str, bool>> {
        self.roles.write().unwrap_or_else(|p| p.into_inner())
    }
}
