//! Signed webhook delivery on both stores: a receiver on loopback checks the signature and the
//! body; 5xx answers are retried with backoff until a 2xx; an unreachable receiver fails after
//! the last attempt; deliveries show through the API and `latchctl`'s client; hostile URLs
//! and weak secrets are refused; the secret is never stored in clear.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use chrono::{Duration, Utc};
use latch_common::webhooks::{CreateWebhookRequest, DeliveryStatus, WebhookView};
use latch_control::client::AdminClient;
use latch_control::error::ControlError;
use latch_control::store::RetryBackoff;
use latch_control::store::webhooks::DeliveryRecord;
use latch_control::webhooks::{DeliverySweep, WebhookConfig, signature};
use latch_control::{Control, ControlConfig, datadir, server};
use serde_json::json;
use support::TestDb;

const SECRET: &str = "whsec-0123456789abcdef-for-tests";

/// What a receiver saw of one request.
#[derive(Debug, Clone)]
struct Received {
    event: String,
    delivery: String,
    timestamp: String,
    signature: String,
    body: String,
}

/// A webhook receiver on loopback that answers with the scripted statuses in turn (204 once
/// they run out) and records every request.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Receiver {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let app = {
            let seen = seen.clone();
            axum::Router::new().route(
                "/hook/{token}",
                axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default()
                    };
                    seen.lock().unwrap().push(Received {
                        event: header("x-latch-event"),
                        delivery: header("x-latch-delivery"),
                        timestamp: header("x-latch-timestamp"),
                        signature: header("x-latch-signature"),
                        body: String::from_utf8(body.to_vec()).unwrap(),
                    });
                    let status = answers.lock().unwrap().pop_front().unwrap_or(204);
                    async move { StatusCode::from_u16(status).unwrap() }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook/T0K3N", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, seen }
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

/// A control plane over a fresh data directory (its master key seals webhook secrets).
struct Setup {
    control: Arc<Control>,
    store: Arc<dyn latch_control::store::Store>,
    dir: tempfile::TempDir,
    admin_key: String,
}

async fn setup(db: &TestDb) -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let data = datadir::open(dir.path(), &db.options()).await.unwrap();
    let admin_key = std::fs::read_to_string(&data.admin_token_path)
        .unwrap()
        .trim()
        .to_owned();
    let store = data.store.clone();
    let config = ControlConfig {
        webhooks: WebhookConfig {
            max_attempts: 3,
            backoff: RetryBackoff {
                first: Duration::milliseconds(100),
                max: Duration::milliseconds(400),
            },
            timeout: StdDuration::from_secs(2),
            batch: 50,
        },
        ..ControlConfig::default()
    };
    let control = Control::new(data.store, config, data.signer).with_master_key(data.master_key);
    Setup {
        control: Arc::new(control),
        store,
        dir,
        admin_key,
    }
}

fn hook(url: &str, events: &[&str]) -> CreateWebhookRequest {
    CreateWebhookRequest {
        url: url.to_owned(),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        secret: SECRET.to_owned(),
    }
}

async fn add(s: &Setup, url: &str, events: &[&str]) -> WebhookView {
    s.control
        .create_webhook(&support::admin(), &hook(url, events))
        .await
        .unwrap()
}

async fn deliveries(s: &Setup, webhook: &WebhookView) -> Vec<DeliveryRecord> {
    s.store.deliveries(&webhook.id).await.unwrap()
}

