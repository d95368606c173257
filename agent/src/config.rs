//! Agent configuration: `/etc/latch/agent.toml`, overridden key by key by the environment
//! (`LATCH_AGENT_<KEY>`), parsed into a raw struct and resolved (defaults applied, values
//! checked) into [`Config`]. Every mistake points at its line or its variable. See
//! `packaging/agent.toml` for every key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use latch_common::config_file::{self, Mistake, Mistakes, Origin};
use serde::{Deserialize, Serialize};

use crate::system::etc::Snapshot;
use crate::system::sshd::Reload;

/// Default configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/latch/agent.toml";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/latch";
/// Environment variables named this prefix plus a key in capitals (`LATCH_AGENT_UID_MIN`)
/// override the file's value of that key.
pub const ENV_PREFIX: &str = "LATCH_AGENT_";

/// The file as written.
#[derive(Debug, Default, Deserialize, Serialize)]
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

/// The keys of [`RawConfig`], in its order (a test holds them equal).
const KEYS: [&str; 13] = [
    "state_dir",
    "uid_min",
    "uid_max",
    "allowed_groups",
    "default_shell",
    "lock_wait_seconds",
    "kill_grace_seconds",
    "sudo_dynamic_groups",
    "log_level",
    "servers",
    "allow_adopt_system_accounts",
    "sshd_reload_command",
    "sshd_pid_file",
];

/// The environment variable that overrides `key`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
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

/// A configuration, and where the value of each key came from.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// The file read; `None` when the default file does not exist (all defaults).
    pub file: Option<PathBuf>,
    /// Where each key that is not at its default was set (the file or the environment).
    origins: BTreeMap<&'static str, Origin>,
}

impl Loaded {
    /// The effective value of every key, one line each, with its origin (for `config check`).
    pub fn effective_values(&self) -> Vec<String> {
        let table = toml::Table::try_from(RawConfig::from(&self.config)).unwrap_or_default();
        KEYS.iter()
            .map(|key| {
                let origin = self.origins.get(key).unwrap_or(&Origin::Default);
                config_file::effective_line(key, table.get(*key), origin)
            })
            .collect()
    }
}

/// Default file of sshd's PID (Debian's sshd writes `/run/sshd.pid`).
pub const DEFAULT_SSHD_PID_FILE: &str = "/run/sshd.pid";

