//! `latchctl vaults|identities|rotations` and `hosts enroll-account`: the credential vault, a
//! thin layer over the `/v1/vaults`, `/v1/identities`, `/v1/checkouts`, `/v1/rotations` and
//! `/v1/hosts/{host}/enroll-account` endpoints.
//!
//! Secrets are never taken from the command line (other users read it with `ps`, shells keep
//! it in their history): a credential comes from standard input, a file (SSH keys), or a
//! prompt that does not echo. A credential shown on a terminal is erased from the screen after
//! [`CLEAR_AFTER`] (or at Ctrl-C); piped or as JSON it is printed once. What can be checked
//! here — names, reasons, durations, levels — is checked with `latch_common::vault`'s rules
//! before anything is sent.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Subcommand};
use latch_common::vault::{
    AccessLevel, BreakGlassRequest, CheckoutRequest, CreateIdentityRequest,
    CreateVaultGrantRequest, CreateVaultRequest, CredentialType, EnrollAccountRequest,
    MAX_CONCURRENT_CHECKOUTS, MAX_LINKED_HOSTS, MAX_ROTATION_DAYS, MAX_SECRET_BYTES, RotateRequest,
    RotationView, UpdateIdentityRequest, UpdateVaultRequest,
};
use latch_control::client::{AdminClient, ClientError};

use super::people::done;
use super::print_json;
use super::terminal;
use super::vault_views::{
    print_checkouts, print_identities, print_identity, print_rotations, print_vault,
    print_vault_grants, print_vaults, show_checkout, show_credential, show_rotation,
};

/// How long a credential stays on a terminal before it is erased.
pub const CLEAR_AFTER: Duration = Duration::from_secs(30);

/// Exit status of a followed rotation that failed on some host.
const ROTATION_FAILED: u8 = 1;
/// Exit status of a followed rotation still pending when `--wait` ran out.
const ROTATION_PENDING: u8 = 2;
/// Exit status when following a rotation itself failed (the control plane went away, …).
const WAIT_BROKE: u8 = 3;

/// The credential-vault commands (flattened into `latchctl`'s own).
#[derive(Subcommand)]
pub enum VaultCommand {
    /// Credential vaults: named sets of shared accounts (identities), and who may use them
    /// (grants). Listing needs `pam_vaults.view` or a grant; changes need `pam_vaults.manage`.
    #[command(subcommand)]
    Vaults(VaultsCommand),
    /// Identities: shared accounts (root, oracle, a service account) whose credential Latch
    /// keeps encrypted, hands out (reveal, checkout, break-glass) and rotates on their hosts.
    #[command(subcommand)]
    Identities(IdentitiesCommand),
    /// Rotations: a new credential set on every linked host, one `set-password` job per host.
    #[command(subcommand)]
    Rotations(RotationsCommand),
    /// Support access: lets the vendor's support engineers (members of the group
    /// latch-support) see the vaults' metadata — never a secret — for a stated reason and at
    /// most a year. Needs `settings.manage`; enabling and disabling need the MFA step-up.
    #[command(subcommand)]
    SupportAccess(super::vault_settings::SupportAccessCommand),
    /// Organizations: vaults belong to one; each has its own data key and break-glass
    /// duration. Listing needs vault access or `settings.manage`; changes `settings.manage`.
    #[command(subcommand)]
    Organizations(super::vault_settings::OrganizationsCommand),
}

