//! `latch-control serve`'s options — each defined once, here: its flag, its environment
//! variable (`LATCH_<OPTION>`), its default and its parser; the configuration file's keys are
//! derived from them ([`latch_control::settings`]) — and their resolution into what the server
//! runs with ([`ServeArgs::resolve`]), which `config check` shares.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use latch_common::config_file::{Mistakes, Origin};
use latch_control::settings::Origins;
use latch_control::{ControlConfig, datadir};

/// The server's configuration file, read if it exists when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/latch/control.toml";

/// Options the configuration file may not set: the file's own path, and the one-time recovery
/// actions (in a file they would run at every start).
pub const NOT_IN_FILE: &[&str] = &[
    "config",
    "new_signing_key",
    "new_audit_key",
    "new_ca",
    "new_user_ca",
];

/// The options of `serve` (and of `config check`).
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML): any option below as `key = value`, the key being the option's
    /// name with `_` for `-` (packaging/control.toml lists them all, with their defaults).
    /// Without --config, /etc/latch/control.toml is read if it exists. The command line
    /// overrides the environment (LATCH_<OPTION>), which overrides the file.
    #[arg(long, value_name = "FILE", env = "LATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the keys, the admin token and (without --database-url) the SQLite
    /// database.
    #[arg(long, default_value = "./latch-data", env = "LATCH_DATA_DIR")]
    data_dir: PathBuf,
    /// Keep the database in PostgreSQL instead of SQLite:
    /// postgres://USER@HOST:PORT/DATABASE (libpq parameters such as sslmode, sslrootcert
    /// and options=-c search_path=SCHEMA work). The password goes in PGPASSWORD or
    /// ~/.pgpass, or the whole URL in LATCH_DATABASE_URL: a password on the command line or in
    /// the configuration file is refused (other users can read them). The keys stay in
    /// --data-dir.
    #[arg(long, env = "LATCH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443", env = "LATCH_LISTEN")]
    listen: SocketAddr,
    /// Serve plain HTTP instead of HTTPS. For development only: refused unless --listen is
    /// a loopback address; agents must also pass --insecure-http.
    #[arg(long, env = "LATCH_INSECURE_HTTP")]
    insecure_http: bool,
    /// Extra host name or IP address for the server certificate (repeatable, or
    /// comma-separated); localhost, 127.0.0.1 and ::1 are always included. Agents connect by
    /// one of these names.
    #[arg(long = "tls-name", env = "LATCH_TLS_NAME", value_delimiter = ',')]
    tls_names: Vec<String>,
    /// Your own certificate chain (PEM: server certificate first, then any intermediate
    /// CAs, the root CA last) instead of the data directory's CA; agents pin the last
    /// certificate.
    #[arg(
        long,
        env = "LATCH_TLS_CERT",
        requires = "tls_key",
        conflicts_with_all = ["insecure_http", "tls_names"]
    )]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "LATCH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How long a delivered job may stay unreported before it is delivered again.
    #[arg(long, default_value = "120s", env = "LATCH_LEASE_TIMEOUT", value_parser = humantime::parse_duration)]
    lease_timeout: Duration,
    /// How long after creation a job that grants access may still be applied on the host
    /// (its signed `not_after`); revocations never expire.
    #[arg(long, default_value = "24h", env = "LATCH_JOB_TTL", value_parser = humantime::parse_duration)]
    job_ttl: Duration,
    /// How long an access request waits for its approvals before it expires.
    #[arg(long, default_value = "1h", env = "LATCH_ACCESS_PENDING_TTL", value_parser = humantime::parse_duration)]
    access_pending_ttl: Duration,
    /// How long every host of an approved access request has to confirm its provisioning;
    /// after that the request fails and what the hosts got is removed. Hosts remove the
    /// access on their own at the window's end plus this time, should the control plane
    /// be unreachable then.
    #[arg(long, default_value = "10m", env = "LATCH_ACCESS_PROVISION_TIMEOUT", value_parser = humantime::parse_duration)]
    access_provision_timeout: Duration,
    /// Requests per minute allowed to one principal (admin token, host, or address).
    #[arg(long, default_value_t = 3000, env = "LATCH_RATE_LIMIT", value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit: u32,
    /// Refused attempts per minute with one credential (admin token, host credential or
    /// enrollment token) before that credential gets 429; other clients are not affected.
    #[arg(long, default_value_t = 30, env = "LATCH_AUTH_FAILURE_LIMIT", value_parser = clap::value_parser!(u32).range(1..))]
    auth_failure_limit: u32,
    /// Refused credentials per minute from one client address (IPv6: one /64) before the
    /// address gets 429 — except for credentials that authenticated in the last 24 h. Bounds
    /// spraying many different guesses.
    #[arg(long, default_value_t = 300, env = "LATCH_ADDRESS_AUTH_FAILURE_LIMIT", value_parser = clap::value_parser!(u32).range(1..))]
    address_auth_failure_limit: u32,
    /// A reverse proxy (CIDR block or address; repeatable, or comma-separated) whose
    /// X-Forwarded-For names the client: the rightmost entry that is not a trusted proxy.
    /// Without it, or from any other peer, X-Forwarded-For is ignored and the TCP peer is the
    /// client.
    #[arg(
        long = "trusted-proxy",
        value_name = "CIDR",
        env = "LATCH_TRUSTED_PROXY",
        value_delimiter = ',',
        value_parser = latch_control::api::limits::parse_trusted_proxy
    )]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// The longest window a grant (create-account, add-group) may ask for; longer ones, and
    /// ends not in the future, are refused with invalid_request.
    #[arg(long, default_value = "24h", env = "LATCH_MAX_GRANT_DURATION", value_parser = humantime::parse_duration)]
    max_grant_duration: Duration,
    /// The window of a grant that names no end (no --expires-in) and is not --permanent.
    #[arg(long, default_value = "1h", env = "LATCH_DEFAULT_GRANT_DURATION", value_parser = humantime::parse_duration)]
    default_grant_duration: Duration,
    /// Which sensitive actions need a second factor shown in the same session first:
    /// `all`, `none`, or a comma-separated list of approve, reveal, break_glass,
    /// change_policy, change_roles.
    #[arg(long, default_value = "all", env = "LATCH_MFA_REQUIRED", value_parser = latch_control::mfa::parse_required_actions)]
    mfa_required: latch_control::mfa::RequiredActions,
    /// How long a second factor counts after it was shown (1m to 12h).
    #[arg(long, default_value = "10m", env = "LATCH_MFA_WINDOW", value_parser = humantime::parse_duration)]
    mfa_window: Duration,
    /// Deliveries of one job before it fails with agent_unresponsive.
    #[arg(long, default_value_t = 5, env = "LATCH_MAX_ATTEMPTS", value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,
    /// Recovery only: make a new job-signing key because signing.key is lost for good (not
    /// restorable from a backup). Every enrolled host must then be enrolled again. Audited.
    /// Command line only.
    #[arg(long)]
    new_signing_key: bool,
    /// Recovery only: make a new audit key because audit.key is lost for good. The chain's
    /// hash links are checked and its entries keyed again under the new key (audited);
    /// earlier edits and checkpoints exported before can no longer be checked. Command line
    /// only.
    #[arg(long)]
    new_audit_key: bool,
    /// Recovery only: make a new private CA because ca.crt/ca.key are lost for good. Every
    /// enrolled host must then be enrolled again. Audited. Command line only.
    #[arg(long, conflicts_with_all = ["insecure_http", "tls_cert"])]
    new_ca: bool,
    /// Recovery only: make a new SSH user CA key because user_ca.key is lost for good.
    /// Every host enrolled with --ssh-ca must then be enrolled again. Audited. Command line
    /// only.
    #[arg(long)]
    new_user_ca: bool,
    /// The credential vault's master key file (64 hex digits, mode 0600). Default:
    /// DIR/master.key, made on the first start. It wraps every organization's data key and
    /// is not in the database: back it up apart from the database. A start with another key,
    /// or without it once organizations exist, is refused.
    #[arg(long, env = "LATCH_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, or a tracing directive).
    #[arg(long, default_value = "info", env = "LATCH_LOG_LEVEL")]
    log_level: String,
    /// Log format: text (for people and the journal) or json (one JSON object per line on
    /// stderr, the event's fields at the top level, for log shippers).
    #[arg(long, value_enum, default_value = "text", env = "LATCH_LOG_FORMAT")]
    log_format: LogFormat,
    /// The web console's address as browsers reach it (https://latch.example.com:8443). The
    /// identity provider sends people back to PUBLIC_URL/login/callback after a console
    /// sign-in: register that redirect URI there. Default: the listening address, when that is
    /// loopback; otherwise the console offers local sign-in only.
    #[arg(long, env = "LATCH_PUBLIC_URL", value_parser = parse_public_url)]
    public_url: Option<url::Url>,
    #[command(flatten)]
    sso: SsoArgs,
    #[command(flatten)]
    vault: VaultArgs,
}

