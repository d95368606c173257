//! `latchctl users|groups|roles|service-users|mfa` and `login --local`: people and permissions,
//! a thin layer over the `/v1/users`, `/v1/groups`, `/v1/roles`, `/v1/role-bindings`,
//! `/v1/service-users`, `/v1/mfa/totp` and `/v1/login/local` endpoints.

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Subcommand};
use latch_common::authz::Role;
use latch_common::people::{
    ApiKeyView, BindRoleRequest, CreateGroupRequest, CreateServiceUserRequest, CreateUserRequest,
    GroupView, LocalLoginRequest, NewApiKeyResponse, PrincipalView, RoleBindingView, SubjectKind,
};
use latch_control::client::AdminClient;

use super::terminal;
use super::{print_json, print_table};

/// The people-and-permissions commands (flattened into `latchctl`'s own).
#[derive(Subcommand)]
pub enum PeopleCommand {
    /// People: signed in through the identity provider, or with a local password. Changes need
    /// `users.manage` and, for a person, a recent second factor (`latchctl mfa verify`).
    #[command(subcommand)]
    Users(UsersCommand),
    /// Groups of users and service users; roles bound to a group apply to its members.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// The five roles, and who has which (role bindings).
    #[command(subcommand)]
    Roles(RolesCommand),
    /// Non-human principals (pipelines, bots, AI agents) that authenticate with API keys.
    #[command(subcommand)]
    ServiceUsers(ServiceUsersCommand),
    /// Your second factor (TOTP): enroll it, and show a code before sensitive actions. Uses the
    /// session of `latchctl login` (or --token).
    #[command(subcommand)]
    Mfa(MfaCommand),
}

