//! Signing in and out (`login`, `logout`, `whoami`, `sessions`) and which credential the other
//! commands send: --token, the signed-in session for this server, or ./latch-data/admin.token.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use latch_control::client::AdminClient;

use super::tables::{print_json, print_table};
use super::{Cli, Command, people};

/// `login`, `logout`, `whoami` and `sessions`, which use the session file rather than the admin token;
/// `None` for every other command.
pub(crate) async fn session_command(
    cli: &Cli,
    ca_pem: Option<&[u8]>,
    json: bool,
) -> anyhow::Result<Option<ExitCode>> {
    use latch_control::login;
    let session_token = || session_token(cli);
    match &cli.command {
        Command::Login {
            local:
                local @ people::LocalLoginArgs {
                    local: Some(name), ..
                },
            ..
        } => {
            let client = AdminClient::new(&cli.server, "", ca_pem)?;
            let session = people::login_local(&client, &cli.server, ca_pem, local, name).await?;
            finish_login(cli, json, session)?;
            Ok(Some(ExitCode::SUCCESS))
        }
        Command::People(command @ people::PeopleCommand::Mfa(_)) => {
            let client = AdminClient::new(&cli.server, &session_token()?, ca_pem)?;
            people::run(&client, command, json, &cli.server).await?;
            Ok(Some(ExitCode::SUCCESS))
        }
        Command::Login {
            device: true,
            timeout,
            ..
        } => {
            let client = AdminClient::new(&cli.server, "", ca_pem)?;
            let start = client.login_device().await?;
            eprintln!(
                "On any device, open\n\n  {}\n\nand enter the code {}\n",
                start
                    .verification_uri_complete
                    .as_deref()
                    .unwrap_or(&start.verification_uri),
                start.user_code
            );
            let deadline = Instant::now() + *timeout;
            let mut interval = Duration::from_secs(start.interval.clamp(1, 60));
            let session = loop {
                if Instant::now() >= deadline {
                    bail!(
                        "the device sign-in was not finished within {timeout:?}; run `latchctl login --device` again"
                    );
                }
                tokio::time::sleep(interval).await;
                match client.login_device_poll(&start.id).await? {
                    latch_control::sso::DevicePollResponse::Pending { slow_down } => {
                        if slow_down {
                            interval += Duration::from_secs(5);
                        }
                    }
                    latch_control::sso::DevicePollResponse::Done { session } => break session,
                }
            };
            finish_login(cli, json, session)?;
            Ok(Some(ExitCode::SUCCESS))
        }
        Command::Login {
            no_browser,
            timeout,
            ..
        } => {
            let client = AdminClient::new(&cli.server, "", ca_pem)?;
            let callback = login::Callback::bind().await?;
            let start = client
                .login_start(&latch_control::sso::LoginStartRequest {
                    redirect_uri: callback.redirect_uri()?,
                })
                .await?;
            eprintln!(
                "Open this URL in a browser to sign in:\n\n  {}\n",
                start.authorization_url
            );
            if !no_browser {
                // Best effort: a desktop opens it; elsewhere the printed URL is the way.
                let _ = std::process::Command::new("xdg-open")
                    .arg(&start.authorization_url)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn();
            }
            let code = callback.wait(&start.state, *timeout).await?;
            let session = client
                .login_finish(&latch_control::sso::LoginFinishRequest {
                    state: start.state.clone(),
                    code,
                })
                .await?;
            finish_login(cli, json, session)?;
            Ok(Some(ExitCode::SUCCESS))
        }
        Command::Logout => {
            let client = AdminClient::new(&cli.server, &session_token()?, ca_pem)?;
            let ended = client.logout().await;
            login::forget_session()?;
            match ended {
                Ok(_) => println!("signed out"),
                // An expired or revoked session is over already; the file is gone either way.
                Err(latch_control::client::ClientError::Api { status: 401, .. }) => {
                    println!("signed out (the session had ended already)")
                }
                Err(e) => return Err(e.into()),
            }
            Ok(Some(ExitCode::SUCCESS))
        }
        Command::Whoami => {
            let client = AdminClient::new(&cli.server, &session_token()?, ca_pem)?;
            let me = client.whoami().await?;
            if json {
                print_json(&me)?;
            } else {
                print_table(
                    &[
                        "NAME", "KIND", "ROLES", "GROUPS", "SESSION", "EXPIRES", "MFA",
                    ],
                    vec![vec![
                        me.name,
                        me.kind,
                        me.roles.join(","),
                        me.groups.join(","),
                        me.session_kind,
                        me.expires_at.to_rfc3339(),
                        me.mfa_at
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "-".into()),
                    ]],
                );
            }
            Ok(Some(ExitCode::SUCCESS))
        }
        Command::Sessions(command) => {
            let client = AdminClient::new(&cli.server, &session_token()?, ca_pem)?;
            sessions(&client, command, json).await?;
            Ok(Some(ExitCode::SUCCESS))
        }
        _ => Ok(None),
    }
}