/// A console address: `https://host[:port]` (or `http://` on a loopback address), nothing
/// after the host but an optional `/`.
fn parse_public_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| {
        format!("{text:?} is not a URL ({e}); write e.g. https://latch.example.com:8443")
    })?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
        return Err(format!(
            "{text:?} must be an https:// URL (http:// only on a loopback address): browsers send the session cookie only over HTTPS"
        ));
    }
    if url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(format!(
            "{text:?} must be only scheme, host and port (the console is served at /), e.g. https://latch.example.com:8443"
        ));
    }
    Ok(url)
}

/// Single sign-on through an OpenID Connect provider (README: "Connect an identity provider").
#[derive(clap::Args)]
struct SsoArgs {
    /// The provider's issuer URL (discovery reads ISSUER/.well-known/openid-configuration).
    /// Without it, single sign-on is off.
    #[arg(long, env = "LATCH_SSO_ISSUER", requires = "sso_client_id")]
    sso_issuer: Option<String>,
    /// The client id registered for Latch at the provider.
    #[arg(long, env = "LATCH_SSO_CLIENT_ID")]
    sso_client_id: Option<String>,
    /// A file (mode 0600) holding the client secret; or set LATCH_SSO_CLIENT_SECRET. Never
    /// on the command line or in the configuration file.
    #[arg(long, env = "LATCH_SSO_CLIENT_SECRET_FILE")]
    sso_client_secret_file: Option<PathBuf>,
    /// The ID-token claim listing the user's groups (mapped to Latch groups by their idp_group).
    #[arg(long, default_value = "groups", env = "LATCH_SSO_GROUPS_CLAIM")]
    sso_groups_claim: String,
    /// Scopes to ask for besides openid (comma-separated).
    #[arg(
        long,
        default_value = "profile,email,groups",
        env = "LATCH_SSO_SCOPES",
        value_delimiter = ','
    )]
    sso_scopes: Vec<String>,
    /// How long a single sign-on session lives.
    #[arg(long, default_value = "8h", env = "LATCH_SSO_SESSION_TTL", value_parser = humantime::parse_duration)]
    sso_session_ttl: Duration,
    /// An acr value that shows the user signed in with a second factor (amr values such as
    /// mfa, otp or hwk always count).
    #[arg(long, env = "LATCH_SSO_MFA_ACR")]
    sso_mfa_acr: Option<String>,
}

