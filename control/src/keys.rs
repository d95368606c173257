//! Rotation of the job-signing key. `start_key_rotation` makes the next key and queues, for every
//! host, a `rotate-signing-key` job carrying its public key — signed with the current key, so
//! agents can trust it. Once every host confirmed, `promote_signing_key` switches: new jobs are
//! signed with the new key, and an agent promotes it (dropping the old one) on the first job it
//! verifies with it. Hosts that never learned the new key must be enrolled again.
//!
//! Promotion is crash-safe: the database first records the new key as the one in use (with the
//! audit entry, one transaction), then the files switch — the current key is hard-linked to
//! `signing.key.old`, and `signing.next.key` renamed over `signing.key` (atomic). A restart
//! after a crash anywhere in between finds `signing.key` ≠ the recorded key = `signing.next.key`
//! and finishes the switch ([`crate::datadir`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use chrono::Utc;
use latch_common::api::{SigningKeyRotation, SigningKeyRotationJob};
use latch_common::job::{JobKind, JobSpec, JobStatus};

use latch_common::authz::Permission;

pub use crate::files::{NEXT_KEY_FILE, OLD_KEY_FILE};
use crate::files::{SIGNING_KEY_FILE, sync_parent, temporary};
use crate::people::Authority;
use crate::signing::{JobSigner, SigningError};
use crate::store::{JobFilter, Page, PinnedKey};
use crate::{Control, ControlError};

/// The current signing key and, during a rotation, the next one.
pub struct SigningKeys {
    current: RwLock<Arc<JobSigner>>,
    next: RwLock<Option<Arc<JobSigner>>>,
    dir: Option<PathBuf>,
}

impl SigningKeys {
    /// Keys kept in memory only.
    pub fn in_memory(current: JobSigner) -> Self {
        SigningKeys {
            current: RwLock::new(Arc::new(current)),
            next: RwLock::new(None),
            dir: None,
        }
    }

    /// The same keys, persisted in `dir`.
    pub fn persisted_in(self, dir: PathBuf, next: Option<JobSigner>) -> Self {
        SigningKeys {
            current: self.current,
            next: RwLock::new(next.map(Arc::new)),
            dir: Some(dir),
        }
    }

