//! The job journal: one file per job in `STATE_DIR/journal/`, written before each stage
//! (received → applying → done with its outcome) and removed once the control plane
//! acknowledged the outcome. After a crash, a job delivered again whose outcome is already
//! journaled is not applied again: the recorded outcome is reported. So `kill -9` at any point
//! ends in the same host state and exactly one outcome.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use latch_common::job::JobOutcome;
use serde::{Deserialize, Serialize};

use crate::state::{StateError, read_json_file, remove_state_file, write_json_file};

/// How far a job got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Delivered to the agent.
    Received,
    /// Steps are being applied.
    Applying,
    /// Applied (or refused); the outcome is final.
    Done,
}

/// One journal file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Job id.
    pub job_id: String,
    /// Lease of the delivery that applied it.
    pub lease: String,
    /// Stage reached.
    pub stage: Stage,
    /// The outcome, once `Done`.
    pub outcome: Option<JobOutcome>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What `latch-agent status` says of the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JournalHealth {
    /// Entries in the journal.
    pub entries: usize,
    /// Jobs with a final outcome not yet acknowledged by the control plane.
    pub pending_reports: usize,
    /// Jobs received or being applied (interrupted ones when the agent is not running).
    pub in_progress: usize,
    /// Entries that cannot be read (file names in the journal directory).
    pub unreadable: Vec<String>,
    /// Why the journal directory cannot be listed, if it cannot.
    pub error: Option<String>,
}

/// The journal directory.
pub struct Journal {
    dir: PathBuf,
}

/// Whether `id` can name a journal file (the control plane's ids are UUIDs).
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl Journal {
    /// Opens (creating) `state_dir/journal`.
    pub fn open(state_dir: &Path) -> Result<Journal, StateError> {
        let dir = state_dir.join("journal");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StateError::Io {
                action: "create",
                path: dir.clone(),
                source,
            })?;
        Ok(Journal { dir })
    }

    /// Reads every entry of `state_dir/journal` without changing anything (a missing directory
    /// is an empty journal).
    pub fn inspect(state_dir: &Path) -> JournalHealth {
        let dir = state_dir.join("journal");
        let mut health = JournalHealth::default();
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return health,
            Err(error) => {
                health.error = Some(format!("cannot list {}: {error}", dir.display()));
                return health;
            }
        };
        for file in listing.filter_map(Result::ok) {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // an atomic write's temporary file
            }
            health.entries += 1;
            match read_json_file::<Entry>(&file.path()) {
                Ok(Some(entry)) if entry.stage == Stage::Done => health.pending_reports += 1,
                Ok(Some(_)) => health.in_progress += 1,
                Ok(None) => health.entries -= 1,
                Err(_) => health.unreadable.push(format!("journal/{name}")),
            }
        }
        health
    }

    fn path(&self, job_id: &str) -> PathBuf {
        self.dir.join(format!("{job_id}.json"))
    }

    /// The entry of `job_id`, if any.
    pub fn get(&self, job_id: &str) -> Result<Option<Entry>, StateError> {
        read_json_file(&self.path(job_id))
    }

    /// Writes `entry` atomically (fsynced before it counts).
    pub fn record(&self, entry: &Entry) -> Result<(), StateError> {
        write_json_file(&self.path(&entry.job_id), entry)
    }

    /// Removes the entry of an acknowledged job.
    pub fn remove(&self, job_id: &str) -> Result<(), StateError> {
        remove_state_file(&self.path(job_id))
    }

    /// Entries with a final outcome that was never acknowledged.
    pub fn unacknowledged(&self) -> Result<Vec<Entry>, StateError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| StateError::Io {
            action: "list",
            path: self.dir.clone(),
            source,
        })?;
        let mut done = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(job_id) = name.strip_suffix(".json")
                && is_safe_id(job_id)
                && let Some(entry) = self.get(job_id)?
                && entry.stage == Stage::Done
            {
                done.push(entry);
            }
        }
        Ok(done)
    }

    /// Removes every entry (the host enrolls again: the old jobs are gone).
    pub fn clear(&self) -> Result<(), StateError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| StateError::Io {
            action: "list",
            path: self.dir.clone(),
            source,
        })?;
        for entry in entries.filter_map(Result::ok) {
            remove_state_file(&entry.path())?;
        }
        Ok(())
    }

    /// Removes entries untouched for `age` (jobs the control plane gave up on).
    pub fn prune(&self, age: chrono::Duration) -> Result<(), StateError> {
        for entry in self.unacknowledged()? {
            if Utc::now() - entry.updated_at > age {
                self.remove(&entry.job_id)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_finds_unacknowledged_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let mut entry = Entry {
            job_id: "0b7e-1".into(),
            lease: "l1".into(),
            stage: Stage::Received,
            outcome: None,
            updated_at: Utc::now(),
        };
        journal.record(&entry).unwrap();
        assert!(journal.unacknowledged().unwrap().is_empty());
        entry.stage = Stage::Done;
        entry.outcome = Some(JobOutcome::confirmed());
        journal.record(&entry).unwrap();
        assert_eq!(journal.get("0b7e-1").unwrap(), Some(entry.clone()));
        assert_eq!(journal.unacknowledged().unwrap(), vec![entry]);
        journal.remove("0b7e-1").unwrap();
        assert_eq!(journal.get("0b7e-1").unwrap(), None);
    }

    #[test]
    fn only_safe_ids_name_files() {
        assert!(is_safe_id("3f2a0c1e-7b9d-4c2a-9f00-0123456789ab"));
        for bad in ["", "../x", "a/b", "a.json", &"a".repeat(65)] {
            assert!(!is_safe_id(bad), "{bad}");
        }
    }
}