#[derive(Subcommand)]
pub enum UsersCommand {
    /// List users.
    List,
    /// Show one user with their groups and roles.
    Show {
        /// Login name or id.
        name: String,
    },
    /// Create a user. Without a password the user signs in through the identity provider only.
    Create {
        /// Login name: 1–64 of a-z 0-9 . _ - @.
        name: String,
        /// Name to show (default: the login name).
        #[arg(long)]
        display_name: Option<String>,
        /// E-mail address.
        #[arg(long)]
        email: Option<String>,
        /// Give a local password, asked at a prompt that does not echo (typed twice).
        #[arg(long, conflicts_with = "password_stdin")]
        password: bool,
        /// Give a local password, read from the first line of standard input (for scripts).
        /// Passwords are never taken from the command line.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's local password (asked twice at a prompt that does not echo, or read from
    /// standard input), or remove it with --remove; every session of theirs ends at once.
    SetPassword {
        /// Login name or id.
        name: String,
        /// Read the password from the first line of standard input (for scripts).
        #[arg(long, conflicts_with = "remove")]
        password_stdin: bool,
        /// Remove the local password: the user signs in through the identity provider only.
        #[arg(long)]
        remove: bool,
    },
    /// Disable a user: every session of theirs ends at once and they cannot sign in.
    Disable {
        /// Login name or id.
        name: String,
    },
    /// Allow a disabled user to sign in again.
    Enable {
        /// Login name or id.
        name: String,
    },
}

#[derive(Subcommand)]
pub enum GroupsCommand {
    /// List groups.
    List,
    /// Show one group with its members.
    Show {
        /// Group name or id.
        name: String,
    },
    /// Create a group.
    Create {
        /// Name: 1–64 of a-z 0-9 . _ - @.
        name: String,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// The identity provider's group (a value of the groups claim) whose members join this
        /// group at each single sign-on.
        #[arg(long)]
        idp_group: Option<String>,
    },
    /// Delete a group (its members lose the roles bound to it).
    Delete {
        /// Group name or id.
        name: String,
    },
    /// Add a user or service user to a group.
    AddMember {
        /// Group name or id.
        group: String,
        /// User or service user (name or id).
        member: String,
    },
    /// Remove a user or service user from a group.
    RemoveMember {
        /// Group name or id.
        group: String,
        /// User or service user (name or id).
        member: String,
    },
}

#[derive(Subcommand)]
pub enum RolesCommand {
    /// The five roles and the permissions each gives.
    List,
    /// Who has which role: every role binding.
    Bindings,
    /// Give a role to a user, a service user or a group.
    #[command(group(ArgGroup::new("subject").required(true).args(["user", "service_user", "group"])))]
    Bind {
        /// The role.
        #[arg(value_parser = parse_role)]
        role: Role,
        /// To this user (name or id).
        #[arg(long)]
        user: Option<String>,
        /// To this service user (name or id).
        #[arg(long)]
        service_user: Option<String>,
        /// To this group (name or id): its members get the role.
        #[arg(long)]
        group: Option<String>,
        /// delegated_resource_admin only: the hosts it covers, as a label selector such as
        /// `team=db` or `env=prod,team in (db,web)`.
        #[arg(long)]
        selector: Option<String>,
    },
    /// Remove a role binding (its id is in `latchctl roles bindings`).
    Unbind {
        /// Role binding id (`rb_…`).
        binding_id: String,
    },
}

#[derive(Subcommand)]
pub enum ServiceUsersCommand {
    /// List service users.
    List,
    /// Show one service user with its groups and roles.
    Show {
        /// Name or id.
        name: String,
    },
    /// Create a service user and its first API key, printed once.
    Create {
        /// Name: 1–64 of a-z 0-9 . _ - @.
        name: String,
        /// A role to bind at once (repeatable). delegated_resource_admin needs a selector: bind
        /// it afterwards with `latchctl roles bind … --selector`.
        #[arg(long = "role", value_parser = parse_role)]
        roles: Vec<Role>,
    },
    /// Disable a service user: every token of it ends at once and its keys stop working.
    Disable {
        /// Name or id.
        name: String,
    },
    /// Allow a disabled service user again (its unrevoked keys work again).
    Enable {
        /// Name or id.
        name: String,
    },
    /// A service user's API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// List a service user's keys: id, created, last used, revoked (never the keys).
    List {
        /// Service user (name or id).
        name: String,
    },
    /// Make another key (to rotate: make one, switch the pipeline to it, revoke the old one).
    Create {
        /// Service user (name or id).
        name: String,
    },
    /// Revoke a key: it and every token made from it stop working at once.
    Revoke {
        /// Service user (name or id).
        name: String,
        /// Key id (from `latchctl service-users keys list`).
        key_id: String,
    },
}

#[derive(Subcommand)]
pub enum MfaCommand {
    /// Enroll a TOTP factor: prints a QR code and the otpauth:// URI for an authenticator app,
    /// then asks for the app's first code (on a terminal) to confirm it. A first factor is
    /// enrolled within 10 minutes of signing in; replacing one needs `mfa verify` first.
    Enroll,
    /// Show a code from the authenticator app (step-up): sensitive actions in this session
    /// work for the next 10 minutes. Also confirms a new enrollment.
    Verify {
        /// The 6-digit code; asked for when not given.
        code: Option<String>,
    },
}

/// `login --local`'s options.
#[derive(Args)]
pub struct LocalLoginArgs {
    /// Sign in as this local user with their Latch password (no identity provider), asked at a
    /// prompt that does not echo.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["device", "no_browser"])]
    pub local: Option<String>,
    /// With --local: read the password from the first line of standard input instead.
    #[arg(long, requires = "local")]
    pub password_stdin: bool,
}

/// A role name as the API spells it (`pam_admin`, …), for clap.
fn parse_role(text: &str) -> Result<Role, String> {
    text.parse::<Role>().map_err(|_| {
        let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("unknown role {text:?}; the roles are {}", names.join(", "))
    })
}

/// A time as people read it (UTC, to the second).
pub(super) fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// [`time`], or `none` when there is none.
pub(super) fn maybe_time(at: Option<DateTime<Utc>>, none: &str) -> String {
    at.map_or_else(|| none.to_owned(), time)
}

fn status(disabled_at: Option<DateTime<Utc>>) -> String {
    match disabled_at {
        Some(at) => format!("disabled {}", time(at)),
        None => "enabled".to_owned(),
    }
}

/// How a user signs in: through the identity provider, with a local password, both, or not.
fn sign_in(user: &PrincipalView) -> &'static str {
    match (user.idp_issuer.is_some(), user.local_password) {
        (true, true) => "sso+local",
        (true, false) => "sso",
        (false, true) => "local",
        (false, false) => "sso (not yet)",
    }
}