#[derive(Subcommand)]
pub enum VaultsCommand {
    /// List the vaults you may see, with how many identities each holds and your own access.
    List,
    /// Show one vault.
    Show {
        /// Vault name or id.
        vault: String,
    },
    /// Create a vault. You become its owner: owners use it without a grant.
    Create {
        /// Name, unique in its organization: 1–64 of a-z 0-9 . _ - @, starting with a letter
        /// or a digit.
        #[arg(value_parser = name_arg)]
        name: String,
        /// What it holds (e.g. "production database accounts").
        #[arg(long, default_value = "")]
        description: String,
        /// The organization it belongs to (default: `default`); its data key encrypts the
        /// vault's credentials.
        #[arg(long)]
        organization: Option<String>,
    },
    /// Rename a vault or change its description (what is not given stays).
    #[command(group(ArgGroup::new("change").required(true).multiple(true).args(["name", "description"])))]
    Update {
        /// Vault name or id.
        vault: String,
        /// New name (the vault-name rules).
        #[arg(long, value_parser = name_arg)]
        name: Option<String>,
        /// New description.
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete an empty vault. A vault that still holds identities is refused: delete them
    /// first (`latchctl identities list --vault VAULT`).
    Delete {
        /// Vault name or id.
        vault: String,
    },
    /// A vault's access grants.
    #[command(subcommand)]
    Grants(VaultGrantsCommand),
    /// Give a user or a group access to a vault: view_vault (see its identities), then
    /// view_credentials (also reveal), then checkout (also check out). A group's members get
    /// its grants.
    Grant(GrantArgs),
    /// Remove an access grant (its id is in `latchctl vaults grants list VAULT`).
    RevokeGrant {
        /// Vault name or id.
        vault: String,
        /// Grant id (`vg_…`).
        grant_id: String,
    },
}

#[derive(Subcommand)]
pub enum VaultGrantsCommand {
    /// List a vault's access grants: to whom, which level, until when.
    List {
        /// Vault name or id.
        vault: String,
    },
}

/// `vaults grant`'s options.
#[derive(Args)]
#[command(group(ArgGroup::new("subject").required(true).args(["user", "group"])))]
pub struct GrantArgs {
    /// Vault name or id.
    vault: String,
    /// To this user or service user (name).
    #[arg(long)]
    user: Option<String>,
    /// To this group (name): every member gets the access.
    #[arg(long)]
    group: Option<String>,
    /// How much it opens: view_vault, view_credentials (also reveal) or checkout (also check
    /// out).
    #[arg(long, value_parser = level_arg)]
    level: AccessLevel,
    /// End the access at this time (RFC 3339, e.g. 2026-12-31T18:00:00Z; in the future).
    #[arg(long, value_name = "TIME", value_parser = future_time_arg)]
    expires_at: Option<DateTime<Utc>>,
    /// End the access after this long from now (e.g. 8h, 30d). Default: until removed.
    #[arg(long = "for", value_name = "DURATION", value_parser = grant_duration_arg, conflicts_with = "expires_at")]
    for_: Option<Duration>,
}

#[derive(Subcommand)]
pub enum IdentitiesCommand {
    /// List a vault's identities with their rotation state and open checkouts (never their
    /// credentials).
    List {
        /// Vault name or id.
        #[arg(long)]
        vault: String,
    },
    /// Show one identity: its settings, linked hosts (and whether the account was adopted
    /// there), and its latest rotation's state.
    Show {
        /// Identity id (`idn_…`).
        id: String,
    },
    /// Add an identity to a vault. Its credential is read from standard input
    /// (--secret-stdin), a file (--secret-file, SSH keys) or a prompt that does not echo —
    /// never from the command line; a password identity with --host may leave it out, and
    /// Latch makes one and sets it on the hosts.
    Create(CreateIdentityArgs),
    /// Change an identity's settings (what is not given stays; --host replaces the linked
    /// hosts). The credential changes only by rotation (`latchctl identities rotate`).
    Update(UpdateIdentityArgs),
    /// Delete an identity and its stored credentials (refused while it is checked out). The
    /// accounts on the hosts stay.
    Delete {
        /// Identity id (`idn_…`).
        id: String,
    },
    /// Show an identity's current credential (needs a grant of view_credentials or more and,
    /// where the control plane asks for it, a recent second factor: `latchctl mfa verify`).
    /// Audited. On a terminal it is erased
    /// from the screen after 30 s or at Ctrl-C; piped or with --output json it is printed
    /// once.
    Reveal {
        /// Identity id (`idn_…`).
        id: String,
        /// On a terminal, leave the credential on the screen instead of erasing it after 30 s.
        #[arg(long)]
        no_clear: bool,
    },
    /// Check an identity out for a while: prints the checkout id, when it ends, and the
    /// credential (erased from a terminal after 30 s). Needs a grant of checkout. Check it in
    /// when done: `latchctl identities checkin CHECKOUT_ID`.
    Checkout(CheckoutArgs),
    /// Check in a checkout (yours; someone else's with --force). An identity with
    /// rotate-after-use gets a new credential.
    Checkin {
        /// Checkout id (`co_…`, printed by checkout; `latchctl identities checkouts ID`).
        checkout_id: String,
        /// Check in someone else's checkout (needs `pam_vaults.manage`; audited).
        #[arg(long)]
        force: bool,
    },
    /// An identity's checkouts, open and past, newest first.
    Checkouts {
        /// Identity id (`idn_…`).
        id: String,
    },
    /// Emergency checkout without a grant or approval (needs `pam_vaults.break_glass`; at most
    /// 3 a minute). Audited as critical; every account admin is notified. It ends by itself at
    /// the organization's longest checkout, and its check-in rotates the credential.
    BreakGlass {
        /// Identity id (`idn_…`).
        id: String,
        /// Why (1–500 characters, one line): recorded in the audit trail and sent to the
        /// admins.
        #[arg(long, value_parser = reason_arg)]
        reason: String,
        /// On a terminal, leave the credential on the screen instead of erasing it after 30 s.
        #[arg(long)]
        no_clear: bool,
    },
    /// Give an identity a new credential on every linked host now (refused while it is checked
    /// out). Prints the rotation and its hosts; the new credential counts once every host
    /// confirmed it, and a failure keeps the previous one.
    ///
    /// Exit status with --wait: 0 confirmed, 1 failed, 2 still pending when the time ran out,
    /// 3 the wait itself failed.
    Rotate {
        /// Identity id (`idn_…`).
        id: String,
        /// Set this password instead of a generated one, read from the first line of standard
        /// input (checked against the password policy and the last 10 passwords).
        #[arg(long)]
        password_stdin: bool,
        /// Follow the rotation for up to this many seconds, naming the hosts still pending.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// An identity's rotations, newest first.
    Rotations {
        /// Identity id (`idn_…`).
        id: String,
    },
}

/// `identities create`'s options.
#[derive(Args)]
pub struct CreateIdentityArgs {
    /// The vault (name or id) that holds it.
    #[arg(long)]
    vault: String,
    /// Name, unique in the vault: 1–64 of a-z 0-9 . _ - @ (e.g. root@db1).
    #[arg(long, value_parser = name_arg)]
    name: String,
    /// The account name on the hosts (e.g. root, oracle, app).
    #[arg(long, value_parser = username_arg)]
    username: String,
    /// What the credential is: password (rotated by Latch on the linked hosts) or ssh_key (a
    /// private key: stored and handed out, not rotated).
    #[arg(long = "type", value_name = "TYPE", default_value = "password", value_parser = credential_type_arg)]
    credential_type: CredentialType,
    /// Read the credential from standard input: a password from its first line, an SSH key
    /// (--type ssh_key) whole.
    #[arg(long, conflicts_with = "secret_file")]
    secret_stdin: bool,
    /// --type ssh_key: read the private key from this file.
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// Rotate the password every N days (1–3650). Default: no scheduled rotation.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ROTATION_DAYS)))]
    rotation_days: Option<u32>,
    /// Rotate the password at every check-in, so a borrowed password is never valid again.
    #[arg(long)]
    rotate_after_use: bool,
    /// Let up to N people hold it checked out at once (1–100). Default: one at a time.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CONCURRENT_CHECKOUTS)))]
    concurrent: Option<u32>,
    /// A host (name or id) the account lives on; Latch adopts the account there. Repeat for
    /// more.
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
}

/// `identities update`'s options.
#[derive(Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args([
    "name", "rotation_days", "rotate_after_use", "no_rotate_after_use", "concurrent",
    "exclusive", "hosts", "no_hosts",
])))]
pub struct UpdateIdentityArgs {
    /// Identity id (`idn_…`).
    id: String,
    /// New name (the vault-name rules).
    #[arg(long, value_parser = name_arg)]
    name: Option<String>,
    /// Rotate the password every N days (1–3650); 0 turns scheduled rotation off.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_ROTATION_DAYS)))]
    rotation_days: Option<u32>,
    /// Rotate the password at every check-in.
    #[arg(long, conflicts_with = "no_rotate_after_use")]
    rotate_after_use: bool,
    /// Stop rotating the password at every check-in.
    #[arg(long)]
    no_rotate_after_use: bool,
    /// Let up to N people hold it checked out at once (1–100).
    #[arg(long, value_name = "N", conflicts_with = "exclusive", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CONCURRENT_CHECKOUTS)))]
    concurrent: Option<u32>,
    /// One checkout at a time.
    #[arg(long)]
    exclusive: bool,
    /// Link it to exactly these hosts (name or id; repeat for more), replacing the current
    /// set; Latch adopts the account on new ones.
    #[arg(long = "host", value_name = "HOST", conflicts_with = "no_hosts")]
    hosts: Vec<String>,
    /// Unlink every host.
    #[arg(long)]
    no_hosts: bool,
}

