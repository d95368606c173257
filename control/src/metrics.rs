//! Monitoring: the fleet's numbers behind `GET /metrics` and the readiness probe behind
//! `GET /readyz` ([`crate::api::metrics`] encodes and serves them).
//!
//! The numbers reveal facts about the whole fleet (how many hosts, which are offline, what is
//! stuck), so reading them needs `hosts.view` everywhere, not only within a delegation.

use chrono::Utc;
use latch_common::authz::Permission;

use crate::people::Authority;
use crate::store::metrics::FleetCounts;
use crate::{Control, ControlError};

impl Control {
    /// The fleet's numbers now, counted in the database. Needs `hosts.view` everywhere.
    pub async fn fleet_counts(&self, by: &Authority) -> Result<FleetCounts, ControlError> {
        by.require_everywhere(Permission::HostsView)?;
        let now = Utc::now();
        Ok(self
            .store
            .fleet_counts(now, now - self.config.online_window)
            .await?)
    }

    /// Whether this process can serve: the database answers a query over Latch's tables. The
    /// keys need no check here: a `Control` cannot be built without its job-signing key
    /// ([`Control::new`]) nor a store without its audit key, and the data directory refuses to
    /// open with a missing or different one ([`crate::datadir`]).
    pub async fn readiness(&self) -> Result<(), ControlError> {
        self.store.ping().await?;
        Ok(())
    }
}
