//! Agent configuration: parsed from TOML into a raw struct, then resolved (defaults applied,
//! values checked) into [`Config`]. See `packaging/agent.toml` for every option.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::system::etc::Snapshot;
use crate::system::sshd::Reload;

/// Default configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/latch/agent.toml";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/latch";

/// Why the configuration is not usable.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("configuration {path} is not valid: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What is wrong (names the key).
        message: String,
    },
    /// A value is out of range.
    #[error("configuration key `{key}`: {reason}")]
    Value {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    uid_min: Option<u32>,
    uid_max: Option<u32>,
    allowed_groups: Option<Vec<String>>,
    default_shell: Option<String>,
    lock_wait_seconds: Option<u64>,
    kill_grace_seconds: Option<u64>,
    sudo_dynamic_groups: Option<bool>,
    log_level: Option<String>,
    servers: Option<Vec<String>>,
    allow_adopt_system_accounts: Option<bool>,
    sshd_reload_command: Option<Vec<String>>,
    sshd_pid_file: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the agent keeps its identity and records.
    pub state_dir: PathBuf,
    /// Lowest UID for accounts Latch creates.
    pub uid_min: u32,
    /// Highest UID for accounts Latch creates.
    pub uid_max: u32,
    /// Groups jobs may add members to; `None` = detect the distribution's sudo group.
    pub allowed_groups: Option<Vec<String>>,
    /// Login shell when a job names none.
    pub default_shell: String,
    /// How long to retry while the account files are locked by another program.
    pub lock_wait: Duration,
    /// Grace period between SIGTERM and SIGKILL when ending a user's processes.
    pub kill_grace: Duration,
    /// Ensure `Set group_source dynamic` in `/etc/sudo.conf`.
    pub sudo_dynamic_groups: bool,
    /// Log filter.
    pub log_level: String,
    /// More URLs of the same control plane (replicas), tried after the enrolled one when it
    /// cannot be reached; all are pinned to the enrolled CA fingerprint.
    pub servers: Vec<String>,
    /// Whether `adopt-account` may adopt a system account (UID 1–999), whose password Latch may
    /// then set. Root (UID 0) is never adopted, whatever this says.
    pub allow_adopt_system_accounts: bool,
    /// How sshd is told to reload after the agent installed the SSH user CA (hosts enrolled
    /// with `--ssh-ca`).
    pub sshd_reload: Reload,
}

/// Default file of sshd's PID (Debian's sshd writes `/run/sshd.pid`).
pub const DEFAULT_SSHD_PID_FILE: &str = "/run/sshd.pid";

/// Checks `sshd_reload_command`: a program (absolute path, or a name found in the system
/// directories) and its arguments.
fn check_reload_command(command: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let bad = |reason: &str| ConfigError::Value {
        key: "sshd_reload_command",
        reason: reason.to_owned(),
    };
    let Some(program) = command.first() else {
        return Err(bad(
            "must name a program, e.g. [\"systemctl\", \"reload\", \"ssh\"]",
        ));
    };
    if program.is_empty() || (program.contains('/') && !program.starts_with('/')) {
        return Err(bad("the program must be an absolute path or a bare name"));
    }
    if command.iter().any(|arg| arg.contains('\0')) {
        return Err(bad("arguments may not contain NUL"));
    }
    Ok(command)
}

/// The most replica URLs `servers` may list.
const MAX_SERVERS: usize = 16;

/// Checks the shape of the `servers` list (each URL is checked against the transport when the
/// agent connects).
fn check_servers(servers: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if servers.len() > MAX_SERVERS {
        return Err(ConfigError::Value {
            key: "servers",
            reason: format!("at most {MAX_SERVERS} URLs"),
        });
    }
    for server in &servers {
        if !(server.starts_with("https://") || server.starts_with("http://")) {
            return Err(ConfigError::Value {
                key: "servers",
                reason: format!("{server:?} is not a URL: write https://HOST:PORT"),
            });
        }
    }
    Ok(servers)
}