/// The credential vault (README: "Credential vault").
#[derive(clap::Args)]
struct VaultArgs {
    /// How long a break-glass checkout lasts before it is checked in and its password
    /// rotated (1m to 24h).
    #[arg(long, default_value = "1h", env = "LATCH_BREAK_GLASS_DURATION", value_parser = humantime::parse_duration)]
    break_glass_duration: Duration,
    /// Break-glass uses allowed per person per minute (past that: 429).
    #[arg(long, default_value_t = 3, env = "LATCH_BREAK_GLASS_PER_MINUTE", value_parser = clap::value_parser!(u32).range(1..=60))]
    break_glass_per_minute: u32,
    /// Where break-glass notifications are POSTed (https://, or http:// on loopback).
    #[arg(long, env = "LATCH_BREAK_GLASS_WEBHOOK")]
    break_glass_webhook: Option<String>,
    /// A file holding the secret that signs break-glass notifications (HMAC-SHA-256 over
    /// "<timestamp>.<body>", header X-Latch-Signature). Never on the command line or in the
    /// configuration file.
    #[arg(
        long,
        env = "LATCH_BREAK_GLASS_WEBHOOK_SECRET_FILE",
        requires = "break_glass_webhook"
    )]
    break_glass_webhook_secret_file: Option<PathBuf>,
    /// Length of generated vault passwords (12 to 128).
    #[arg(long, default_value_t = 24, env = "LATCH_VAULT_PASSWORD_LENGTH", value_parser = clap::value_parser!(u16).range(12..=128))]
    vault_password_length: u16,
    /// When the scheduled-rotation sweep runs: cron with seconds (default every 30 minutes).
    #[arg(
        long,
        default_value = "0 */30 * * * *",
        env = "LATCH_ROTATION_SWEEP_SCHEDULE"
    )]
    rotation_sweep_schedule: String,
    /// When expired checkouts are checked in: cron with seconds (default every minute).
    #[arg(
        long,
        default_value = "0 * * * * *",
        env = "LATCH_CHECKOUT_SWEEP_SCHEDULE"
    )]
    checkout_sweep_schedule: String,
}