/// `latchctl sessions …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SessionsCommand {
    /// Your live sessions, newest first: how and where each began, when it ends; `*` marks
    /// the one this command uses.
    List,
    /// End one of your sessions (its token or browser cookie stops working at once), or with
    /// --others every one but the session this command uses.
    End {
        /// The session's id (`ses_…`, from `latchctl sessions list`).
        #[arg(required_unless_present = "others", conflicts_with = "others")]
        id: Option<String>,
        /// End every session but this one.
        #[arg(long)]
        others: bool,
    },
}

async fn sessions(
    client: &AdminClient,
    command: &SessionsCommand,
    json: bool,
) -> anyhow::Result<()> {
    match command {
        SessionsCommand::List => {
            let sessions = client.list_sessions().await?;
            if json {
                return print_json(&sessions);
            }
            let rows = sessions
                .into_iter()
                .map(|s| {
                    vec![
                        if s.current { "*".into() } else { String::new() },
                        s.id,
                        s.kind,
                        s.address.unwrap_or_else(|| "-".into()),
                        s.created_at.to_rfc3339(),
                        s.expires_at.to_rfc3339(),
                        s.mfa_at.map_or_else(|| "-".into(), |t| t.to_rfc3339()),
                    ]
                })
                .collect();
            print_table(
                &["", "ID", "KIND", "FROM", "STARTED", "EXPIRES", "MFA"],
                rows,
            );
        }
        SessionsCommand::End { id: Some(id), .. } => {
            client.end_session(id).await?;
            if json {
                print_json(&serde_json::json!({"ended": 1}))?;
            } else {
                println!("ended session {id}");
            }
        }
        SessionsCommand::End { id: None, .. } => {
            let ended = client.end_other_sessions().await?;
            if json {
                print_json(&ended)?;
            } else {
                println!("ended {} other session(s)", ended.ended);
            }
        }
    }
    Ok(())
}

/// The token of `login`'s session commands: --token, else the stored session for this server.
fn session_token(cli: &Cli) -> anyhow::Result<String> {
    if let Some(token) = &cli.token {
        return Ok(token.trim().to_owned());
    }
    match latch_control::login::load_session()? {
        Some(session) if session.server == cli.server => Ok(session.token),
        Some(session) => bail!(
            "the stored session is for {}, not {}; run `latchctl login` against this server",
            session.server,
            cli.server
        ),
        None => bail!("not signed in: run `latchctl login` (or pass --token)"),
    }
}

/// Keeps a new session in the session file and says who signed in.
fn finish_login(
    cli: &Cli,
    json: bool,
    session: latch_control::sso::LoginFinishResponse,
) -> anyhow::Result<()> {
    let path = latch_control::login::save_session(&latch_control::login::StoredSession {
        server: cli.server.clone(),
        token: session.token.clone(),
        expires_at: session.expires_at,
    })?;
    if json {
        print_json(&serde_json::json!({
            "name": session.name,
            "groups": session.groups,
            "expires_at": session.expires_at,
            "mfa_at": session.mfa_at,
            "session_file": path,
        }))?;
    } else {
        println!(
            "signed in as {} until {} (session in {})",
            session.name,
            session.expires_at.to_rfc3339(),
            path.display()
        );
    }
    Ok(())
}

/// The credential of the admin commands: --token (a bearer token or an API key), else the
/// session of `latchctl login` for this server while it lasts, else ./latch-data/admin.token.
pub(crate) fn admin_token(cli: &Cli) -> anyhow::Result<String> {
    if let Some(token) = &cli.token {
        return Ok(token.trim().to_owned());
    }
    // No usable session file (none, no HOME, unreadable): the next source.
    if let Ok(Some(session)) = latch_control::login::load_session()
        && session.server == cli.server
        && session.expires_at > chrono::Utc::now()
    {
        return Ok(session.token);
    }
    let path = PathBuf::from("latch-data").join("admin.token");
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no credential: sign in with `latchctl login`, or set LATCH_TOKEN (a token or API key), or run latchctl in the directory that holds {} (cannot read it)",
            path.display()
        )
    })?;
    Ok(token.trim().to_owned())
}
