//! `latchctl policies`: just-in-time access policies (issue 12), over `/v1/policies`.

use anyhow::bail;
use clap::{Args, Subcommand};
use latch_common::access::{AccessKind, PolicyRequest, PolicyView, TimeWindow};
use latch_control::client::AdminClient;

use super::people::time;
use super::{print_json, print_table};

/// Access policies: which group may request which access on which hosts, for how long, and
/// who approves. Reading needs `policies.manage` or `access.view`; changes `policies.manage`
/// (security_admin) and the `change_policy` MFA step-up.
#[derive(Subcommand)]
pub enum PoliciesCommand {
    /// Every policy.
    List,
    /// One policy, every field.
    Show {
        /// Policy name or id.
        policy: String,
    },
    /// Write a new policy (audited).
    Create(PolicyArgs),
    /// Replace a policy's every field (audited); flags left out take their defaults again.
    Update {
        /// Policy name or id.
        policy: String,
        #[command(flatten)]
        args: PolicyArgs,
    },
    /// Delete a policy (audited); requests it allowed are not changed.
    Delete {
        /// Policy name or id.
        policy: String,
    },
}

/// A policy's fields.
#[derive(Args)]
pub struct PolicyArgs {
    /// Name: 1–64 of a-z 0-9 . _ - @ (on update: the new name; default the old one).
    #[arg(long)]
    name: Option<String>,
    /// What it is for.
    #[arg(long, default_value = "")]
    description: String,
    /// The group whose members (people and service users) may request.
    #[arg(long)]
    group: String,
    /// What they may request: ephemeral-account, sudo (repeat or comma-separate).
    #[arg(long, value_delimiter = ',', required = true, value_parser = access_arg)]
    access: Vec<AccessKind>,
    /// On which hosts: a label selector, e.g. env=prod,team=db (never empty).
    #[arg(long)]
    hosts: String,
    /// The longest window a request may ask for (e.g. 2h, 30m; at most 7d).
    #[arg(long, value_parser = minutes_arg)]
    max: u32,
    /// The group whose members approve (never the requester).
    #[arg(long, required_unless_present = "no_approval")]
    approver_group: Option<String>,
    /// How many different approvers must approve (1–10).
    #[arg(long, default_value_t = 1)]
    approvals: u32,
    /// Requests are approved at once (no approver).
    #[arg(long, conflicts_with = "approver_group")]
    no_approval: bool,
    /// Service users' requests up to this long are approved at once (e.g. 15m).
    #[arg(long, value_parser = minutes_arg)]
    auto_approve_service: Option<u32>,
    /// When requests are allowed, UTC: DAYS/HH:MM-HH:MM, e.g. mon,tue,wed,thu,fri/08:00-18:00
    /// (repeatable; none: always).
    #[arg(long = "window", value_parser = window_arg)]
    windows: Vec<TimeWindow>,
    /// One holder at a time per host and access.
    #[arg(long)]
    exclusive: bool,
    /// A second factor at request time.
    #[arg(long)]
    mfa_at_request: bool,
    /// A second factor at approval time.
    #[arg(long)]
    mfa_at_approval: bool,
    /// The holder re-confirms with a second factor this often (5m–24h), or the grant ends.
    #[arg(long, value_parser = minutes_arg)]
    reauth: Option<u32>,
}

pub(super) fn access_arg(text: &str) -> Result<AccessKind, String> {
    text.parse()
        .map_err(|e: latch_common::names::ValidationError| e.reason)
}

/// A duration in whole minutes.
pub(super) fn minutes_arg(text: &str) -> Result<u32, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (e.g. 30m, 2h)"))?;
    if duration.as_secs() % 60 != 0 || duration.as_secs() == 0 {
        return Err(format!("{text:?}: give whole minutes (e.g. 30m, 2h)"));
    }
    u32::try_from(duration.as_secs() / 60).map_err(|_| format!("{text:?} is too long"))
}

/// `DAYS/HH:MM-HH:MM`.
fn window_arg(text: &str) -> Result<TimeWindow, String> {
    let (days, hours) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: write DAYS/HH:MM-HH:MM, e.g. mon,tue/08:00-18:00"))?;
    let (start, end) = hours
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: the hours are HH:MM-HH:MM"))?;
    let window = TimeWindow {
        days: days.split(',').map(str::to_owned).collect(),
        start: start.to_owned(),
        end: end.to_owned(),
    };
    window.validate().map_err(|e| e.reason)?;
    Ok(window)
}

