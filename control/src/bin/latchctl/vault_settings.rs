//! `latchctl organizations` and `latchctl support-access`: the vault's organization-wide
//! settings — organizations (own data key, break-glass duration) and support access.

use anyhow::bail;
use clap::Subcommand;
use latch_common::vault::{
    CreateOrganizationRequest, EmergencyDisableRequest, EnableSupportAccessRequest,
    OrganizationView, UpdateOrganizationRequest,
};
use latch_control::client::AdminClient;

use super::people::{maybe_time, time};
use super::{print_json, print_table};

use super::vault::{name_arg, not_found, reason_arg};

#[derive(Subcommand)]
pub enum OrganizationsCommand {
    /// Every organization with its break-glass duration and its number of vaults.
    List,
    /// Make an organization with a data key of its own (audited).
    Create {
        /// Name: 1–64 of a-z 0-9 . _ - @, starting with a letter or digit.
        #[arg(value_parser = name_arg)]
        name: String,
    },
    /// Change an organization's settings (audited).
    Update {
        /// Organization name or id.
        organization: String,
        /// How long its break-glass checkouts last before they are checked in and rotated
        /// (1m to 24h, e.g. 30m, 2h).
        #[arg(long, value_parser = break_glass_arg, conflicts_with = "default_break_glass")]
        break_glass_duration: Option<u32>,
        /// Use the server's --break-glass-duration again.
        #[arg(long)]
        default_break_glass: bool,
    },
}

/// A break-glass duration in whole minutes, 1m to 24h.
fn break_glass_arg(text: &str) -> Result<u32, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (e.g. 30m, 2h)"))?;
    let minutes = duration.as_secs() / 60;
    if duration.as_secs() % 60 != 0 || !(1..=1440).contains(&minutes) {
        return Err(format!(
            "{text:?}: a break-glass lasts whole minutes, 1m to 24h"
        ));
    }
    u32::try_from(minutes).map_err(|_| format!("{text:?} is too long"))
}

#[derive(Subcommand)]
pub enum SupportAccessCommand {
    /// Every period of support access, newest first, and whether it is in force.
    List,
    /// Let the support group in (audited).
    Enable {
        /// Why (1–500 characters), e.g. the vendor's ticket.
        #[arg(long, value_parser = reason_arg)]
        reason: String,
        /// How many days it lasts (1–365); without it, until disabled.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=365))]
        days: Option<u32>,
        /// The organization (default: default).
        #[arg(long)]
        organization: Option<String>,
    },
    /// End one period of support access (audited).
    Disable {
        /// Its id (`sa_…`, see `latchctl support-access list`).
        id: String,
    },
    /// End every period of support access at once (audited as critical; no step-up needed).
    EmergencyDisable {
        /// Why (1–500 characters).
        #[arg(long, value_parser = reason_arg)]
        reason: String,
    },
}

pub(super) async fn organizations(
    client: &AdminClient,
    command: &OrganizationsCommand,
    json: bool,
) -> anyhow::Result<()> {
    let print = |organizations: &[OrganizationView]| {
        let rows = organizations
            .iter()
            .map(|o| {
                vec![
                    o.name.clone(),
                    o.id.clone(),
                    o.vaults.to_string(),
                    format!(
                        "{}m{}",
                        o.break_glass_minutes,
                        if o.break_glass_default {
                            " (server default)"
                        } else {
                            ""
                        }
                    ),
                    time(o.created_at),
                ]
            })
            .collect();
        print_table(&["NAME", "ID", "VAULTS", "BREAK-GLASS", "CREATED"], rows);
    };
    let organization = match command {
        OrganizationsCommand::List => {
            let list = client.list_organizations().await?;
            if json {
                return print_json(&serde_json::json!({ "list": list }));
            }
            print(&list);
            return Ok(());
        }
        OrganizationsCommand::Create { name } => {
            client
                .create_organization(&CreateOrganizationRequest { name: name.clone() })
                .await?
        }
        OrganizationsCommand::Update {
            organization,
            break_glass_duration,
            default_break_glass,
        } => {
            let minutes = match (break_glass_duration, default_break_glass) {
                (Some(minutes), _) => Some(*minutes),
                (None, true) => Some(0),
                (None, false) => bail!(
                    "nothing to change: give --break-glass-duration DURATION or --default-break-glass"
                ),
            };
            client
                .update_organization(
                    organization,
                    &UpdateOrganizationRequest {
                        break_glass_minutes: minutes,
                    },
                )
                .await
                .map_err(not_found)?
        }
    };
    if json {
        return print_json(&organization);
    }
    print(std::slice::from_ref(&organization));
    Ok(())
}

pub(super) async fn support_access(
    client: &AdminClient,
    command: &SupportAccessCommand,
    json: bool,
) -> anyhow::Result<()> {
    match command {
        SupportAccessCommand::List => {
            let list = client.list_support_access().await?;
            if json {
                return print_json(&serde_json::json!({ "list": list }));
            }
            let rows = list
                .iter()
                .map(|a| {
                    vec![
                        a.id.clone(),
                        a.organization.clone(),
                        if a.active { "IN FORCE" } else { "ended" }.to_owned(),
                        time(a.enabled_at),
                        maybe_time(a.expires_at, "until disabled"),
                        a.enabled_by.clone(),
                        a.reason.clone(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "ORGANIZATION",
                    "STATE",
                    "ENABLED",
                    "ENDS",
                    "BY",
                    "REASON",
                ],
                rows,
            );
        }
        SupportAccessCommand::Enable {
            reason,
            days,
            organization,
        } => {
            let access = client
                .enable_support_access(&EnableSupportAccessRequest {
                    reason: reason.clone(),
                    days: *days,
                    organization: organization.clone(),
                })
                .await?;
            if json {
                return print_json(&access);
            }
            println!(
                "support access {} enabled for organization {} ({}); members of latch-support now see its vaults' metadata",
                access.id,
                access.organization,
                maybe_time(access.expires_at, "until disabled")
            );
        }
        SupportAccessCommand::Disable { id } => {
            client.disable_support_access(id).await.map_err(not_found)?;
            if json {
                return print_json(&serde_json::json!({ "id": id, "disabled": true }));
            }
            println!("support access {id} ended");
        }
        SupportAccessCommand::EmergencyDisable { reason } => {
            let ended = client
                .emergency_disable_support_access(&EmergencyDisableRequest {
                    reason: reason.clone(),
                })
                .await?;
            if json {
                return print_json(&ended);
            }
            println!(
                "{} support access period(s) ended; the support group sees nothing now",
                ended.disabled
            );
        }
    }
    Ok(())
}