    /// The key new jobs are signed with.
    pub fn current(&self) -> Arc<JobSigner> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The next key, during a rotation.
    pub fn next(&self) -> Option<Arc<JobSigner>> {
        self.next.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Switches the signing-key files after a promotion was recorded: the current key is kept as
/// `signing.key.old` (hard link, then rename over any older one), then `signing.next.key` is
/// renamed over `signing.key` (atomic). Every step can be repeated, so a restart after a crash
/// anywhere in between finishes the switch. Nothing to do if there is no next key.
pub(crate) fn switch_signing_key_files(dir: &Path) -> std::io::Result<()> {
    let (current, next, old) = (
        dir.join(SIGNING_KEY_FILE),
        dir.join(NEXT_KEY_FILE),
        dir.join(OLD_KEY_FILE),
    );
    if !next.exists() {
        return Ok(());
    }
    let old_tmp = temporary(&old);
    match std::fs::remove_file(&old_tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if current.exists() {
        std::fs::hard_link(&current, &old_tmp)?;
        std::fs::rename(&old_tmp, &old)?;
    }
    std::fs::rename(&next, &current)?;
    sync_parent(&current)
}

fn key_error(e: SigningError) -> ControlError {
    ControlError::Internal(e.to_string())
}

impl Control {
    async fn active_hosts(&self) -> Result<Vec<String>, ControlError> {
        let hosts = self
            .store
            .list_hosts(
                &crate::store::HostFilter::default(),
                Page {
                    offset: 0,
                    count: 1_000_000,
                },
            )
            .await?;
        Ok(hosts.into_iter().map(|h| h.id).collect())
    }

    /// Starts (or continues) a rotation: makes the next key if there is none and queues a
    /// `rotate-signing-key` job for every host.
    pub async fn start_key_rotation(
        &self,
        by: &Authority,
    ) -> Result<SigningKeyRotation, ControlError> {
        by.require_everywhere(Permission::SettingsManage)?;
        let next = match self.keys.next() {
            Some(next) => next,
            None => {
                let next = match &self.keys.dir {
                    Some(dir) => {
                        let path = dir.join(NEXT_KEY_FILE);
                        match JobSigner::load(&path).map_err(key_error)? {
                            Some(next) => next,
                            None => JobSigner::create(&path).map_err(key_error)?,
                        }
                    }
                    None => JobSigner::generate().map_err(key_error)?,
                };
                let next = Arc::new(next);
                *self.keys.next.write().unwrap_or_else(|p| p.into_inner()) = Some(next.clone());
                next
            }
        };
        let next_key = next.public_key();
        let spec = JobSpec::RotateSigningKey {
            next_key: next_key.clone(),
        };
        let mut jobs = Vec::new();
        for host_id in self.active_hosts().await? {
            let job = self.queue_job_for(&host_id, &spec).await?;
            jobs.push(SigningKeyRotationJob {
                host_id,
                job_id: job,
            });
        }
        let event = by
            .event("signing_key.rotation_started")
            .detail(serde_json::json!({"next_key": next_key, "hosts": jobs.len()}));
        self.store.append_audit(&event, Utc::now()).await?;
        Ok(SigningKeyRotation { next_key, jobs })
    }

    /// Switches to the next key. Refused while a host has not confirmed it, unless `force`
    /// (those hosts then refuse every new job and must be enrolled again). Returns the hosts
    /// left behind.
    pub async fn promote_signing_key(
        &self,
        by: &Authority,
        force: bool,
    ) -> Result<Vec<String>, ControlError> {
        by.require_everywhere(Permission::SettingsManage)?;
        let next = self
            .keys
            .next()
            .ok_or_else(|| ControlError::Conflict("no signing-key rotation is under way; start one with `latchctl signing-key rotate`".into()))?;
        let next_key = next.public_key();
        let mut behind = Vec::new();
        for host_id in self.active_hosts().await? {
            let filter = JobFilter {
                host_id: Some(host_id.clone()),
                status: Some(JobStatus::Confirmed),
                ..JobFilter::default()
            };
            let confirmed = self
                .store
                .list_jobs(
                    &filter,
                    Page {
                        offset: 0,
                        count: 1_000_000,
                    },
                )
                .await?;
            let knows = confirmed.iter().any(|job| {
                job.spec.kind() == JobKind::RotateSigningKey
                    && matches!(&job.spec, JobSpec::RotateSigningKey { next_key: key } if *key == next_key)
            });
            if !knows {
                behind.push(host_id);
            }
        }
        if !behind.is_empty() && !force {
            return Err(ControlError::Conflict(format!(
                "{} host(s) have not confirmed the next key yet ({}); wait for their rotate-signing-key jobs, or pass --force (they will have to be enrolled again)",
                behind.len(),
                behind.join(", ")
            )));
        }
        // Record first, then switch the files: see the module docs for the crash cases.
        let event = by
            .event("signing_key.promoted")
            .detail(serde_json::json!({"key": next_key, "hosts_left_behind": behind}));
        self.store
            .set_key_pin(PinnedKey::Signing, &next_key, &event, Utc::now())
            .await?;
        if let Some(dir) = &self.keys.dir {
            switch_signing_key_files(dir).map_err(|e| {
                ControlError::Internal(format!(
                    "the new signing key is recorded but its files in {} could not be switched ({e}); restart the server to finish the promotion",
                    dir.display()
                ))
            })?;
        }
        *self.keys.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        *self.keys.next.write().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::warn!(left_behind = behind.len(), "job-signing key promoted");
        Ok(behind)
    }
}
