//! `latch-control`: the Latch control-plane server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use latch_common::api::format_window;
use latch_control::{Control, ControlConfig, datadir, server};

/// The Latch control plane: enrolls hosts, queues account jobs and hands them to agents.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// on the command line.
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
    #[arg(long, default_value = "8h", value_parser = humantime::parse_duration)]
    sso_session_ttl: std::time::Duration,
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
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    break_glass_duration: std::time::Duration,
    /// Break-glass uses allowed per person per minute (past that: 429).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=60))]
    break_glass_per_minute: u32,
    /// Where break-glass notifications are POSTed (https://, or http:// on loopback).
    #[arg(long, env = "LATCH_BREAK_GLASS_WEBHOOK")]
    break_glass_webhook: Option<String>,
    /// A file holding the secret that signs break-glass notifications (HMAC-SHA-256 over
    /// "<timestamp>.<body>", header X-Latch-Signature). Never on the command line.
    #[arg(
        long,
        env = "LATCH_BREAK_GLASS_WEBHOOK_SECRET_FILE",
        requires = "break_glass_webhook"
    )]
    break_glass_webhook_secret_file: Option<PathBuf>,
    /// Length of generated vault passwords (12 to 128).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u16).range(12..=128))]
    vault_password_length: u16,
    /// When the scheduled-rotation sweep runs: cron with seconds (default every 30 minutes).
    #[arg(long, default_value = "0 */30 * * * *")]
    rotation_sweep_schedule: String,
    /// When expired checkouts are checked in: cron with seconds (default every minute).
    #[arg(long, default_value = "0 * * * * *")]
    checkout_sweep_schedule: String,
}

impl VaultArgs {
    fn build(self) -> anyhow::Result<latch_control::vault::VaultConfig> {
        use latch_control::vault::schedule::check_schedule;
        let seconds = self.break_glass_duration.as_secs();
        if !(60..=86_400).contains(&seconds) {
            anyhow::bail!(
                "--break-glass-duration must be between 1m and 24h (it was {})",
                humantime::format_duration(self.break_glass_duration)
            );
        }
        check_schedule(&self.rotation_sweep_schedule)
            .map_err(|e| anyhow::anyhow!("--rotation-sweep-schedule: {e}"))?;
        check_schedule(&self.checkout_sweep_schedule)
            .map_err(|e| anyhow::anyhow!("--checkout-sweep-schedule: {e}"))?;
        let webhook = match self.break_glass_webhook {
            None => None,
            Some(url) => {
                let parsed = url::Url::parse(&url)
                    .with_context(|| format!("--break-glass-webhook {url:?} is not a URL"))?;
                let loopback = parsed.host_str().is_some_and(|h| {
                    h == "localhost"
                        || h.parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                        || h == "[::1]"
                });
                if parsed.scheme() != "https" && !(parsed.scheme() == "http" && loopback) {
                    anyhow::bail!(
                        "--break-glass-webhook must be an https:// URL (http:// only on loopback), not {url:?}"
                    );
                }
                let secret = match self.break_glass_webhook_secret_file {
                    None => None,
                    Some(path) => {
                        let text = std::fs::read_to_string(&path).with_context(|| {
                            format!(
                                "cannot read --break-glass-webhook-secret-file {}",
                                path.display()
                            )
                        })?;
                        let text = text.trim();
                        if text.len() < 16 {
                            anyhow::bail!(
                                "the break-glass webhook secret in {} is shorter than 16 characters; use a long random one (e.g. openssl rand -hex 32)",
                                path.display()
                            );
                        }
                        Some(text.as_bytes().to_vec())
                    }
                };
                Some(latch_control::vault::notify::Webhook { url, secret })
            }
        };
        Ok(latch_control::vault::VaultConfig {
            password_policy: latch_control::vault::secrets::PasswordPolicy {
                length: usize::from(self.vault_password_length),
            },
            break_glass_duration: chrono::Duration::from_std(self.break_glass_duration)
                .context("--break-glass-duration is too long")?,
            break_glass_per_minute: self.break_glass_per_minute,
            break_glass_webhook: webhook,
            sweep_schedule: self.rotation_sweep_schedule,
            checkout_sweep_schedule: self.checkout_sweep_schedule,
        })
    }
}