/// `identities checkout`'s options.
#[derive(Args)]
pub struct CheckoutArgs {
    /// Identity id (`idn_…`).
    id: String,
    /// Why you need it (1–500 characters, one line): recorded in the audit trail.
    #[arg(long, value_parser = reason_arg)]
    reason: String,
    /// How long (5m to 24h, whole minutes: e.g. 30m, 2h, 1h30m); then it is checked in by
    /// itself.
    #[arg(long = "for", value_name = "DURATION", value_parser = checkout_minutes_arg)]
    minutes: u32,
    /// The host you need it for (name or id; must be linked to the identity).
    #[arg(long)]
    host: Option<String>,
    /// On a terminal, leave the credential on the screen instead of erasing it after 30 s.
    #[arg(long)]
    no_clear: bool,
}

#[derive(Subcommand)]
pub enum RotationsCommand {
    /// Show a rotation: its state (pending until every host confirmed; failed if one failed)
    /// and each host's job.
    ///
    /// Exit status with --wait: 0 confirmed, 1 failed, 2 still pending when the time ran out,
    /// 3 the wait itself failed.
    Show {
        /// Rotation id (`rot_…`).
        rotation_id: String,
        /// Check every second for up to this many seconds until it is no longer pending,
        /// naming the hosts still pending on standard error.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
}

/// `hosts enroll-account`'s options.
#[derive(Args)]
pub struct EnrollAccountArgs {
    /// Host id or host name (its agent must be online).
    host: String,
    /// The existing account on the host (root and system accounts only where the host's agent
    /// config allows them).
    #[arg(long, value_parser = username_arg)]
    user: String,
    /// The vault (name or id) that will hold it.
    #[arg(long)]
    vault: String,
    /// The identity's name (default: USER@HOSTNAME, shortened to the name rules).
    #[arg(long, value_parser = name_arg)]
    name: Option<String>,
    /// Follow the rotation that sets the first password for up to this many seconds (exit 0
    /// confirmed, 1 failed, 2 still pending, 3 the wait itself failed).
    #[arg(long, value_name = "SECONDS")]
    wait: Option<u64>,
}

/// A vault or identity name, checked with the server's rule.
pub(super) fn name_arg(text: &str) -> Result<String, String> {
    latch_common::vault::validate_vault_name("name", text).map_err(|e| e.reason)?;
    Ok(text.to_owned())
}

/// An account name on the hosts (`^[a-z_][a-z0-9_-]{0,31}$`).
fn username_arg(text: &str) -> Result<String, String> {
    latch_common::names::validate_name("username", text).map_err(|e| e.reason)?;
    Ok(text.to_owned())
}

/// A checkout or break-glass reason: 1–500 characters, no control characters.
pub(super) fn reason_arg(text: &str) -> Result<String, String> {
    latch_common::vault::validate_reason(text).map_err(|e| e.reason)?;
    Ok(text.to_owned())
}

fn level_arg(text: &str) -> Result<AccessLevel, String> {
    text.parse()
        .map_err(|e: latch_common::names::ValidationError| e.reason)
}

fn credential_type_arg(text: &str) -> Result<CredentialType, String> {
    text.parse()
        .map_err(|e: latch_common::names::ValidationError| e.reason)
}

/// A checkout's `--for`: a duration in whole minutes, 5m to 24h.
pub fn checkout_minutes_arg(text: &str) -> Result<u32, String> {
    let text = text.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{text:?} has no unit; give e.g. {text}m (minutes) or 2h"
        ));
    }
    let duration = humantime::parse_duration(text).map_err(|_| {
        format!("{text:?} is not a duration; give e.g. 30m, 2h or 1h30m (5m to 24h)")
    })?;
    if duration.subsec_nanos() != 0 || duration.as_secs() % 60 != 0 {
        return Err(format!(
            "{text:?} is not a whole number of minutes; give e.g. 30m, 2h or 1h30m"
        ));
    }
    let minutes = u32::try_from(duration.as_secs() / 60).unwrap_or(u32::MAX);
    latch_common::vault::validate_checkout_minutes(minutes).map_err(|_| {
        format!(
            "{text:?} is outside 5m to 24h; a checkout lasts {} to {} minutes",
            latch_common::vault::MIN_CHECKOUT_MINUTES,
            latch_common::vault::MAX_CHECKOUT_MINUTES
        )
    })?;
    Ok(minutes)
}

