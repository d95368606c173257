//! `latchctl webhooks`: signed webhooks, a thin layer over `/v1/webhooks`.
//!
//! The signing secret is never taken from the command line (other users read it with `ps`,
//! shells keep it in their history): it comes from the first line of standard input.

use anyhow::bail;
use clap::Subcommand;
use latch_common::webhooks::{
    CreateWebhookRequest, DeliveryStatus, validate_event, validate_secret,
};
use latch_control::client::AdminClient;

use super::people::{maybe_time, or_list, time};

/// The command that lists webhooks (named in a 404).
const LIST: &str = "latchctl webhooks list";
use super::terminal;
use super::{print_json, print_table};

/// The webhook commands.
#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// Every webhook: where it posts and which events it receives.
    List,
    /// Add a webhook (audited). Each event is POSTed as JSON with X-Latch-Event,
    /// X-Latch-Delivery, X-Latch-Timestamp and X-Latch-Signature: sha256=<hex HMAC-SHA-256 of
    /// "<timestamp>.<body>" under the secret>; retried with backoff until a 2xx answer.
    Add {
        /// Where to POST: https://…, or http:// on a loopback address.
        #[arg(long)]
        url: String,
        /// An event to receive (repeat for several; `*` for every event), e.g.
        /// access.requested.
        #[arg(long = "event", required = true, value_parser = event_arg)]
        events: Vec<String>,
        /// Read the signing secret (16–256 printable characters, e.g. `openssl rand -hex 32`)
        /// from the first line of standard input. Required: a secret never goes on the
        /// command line.
        #[arg(long, required = true)]
        secret_stdin: bool,
    },
    /// Remove a webhook and its deliveries (audited).
    Remove {
        /// Its id (`wh_…`, see `latchctl webhooks list`).
        id: String,
    },
    /// A webhook's deliveries, newest first: status, attempts, the last answer.
    Deliveries {
        /// Its id (`wh_…`).
        id: String,
    },
}

fn event_arg(text: &str) -> Result<String, String> {
    validate_event(text).map_err(|e| e.reason)?;
    Ok(text.to_owned())
}

/// Runs a webhook command.
pub async fn run(
    client: &AdminClient,
    command: &WebhooksCommand,
    json: bool,
) -> anyhow::Result<()> {
    match command {
        WebhooksCommand::List => {
            let list = client.list_webhooks().await?;
            if json {
                return print_json(&serde_json::json!({ "list": list }));
            }
            let rows = list
                .iter()
                .map(|w| {
                    vec![
                        w.id.clone(),
                        w.url.clone(),
                        w.events.join(","),
                        time(w.created_at),
                        w.created_by.clone(),
                    ]
                })
                .collect();
            print_table(&["ID", "URL", "EVENTS", "CREATED", "BY"], rows);
        }
        WebhooksCommand::Add {
            url,
            events,
            secret_stdin,
        } => {
            if !secret_stdin {
                bail!("give the signing secret on standard input with --secret-stdin");
            }
            let secret = terminal::first_line("webhook secret")?;
            if let Err(e) = validate_secret(&secret) {
                bail!("--secret-stdin: the secret {}", e.reason);
            }
            let webhook = client
                .create_webhook(&CreateWebhookRequest {
                    url: url.clone(),
                    events: events.clone(),
                    secret,
                })
                .await?;
            if json {
                return print_json(&webhook);
            }
            println!(
                "webhook {} added: {} receives {}; see its deliveries with `latchctl webhooks deliveries {}`",
                webhook.id,
                webhook.url,
                webhook.events.join(", "),
                webhook.id
            );
        }
        WebhooksCommand::Remove { id } => {
            client.delete_webhook(id).await.map_err(or_list(LIST))?;
            if json {
                return print_json(&serde_json::json!({ "id": id, "removed": true }));
            }
            println!("webhook {id} removed, with its deliveries");
        }
        WebhooksCommand::Deliveries { id } => {
            let list = client
                .list_webhook_deliveries(id)
                .await
                .map_err(or_list(LIST))?;
            if json {
                return print_json(&serde_json::json!({ "list": list }));
            }
            let rows = list
                .iter()
                .map(|d| {
                    let last = match (&d.last_status, &d.last_error) {
                        (_, Some(error)) => error.clone(),
                        (Some(status), None) => format!("HTTP {status}"),
                        (None, None) => "-".to_owned(),
                    };
                    let next = match d.status {
                        DeliveryStatus::Pending => maybe_time(d.next_attempt_at, "-"),
                        DeliveryStatus::Delivered => maybe_time(d.delivered_at, "-"),
                        DeliveryStatus::Failed => "-".to_owned(),
                    };
                    vec![
                        d.id.clone(),
                        d.event.clone(),
                        d.status.as_str().to_owned(),
                        d.attempts.to_string(),
                        time(d.created_at),
                        next,
                        last,
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "EVENT",
                    "STATUS",
                    "ATTEMPTS",
                    "CREATED",
                    "NEXT/DONE",
                    "LAST",
                ],
                rows,
            );
        }
    }
    Ok(())
}