/// Runs the delivery sweep until `webhook`'s newest delivery is no longer pending (at most
/// 10 s), as the leader does every second; the sweeps' totals.
async fn sweep_until_settled(s: &Setup, webhook: &WebhookView) -> DeliverySweep {
    let mut total = DeliverySweep::default();
    for _ in 0..200 {
        let sweep = s.control.deliver_webhooks().await.unwrap();
        total.delivered += sweep.delivered;
        total.retried += sweep.retried;
        total.failed += sweep.failed;
        if deliveries(s, webhook).await[0].status != DeliveryStatus::Pending {
            return total;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    panic!("the delivery is still pending after 10 s");
}

both_stores!(signed_events_reach_their_subscribers_and_show_in_the_api);
async fn signed_events_reach_their_subscribers_and_show_in_the_api(db: TestDb) {
    let s = setup(&db).await;
    let receiver = Receiver::start(&[]).await;
    let other = Receiver::start(&[]).await;
    let subscribed = add(&s, &receiver.url, &["access.requested"]).await;
    add(&s, &other.url, &["break_glass"]).await;
    // The real server: its leader sweep sends the delivery.
    let listener = server::bind("127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::run(
        s.control.clone(),
        listener,
        None,
        std::future::pending(),
    ));
    let detail = json!({"request_id": "req_1", "host": "prod-db-01", "reason": "migration"});
    assert_eq!(
        s.control
            .notify("access.requested", detail.clone())
            .await
            .unwrap(),
        1
    );
    let mut waited = 0;
    while receiver.seen().is_empty() {
        assert!(waited < 300, "no delivery within 15 s");
        tokio::time::sleep(StdDuration::from_millis(50)).await;
        waited += 1;
    }
    let got = receiver.seen().remove(0);
    assert_eq!(got.event, "access.requested");
    let timestamp: i64 = got.timestamp.parse().unwrap();
    assert!((Utc::now().timestamp() - timestamp).abs() < 60);
    assert_eq!(
        got.signature,
        signature(SECRET.as_bytes(), timestamp, got.body.as_bytes())
    );
    assert_ne!(
        got.signature,
        signature(b"another-secret-entirely", timestamp, got.body.as_bytes())
    );
    let body: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(body["event"], "access.requested");
    assert_eq!(body["detail"], detail);
    assert!(body["id"].as_str().unwrap().starts_with("evt_"));
    // The webhook subscribed to another event got nothing.
    assert!(other.seen().is_empty());
    // Through the API (latchctl's client): the webhook without its secret, the delivery.
    let client = AdminClient::new(&api, &s.admin_key, None).unwrap();
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = client
            .list_webhook_deliveries(&subscribed.id)
            .await
            .unwrap();
        if listed[0].status == DeliveryStatus::Delivered {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, got.delivery);
    assert_eq!(listed[0].status, DeliveryStatus::Delivered);
    assert_eq!(listed[0].attempts, 1);
    assert_eq!(listed[0].last_status, Some(204));
    assert_eq!(listed[0].body, body);
    assert!(listed[0].delivered_at.is_some());
    let webhooks = client.list_webhooks().await.unwrap();
    assert_eq!(webhooks.len(), 2);
    let raw = reqwest::Client::new()
        .get(format!("{api}/v1/webhooks"))
        .bearer_auth(client_token(&api, &s.admin_key).await)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(raw.contains(&subscribed.id));
    assert!(!raw.contains(SECRET));
    // Audited; the URL's path (a token) never in the trail; the secret nowhere in the database.
    let trail = support::audit_actions(&*s.store).await;
    let actions: Vec<&str> = trail.iter().map(|(a, _)| a.as_str()).collect();
    for action in ["webhook.created", "webhook.queued", "webhook.delivered"] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    assert!(!format!("{trail:?}").contains("T0K3N"));
    let stored = s.store.webhook(&subscribed.id).await.unwrap().unwrap();
    assert!(stored.sealed_secret.starts_with("v1:"));
    assert!(!stored.sealed_secret.contains(SECRET));
    if db.url().is_some() {
        assert!(!db.dump_all_text().await.contains(SECRET));
    }
    // Removing the webhook removes its deliveries.
    client.delete_webhook(&subscribed.id).await.unwrap();
    assert!(s.store.deliveries(&subscribed.id).await.unwrap().is_empty());
    assert!(matches!(
        client.list_webhook_deliveries(&subscribed.id).await,
        Err(latch_control::client::ClientError::Api { status: 404, .. })
    ));
    drop(s.dir);
}

/// A bearer token for the admin's API key.
async fn client_token(api: &str, key: &str) -> String {
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{api}/v1/service_token"))
        .json(&json!({"api_key": key}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["token"].as_str().unwrap().to_owned()
}

both_stores!(failed_answers_are_retried_with_backoff_until_delivered);
async fn failed_answers_are_retried_with_backoff_until_delivered(db: TestDb) {
    let s = setup(&db).await;
    let receiver = Receiver::start(&[500, 500, 204]).await;
    let webhook = add(&s, &receiver.url, &["*"]).await;
    assert_eq!(
        s.control
            .notify("break_glass", json!({"checkout_id": "co_1"}))
            .await
            .unwrap(),
        1
    );
    let first = s.control.deliver_webhooks().await.unwrap();
    assert_eq!(first.retried, 1);
    let pending = &deliveries(&s, &webhook).await[0];
    assert_eq!(pending.status, DeliveryStatus::Pending);
    assert_eq!(pending.attempts, 1);
    assert_eq!(pending.last_status, Some(500));
    assert!(pending.last_error.as_deref().unwrap().contains("500"));
    assert!(pending.next_attempt_at.unwrap() > Utc::now());
    // Not due yet: the backoff holds it back.
    assert_eq!(
        s.control.deliver_webhooks().await.unwrap(),
        DeliverySweep::default()
    );
    let rest = sweep_until_settled(&s, &webhook).await;
    assert_eq!((rest.retried, rest.delivered, rest.failed), (1, 1, 0));
    let done = &deliveries(&s, &webhook).await[0];
    assert_eq!(done.status, DeliveryStatus::Delivered);
    assert_eq!(done.attempts, 3);
    assert_eq!(done.last_status, Some(204));
    assert_eq!(done.last_error, None);
    assert_eq!(done.next_attempt_at, None);
    // Three POSTs of the same delivery and body, each signed for its own timestamp.
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3);
    for got in &seen {
        assert_eq!(got.delivery, done.id);
        assert_eq!(got.body, done.body);
        let timestamp = got.timestamp.parse().unwrap();
        assert_eq!(
            got.signature,
            signature(SECRET.as_bytes(), timestamp, got.body.as_bytes())
        );
    }
}

both_stores!(an_unreachable_receiver_fails_after_the_last_attempt);
async fn an_unreachable_receiver_fails_after_the_last_attempt(db: TestDb) {
    let s = setup(&db).await;
    // A port nobody listens on any more.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook/T0K3N", closed.local_addr().unwrap());
    drop(closed);
    let webhook = add(&s, &url, &["access.decided"]).await;
    // An event nobody subscribed to queues nothing.
    assert_eq!(s.control.notify("break_glass", json!({})).await.unwrap(), 0);
    s.control
        .notify(
            "access.decided",
            json!({"request_id": "req_2", "decision": "denied"}),
        )
        .await
        .unwrap();
    let total = sweep_until_settled(&s, &webhook).await;
    assert_eq!((total.retried, total.delivered, total.failed), (2, 0, 1));
    let failed = &deliveries(&s, &webhook).await[0];
    assert_eq!(failed.status, DeliveryStatus::Failed);
    assert_eq!(failed.attempts, 3);
    assert_eq!(failed.last_status, None);
    assert_eq!(failed.next_attempt_at, None);
    let error = failed.last_error.as_deref().unwrap();
    assert!(!error.contains("T0K3N"), "{error}");
    // No more attempts.
    assert_eq!(
        s.control.deliver_webhooks().await.unwrap(),
        DeliverySweep::default()
    );
    let trail = support::audit_actions(&*s.store).await;
    let (_, detail) = trail
        .iter()
        .find(|(a, _)| a == "webhook.failed")
        .expect("the failure is audited");
    assert_eq!(detail["delivery_id"], failed.id.as_str());
    assert_eq!(detail["attempts"], 3);
    assert_eq!(
        detail["webhook"],
        url.split("/hook").next().unwrap(),
        "only the origin is audited"
    );
    assert!(!format!("{trail:?}").contains("T0K3N"));
}

both_stores!(hostile_urls_and_weak_secrets_are_refused);
async fn hostile_urls_and_weak_secrets_are_refused(db: TestDb) {
    let s = setup(&db).await;
    for url in [
        "http://hooks.example.com/latch",
        "http://192.168.1.10/hook",
        "file:///etc/shadow",
        "ftp://127.0.0.1/hook",
        "gopher://127.0.0.1:25/",
        "javascript:alert(1)",
        "https://",
        "",
    ] {
        let refused = s
            .control
            .create_webhook(&support::admin(), &hook(url, &["*"]))
            .await;
        assert!(
            matches!(&refused, Err(ControlError::Invalid(e)) if e.field == "url"),
            "{url}: {refused:?}"
        );
    }
    let mut weak = hook("https://hooks.example.com/latch", &["*"]);
    weak.secret = "short".into();
    assert!(matches!(
        s.control.create_webhook(&support::admin(), &weak).await,
        Err(ControlError::Invalid(e)) if e.field == "secret"
    ));
    for events in [vec![], vec!["Access Requested"]] {
        let bad = hook("https://hooks.example.com/latch", &events);
        assert!(matches!(
            s.control.create_webhook(&support::admin(), &bad).await,
            Err(ControlError::Invalid(e)) if e.field == "events"
        ));
    }
    assert!(s.store.webhooks().await.unwrap().is_empty());
    // https anywhere is fine, and duplicate event names are kept once.
    let ok = s
        .control
        .create_webhook(
            &support::admin(),
            &hook(
                "https://hooks.example.com/latch",
                &["break_glass", "break_glass"],
            ),
        )
        .await
        .unwrap();
    assert_eq!(ok.events, ["break_glass"]);
    assert!(matches!(
        s.control
            .delete_webhook(&support::admin(), "wh_missing")
            .await,
        Err(ControlError::NotFound { .. })
    ));
}