/// A grant's `--for`: a positive duration (8h, 30d).
pub fn grant_duration_arg(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let plain = || format!("{text:?} is not a duration; give e.g. 8h, 7d or 30d");
    if text.starts_with('-') {
        return Err(plain());
    }
    let duration = humantime::parse_duration(text).map_err(|_| plain())?;
    if duration < Duration::from_secs(60) {
        return Err(format!(
            "{text:?} is too short; a grant lasts at least a minute (e.g. 8h, 30d)"
        ));
    }
    chrono::Duration::from_std(duration).map_err(|_| format!("{text:?} is too long"))?;
    Ok(duration)
}

/// `--expires-at`: an RFC 3339 time in the future.
fn future_time_arg(text: &str) -> Result<DateTime<Utc>, String> {
    let at = DateTime::parse_from_rfc3339(text.trim())
        .map_err(|_| format!("{text:?} is not an RFC 3339 time; give e.g. 2026-12-31T18:00:00Z"))?
        .with_timezone(&Utc);
    if at <= Utc::now() {
        return Err(format!(
            "{text:?} is in the past; give a time to come, or --for 30d"
        ));
    }
    Ok(at)
}

/// What lists the things of each kind the control plane may say do not exist.
const LISTS: &[(&str, &str)] = &[
    ("vault", "latchctl vaults list"),
    ("identity", "latchctl identities list --vault VAULT"),
    ("grant", "latchctl vaults grants list VAULT"),
    ("checkout", "latchctl identities checkouts IDENTITY"),
    ("rotation", "latchctl identities rotations IDENTITY"),
    ("host", "latchctl hosts list"),
    ("user", "latchctl users list"),
    ("group", "latchctl groups list"),
];

/// Adds to a "does not exist" the command that lists what does, chosen by what the control
/// plane names as missing (`group 'dbas' does not exist`).
pub(super) fn not_found(error: ClientError) -> ClientError {
    match error {
        ClientError::Api {
            status: 404,
            code,
            message,
        } => {
            let kind = message.split_whitespace().next().unwrap_or_default();
            let message = match LISTS.iter().find(|(k, _)| *k == kind) {
                Some((_, list)) if !message.contains("`latchctl ") => {
                    format!("{message}; `{list}` shows which exist")
                }
                _ => message,
            };
            ClientError::Api {
                status: 404,
                code,
                message,
            }
        }
        other => other,
    }
}