impl SsoArgs {
    fn build(self) -> anyhow::Result<Option<latch_control::sso::Sso>> {
        let Some(issuer) = self.sso_issuer else {
            return Ok(None);
        };
        let client_id = self.sso_client_id.unwrap_or_default();
        let secret = match (
            &self.sso_client_secret_file,
            std::env::var("LATCH_SSO_CLIENT_SECRET"),
        ) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| {
                    format!("cannot read the SSO client secret from {}", path.display())
                })?
                .trim()
                .to_owned(),
            (None, Ok(secret)) => secret.trim().to_owned(),
            (None, Err(_)) => anyhow::bail!(
                "--sso-issuer needs the client secret: --sso-client-secret-file FILE (mode 0600) or LATCH_SSO_CLIENT_SECRET"
            ),
        };
        let mut config = latch_control::sso::SsoConfig::new(&issuer, &client_id, &secret);
        config.groups_claim = self.sso_groups_claim;
        config.scopes = self
            .sso_scopes
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        config.session_ttl = chrono::Duration::from_std(self.sso_session_ttl)
            .context("--sso-session-ttl is too long")?;
        config.mfa_acr = self.sso_mfa_acr;
        Ok(Some(latch_control::sso::Sso::new(config)?))
    }
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Serve the API. The first start creates the data directory, the database (SQLite in the
    /// data directory, or the tables in PostgreSQL with --database-url), the keys (job signing,
    /// audit, private CA) and an admin token in DIR/admin.token (mode 0600). Later starts refuse
    /// to run if a key is missing or differs from the one recorded then.
    Serve {
        /// Directory for the keys, the admin token and (without --database-url) the SQLite
        /// database.
        #[arg(long, default_value = "./latch-data", env = "LATCH_DATA_DIR")]
        data_dir: PathBuf,
        /// Keep the database in PostgreSQL instead of SQLite:
        /// postgres://USER@HOST:PORT/DATABASE (libpq parameters such as sslmode, sslrootcert
        /// and options=-c search_path=SCHEMA work). The password goes in PGPASSWORD or
        /// ~/.pgpass, or the whole URL in LATCH_DATABASE_URL: a password on the command line is
        /// refused (every local user can read it). The keys stay in --data-dir.
        #[arg(long, env = "LATCH_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8443", env = "LATCH_LISTEN")]
        listen: SocketAddr,
        /// Serve plain HTTP instead of HTTPS. For development only: refused unless --listen is
        /// a loopback address; agents must also pass --insecure-http.
        #[arg(long)]
        insecure_http: bool,
        /// Extra host name or IP address for the server certificate (repeatable); localhost,
        /// 127.0.0.1 and ::1 are always included. Agents connect by one of these names.
        #[arg(long = "tls-name")]
        tls_names: Vec<String>,
        /// Your own certificate chain (PEM: server certificate first, then any intermediate
        /// CAs, the root CA last) instead of the data directory's CA; agents pin the last
        /// certificate.
        #[arg(long, requires = "tls_key", conflicts_with_all = ["insecure_http", "tls_names"])]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// How long a delivered job may stay unreported before it is delivered again.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        lease_timeout: std::time::Duration,
        /// How long after creation a job that grants access may still be applied on the host
        /// (its signed `not_after`); revocations never expire.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        job_ttl: std::time::Duration,
        /// How long an access request waits for its approvals before it expires.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        access_pending_ttl: std::time::Duration,
        /// How long every host of an approved access request has to confirm its provisioning;
        /// after that the request fails and what the hosts got is removed. Hosts remove the
        /// access on their own at the window's end plus this time, should the control plane
        /// be unreachable then.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        access_provision_timeout: std::time::Duration,
        /// Requests per minute allowed to one principal (admin token, host, or address).
        #[arg(long, default_value_t = 3000)]
        rate_limit: u32,
        /// Refused attempts per minute with one credential (admin token, host credential or
        /// enrollment token) before that credential gets 429; other clients are not affected.
        #[arg(long, default_value_t = 30)]
        auth_failure_limit: u32,
        /// Refused credentials per minute from one client address (IPv6: one /64) before the
        /// address gets 429 — except for credentials that authenticated in the last 24 h. Bounds
        /// spraying many different guesses.
        #[arg(long, default_value_t = 300)]
        address_auth_failure_limit: u32,
        /// A reverse proxy (CIDR block or address, repeatable) whose X-Forwarded-For names the
        /// client: the rightmost entry that is not a trusted proxy. Without it, or from any
        /// other peer, X-Forwarded-For is ignored and the TCP peer is the client.
        #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = latch_control::api::limits::parse_trusted_proxy)]
        trusted_proxies: Vec<ipnet::IpNet>,
        /// The longest window a grant (create-account, add-group) may ask for; longer ones, and
        /// ends not in the future, are refused with invalid_request.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        max_grant_duration: std::time::Duration,
        /// The window of a grant that names no end (no --expires-in) and is not --permanent.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        default_grant_duration: std::time::Duration,
        /// Which sensitive actions need a second factor shown in the same session first:
        /// `all`, `none`, or a comma-separated list of approve, reveal, break_glass,
        /// change_policy, change_roles.
        #[arg(long, default_value = "all", value_parser = latch_control::mfa::parse_required_actions)]
        mfa_required: latch_control::mfa::RequiredActions,
        /// How long a second factor counts after it was shown (1m to 12h).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        mfa_window: std::time::Duration,
        /// Deliveries of one job before it fails with agent_unresponsive.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        max_attempts: u32,
        /// Recovery only: make a new job-signing key because signing.key is lost for good (not
        /// restorable from a backup). Every enrolled host must then be enrolled again. Audited.
        #[arg(long)]
        new_signing_key: bool,
        /// Recovery only: make a new audit key because audit.key is lost for good. The chain's
        /// hash links are checked and its entries keyed again under the new key (audited);
        /// earlier edits and checkpoints exported before can no longer be checked.
        #[arg(long)]
        new_audit_key: bool,
        /// Recovery only: make a new private CA because ca.crt/ca.key are lost for good. Every
        /// enrolled host must then be enrolled again. Audited.
        #[arg(long, conflicts_with_all = ["insecure_http", "tls_cert"])]
        new_ca: bool,
        /// Recovery only: make a new SSH user CA key because user_ca.key is lost for good.
        /// Every host enrolled with --ssh-ca must then be enrolled again. Audited.
        #[arg(long)]
        new_user_ca: bool,
        /// The credential vault's master key file (64 hex digits, mode 0600). Default:
        /// DIR/master.key, made on the first start. It wraps every organization's data key and
        /// is not in the database: back it up apart from the database. A start with another key,
        /// or without it once organizations exist, is refused.
        #[arg(long, env = "LATCH_MASTER_KEY_FILE")]
        master_key_file: Option<PathBuf>,
        /// Log filter (error, warn, info, debug, or a tracing directive).
        #[arg(long, default_value = "info", env = "LATCH_LOG")]
        log_level: String,
        #[command(flatten)]
        sso: SsoArgs,
        #[command(flatten)]
        vault: VaultArgs,
    },
    /// Rotate the credential vault's master key, with the server stopped: a new key re-wraps
    /// every organization's data key in one transaction (audited), then replaces the master key
    /// file (DIR/master.key or --master-key-file). An interrupted rotation is finished or undone
    /// at the next start. Back up the new key at once: the old one no longer opens the database.
    RotateMasterKey {
        /// The data directory the server runs with.
        #[arg(long, default_value = "./latch-data", env = "LATCH_DATA_DIR")]
        data_dir: PathBuf,
        /// The server's PostgreSQL database, if it uses one (postgres://USER@HOST:PORT/DATABASE;
        /// the password in PGPASSWORD or ~/.pgpass, or the whole URL in LATCH_DATABASE_URL).
        #[arg(long, env = "LATCH_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// The master key file the server runs with. Default: DIR/master.key.
        #[arg(long, env = "LATCH_MASTER_KEY_FILE")]
        master_key_file: Option<PathBuf>,
    },
    /// Move a control plane from SQLite to PostgreSQL: copy every row of DIR/latch.db into the
    /// empty PostgreSQL database of --database-url, in one transaction, then mark latch.db as
    /// moved (it is refused from then on). Stop the server first. Afterwards start it with the
    /// same --data-dir (keys and admin token stay there) and --database-url; agents notice
    /// nothing.
    CopyToPostgres {
        /// The data directory the SQLite control plane ran with.
        #[arg(long, default_value = "./latch-data", env = "LATCH_DATA_DIR")]
        data_dir: PathBuf,
        /// The PostgreSQL database to fill (postgres://USER@HOST:PORT/DATABASE; an empty
        /// database or schema). The password goes in PGPASSWORD or ~/.pgpass, or the whole URL
        /// in LATCH_DATABASE_URL.
        #[arg(long, env = "LATCH_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One crypto provider for every rustls user in the process (the TLS listener, webhook
    // deliveries, the identity provider client): reqwest panics without one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let matches = Cli::command().get_matches();
    let url_on_command_line = matches
        .subcommand()
        .and_then(|(_, command)| command.value_source("database_url"))
        == Some(ValueSource::CommandLine);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    match cli.command {
        Command::RotateMasterKey {
            data_dir,
            database_url,
            master_key_file,
        } => {
            let database = match database_url {
                None => datadir::Database::Sqlite,
                Some(url) => {
                    refuse_password_on_command_line(&url, url_on_command_line)?;
                    datadir::Database::Postgres(url)
                }
            };
            let options = datadir::Options {
                database,
                master_key_file,
                ..datadir::Options::default()
            };
            let mut data = datadir::open(&data_dir, &options).await?;
            let rotated = data.rotate_master_key().await?;
            println!(
                "Rotated the master key {} -> {}: {} organization data key(s) re-wrapped.",
                rotated.from, rotated.to, rotated.organizations
            );
            println!(
                "{} holds the new key now; back it up apart from the database. The old key no longer opens this database (keep it only as long as you keep database backups made before now).",
                data.master_key_files.path().display()
            );
            Ok(())
        }
        Command::CopyToPostgres {
            data_dir,
            database_url,
        } => {
            refuse_password_on_command_line(&database_url, url_on_command_line)?;
            let copied = datadir::copy_to_postgres(&data_dir, &database_url).await?;
            println!(
                "Copied {} to PostgreSQL {}:",
                data_dir.join(datadir::DATABASE_FILE).display(),
                copied.location
            );
            for (table, rows) in &copied.rows {
                println!("  {table:<14} {rows} rows");
            }
            println!(
                "  audit chain:   the same, through entry {}",
                copied.audit_head.unwrap_or(0)
            );
            println!(
                "{} now refuses to start on SQLite. Start the server with the same --data-dir and --database-url (or LATCH_DATABASE_URL).",
                data_dir.display()
            );
            Ok(())
        }
        Command::Serve {
            data_dir,
            database_url,
            listen,
            insecure_http,
            tls_names,
            tls_cert,
            tls_key,
            lease_timeout,
            job_ttl,
            access_pending_ttl,
            access_provision_timeout,
            rate_limit,
            auth_failure_limit,
            address_auth_failure_limit,
            trusted_proxies,
            max_attempts,
            new_signing_key,
            new_audit_key,
            new_ca,
            new_user_ca,
            master_key_file,
            max_grant_duration,
            default_grant_duration,
            mfa_required,
            mfa_window,
            log_level,
            sso,
            vault,
        } => {
            if !(60..=12 * 3600).contains(&mfa_window.as_secs()) {
                anyhow::bail!(
                    "--mfa-window must be between 1m and 12h (it was {})",
                    humantime::format_duration(mfa_window)
                );
            }
            if max_grant_duration.is_zero() || default_grant_duration.is_zero() {
                anyhow::bail!(
                    "--max-grant-duration and --default-grant-duration must be more than 0 (e.g. 24h and 1h)"
                );
            }
            if default_grant_duration > max_grant_duration {
                anyhow::bail!(
                    "--default-grant-duration ({}) is longer than --max-grant-duration ({}); lower the default or raise the maximum",
                    std_window(default_grant_duration),
                    std_window(max_grant_duration)
                );
            }
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_new(&log_level)
                        .context("invalid --log-level")?
                        // PostgreSQL's notices ("… already exists, skipping" at each start).
                        .add_directive("sqlx::postgres::notice=warn".parse()?),
                )
                .with_writer(std::io::stderr)
                // Colours only on a terminal: a log file or the journal gets plain text.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            let database = match database_url {
                None => datadir::Database::Sqlite,
                Some(url) => {
                    refuse_password_on_command_line(&url, url_on_command_line)?;
                    datadir::Database::Postgres(url)
                }
            };
            let options = datadir::Options {
                database,
                new_signing_key,
                new_audit_key,
                new_ca,
                new_user_ca,
                master_key_file,
            };
            let data = datadir::open(&data_dir, &options).await?;
            // Every connected agent holds a socket during its long-poll: lift the soft limit on
            // open files (often 1024) to the hard one.
            let open_files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
            println!("Latch control plane");
            println!("  data directory: {}", data_dir.display());
            println!("  database:       {}", data.database);
            println!(
                "  master key:     {} ({}; back it up apart from the database)",
                data.master_key_files.path().display(),
                data.master_key.id()
            );
            if data.admin_token_created {
                println!(
                    "  admin token:    created {} (mode 0600); latchctl reads it from there or from --token",
                    data.admin_token_path.display()
                );
            } else {
                println!("  admin token:    {}", data.admin_token_path.display());
            }
            let config = ControlConfig {
                lease_ttl: chrono::Duration::from_std(lease_timeout)
                    .context("--lease-timeout is too long")?,
                max_attempts,
                job_ttl: chrono::Duration::from_std(job_ttl).context("--job-ttl is too long")?,
                access_pending_ttl: chrono::Duration::from_std(access_pending_ttl)
                    .context("--access-pending-ttl is too long")?,
                access_provision_timeout: chrono::Duration::from_std(access_provision_timeout)
                    .context("--access-provision-timeout is too long")?,
                rate_limits: latch_control::api::limits::RateLimits {
                    per_principal: rate_limit.max(1),
                    auth_failures: auth_failure_limit.max(1),
                    address_auth_failures: address_auth_failure_limit.max(1),
                    trusted_proxies,
                },
                max_grant_duration: chrono::Duration::from_std(max_grant_duration)
                    .context("--max-grant-duration is too long")?,
                default_grant_duration: chrono::Duration::from_std(default_grant_duration)
                    .context("--default-grant-duration is too long")?,
                mfa: latch_control::mfa::MfaPolicy {
                    required: mfa_required.0,
                    window: chrono::Duration::from_std(mfa_window)
                        .context("--mfa-window is too long")?,
                },
                vault: vault.build()?,
                ..ControlConfig::default()
            };
            println!(
                "  open files:     {open_files} at most, about one per connected agent (raise the hard limit, e.g. LimitNOFILE= in the unit, for more)"
            );
            println!(
                "  grants:         at most {}; {} when no end is given (--max-grant-duration, --default-grant-duration)",
                format_window(config.max_grant_duration),
                format_window(config.default_grant_duration)
            );
            println!(
                "  signing key:    {} (Ed25519; agents pin its public key at enrollment)",
                data_dir.join(server::SIGNING_KEY_FILE).display()
            );
            println!(
                "  audit key:      {} (keep a backup; checkpoints: latchctl audit checkpoint)",
                data_dir.join(datadir::AUDIT_KEY_FILE).display()
            );
            let tls = if insecure_http {
                println!("  TLS:            OFF (--insecure-http; loopback only, for development)");
                None
            } else {
                let identity = match (&tls_cert, &tls_key) {
                    (Some(cert), Some(key)) => {
                        println!(
                            "  TLS:            certificate {} (agents pin its issuing CA)",
                            cert.display()
                        );
                        latch_control::tls::from_files(cert, key)?
                    }
                    _ => {
                        println!(
                            "  TLS:            CA {} (latchctl: --ca-file); agents pin its fingerprint",
                            data_dir.join(datadir::CA_CERT_FILE).display()
                        );
                        data.private_ca(&tls_names).await?
                    }
                };
                println!("  CA fingerprint: {}", identity.ca_fingerprint);
                Some(identity)
            };
            println!("  SSH user CA:    {}", data.user_ca.fingerprint());
            let mut control = Control::new(data.store, config, data.signer)
                .with_key_dir(data_dir.clone(), data.next_signer)
                .with_master_key(data.master_key.clone())
                .with_user_ca(data.user_ca);
            if let Some(sso) = sso.build()? {
                println!("  single sign-on: {}", sso.config().issuer);
                control = control.with_sso(sso);
            }
            let tls = match tls {
                Some(identity) => {
                    control = control.with_ca_fingerprint(identity.ca_fingerprint);
                    Some(identity.server_config)
                }
                None => None,
            };
            let listener = server::bind(listen, tls.is_some()).await?;
            let addr = listener
                .local_addr()
                .context("cannot read the listening address")?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            println!("  listening on {scheme}://{addr}");
            server::run(Arc::new(control), listener, tls, shutdown_signal()).await?;
            println!("stopped");
            Ok(())
        }
    }
}

/// Refuses a database URL with a password given on the command line, where every user of the
/// machine can read it.
fn refuse_password_on_command_line(url: &str, on_command_line: bool) -> anyhow::Result<()> {
    if on_command_line && url_has_password(url) {
        anyhow::bail!(
            "--database-url carries a password, and the command line is visible to every user of this machine (ps); give the password in PGPASSWORD or ~/.pgpass, or the whole URL in LATCH_DATABASE_URL"
        );
    }
    Ok(())
}

/// Whether a database URL holds a password (in its user information or as a parameter).
fn url_has_password(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|url| {
        url.password().is_some() || url.query_pairs().any(|(key, _)| key == "password")
    })
}

/// A flag's duration the way people type it (`24h`, `90m`).
fn std_window(duration: std::time::Duration) -> String {
    chrono::Duration::from_std(duration).map_or_else(|_| format!("{duration:?}"), format_window)
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