fn print_users(users: &[PrincipalView]) {
    let rows = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.display_name.clone(),
                u.email.clone().unwrap_or_default(),
                sign_in(u).to_owned(),
                status(u.disabled_at),
                maybe_time(u.last_seen_at, "never"),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "DISPLAY NAME",
            "EMAIL",
            "SIGN-IN",
            "STATUS",
            "LAST SEEN",
        ],
        rows,
    );
}

fn print_service_users(users: &[PrincipalView]) {
    let rows = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                status(u.disabled_at),
                maybe_time(u.last_seen_at, "never"),
                time(u.created_at),
            ]
        })
        .collect();
    print_table(&["NAME", "STATUS", "LAST SEEN", "CREATED"], rows);
}

fn print_principal(p: &PrincipalView) {
    let list = |items: &[String]| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(", ")
        }
    };
    println!("name:          {}", p.name);
    println!("id:            {}", p.id);
    println!("kind:          {}", p.kind);
    if p.kind == "user" {
        println!("display name:  {}", p.display_name);
        println!("email:         {}", p.email.as_deref().unwrap_or("-"));
        println!("sign-in:       {}", sign_in(p));
        if let Some(issuer) = &p.idp_issuer {
            println!("issuer:        {issuer}");
        }
    }
    println!("status:        {}", status(p.disabled_at));
    println!("groups:        {}", list(&p.groups));
    println!("roles:         {}", list(&p.roles));
    println!("created:       {}", time(p.created_at));
    println!("last seen:     {}", maybe_time(p.last_seen_at, "never"));
}

fn print_groups(groups: &[GroupView]) {
    let rows = groups
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                g.description.clone(),
                g.idp_group.clone().unwrap_or_default(),
                time(g.created_at),
            ]
        })
        .collect();
    print_table(&["NAME", "DESCRIPTION", "IDP GROUP", "CREATED"], rows);
}

fn print_bindings(bindings: &[RoleBindingView]) {
    let rows = bindings
        .iter()
        .map(|b| {
            let kind = match b.subject_kind {
                SubjectKind::Principal if b.subject_id.starts_with("svc_") => "service user",
                SubjectKind::Principal => "user",
                SubjectKind::Group => "group",
            };
            let name = if b.subject_name.is_empty() {
                format!("{} (gone)", b.subject_id)
            } else {
                b.subject_name.clone()
            };
            vec![
                b.id.clone(),
                b.role.to_string(),
                format!("{kind} {name}"),
                b.selector.clone().unwrap_or_default(),
                time(b.created_at),
            ]
        })
        .collect();
    print_table(&["ID", "ROLE", "GIVEN TO", "SELECTOR", "CREATED"], rows);
}

fn print_keys(keys: &[ApiKeyView]) {
    let rows = keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                time(k.created_at),
                maybe_time(k.last_used_at, "never"),
                maybe_time(k.revoked_at, "-"),
            ]
        })
        .collect();
    print_table(&["KEY ID", "CREATED", "LAST USED", "REVOKED"], rows);
}