/// A value that is not acceptable: its key and why.
type Invalid = (&'static str, String);

/// Checks `sshd_reload_command`: a program (absolute path, or a name found in the system
/// directories) and its arguments.
fn check_reload_command(command: Vec<String>) -> Result<Vec<String>, Invalid> {
    let bad = |reason: &str| ("sshd_reload_command", reason.to_owned());
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
fn check_servers(servers: Vec<String>) -> Result<Vec<String>, Invalid> {
    if servers.len() > MAX_SERVERS {
        return Err(("servers", format!("at most {MAX_SERVERS} URLs")));
    }
    for server in &servers {
        if !(server.starts_with("https://") || server.starts_with("http://")) {
            return Err((
                "servers",
                format!("{server:?} is not a URL: write https://HOST:PORT"),
            ));
        }
    }
    Ok(servers)
}

/// Checks `allowed_groups`: valid group names, never `root` nor Latch's marker group.
fn check_allowed_groups(groups: &[String]) -> Result<(), Invalid> {
    for group in groups {
        latch_common::names::validate_group_name(group)
            .map_err(|e| ("allowed_groups", format!("{group:?}: {}", e.reason)))?;
        if group == "root" || group == crate::plan::MARKER_GROUP {
            return Err(("allowed_groups", format!("{group:?} may never be granted")));
        }
    }
    Ok(())
}

/// Checks the UID range (`uid_max_set`: whether uid_max was given, or is its default).
fn check_uid_range(uid_min: u32, uid_max: u32, uid_max_set: bool) -> Result<(), Invalid> {
    if uid_min < 1000 {
        return Err((
            "uid_min",
            "must be at least 1000 (below are system accounts)".into(),
        ));
    }
    if uid_max < uid_min && !uid_max_set {
        return Err((
            "uid_min",
            format!("is above uid_max ({uid_max}, its default): set uid_max as well"),
        ));
    }
    if uid_max < uid_min || uid_max >= 65534 {
        return Err(("uid_max", "must be at least uid_min and below 65534".into()));
    }
    Ok(())
}

/// `value` seconds, at most `max`.
fn seconds(
    key: &'static str,
    value: Option<u64>,
    default: Duration,
    max: u64,
) -> Result<Duration, Invalid> {
    match value {
        None => Ok(default),
        Some(value) if value <= max => Ok(Duration::from_secs(value)),
        Some(_) => Err((key, format!("must be at most {max} seconds"))),
    }
}

/// Keeps the value of a check, or records its complaint.
fn keep<T>(result: Result<T, Invalid>, invalid: &mut Vec<Invalid>) -> Option<T> {
    result.map_err(|complaint| invalid.push(complaint)).ok()
}

impl Config {
    /// Reads `path` with the process environment's overrides. A missing file at the default
    /// path means "all defaults"; a missing file that was named explicitly is an error.
    pub fn load(path: Option<&Path>) -> Result<Config, Mistakes> {
        Config::load_with(path, &|name| std::env::var(name).ok()).map(|loaded| loaded.config)
    }

    /// Reads `path`, then applies the environment's overrides, which `env` looks up by name
    /// (the process environment in the agent; a table in tests — nothing else reads it).
    pub fn load_with(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded, Mistakes> {
        let (path, explicit) = match path {
            Some(path) => (path.to_owned(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => None,
            Err(e) => {
                return Err(Mistake::in_file(&path, format!("cannot read it: {e}")).into());
            }
        };
        let (config, origins) = layer(&path, text.as_deref().unwrap_or(""), env)?;
        Ok(Loaded {
            config,
            file: text.map(|_| path),
            origins,
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

    /// Parses and resolves TOML text, without the environment.
    #[cfg(test)]
    pub fn parse(text: &str) -> Result<Config, Mistakes> {
        layer(Path::new("agent.toml"), text, &|_| None).map(|(config, _)| config)
    }

    /// Resolves the raw values: defaults applied, each value checked. Returns every
    /// complaint, not only the first.
    fn resolve(raw: RawConfig) -> Result<Config, Vec<Invalid>> {
        let defaults = Config::defaults();
        let mut invalid = Vec::new();
        let uid_min = raw.uid_min.unwrap_or(defaults.uid_min);
        let uid_max = raw.uid_max.unwrap_or(defaults.uid_max);
        keep(
            check_uid_range(uid_min, uid_max, raw.uid_max.is_some()),
            &mut invalid,
        );
        if let Some(groups) = &raw.allowed_groups {
            keep(check_allowed_groups(groups), &mut invalid);
        }
        let default_shell = raw.default_shell.unwrap_or(defaults.default_shell);
        keep(
            latch_common::names::validate_shell(&default_shell)
                .map_err(|e| ("default_shell", e.reason)),
            &mut invalid,
        );
        let lock_wait = keep(
            seconds(
                "lock_wait_seconds",
                raw.lock_wait_seconds,
                defaults.lock_wait,
                300,
            ),
            &mut invalid,
        );
        let kill_grace = keep(
            seconds(
                "kill_grace_seconds",
                raw.kill_grace_seconds,
                defaults.kill_grace,
                60,
            ),
            &mut invalid,
        );
        let servers = keep(check_servers(raw.servers.unwrap_or_default()), &mut invalid);
        let reload_command = keep(
            raw.sshd_reload_command
                .map(check_reload_command)
                .transpose(),
            &mut invalid,
        );
        let pid_file = match raw.sshd_pid_file {
            Some(path) if path.is_absolute() => Some(path),
            Some(_) => {
                invalid.push(("sshd_pid_file", "must be an absolute path".into()));
                None
            }
            None => Some(defaults.sshd_reload.pid_file),
        };
        let (
            Some(lock_wait),
            Some(kill_grace),
            Some(servers),
            Some(reload_command),
            Some(pid_file),
            true,
        ) = (
            lock_wait,
            kill_grace,
            servers,
            reload_command,
            pid_file,
            invalid.is_empty(),
        )
        else {
            return Err(invalid);
        };
        Ok(Config {
            state_dir: raw.state_dir.unwrap_or(defaults.state_dir),
            uid_min,
            uid_max,
            allowed_groups: raw.allowed_groups,
            default_shell,
            lock_wait,
            kill_grace,
            sudo_dynamic_groups: raw
                .sudo_dynamic_groups
                .unwrap_or(defaults.sudo_dynamic_groups),
            log_level: raw.log_level.unwrap_or(defaults.log_level),
            servers,
            allow_adopt_system_accounts: raw
                .allow_adopt_system_accounts
                .unwrap_or(defaults.allow_adopt_system_accounts),
            sshd_reload: Reload {
                command: reload_command,
                pid_file,
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

/// A resolved configuration written back in the file's terms (every key its effective value).
impl From<&Config> for RawConfig {
    fn from(config: &Config) -> RawConfig {
        RawConfig {
            state_dir: Some(config.state_dir.clone()),
            uid_min: Some(config.uid_min),
            uid_max: Some(config.uid_max),
            allowed_groups: config.allowed_groups.clone(),
            default_shell: Some(config.default_shell.clone()),
            lock_wait_seconds: Some(config.lock_wait.as_secs()),
            kill_grace_seconds: Some(config.kill_grace.as_secs()),
            sudo_dynamic_groups: Some(config.sudo_dynamic_groups),
            log_level: Some(config.log_level.clone()),
            servers: Some(config.servers.clone()),
            allow_adopt_system_accounts: Some(config.allow_adopt_system_accounts),
            sshd_reload_command: config.sshd_reload.command.clone(),
            sshd_pid_file: Some(config.sshd_reload.pid_file.clone()),
        }
    }
}

/// Whether `value` has the type of `key`; else what to write instead.
fn check_type(key: &'static str, value: toml::Value) -> Result<toml::Value, String> {
    let mut table = toml::Table::new();
    table.insert(key.to_owned(), value.clone());
    match table.try_into::<RawConfig>() {
        Ok(_) => Ok(value),
        Err(error) => {
            let defaults =
                toml::Table::try_from(RawConfig::from(&Config::defaults())).unwrap_or_default();
            let example = match defaults.get(key) {
                Some(default) => format!("write it like `{key} = {default}`"),
                None => "write it as the reference file shows".to_owned(),
            };
            Err(format!(
                "`{key}` has the wrong type ({}): {example}",
                error.message().trim()
            ))
        }
    }
}

/// The value of the environment variable for `key`: a TOML value (`60000`, `true`,
/// `["sudo", "docker"]`, `"text"`), or plain text for a key that takes text.
fn env_value(key: &'static str, text: &str) -> Result<toml::Value, String> {
    let as_toml = text
        .parse::<toml::Value>()
        .map(|value| check_type(key, value));
    match as_toml {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => {
            check_type(key, toml::Value::String(text.to_owned())).map_err(|_| message)
        }
        Err(_) => check_type(key, toml::Value::String(text.to_owned())),
    }
}

/// The file `text` (read from `path`), then the environment's overrides, resolved: the
/// configuration and where each set key came from, or every mistake.
fn layer(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, BTreeMap<&'static str, Origin>), Mistakes> {
    let mut table = toml::Table::new();
    let mut origins = BTreeMap::new();
    let mut mistakes = Vec::new();
    for entry in config_file::entries(path, text)? {
        let Some(key) = KEYS.iter().copied().find(|key| *key == entry.key) else {
            mistakes.push(Mistake::at(
                path,
                entry.key_at,
                config_file::unknown_key(&entry.key, KEYS),
            ));
            continue;
        };
        match check_type(key, entry.value) {
            Ok(value) => {
                table.insert(key.to_owned(), value);
                let at = Some(entry.value_at);
                let path = path.to_owned();
                origins.insert(key, Origin::File { path, at });
            }
            Err(message) => mistakes.push(Mistake::at(path, entry.value_at, message)),
        }
    }
    for key in KEYS {
        let name = env_name(key);
        let Some(text) = env(&name) else {
            continue;
        };
        match env_value(key, &text) {
            Ok(value) => {
                table.insert(key.to_owned(), value);
                origins.insert(key, Origin::Env(name));
            }
            Err(message) => mistakes.push(Mistake {
                origin: Origin::Env(name),
                message,
            }),
        }
    }
    // The keys that are well-typed are resolved even when others are not, so that every
    // mistake is reported at once.
    let raw: RawConfig = table
        .try_into()
        .map_err(|e: toml::de::Error| Mistake::in_file(path, e.message().trim().to_owned()))?;
    let resolved = Config::resolve(raw);
    if let Err(invalid) = &resolved {
        mistakes.extend(invalid.iter().map(|(key, reason)| Mistake {
            origin: origins.get(key).cloned().unwrap_or(Origin::Default),
            message: format!("`{key}`: {reason}"),
        }));
    }
    let config = match resolved {
        Ok(config) if mistakes.is_empty() => config,
        _ => return Err(Mistakes::in_order(mistakes)),
    };
    Ok((config, origins))
}

/// `latch-agent config check`: loads `path` (None: the default file, absent = defaults) with
/// the environment's overrides exactly as `run` does, and returns the report — "FILE: ok" and
/// every key's effective value with its origin — or every mistake.
pub fn check(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Mistakes> {
    let loaded = Config::load_with(path, env)?;
    let mut report = match &loaded.file {
        Some(file) => format!("{}: ok\n", file.display()),
        None => format!("{DEFAULT_CONFIG_PATH}: not found; the built-in defaults apply\n"),
    };
    report.push_str("effective values:\n");
    for line in loaded.effective_values() {
        report.push_str(&line);
        report.push('\n');
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