impl Config {
    /// Reads `path`. A missing file at the default path means "all defaults"; a missing file
    /// that was named explicitly is an error.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, explicit) = match path {
            Some(path) => (path.to_owned(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => String::new(),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path, message },
            other => other,
        })
    }

    /// Every option at its default (what an empty file gives). The agent falls back to it when
    /// its configuration file is not usable, and then only revokes.
    pub fn defaults() -> Config {
        Config {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            uid_min: 60000,
            uid_max: 60999,
            allowed_groups: None,
            default_shell: "/bin/bash".to_owned(),
            lock_wait: Duration::from_secs(30),
            kill_grace: Duration::from_secs(1),
            sudo_dynamic_groups: true,
            log_level: "info".to_owned(),
            servers: Vec::new(),
            allow_adopt_system_accounts: false,
            sshd_reload: Reload {
                command: None,
                pid_file: PathBuf::from(DEFAULT_SSHD_PID_FILE),
            },
        }
    }

    /// Parses and resolves TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.message().to_owned(),
        })?;
        let defaults = Config::defaults();
        let uid_min = raw.uid_min.unwrap_or(defaults.uid_min);
        let uid_max = raw.uid_max.unwrap_or(defaults.uid_max);
        if uid_min < 1000 {
            return Err(ConfigError::Value {
                key: "uid_min",
                reason: "must be at least 1000 (below are system accounts)".into(),
            });
        }
        if uid_max < uid_min || uid_max >= 65534 {
            return Err(ConfigError::Value {
                key: "uid_max",
                reason: "must be at least uid_min and below 65534".into(),
            });
        }
        if let Some(groups) = &raw.allowed_groups {
            for group in groups {
                latch_common::names::validate_group_name(group).map_err(|e| {
                    ConfigError::Value {
                        key: "allowed_groups",
                        reason: format!("{group:?}: {}", e.reason),
                    }
                })?;
                if group == "root" || group == crate::plan::MARKER_GROUP {
                    return Err(ConfigError::Value {
                        key: "allowed_groups",
                        reason: format!("{group:?} may never be granted"),
                    });
                }
            }
        }
        let default_shell = raw.default_shell.unwrap_or(defaults.default_shell);
        latch_common::names::validate_shell(&default_shell).map_err(|e| ConfigError::Value {
            key: "default_shell",
            reason: e.reason,
        })?;
        let seconds =
            |key: &'static str, value: Option<u64>, default: Duration, max: u64| match value {
                None => Ok(default),
                Some(value) if value <= max => Ok(Duration::from_secs(value)),
                Some(_) => Err(ConfigError::Value {
                    key,
                    reason: format!("must be at most {max} seconds"),
                }),
            };
        Ok(Config {
            state_dir: raw.state_dir.unwrap_or(defaults.state_dir),
            uid_min,
            uid_max,
            allowed_groups: raw.allowed_groups,
            default_shell,
            lock_wait: seconds(
                "lock_wait_seconds",
                raw.lock_wait_seconds,
                defaults.lock_wait,
                300,
            )?,
            kill_grace: seconds(
                "kill_grace_seconds",
                raw.kill_grace_seconds,
                defaults.kill_grace,
                60,
            )?,
            sudo_dynamic_groups: raw
                .sudo_dynamic_groups
                .unwrap_or(defaults.sudo_dynamic_groups),
            log_level: raw.log_level.unwrap_or(defaults.log_level),
            servers: check_servers(raw.servers.unwrap_or_default())?,
            allow_adopt_system_accounts: raw
                .allow_adopt_system_accounts
                .unwrap_or(defaults.allow_adopt_system_accounts),
            sshd_reload: Reload {
                command: raw
                    .sshd_reload_command
                    .map(check_reload_command)
                    .transpose()?,
                pid_file: match raw.sshd_pid_file {
                    Some(path) if path.is_absolute() => path,
                    Some(_) => {
                        return Err(ConfigError::Value {
                            key: "sshd_pid_file",
                            reason: "must be an absolute path".into(),
                        });
                    }
                    None => defaults.sshd_reload.pid_file,
                },
            },
        })
    }

    /// The groups jobs may grant on this host: the configured list, or the distribution's sudo
    /// group (`sudo` on Debian/Ubuntu, `wheel` on Fedora/RHEL) when none is configured.
    pub fn allowed_groups(&self, snapshot: &Snapshot) -> Vec<String> {
        match &self.allowed_groups {
            Some(groups) => groups.clone(),
            None => ["sudo", "wheel"]
                .into_iter()
                .find(|g| snapshot.group(g).is_some())
                .map(|g| vec![g.to_owned()])
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::etc::parse_group;

    #[test]
    fn defaults() {
        let config = Config::parse("").unwrap();
        assert_eq!(config, Config::defaults());
        assert_eq!((config.uid_min, config.uid_max), (60000, 60999));
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/latch"));
        assert_eq!(config.default_shell, "/bin/bash");
    }

    #[test]
    fn the_shipped_sample_is_the_defaults() {
        let sample = include_str!("../../packaging/agent.toml");
        assert_eq!(Config::parse(sample).unwrap(), Config::parse("").unwrap());
        let uncommented: String = sample
            .lines()
            .map(|line| {
                line.strip_prefix("# ")
                    .filter(|l| l.contains(" = "))
                    .unwrap_or("")
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            Config::parse(&uncommented).unwrap().allowed_groups,
            Some(vec!["sudo".to_owned()])
        );
    }

    #[test]
    fn adopting_system_accounts_is_off_unless_allowed() {
        assert!(!Config::parse("").unwrap().allow_adopt_system_accounts);
        assert!(
            Config::parse("allow_adopt_system_accounts = true")
                .unwrap()
                .allow_adopt_system_accounts
        );
        assert!(Config::parse("allow_adopt_system_accounts = \"yes\"").is_err());
    }

    #[test]
    fn sshd_reload_is_configurable() {
        let config = Config::parse(
            "sshd_reload_command = [\"/usr/sbin/service\", \"ssh\", \"reload\"]\nsshd_pid_file = \"/run/sshd-e2e.pid\"",
        )
        .unwrap();
        assert_eq!(
            config.sshd_reload,
            Reload {
                command: Some(vec![
                    "/usr/sbin/service".into(),
                    "ssh".into(),
                    "reload".into()
                ]),
                pid_file: PathBuf::from("/run/sshd-e2e.pid"),
            }
        );
        assert_eq!(
            Config::parse("").unwrap().sshd_reload.pid_file,
            PathBuf::from("/run/sshd.pid")
        );
    }

    #[test]
    fn takes_replica_urls() {
        let config =
            Config::parse("servers = [\"https://b.example:8443\", \"https://c.example:8443\"]")
                .unwrap();
        assert_eq!(
            config.servers,
            vec!["https://b.example:8443", "https://c.example:8443"]
        );
        assert!(Config::parse("").unwrap().servers.is_empty());
    }

    #[test]
    fn detects_the_sudo_group() {
        let config = Config::parse("").unwrap();
        let debian = Snapshot {
            group: parse_group("sudo:x:27:\n").unwrap(),
            ..Snapshot::default()
        };
        let fedora = Snapshot {
            group: parse_group("wheel:x:10:\n").unwrap(),
            ..Snapshot::default()
        };
        assert_eq!(config.allowed_groups(&debian), vec!["sudo"]);
        assert_eq!(config.allowed_groups(&fedora), vec!["wheel"]);
        let custom = Config::parse("allowed_groups = [\"docker\"]").unwrap();
        assert_eq!(custom.allowed_groups(&debian), vec!["docker"]);
    }

    #[test]
    fn refuses_bad_values_naming_the_key() {
        for (text, key) in [
            ("uid_min = 10", "uid_min"),
            ("uid_min = 5000\nuid_max = 4000", "uid_max"),
            ("allowed_groups = [\"root\"]", "allowed_groups"),
            ("allowed_groups = [\"a:b\"]", "allowed_groups"),
            ("default_shell = \"bash\"", "default_shell"),
            ("lock_wait_seconds = 100000", "lock_wait_seconds"),
            ("kill_grace_seconds = 3600", "kill_grace_seconds"),
            ("servers = [\"latch-b:8443\"]", "servers"),
            ("sshd_reload_command = []", "sshd_reload_command"),
            (
                "sshd_reload_command = [\"bin/reload\"]",
                "sshd_reload_command",
            ),
            ("sshd_pid_file = \"sshd.pid\"", "sshd_pid_file"),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        assert!(
            Config::parse("no_such_key = 1")
                .unwrap_err()
                .to_string()
                .contains("no_such_key")
        );
    }
}