/// Prints a new API key once, with what to do with it.
fn print_new_key(key: &NewApiKeyResponse, server: &str) {
    println!(
        "API key of service user {} (key id {}), shown only now — store it in the pipeline's secret store:\n\n  {}\n",
        key.service_user, key.key_id, key.api_key
    );
    println!(
        "A pipeline gives it to latchctl as its token (latchctl exchanges it for a bearer token of\n\
         one hour by itself); keep it out of command lines and logs:\n\n  \
         export LATCH_TOKEN=\"$LATCH_API_KEY\"   # from the secret store\n  \
         latchctl --server {server} hosts list\n\n\
         Or exchange it yourself: POST /v1/service_token {{\"api_key\": \"…\"}} answers {{\"token\", \"expires_at\"}}.\n\
         Revoke it with: latchctl service-users keys revoke {} {}",
        key.service_user, key.key_id
    );
}

/// A JSON acknowledgement for a change the API answers with no body.
pub(super) fn done(json: bool, value: serde_json::Value, text: &str) -> anyhow::Result<()> {
    if json {
        print_json(&value)
    } else {
        println!("{text}");
        Ok(())
    }
}

/// Runs a people command other than `mfa` with the admin client.
pub async fn run(
    client: &AdminClient,
    command: &PeopleCommand,
    json: bool,
    server: &str,
) -> anyhow::Result<()> {
    match command {
        PeopleCommand::Users(command) => users(client, command, json).await,
        PeopleCommand::Groups(command) => groups(client, command, json).await,
        PeopleCommand::Roles(command) => roles(client, command, json).await,
        PeopleCommand::ServiceUsers(command) => service_users(client, command, json, server).await,
        PeopleCommand::Mfa(command) => mfa(client, command, json).await,
    }
}

async fn users(client: &AdminClient, command: &UsersCommand, json: bool) -> anyhow::Result<()> {
    match command {
        UsersCommand::List => {
            let users = client.list_users().await?;
            if json {
                return print_json(&serde_json::json!({ "list": users }));
            }
            print_users(&users);
        }
        UsersCommand::Show { name } => {
            let user = client
                .show_user(name)
                .await
                .map_err(or_list("latchctl users list"))?;
            if json {
                return print_json(&user);
            }
            print_principal(&user);
        }
        UsersCommand::Create {
            name,
            display_name,
            email,
            password,
            password_stdin,
        } => {
            let password = if *password || *password_stdin {
                Some(
                    terminal::password(
                        *password_stdin,
                        &format!("Local password for {name}: "),
                        true,
                    )
                    .await?,
                )
            } else {
                None
            };
            let request = CreateUserRequest {
                name: name.clone(),
                display_name: display_name.clone(),
                email: email.clone(),
                password,
            };
            let user = client.create_user(&request).await?;
            if json {
                return print_json(&user);
            }
            print_users(std::slice::from_ref(&user));
            if user.local_password {
                println!("\n{0} signs in with: latchctl login --local {0}", user.name);
            } else {
                println!(
                    "\n{} signs in through the identity provider (`latchctl login`); give roles with `latchctl roles bind ROLE --user {}` or a group",
                    user.name, user.name
                );
            }
        }
        UsersCommand::SetPassword {
            name,
            password_stdin,
            remove,
        } => {
            let password = if *remove {
                None
            } else {
                Some(
                    terminal::password(
                        *password_stdin,
                        &format!("New local password for {name}: "),
                        true,
                    )
                    .await?,
                )
            };
            client
                .set_user_password(name, password)
                .await
                .map_err(or_list("latchctl users list"))?;
            let what = if *remove {
                format!(
                    "removed the local password of {name}; they sign in through the identity provider only"
                )
            } else {
                format!("set the local password of {name}")
            };
            done(
                json,
                serde_json::json!({ "user": name, "local_password": !*remove }),
                &format!("{what}; every session of theirs has ended"),
            )?;
        }
        UsersCommand::Disable { name } => {
            client
                .set_user_disabled(name, true)
                .await
                .map_err(or_list("latchctl users list"))?;
            done(
                json,
                serde_json::json!({ "user": name, "disabled": true }),
                &format!("disabled user {name}; every session of theirs has ended"),
            )?;
        }
        UsersCommand::Enable { name } => {
            client
                .set_user_disabled(name, false)
                .await
                .map_err(or_list("latchctl users list"))?;
            done(
                json,
                serde_json::json!({ "user": name, "disabled": false }),
                &format!("enabled user {name}; they may sign in again"),
            )?;
        }
    }
    Ok(())
}