/// Names the command-line flag where the control plane names the API field (`field: …`), and
/// adds the command that lists what exists to a "does not exist".
fn in_cli_words(
    flags: &'static [(&'static str, &'static str)],
) -> impl Fn(ClientError) -> ClientError {
    move |error| match not_found(error) {
        ClientError::Api {
            status,
            code,
            message,
        } => {
            let message = flags
                .iter()
                .find_map(|(field, flag)| {
                    message
                        .strip_prefix(&format!("{field}:"))
                        .map(|rest| format!("{flag}:{rest}"))
                })
                .unwrap_or(message);
            ClientError::Api {
                status,
                code,
                message,
            }
        }
        other => other,
    }
}

/// The API fields of an identity and the flags that set them.
const IDENTITY_FLAGS: &[(&str, &str)] = &[
    ("name", "--name"),
    ("username", "--username"),
    ("credential_type", "--type"),
    ("secret", "the credential"),
    ("rotation_interval_days", "--rotation-days"),
    ("max_concurrent_checkouts", "--concurrent"),
    ("hosts", "--host"),
];
/// The API fields of a checkout and the flags that set them.
const CHECKOUT_FLAGS: &[(&str, &str)] = &[
    ("reason", "--reason"),
    ("duration_minutes", "--for"),
    ("host", "--host"),
];
/// The API fields of a grant and the flags that set them.
const GRANT_FLAGS: &[(&str, &str)] = &[
    ("user", "--user"),
    ("group", "--group"),
    ("level", "--level"),
    ("expires_at", "--expires-at/--for"),
];
/// The API fields of a vault and the flags that set them.
const VAULT_FLAGS: &[(&str, &str)] = &[
    ("name", "--name"),
    ("description", "--description"),
    ("organization", "--organization"),
];
const ENROLL_FLAGS: &[(&str, &str)] =
    &[("user", "--user"), ("vault", "--vault"), ("name", "--name")];

/// Adds `hint` to a refusal with HTTP `status`, unless the control plane's message already
/// says what to run.
fn hint_on(status: u16, hint: String) -> impl Fn(ClientError) -> ClientError {
    move |error| match error {
        ClientError::Api {
            status: got,
            code,
            message,
        } if got == status && !message.contains("`latchctl ") => ClientError::Api {
            status,
            code,
            message: format!("{message}; {hint}"),
        },
        other => other,
    }
}

/// Adds what to do next to the refusals of a checkout that are about the identity's state.
fn checkout_hint(id: &str) -> impl Fn(ClientError) -> ClientError {
    hint_on(
        409,
        format!("`latchctl identities checkouts {id}` shows who holds it and until when"),
    )
}