/// How the server speaks TLS.
pub enum Tls {
    /// Plain HTTP (`--insecure-http`, loopback only).
    Off,
    /// The operator's certificate chain and key.
    Files {
        /// The chain's file.
        cert: PathBuf,
        /// The loaded identity.
        identity: latch_control::tls::TlsIdentity,
    },
    /// A certificate from the data directory's CA, for the loopback names and these.
    PrivateCa(Vec<String>),
}

/// What the server runs with: every option checked.
pub struct Resolved {
    /// The data directory.
    pub data_dir: PathBuf,
    /// How the data directory and the database are opened.
    pub options: datadir::Options,
    /// Where to listen.
    pub listen: SocketAddr,
    /// TLS.
    pub tls: Tls,
    /// The control plane's settings.
    pub config: ControlConfig,
    /// The log filter.
    pub log_filter: tracing_subscriber::EnvFilter,
    /// The log format.
    pub log_format: LogFormat,
    /// Single sign-on, when configured.
    pub sso: Option<latch_control::sso::Sso>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What is wrong with an option: its id and the complaint (which names its key).
type Invalid = (&'static str, String);

/// Keeps the value of a check, or records its complaint.
fn keep<T>(result: Result<T, Invalid>, invalid: &mut Vec<Invalid>) -> Option<T> {
    result.map_err(|complaint| invalid.push(complaint)).ok()
}

/// A duration of option `id` as the control plane counts it.
fn chrono_duration(id: &'static str, duration: Duration) -> Result<chrono::Duration, Invalid> {
    chrono::Duration::from_std(duration).map_err(|_| (id, format!("`{id}` is too long")))
}

/// A duration the way people type it (`24h`, `90m`).
fn window(duration: Duration) -> String {
    chrono::Duration::from_std(duration).map_or_else(
        |_| format!("{duration:?}"),
        latch_common::api::format_window,
    )
}

impl ServeArgs {
    /// Checks every option as the server needs it — ranges, relations between values, URLs,
    /// schedules, the TLS and secret files — without opening the data directory or the
    /// database. Each complaint points where its value came from (`origins`).
    pub fn resolve(self, origins: &Origins) -> Result<Resolved, Mistakes> {
        let mut invalid: Vec<Invalid> = Vec::new();
        if !(60..=12 * 3600).contains(&self.mfa_window.as_secs()) {
            invalid.push((
                "mfa_window",
                format!(
                    "`mfa_window` must be between 1m and 12h (it was {})",
                    window(self.mfa_window)
                ),
            ));
        }
        for (id, duration) in [
            ("max_grant_duration", self.max_grant_duration),
            ("default_grant_duration", self.default_grant_duration),
        ] {
            if duration.is_zero() {
                invalid.push((id, format!("`{id}` must be more than 0 (e.g. 24h and 1h)")));
            }
        }
        if self.default_grant_duration > self.max_grant_duration {
            invalid.push((
                "default_grant_duration",
                format!(
                    "`default_grant_duration` ({}) is longer than `max_grant_duration` ({}); lower the default or raise the maximum",
                    window(self.default_grant_duration),
                    window(self.max_grant_duration)
                ),
            ));
        }
        let log_filter = keep(log_filter(&self.log_level), &mut invalid);
        let database = match self.database_url {
            None => Some(datadir::Database::Sqlite),
            Some(url) => keep(
                refuse_visible_password(&url, &origins.of("database_url"))
                    .map(|()| datadir::Database::Postgres(url)),
                &mut invalid,
            ),
        };
        if self.insecure_http && !self.listen.ip().is_loopback() {
            invalid.push((
                "insecure_http",
                latch_control::server::ServerError::NotLoopback(self.listen).to_string(),
            ));
        }
        let tls = match (self.insecure_http, self.tls_cert, self.tls_key) {
            (true, _, _) => Some(Tls::Off),
            (false, Some(cert), Some(key)) => keep(
                latch_control::tls::from_files(&cert, &key)
                    .map(|identity| Tls::Files { cert, identity })
                    .map_err(|e| ("tls_cert", e.to_string())),
                &mut invalid,
            ),
            (false, _, _) => Some(Tls::PrivateCa(self.tls_names)),
        };
        let durations = [
            ("lease_timeout", self.lease_timeout),
            ("job_ttl", self.job_ttl),
            ("access_pending_ttl", self.access_pending_ttl),
            ("access_provision_timeout", self.access_provision_timeout),
            ("max_grant_duration", self.max_grant_duration),
            ("default_grant_duration", self.default_grant_duration),
            ("mfa_window", self.mfa_window),
        ]
        .map(|(id, duration)| keep(chrono_duration(id, duration), &mut invalid));
        let vault = self.vault.build(&mut invalid);
        let sso = self.sso.build(&mut invalid);
        let (
            Some(log_filter),
            Some(database),
            Some(tls),
            [
                Some(lease_ttl),
                Some(job_ttl),
                Some(access_pending_ttl),
                Some(access_provision_timeout),
                Some(max_grant_duration),
                Some(default_grant_duration),
                Some(mfa_window),
            ],
            Some(vault),
            Some(sso),
            true,
        ) = (
            log_filter,
            database,
            tls,
            durations,
            vault,
            sso,
            invalid.is_empty(),
        )
        else {
            return Err(Mistakes(
                invalid
                    .into_iter()
                    .map(|(id, message)| origins.mistake(id, message))
                    .collect(),
            ));
        };
        let config = ControlConfig {
            lease_ttl,
            max_attempts: self.max_attempts,
            job_ttl,
            access_pending_ttl,
            access_provision_timeout,
            rate_limits: latch_control::api::limits::RateLimits {
                per_principal: self.rate_limit,
                auth_failures: self.auth_failure_limit,
                address_auth_failures: self.address_auth_failure_limit,
                trusted_proxies: self.trusted_proxies,
            },
            max_grant_duration,
            default_grant_duration,
            mfa: latch_control::mfa::MfaPolicy {
                required: self.mfa_required.0,
                window: mfa_window,
            },
            vault,
            public_url: self.public_url,
            ..ControlConfig::default()
        };
        Ok(Resolved {
            data_dir: self.data_dir,
            options: datadir::Options {
                database,
                new_signing_key: self.new_signing_key,
                new_audit_key: self.new_audit_key,
                new_ca: self.new_ca,
                new_user_ca: self.new_user_ca,
                master_key_file: self.master_key_file,
            },
            listen: self.listen,
            tls,
            config,
            log_filter,
            log_format: self.log_format,
            sso,
        })
    }
}

/// The log filter of `--log-level` (PostgreSQL's notices — "… already exists, skipping" at each
/// start — kept at warn).
fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, Invalid> {
    let bad = |e: &dyn std::fmt::Display| {
        (
            "log_level",
            format!(
                "`log_level` {level:?} is not a log filter ({e}): write error, warn, info, debug, trace or a tracing directive"
            ),
        )
    };
    let notice = "sqlx::postgres::notice=warn".parse().map_err(|e| bad(&e))?;
    Ok(tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| bad(&e))?
        .add_directive(notice))
}

/// Refuses a database URL with a password given where other users can read it: on the command
/// line (every user of the machine: ps) or in the configuration file.
pub fn refuse_visible_password(url: &str, origin: &Origin) -> Result<(), Invalid> {
    let visible = match origin {
        Origin::CommandLine(_) => "the command line is visible to every user of this machine (ps)",
        Origin::File { .. } => "the configuration file is no place for a secret",
        Origin::Env(_) | Origin::Default => return Ok(()),
    };
    if url_has_password(url) {
        return Err((
            "database_url",
            format!(
                "`database_url` carries a password, and {visible}; give the password in PGPASSWORD or ~/.pgpass, or the whole URL in LATCH_DATABASE_URL"
            ),
        ));
    }
    Ok(())
}

/// Whether a database URL holds a password (in its user information or as a parameter).
fn url_has_password(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|url| {
        url.password().is_some() || url.query_pairs().any(|(key, _)| key == "password")
    })
}