async fn groups(client: &AdminClient, command: &GroupsCommand, json: bool) -> anyhow::Result<()> {
    match command {
        GroupsCommand::List => {
            let groups = client.list_groups().await?;
            if json {
                return print_json(&serde_json::json!({ "list": groups }));
            }
            print_groups(&groups);
        }
        GroupsCommand::Show { name } => {
            let group = client
                .show_group(name)
                .await
                .map_err(or_list("latchctl groups list"))?;
            if json {
                return print_json(&group);
            }
            print_groups(std::slice::from_ref(&group));
            let members = if group.members.is_empty() {
                "(none)".to_owned()
            } else {
                group.members.join(", ")
            };
            println!("\nmembers: {members}");
        }
        GroupsCommand::Create {
            name,
            description,
            idp_group,
        } => {
            let group = client
                .create_group(&CreateGroupRequest {
                    name: name.clone(),
                    description: description.clone(),
                    idp_group: idp_group.clone(),
                })
                .await?;
            if json {
                return print_json(&group);
            }
            print_groups(std::slice::from_ref(&group));
        }
        GroupsCommand::Delete { name } => {
            client
                .delete_group(name)
                .await
                .map_err(or_list("latchctl groups list"))?;
            done(
                json,
                serde_json::json!({ "group": name, "deleted": true }),
                &format!("deleted group {name}"),
            )?;
        }
        GroupsCommand::AddMember { group, member } => {
            client
                .change_group_member(group, member, true)
                .await
                .map_err(or_list("latchctl groups list; latchctl users list"))?;
            done(
                json,
                serde_json::json!({ "group": group, "member": member, "added": true }),
                &format!("added {member} to group {group}"),
            )?;
        }
        GroupsCommand::RemoveMember { group, member } => {
            client
                .change_group_member(group, member, false)
                .await
                .map_err(or_list("latchctl groups show GROUP"))?;
            done(
                json,
                serde_json::json!({ "group": group, "member": member, "removed": true }),
                &format!("removed {member} from group {group}"),
            )?;
        }
    }
    Ok(())
}

async fn roles(client: &AdminClient, command: &RolesCommand, json: bool) -> anyhow::Result<()> {
    match command {
        RolesCommand::List => {
            let roles = client.list_roles().await?;
            if json {
                return print_json(&serde_json::json!({ "list": roles }));
            }
            let rows = roles
                .iter()
                .map(|r| {
                    let permissions: Vec<&str> = r.permissions.iter().map(|p| p.as_str()).collect();
                    vec![
                        r.role.to_string(),
                        if r.delegated {
                            "by selector"
                        } else {
                            "all hosts"
                        }
                        .to_owned(),
                        permissions.join(", "),
                    ]
                })
                .collect();
            print_table(&["ROLE", "SCOPE", "PERMISSIONS"], rows);
        }
        RolesCommand::Bindings => {
            let bindings = client.list_role_bindings().await?;
            if json {
                return print_json(&serde_json::json!({ "list": bindings }));
            }
            print_bindings(&bindings);
        }
        RolesCommand::Bind {
            role,
            user,
            service_user,
            group,
            selector,
        } => {
            let binding = client
                .bind_role(&BindRoleRequest {
                    role: Some(*role),
                    user: user.clone(),
                    service_user: service_user.clone(),
                    group: group.clone(),
                    selector: selector.clone(),
                })
                .await
                .map_err(in_cli_words)?;
            if json {
                return print_json(&binding);
            }
            print_bindings(std::slice::from_ref(&binding));
        }
        RolesCommand::Unbind { binding_id } => {
            client
                .unbind_role(binding_id)
                .await
                .map_err(or_list("latchctl roles bindings"))?;
            done(
                json,
                serde_json::json!({ "binding": binding_id, "removed": true }),
                &format!("removed role binding {binding_id}"),
            )?;
        }
    }
    Ok(())
}