impl PolicyArgs {
    fn request(&self, name: String) -> PolicyRequest {
        PolicyRequest {
            name,
            description: self.description.clone(),
            group: self.group.clone(),
            access: self.access.clone(),
            hosts: self.hosts.clone(),
            max_minutes: self.max,
            approval_required: !self.no_approval,
            approver_group: self.approver_group.clone(),
            approvals: self.approvals,
            auto_approve_service_minutes: self.auto_approve_service,
            windows: self.windows.clone(),
            exclusive: self.exclusive,
            mfa_at_request: self.mfa_at_request,
            mfa_at_approval: self.mfa_at_approval,
            reauth_minutes: self.reauth,
        }
    }
}

fn approval(p: &PolicyView) -> String {
    match (&p.approver_group, p.approval_required) {
        (Some(group), true) => format!("{} of {group}", p.approvals),
        _ => "none".to_owned(),
    }
}

fn print_policy(p: &PolicyView) {
    let access: Vec<&str> = p.access.iter().map(|a| a.as_str()).collect();
    let windows: Vec<String> = p
        .windows
        .iter()
        .map(|w| format!("{}/{}-{}", w.days.join(","), w.start, w.end))
        .collect();
    println!("policy:            {} ({})", p.name, p.id);
    println!("description:       {}", p.description);
    println!("group:             {}", p.group);
    println!("access:            {}", access.join(", "));
    println!("hosts:             {}", p.hosts);
    println!("max:               {} min", p.max_minutes);
    println!("approval:          {}", approval(p));
    println!(
        "service auto-ok:   {}",
        p.auto_approve_service_minutes
            .map_or("-".to_owned(), |m| format!("up to {m} min"))
    );
    println!(
        "windows (UTC):     {}",
        if windows.is_empty() {
            "always".to_owned()
        } else {
            windows.join("; ")
        }
    );
    println!(
        "exclusive:         {}",
        if p.exclusive { "yes" } else { "no" }
    );
    println!(
        "MFA:               request {}, approval {}",
        if p.mfa_at_request { "yes" } else { "no" },
        if p.mfa_at_approval { "yes" } else { "no" }
    );
    println!(
        "re-confirm:        {}",
        p.reauth_minutes
            .map_or("-".to_owned(), |m| format!("every {m} min"))
    );
    println!("updated:           {}", time(p.updated_at));
}

/// Runs a `policies` command.
pub async fn run(
    client: &AdminClient,
    command: &PoliciesCommand,
    json: bool,
) -> anyhow::Result<()> {
    let policy = match command {
        PoliciesCommand::List => {
            let list = client.list_policies().await?;
            if json {
                return print_json(&serde_json::json!({ "list": list }));
            }
            let rows = list
                .iter()
                .map(|p| {
                    let access: Vec<&str> = p.access.iter().map(|a| a.as_str()).collect();
                    vec![
                        p.name.clone(),
                        p.group.clone(),
                        access.join(","),
                        p.hosts.clone(),
                        format!("{}m", p.max_minutes),
                        approval(p),
                    ]
                })
                .collect();
            print_table(
                &["NAME", "GROUP", "ACCESS", "HOSTS", "MAX", "APPROVAL"],
                rows,
            );
            return Ok(());
        }
        PoliciesCommand::Show { policy } => client.show_policy(policy).await?,
        PoliciesCommand::Create(args) => {
            let Some(name) = args.name.clone() else {
                bail!("a new policy needs --name");
            };
            client.create_policy(&args.request(name)).await?
        }
        PoliciesCommand::Update { policy, args } => {
            let name = args.name.clone().unwrap_or_else(|| policy.clone());
            client.replace_policy(policy, &args.request(name)).await?
        }
        PoliciesCommand::Delete { policy } => {
            client.delete_policy(policy).await?;
            if json {
                return print_json(&serde_json::json!({ "policy": policy, "deleted": true }));
            }
            println!("policy {policy} deleted");
            return Ok(());
        }
    };
    if json {
        return print_json(&policy);
    }
    print_policy(&policy);
    Ok(())
}