/// A database URL with its password masked (for `config check`).
pub fn masked_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if !url_has_password(url) {
        return url.to_owned();
    }
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(key, value)| {
            let value = if key == "password" {
                "***".into()
            } else {
                value.into_owned()
            };
            (key.into_owned(), value)
        })
        .collect();
    if !pairs.is_empty() {
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

impl VaultArgs {
    fn build(self, invalid: &mut Vec<Invalid>) -> Option<latch_control::vault::VaultConfig> {
        use latch_control::vault::schedule::check_schedule;
        let seconds = self.break_glass_duration.as_secs();
        if !(60..=86_400).contains(&seconds) {
            invalid.push((
                "break_glass_duration",
                format!(
                    "`break_glass_duration` must be between 1m and 24h (it was {})",
                    window(self.break_glass_duration)
                ),
            ));
        }
        for (id, schedule) in [
            ("rotation_sweep_schedule", &self.rotation_sweep_schedule),
            ("checkout_sweep_schedule", &self.checkout_sweep_schedule),
        ] {
            keep(
                check_schedule(schedule).map_err(|e| (id, format!("`{id}`: {e}"))),
                invalid,
            );
        }
        let webhook = match self.break_glass_webhook {
            None => Some(None),
            Some(url) => keep(
                break_glass_webhook(url, self.break_glass_webhook_secret_file),
                invalid,
            )
            .map(Some),
        };
        let duration = keep(
            chrono_duration("break_glass_duration", self.break_glass_duration),
            invalid,
        );
        Some(latch_control::vault::VaultConfig {
            password_policy: latch_control::vault::secrets::PasswordPolicy {
                length: usize::from(self.vault_password_length),
            },
            break_glass_duration: duration?,
            break_glass_per_minute: self.break_glass_per_minute,
            break_glass_webhook: webhook?,
            sweep_schedule: self.rotation_sweep_schedule,
            checkout_sweep_schedule: self.checkout_sweep_schedule,
        })
    }
}

/// The break-glass webhook: an https:// URL (http:// on loopback) and its signing secret, read
/// from its file.
fn break_glass_webhook(
    url: String,
    secret_file: Option<PathBuf>,
) -> Result<latch_control::vault::notify::Webhook, Invalid> {
    let parsed = url::Url::parse(&url).map_err(|e| {
        (
            "break_glass_webhook",
            format!("`break_glass_webhook` {url:?} is not a URL ({e})"),
        )
    })?;
    let loopback = parsed.host_str().is_some_and(|h| {
        h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            || h == "[::1]"
    });
    if parsed.scheme() != "https" && !(parsed.scheme() == "http" && loopback) {
        return Err((
            "break_glass_webhook",
            format!(
                "`break_glass_webhook` must be an https:// URL (http:// only on loopback), not {url:?}"
            ),
        ));
    }
    let secret = match secret_file {
        None => None,
        Some(path) => {
            let id = "break_glass_webhook_secret_file";
            let text = std::fs::read_to_string(&path)
                .map_err(|e| (id, format!("cannot read `{id}` {}: {e}", path.display())))?;
            let text = text.trim();
            if text.len() < 16 {
                return Err((
                    id,
                    format!(
                        "the break-glass webhook secret in {} is shorter than 16 characters; use a long random one (e.g. openssl rand -hex 32)",
                        path.display()
                    ),
                ));
            }
            Some(text.as_bytes().to_vec())
        }
    };
    Ok(latch_control::vault::notify::Webhook { url, secret })
}

impl SsoArgs {
    /// Single sign-on, if an issuer is configured: `Some(None)` when it is not, `None` when
    /// something is wrong (recorded in `invalid`).
    fn build(self, invalid: &mut Vec<Invalid>) -> Option<Option<latch_control::sso::Sso>> {
        let Some(issuer) = self.sso_issuer else {
            return Some(None);
        };
        let session_ttl = keep(
            chrono_duration("sso_session_ttl", self.sso_session_ttl),
            invalid,
        );
        let id = "sso_client_secret_file";
        let secret = match (
            &self.sso_client_secret_file,
            std::env::var("LATCH_SSO_CLIENT_SECRET"),
        ) {
            (Some(path), _) => keep(
                std::fs::read_to_string(path)
                    .map(|text| text.trim().to_owned())
                    .map_err(|e| {
                        (
                            id,
                            format!(
                                "cannot read the SSO client secret from {}: {e}",
                                path.display()
                            ),
                        )
                    }),
                invalid,
            ),
            (None, Ok(secret)) => Some(secret.trim().to_owned()),
            (None, Err(_)) => {
                invalid.push((
                    "sso_issuer",
                    "`sso_issuer` needs the client secret: `sso_client_secret_file` (a file of mode 0600) or LATCH_SSO_CLIENT_SECRET".into(),
                ));
                None
            }
        };
        let client_id = self.sso_client_id.unwrap_or_default();
        let mut config = latch_control::sso::SsoConfig::new(&issuer, &client_id, &secret?);
        config.groups_claim = self.sso_groups_claim;
        config.scopes = self
            .sso_scopes
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        config.session_ttl = session_ttl?;
        config.mfa_acr = self.sso_mfa_acr;
        keep(
            latch_control::sso::Sso::new(config).map_err(|e| ("sso_issuer", e.to_string())),
            invalid,
        )
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_and_refused_where_visible() {
        assert_eq!(
            masked_url("postgres://latch:s3cret@db:5432/latch?sslmode=require"),
            "postgres://latch:***@db:5432/latch?sslmode=require"
        );
        assert_eq!(
            masked_url("postgres://latch@db/latch?password=s3cret&sslmode=require"),
            "postgres://latch@db/latch?password=***&sslmode=require"
        );
        assert_eq!(
            masked_url("postgres://latch@db/latch"),
            "postgres://latch@db/latch"
        );
        let url = "postgres://latch:s3cret@db/latch";
        let file = Origin::File {
            path: PathBuf::from("c.toml"),
            at: None,
        };
        let refused = refuse_visible_password(url, &file).unwrap_err().1;
        assert!(refused.contains("LATCH_DATABASE_URL") && !refused.contains("s3cret"));
        assert!(
            refuse_visible_password(url, &Origin::CommandLine("--database-url".into())).is_err()
        );
        assert!(refuse_visible_password(url, &Origin::Env("LATCH_DATABASE_URL".into())).is_ok());
        assert!(refuse_visible_password("postgres://latch@db/latch", &file).is_ok());
    }
}