/// Adds to a "does not exist" answer the command that lists what does.
pub(super) fn or_list(
    what_lists: &'static str,
) -> impl Fn(latch_control::client::ClientError) -> latch_control::client::ClientError {
    use latch_control::client::ClientError;
    move |error| match error {
        ClientError::Api {
            status: 404,
            code,
            message,
        } => ClientError::Api {
            status: 404,
            code,
            message: format!("{message}; `{what_lists}` shows which exist"),
        },
        other => other,
    }
}

/// Names the command-line flag where the control plane names the API field.
fn in_cli_words(error: latch_control::client::ClientError) -> latch_control::client::ClientError {
    use latch_control::client::ClientError;
    match error {
        ClientError::Api {
            status,
            code,
            message,
        } => {
            let message = ["selector", "service_user", "user", "group"]
                .iter()
                .find_map(|field| {
                    message
                        .strip_prefix(&format!("{field}:"))
                        .map(|rest| format!("--{}:{rest}", field.replace('_', "-")))
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

async fn service_users(
    client: &AdminClient,
    command: &ServiceUsersCommand,
    json: bool,
    server: &str,
) -> anyhow::Result<()> {
    match command {
        ServiceUsersCommand::List => {
            let users = client.list_service_users().await?;
            if json {
                return print_json(&serde_json::json!({ "list": users }));
            }
            print_service_users(&users);
        }
        ServiceUsersCommand::Show { name } => {
            let user = client
                .show_service_user(name)
                .await
                .map_err(or_list("latchctl service-users list"))?;
            if json {
                return print_json(&user);
            }
            print_principal(&user);
        }
        ServiceUsersCommand::Create { name, roles } => {
            let made = client
                .create_service_user(&CreateServiceUserRequest {
                    name: name.clone(),
                    roles: roles.clone(),
                })
                .await?;
            if json {
                return print_json(&made);
            }
            let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            println!(
                "created service user {} (roles: {})\n",
                made.service_user.name,
                if roles.is_empty() {
                    "none yet: `latchctl roles bind ROLE --service-user NAME`".to_owned()
                } else {
                    roles.join(", ")
                }
            );
            print_new_key(&made.key, server);
        }
        ServiceUsersCommand::Disable { name } => {
            client
                .set_service_user_disabled(name, true)
                .await
                .map_err(or_list("latchctl service-users list"))?;
            done(
                json,
                serde_json::json!({ "service_user": name, "disabled": true }),
                &format!("disabled service user {name}; every token of it has ended"),
            )?;
        }
        ServiceUsersCommand::Enable { name } => {
            client
                .set_service_user_disabled(name, false)
                .await
                .map_err(or_list("latchctl service-users list"))?;
            done(
                json,
                serde_json::json!({ "service_user": name, "disabled": false }),
                &format!("enabled service user {name}; its unrevoked keys work again"),
            )?;
        }
        ServiceUsersCommand::Keys(KeysCommand::List { name }) => {
            let keys = client
                .list_api_keys(name)
                .await
                .map_err(or_list("latchctl service-users list"))?;
            if json {
                return print_json(&serde_json::json!({ "list": keys }));
            }
            print_keys(&keys);
        }
        ServiceUsersCommand::Keys(KeysCommand::Create { name }) => {
            let key = client
                .create_api_key(name)
                .await
                .map_err(or_list("latchctl service-users list"))?;
            if json {
                return print_json(&key);
            }
            print_new_key(&key, server);
        }
        ServiceUsersCommand::Keys(KeysCommand::Revoke { name, key_id }) => {
            client
                .revoke_api_key(name, key_id)
                .await
                .map_err(or_list("latchctl service-users keys list NAME"))?;
            done(
                json,
                serde_json::json!({ "service_user": name, "key_id": key_id, "revoked": true }),
                &format!(
                    "revoked key {key_id} of {name}; it and every token made from it stopped working"
                ),
            )?;
        }
    }
    Ok(())
}

/// The code to show: the one given, else asked for (on a terminal) or read from standard input.
fn code_or_ask(code: Option<&str>) -> anyhow::Result<String> {
    let code = match code {
        Some(code) => code.to_owned(),
        None if terminal::interactive() => terminal::ask("Code from your authenticator app: ")?,
        None => terminal::first_line("code")?,
    };
    let code = code.trim().to_owned();
    if code.is_empty() {
        bail!("no code given; give the 6 digits your authenticator app shows now");
    }
    Ok(code)
}

async fn verify(client: &AdminClient, code: &str, json: bool) -> anyhow::Result<()> {
    let verified = client.verify_totp(code).await?;
    if json {
        return print_json(&verified);
    }
    println!(
        "second factor shown at {}: sensitive actions in this session work until {}",
        verified.mfa_at.to_rfc3339(),
        (verified.mfa_at + chrono::Duration::minutes(10)).to_rfc3339()
    );
    Ok(())
}

/// `mfa enroll` and `mfa verify`, with the signed-in user's client.
async fn mfa(client: &AdminClient, command: &MfaCommand, json: bool) -> anyhow::Result<()> {
    match command {
        MfaCommand::Enroll => {
            let enrollment = client.enroll_totp().await?;
            if json {
                return print_json(&enrollment);
            }
            let qr = qrcode::QrCode::new(enrollment.otpauth_uri.as_bytes())
                .context("cannot draw the QR code; enter the secret in the app by hand")?;
            // Light modules drawn, dark ones left blank: for a terminal with a dark background.
            let picture = qr
                .render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build();
            println!(
                "Add this factor to an authenticator app: scan the QR code, or enter the secret.\n\n{picture}\n\n  secret: {}\n  URI:    {}\n",
                enrollment.secret, enrollment.otpauth_uri
            );
            if terminal::interactive() {
                let code = code_or_ask(None)?;
                verify(client, &code, json).await?;
                println!("the factor is confirmed");
            } else {
                println!(
                    "Confirm it with the app's first code: latchctl mfa verify CODE (until then the factor is not in force)"
                );
            }
        }
        MfaCommand::Verify { code } => {
            let code = code_or_ask(code.as_deref())?;
            verify(client, &code, json).await?;
        }
    }
    Ok(())
}

/// `login --local NAME`: a local user's session token (the password from a no-echo prompt or
/// standard input), and who it belongs to.
pub async fn login_local(
    client: &AdminClient,
    server: &str,
    ca_pem: Option<&[u8]>,
    args: &LocalLoginArgs,
    name: &str,
) -> anyhow::Result<latch_control::sso::LoginFinishResponse> {
    let password = terminal::password(
        args.password_stdin,
        &format!("Password for {name}: "),
        false,
    )
    .await?;
    let issued = client
        .login_local(&LocalLoginRequest {
            name: name.to_owned(),
            password,
        })
        .await?;
    let me = AdminClient::new(server, &issued.token, ca_pem)?
        .whoami()
        .await
        .context("signed in, but cannot read who the session belongs to")?;
    Ok(latch_control::sso::LoginFinishResponse {
        token: issued.token,
        expires_at: issued.expires_at,
        name: me.name,
        groups: me.groups,
        mfa_at: me.mfa_at,
    })
}