/// Runs a credential-vault command; the exit status tells a followed rotation's end.
pub async fn run(
    client: &AdminClient,
    command: &VaultCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        VaultCommand::Vaults(command) => vaults(client, command, json).await?,
        VaultCommand::SupportAccess(command) => {
            super::vault_settings::support_access(client, command, json).await?
        }
        VaultCommand::Organizations(command) => {
            super::vault_settings::organizations(client, command, json).await?
        }
        VaultCommand::Identities(command) => return identities(client, command, json).await,
        VaultCommand::Rotations(RotationsCommand::Show { rotation_id, wait }) => {
            return match wait {
                Some(seconds) => {
                    let print = |rotation: &RotationView| show_rotation(rotation, json);
                    let wait = Duration::from_secs(*seconds);
                    follow_rotation(client, rotation_id, wait, print).await
                }
                None => {
                    let rotation = client.show_rotation(rotation_id).await.map_err(not_found)?;
                    show_rotation(&rotation, json)?;
                    Ok(ExitCode::SUCCESS)
                }
            };
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn vaults(client: &AdminClient, command: &VaultsCommand, json: bool) -> anyhow::Result<()> {
    match command {
        VaultsCommand::List => {
            let vaults = client.list_vaults().await?;
            if json {
                return print_json(&serde_json::json!({ "list": vaults }));
            }
            print_vaults(&vaults);
        }
        VaultsCommand::Show { vault } => {
            let vault = client.show_vault(vault).await.map_err(not_found)?;
            if json {
                return print_json(&vault);
            }
            print_vault(&vault);
        }
        VaultsCommand::Create {
            name,
            description,
            organization,
        } => {
            let vault = client
                .create_vault(&CreateVaultRequest {
                    name: name.clone(),
                    description: description.clone(),
                    organization: organization.clone(),
                })
                .await
                .map_err(in_cli_words(VAULT_FLAGS))?;
            if json {
                return print_json(&vault);
            }
            print_vaults(std::slice::from_ref(&vault));
            println!(
                "\nAdd an identity: latchctl identities create --vault {} --name NAME --username ACCOUNT --secret-stdin",
                vault.name
            );
        }
        VaultsCommand::Update {
            vault,
            name,
            description,
        } => {
            let vault = client
                .update_vault(
                    vault,
                    &UpdateVaultRequest {
                        name: name.clone(),
                        description: description.clone(),
                    },
                )
                .await
                .map_err(in_cli_words(VAULT_FLAGS))?;
            if json {
                return print_json(&vault);
            }
            print_vaults(std::slice::from_ref(&vault));
        }
        VaultsCommand::Delete { vault } => {
            client
                .delete_vault(vault)
                .await
                .map_err(not_found)
                .map_err(hint_on(
                    409,
                    format!(
                        "delete them first (`latchctl identities list --vault {vault}`, then `latchctl identities delete ID`)"
                    ),
                ))?;
            done(
                json,
                serde_json::json!({ "vault": vault, "deleted": true }),
                &format!("deleted vault {vault}"),
            )?;
        }
        VaultsCommand::Grants(VaultGrantsCommand::List { vault }) => {
            let grants = client.list_vault_grants(vault).await.map_err(not_found)?;
            if json {
                return print_json(&serde_json::json!({ "list": grants }));
            }
            print_vault_grants(&grants);
        }
        VaultsCommand::Grant(args) => {
            let expires_at = match (args.expires_at, args.for_) {
                (Some(at), _) => Some(at),
                (None, Some(duration)) => Some(
                    Utc::now()
                        + chrono::Duration::from_std(duration).context("--for is too long")?,
                ),
                (None, None) => None,
            };
            let grant = client
                .create_vault_grant(
                    &args.vault,
                    &CreateVaultGrantRequest {
                        user: args.user.clone(),
                        group: args.group.clone(),
                        level: args.level,
                        expires_at,
                    },
                )
                .await
                .map_err(in_cli_words(GRANT_FLAGS))?;
            if json {
                return print_json(&grant);
            }
            print_vault_grants(std::slice::from_ref(&grant));
        }
        VaultsCommand::RevokeGrant { vault, grant_id } => {
            client
                .delete_vault_grant(vault, grant_id)
                .await
                .map_err(not_found)?;
            done(
                json,
                serde_json::json!({ "vault": vault, "grant": grant_id, "removed": true }),
                &format!("removed grant {grant_id} of vault {vault}"),
            )?;
        }
    }
    Ok(())
}

async fn identities(
    client: &AdminClient,
    command: &IdentitiesCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        IdentitiesCommand::List { vault } => {
            let identities = client.list_identities(vault).await.map_err(not_found)?;
            if json {
                print_json(&serde_json::json!({ "list": identities }))?;
            } else {
                print_identities(&identities);
            }
        }
        IdentitiesCommand::Show { id } => {
            let identity = client.show_identity(id).await.map_err(not_found)?;
            if json {
                print_json(&identity)?;
            } else {
                print_identity(&identity);
            }
        }
        IdentitiesCommand::Create(args) => {
            let request = create_request(args).await?;
            let identity = client
                .create_identity(&args.vault, &request)
                .await
                .map_err(in_cli_words(IDENTITY_FLAGS))?;
            if json {
                print_json(&identity)?;
            } else {
                print_identity(&identity);
                if !identity.hosts.is_empty() {
                    println!(
                        "\nLatch adopts the account on each host; `latchctl identities show {}` follows it.",
                        identity.id
                    );
                }
            }
        }
        IdentitiesCommand::Update(args) => {
            let identity = client
                .update_identity(&args.id, &update_request(args))
                .await
                .map_err(in_cli_words(IDENTITY_FLAGS))?;
            if json {
                print_json(&identity)?;
            } else {
                print_identity(&identity);
            }
        }
        IdentitiesCommand::Delete { id } => {
            client
                .delete_identity(id)
                .await
                .map_err(not_found)
                .map_err(checkout_hint(id))?;
            done(
                json,
                serde_json::json!({ "identity": id, "deleted": true }),
                &format!("deleted identity {id}; the accounts on its hosts stay"),
            )?;
        }
        IdentitiesCommand::Reveal { id, no_clear } => {
            let secret = client.reveal_identity(id).await.map_err(not_found)?;
            if json {
                print_json(&secret)?;
            } else {
                show_credential(&secret, !*no_clear).await?;
            }
        }
        IdentitiesCommand::Checkout(args) => {
            let granted = client
                .checkout_identity(
                    &args.id,
                    &CheckoutRequest {
                        reason: args.reason.clone(),
                        duration_minutes: args.minutes,
                        host: args.host.clone(),
                    },
                )
                .await
                .map_err(in_cli_words(CHECKOUT_FLAGS))
                .map_err(checkout_hint(&args.id))?;
            show_checkout(&granted, json, !args.no_clear).await?;
        }
        IdentitiesCommand::Checkin { checkout_id, force } => {
            let checkout = client
                .checkin(checkout_id, *force)
                .await
                .map_err(not_found)?;
            if json {
                print_json(&checkout)?;
            } else {
                println!(
                    "checked in {} of identity {}",
                    checkout.id, checkout.identity_id
                );
                if let Some(rotation) = &checkout.rotation_id {
                    println!(
                        "the credential is being rotated: latchctl rotations show {rotation} --wait 60"
                    );
                }
            }
        }
        IdentitiesCommand::Checkouts { id } => {
            let checkouts = client.list_checkouts(id).await.map_err(not_found)?;
            if json {
                print_json(&serde_json::json!({ "list": checkouts }))?;
            } else {
                print_checkouts(&checkouts);
            }
        }
        IdentitiesCommand::BreakGlass {
            id,
            reason,
            no_clear,
        } => {
            eprintln!(
                "WARNING: break-glass access to identity {id} is audited as CRITICAL and every account admin is notified now, with your reason. Use it only in an emergency."
            );
            let granted = client
                .break_glass(
                    id,
                    &BreakGlassRequest {
                        reason: reason.clone(),
                    },
                )
                .await
                .map_err(in_cli_words(CHECKOUT_FLAGS))?;
            show_checkout(&granted, json, !*no_clear).await?;
        }
        IdentitiesCommand::Rotate {
            id,
            password_stdin,
            wait,
        } => {
            let password = if *password_stdin {
                Some(stdin_password("--password-stdin")?)
            } else {
                None
            };
            let rotation = client
                .rotate_identity(id, &RotateRequest { password })
                .await
                .map_err(in_cli_words(&[("password", "--password-stdin")]))
                .map_err(checkout_hint(id))?;
            let print = |rotation: &RotationView| show_rotation(rotation, json);
            return after_rotation_started(client, &rotation, *wait, json, print).await;
        }
        IdentitiesCommand::Rotations { id } => {
            let rotations = client.list_rotations(id).await.map_err(not_found)?;
            if json {
                print_json(&serde_json::json!({ "list": rotations }))?;
            } else {
                print_rotations(&rotations);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `hosts enroll-account`: adopts an existing account into a vault; with --wait, follows the
/// rotation that sets its first password.
pub async fn enroll_account(
    client: &AdminClient,
    args: &EnrollAccountArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let enrolled = client
        .enroll_account(
            &args.host,
            &EnrollAccountRequest {
                user: args.user.clone(),
                vault: args.vault.clone(),
                name: args.name.clone(),
            },
        )
        .await
        .map_err(in_cli_words(ENROLL_FLAGS))?;
    let identity = enrolled.identity;
    // Both, as JSON: the identity and the rotation as it is at the end.
    let print = |rotation: &RotationView| {
        if json {
            return print_json(&serde_json::json!({ "identity": identity, "rotation": rotation }));
        }
        print_identity(&identity);
        println!();
        show_rotation(rotation, false)
    };
    after_rotation_started(client, &enrolled.rotation, args.wait, json, print).await
}

/// Prints a rotation just started with `print`, or follows it for `wait` seconds first.
async fn after_rotation_started(
    client: &AdminClient,
    rotation: &RotationView,
    wait: Option<u64>,
    json: bool,
    print: impl FnOnce(&RotationView) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    match wait {
        Some(seconds) => {
            follow_rotation(client, &rotation.id, Duration::from_secs(seconds), print).await
        }
        None => {
            print(rotation)?;
            if !json && rotation.state == "pending" {
                println!(
                    "\nFollow it with: latchctl rotations show {} --wait 60",
                    rotation.id
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Checks a rotation every second until it is no longer pending or `wait` is over, naming the
/// hosts still pending on standard error; prints it with `print` at the end. Exit 0 confirmed,
/// 1 failed, 2 still pending, 3 when the control plane could not be asked.
async fn follow_rotation(
    client: &AdminClient,
    id: &str,
    wait: Duration,
    print: impl FnOnce(&RotationView) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut last_waiting: Option<Vec<String>> = None;
    let rotation = loop {
        let rotation = match client.show_rotation(id).await {
            Ok(rotation) => rotation,
            Err(ClientError::Api { status: 429, .. }) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error @ ClientError::Api { status: 404, .. }) => {
                return Err(not_found(error).into());
            }
            Err(error) => {
                eprintln!(
                    "error: cannot follow rotation {id}: {error}; look again with `latchctl rotations show {id}`"
                );
                return Ok(ExitCode::from(WAIT_BROKE));
            }
        };
        let elapsed = started.elapsed();
        if rotation.state != "pending" || elapsed >= wait {
            break rotation;
        }
        if last_waiting.as_ref() != Some(&rotation.waiting_for) {
            eprintln!(
                "rotation {id}: pending, waiting for {} ({}s elapsed)",
                waiting_text(&rotation),
                elapsed.as_secs()
            );
            last_waiting = Some(rotation.waiting_for.clone());
        }
        tokio::time::sleep(Duration::from_secs(1).min(wait.saturating_sub(elapsed))).await;
    };
    print(&rotation)?;
    Ok(match rotation.state.as_str() {
        "confirmed" => ExitCode::SUCCESS,
        "pending" => {
            eprintln!(
                "rotation {id} is still pending after {}s, waiting for {}: is the agent on those hosts running (`latchctl hosts list` shows ONLINE)? Look again with `latchctl rotations show {id} --wait 60`",
                wait.as_secs(),
                waiting_text(&rotation)
            );
            ExitCode::from(ROTATION_PENDING)
        }
        _ => {
            eprintln!(
                "rotation {id} failed: the previous credential is kept and still valid; the hosts' errors say why — fix the host, then `latchctl identities rotate {}` again",
                rotation.identity_id
            );
            ExitCode::from(ROTATION_FAILED)
        }
    })
}

pub(super) fn waiting_text(rotation: &RotationView) -> String {
    if rotation.waiting_for.is_empty() {
        "its jobs to be queued".to_owned()
    } else {
        rotation.waiting_for.join(", ")
    }
}

/// Builds `identities create`'s request, reading the credential from where the flags say.
async fn create_request(args: &CreateIdentityArgs) -> anyhow::Result<CreateIdentityRequest> {
    if args.hosts.len() > MAX_LINKED_HOSTS {
        bail!(
            "--host is given {} times; an identity is linked to at most {MAX_LINKED_HOSTS} hosts",
            args.hosts.len()
        );
    }
    let secret = match args.credential_type {
        CredentialType::Password => {
            if args.secret_file.is_some() {
                bail!(
                    "--secret-file is for SSH keys (--type ssh_key); give a password with --secret-stdin or at the prompt"
                );
            }
            if args.secret_stdin {
                Some(stdin_password("--secret-stdin")?)
            } else if !args.hosts.is_empty() {
                // Latch makes one and sets it on the hosts.
                None
            } else if terminal::interactive() {
                Some(
                    terminal::password(
                        false,
                        &format!("Current password of {}: ", args.username),
                        true,
                    )
                    .await?,
                )
            } else {
                bail!(
                    "no password given, and standard input is not a terminal to ask at: pipe it in with --secret-stdin, or link hosts with --host and Latch makes one"
                );
            }
        }
        CredentialType::SshKey => {
            let key = match (&args.secret_file, args.secret_stdin) {
                (Some(path), _) => std::fs::read_to_string(path).with_context(|| {
                    format!(
                        "cannot read the private key file {} (it must be readable text, e.g. an OpenSSH private key)",
                        path.display()
                    )
                })?,
                (None, true) => {
                    let mut key = String::new();
                    std::io::stdin()
                        .read_to_string(&mut key)
                        .context("cannot read the private key from standard input")?;
                    key
                }
                (None, false) => bail!(
                    "an ssh_key identity needs its private key: give --secret-file PATH, or pipe it in with --secret-stdin"
                ),
            };
            if key.trim().is_empty() {
                bail!("the private key given is empty; give the key file's contents");
            }
            Some(key)
        }
    };
    if let Some(secret) = &secret
        && secret.len() > MAX_SECRET_BYTES
    {
        bail!(
            "the credential is {} bytes long; at most {MAX_SECRET_BYTES} are stored",
            secret.len()
        );
    }
    Ok(CreateIdentityRequest {
        name: args.name.clone(),
        username: args.username.clone(),
        credential_type: args.credential_type,
        secret,
        rotation_interval_days: args.rotation_days,
        rotate_after_use: args.rotate_after_use,
        concurrent_checkout: args.concurrent.is_some(),
        max_concurrent_checkouts: args.concurrent,
        hosts: args.hosts.clone(),
    })
}

/// Builds `identities update`'s request: only what the flags change.
fn update_request(args: &UpdateIdentityArgs) -> UpdateIdentityRequest {
    let switch = |on: bool, off: bool| match (on, off) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let hosts = if args.no_hosts {
        Some(Vec::new())
    } else if args.hosts.is_empty() {
        None
    } else {
        Some(args.hosts.clone())
    };
    UpdateIdentityRequest {
        name: args.name.clone(),
        rotation_interval_days: args.rotation_days,
        rotate_after_use: switch(args.rotate_after_use, args.no_rotate_after_use),
        concurrent_checkout: switch(args.concurrent.is_some(), args.exclusive),
        max_concurrent_checkouts: args.concurrent,
        hosts,
    }
}

/// A password from the first line of standard input (`flag` names where it was asked for).
fn stdin_password(flag: &str) -> anyhow::Result<String> {
    let password = terminal::first_line("password")?;
    if password.is_empty() {
        bail!("{flag}: standard input held no password (give it on the first line)");
    }
    if password.len() > MAX_SECRET_BYTES {
        bail!("{flag}: the password is longer than {MAX_SECRET_BYTES} bytes");
    }
    Ok(password)
}

#[cfg(test)]
#[path = "vault_tests.rs"]
mod tests;
