//! Monitoring over a real socket: `GET /metrics` parsed as Prometheus parses it, its numbers
//! checked against the scenario and against the database; `/healthz` and `/readyz`, the latter
//! failing while the database cannot answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use latch_control::{Control, ControlConfig, datadir, server};
use prometheus_parse::{Sample, Scrape, Value as Metric};
use serde_json::{Value, json};
use sqlx::Row as _;
use support::{Attacker, TestDb};

struct Server {
    url: String,
    admin: String,
    http: reqwest::Client,
    attacker: Attacker,
    _dir: tempfile::TempDir,
    _db: TestDb,
}

impl Server {
    async fn start(db: TestDb) -> Server {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let data = datadir::open(dir.path(), &db.options()).await.unwrap();
        let api_key = std::fs::read_to_string(&data.admin_token_path)
            .unwrap()
            .trim()
            .to_owned();
        let control = Arc::new(Control::new(
            data.store,
            ControlConfig::default(),
            data.signer,
        ));
        let listener = server::bind("127.0.0.1:0".parse().unwrap(), false)
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(server::run(control, listener, None, std::future::pending()));
        let attacker = db.attacker(dir.path()).await;
        let mut server = Server {
            url,
            admin: String::new(),
            http: reqwest::Client::new(),
            attacker,
            _dir: dir,
            _db: db,
        };
        let (status, issued) = server
            .call(
                "POST",
                "/v1/service_token",
                None,
                Some(json!({"api_key": api_key})),
            )
            .await;
        assert_eq!(status, 201, "{issued}");
        server.admin = issued["token"].as_str().unwrap().to_owned();
        server
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(method, path, Some(&self.admin), body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    /// A new host: `(id, credential)`.
    async fn enroll(&self, hostname: &str) -> (String, String) {
        let token = self
            .admin("POST", "/v1/enroll-tokens", Some(json!({})))
            .await;
        let facts = json!({"hostname": hostname, "os": "Debian 12", "kernel": "6.1",
            "arch": "x86_64", "cpus": 2, "memory_bytes": 1024,
            "machine_id": "0123456789abcdef0123456789abcdef"});
        let (status, enrolled) = self
            .call(
                "POST",
                "/v1/enroll",
                None,
                Some(json!({"token": token["token"], "facts": facts})),
            )
            .await;
        assert_eq!(status, 201, "{enrolled}");
        (
            enrolled["host_id"].as_str().unwrap().to_owned(),
            enrolled["credential"].as_str().unwrap().to_owned(),
        )
    }

    async fn job(&self, host: &str, kind: &str, user: &str) -> String {
        let job = self
            .admin(
                "POST",
                "/v1/jobs",
                Some(json!({"host": host, "kind": kind, "user": user})),
            )
            .await;
        job["id"].as_str().unwrap().to_owned()
    }

    /// The agent of the host with `credential` polls once; the ids of the jobs it was given.
    async fn poll(&self, credential: &str) -> Vec<String> {
        let (status, polled) = self
            .call("GET", "/v1/agent/jobs?wait=0", Some(credential), None)
            .await;
        assert_eq!(status, 200, "{polled}");
        polled["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|job| job["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Job `id`'s delivery lease ran out, after `attempts` deliveries.
    async fn expire_lease(&self, id: &str, attempts: u32) {
        self.attacker
            .exec(&format!(
                "UPDATE jobs SET lease_expires_at = 1, attempts = {attempts} WHERE id = '{id}'"
            ))
            .await;
    }

    /// One scrape, parsed by a Prometheus text-format parser.
    async fn scrape(&self) -> Metrics {
        let response = self
            .http
            .get(format!("{}/metrics", self.url))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = response.text().await.unwrap();
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        let scrape = Scrape::parse(lines).unwrap_or_else(|e| panic!("{e}\n{text}"));
        Metrics { scrape, text }
    }
}

struct Metrics {
    scrape: Scrape,
    text: String,
}

impl Metrics {
    fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> {
        self.scrape.samples.iter().filter(move |s| s.metric == name)
    }

    /// The one sample of `name` with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .samples(name)
            .filter(|s| {
                s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?} in\n{}", self.text);
        match found[0].value {
            Metric::Gauge(v) | Metric::Untyped(v) | Metric::Counter(v) => v,
            ref other => panic!("{name} is not a gauge: {other:?}"),
        }
    }

    /// Every `(label value, value)` of a gauge with one label.
    fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        self.samples(name)
            .map(|s| {
                let Metric::Gauge(v) = s.value else {
                    panic!("{name} is not a gauge")
                };
                (s.labels.get(label).unwrap().to_owned(), v)
            })
            .collect()
    }
}

/// The rows of `sql` (text columns, then a count), read from the database directly.
async fn stored_rows(attacker: &Attacker, sql: &str) -> Vec<(Vec<String>, f64)> {
    macro_rules! read {
        ($pool:expr) => {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_all($pool)
                .await
                .unwrap()
                .iter()
                .map(|row| {
                    let last = row.len() - 1;
                    let labels = (0..last).map(|i| row.get::<String, _>(i)).collect();
                    #[allow(clippy::cast_precision_loss)]
                    let count = row.get::<i64, _>(last) as f64;
                    (labels, count)
                })
                .collect()
        };
    }
    match attacker {
        Attacker::Sqlite(pool) => read!(pool),
        Attacker::Postgres(pool) => read!(pool),
    }
}

/// `SELECT label, COUNT(*)` rows of the database, as a map.
async fn db_counts(attacker: &Attacker, sql: &str) -> BTreeMap<String, f64> {
    stored_rows(attacker, sql)
        .await
        .into_iter()
        .map(|(labels, n)| (labels[0].clone(), n))
        .collect()
}

async fn scrape_matches_the_store(db: TestDb) {
    let server = Server::start(db).await;
    let (a, a_credential) = server.enroll("metrics-a").await;
    let (b, _) = server.enroll("metrics-b").await;
    let (c, c_credential) = server.enroll("metrics-c").await;

    // a: a job delivered whose lease ran out, on its second delivery.
    let leased = server.job(&a, "create-account", "alice").await;
    assert_eq!(server.poll(&a_credential).await, vec![leased.clone()]);
    server.expire_lease(&leased, 2).await;
    // b: never polls (offline); its delete-account job waits for ten minutes.
    let waiting = server.job(&b, "delete-account", "bob").await;
    let ten_minutes_ago = Utc::now().timestamp_millis() - 600_000;
    server
        .attacker
        .exec(&format!(
            "UPDATE jobs SET created_at = {ten_minutes_ago} WHERE id = '{waiting}'; \
             UPDATE hosts SET last_seen = NULL WHERE id = '{b}'"
        ))
        .await;
    // c: a job whose last delivery ran out: the sweep fails it.
    let abandoned = server.job(&c, "create-account", "carol").await;
    assert_eq!(server.poll(&c_credential).await, vec![abandoned.clone()]);
    server.expire_lease(&abandoned, 5).await;
    // Three decided access requests (the sweep leaves those alone).
    for (id, state) in [
        ("ar_m1", "denied"),
        ("ar_m2", "denied"),
        ("ar_m3", "cancelled"),
    ] {
        server
            .attacker
            .exec(&format!(
                "INSERT INTO access_requests (id, requester_id, target, access, minutes, reason, \
                 policy_id, policy_name, approvals_needed, exclusive, state, created_at, version) \
                 SELECT '{id}', id, 'metrics-a', 'sudo', 30, 'metrics', 'pol_x', 'x', 1, 0, \
                 '{state}', 1, 0 FROM principals ORDER BY id LIMIT 1"
            ))
            .await;
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = server.scrape().await;
        let failed = metrics.value(
            "latch_jobs",
            &[("kind", "create-account"), ("state", "failed")],
        );
        if failed == 1.0 {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sweep did not fail the abandoned job:\n{}",
            metrics.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Jobs by kind and state: every kind and state has a series, and each matches the store.
    let jobs: BTreeMap<(String, String), f64> = metrics
        .samples("latch_jobs")
        .map(|s| {
            let Metric::Gauge(v) = s.value else {
                panic!("latch_jobs is not a gauge")
            };
            (
                (
                    s.labels.get("kind").unwrap().to_owned(),
                    s.labels.get("state").unwrap().to_owned(),
                ),
                v,
            )
        })
        .collect();
    assert_eq!(
        jobs.len(),
        15,
        "five kinds × three states:\n{}",
        metrics.text
    );
    let stored = stored_rows(
        &server.attacker,
        "SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status",
    )
    .await;
    for (labels, n) in &stored {
        let key = (labels[0].clone(), labels[1].clone());
        assert_eq!(jobs[&key], *n, "{key:?}");
    }
    let nonzero: BTreeMap<_, _> = jobs.into_iter().filter(|(_, v)| *v > 0.0).collect();
    assert_eq!(
        nonzero,
        BTreeMap::from([
            (("create-account".to_owned(), "failed".to_owned()), 1.0),
            (("create-account".to_owned(), "pending".to_owned()), 1.0),
            (("delete-account".to_owned(), "pending".to_owned()), 1.0),
        ])
    );

    // The oldest pending job's age, per kind: 0 when none is pending.
    let age = metrics.value(
        "latch_jobs_oldest_pending_age_seconds",
        &[("kind", "delete-account")],
    );
    assert!((600.0..660.0).contains(&age), "{age}");
    let age = metrics.value(
        "latch_jobs_oldest_pending_age_seconds",
        &[("kind", "create-account")],
    );
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(
        metrics.value(
            "latch_jobs_oldest_pending_age_seconds",
            &[("kind", "set-password")]
        ),
        0.0
    );
    assert_eq!(metrics.value("latch_jobs_lease_expired", &[]), 1.0);
    assert_eq!(metrics.value("latch_jobs_redelivered", &[]), 1.0);

    // Hosts: a and c polled; b was never seen.
    assert_eq!(
        metrics.by("latch_hosts", "state"),
        BTreeMap::from([("offline".to_owned(), 1.0), ("online".to_owned(), 2.0)])
    );
    // Their agents, by the version and protocol of their last poll: the test's polls send no
    // latch-agent User-Agent ("unknown") and no protocol header (protocol 1); b never polled.
    let agents: BTreeMap<(String, String), f64> = metrics
        .samples("latch_hosts_agent")
        .map(|s| {
            let Metric::Gauge(v) = s.value else {
                panic!("latch_hosts_agent is not a gauge")
            };
            (
                (
                    s.labels.get("version").unwrap().to_owned(),
                    s.labels.get("protocol").unwrap().to_owned(),
                ),
                v,
            )
        })
        .collect();
    assert_eq!(
        agents,
        BTreeMap::from([
            (("none".to_owned(), "0".to_owned()), 1.0),
            (("unknown".to_owned(), "1".to_owned()), 2.0),
        ])
    );

    // Access requests and rotations by state: every state, each as the store counts it.
    let requests = metrics.by("latch_access_requests", "state");
    assert_eq!(requests.len(), 10);
    let stored = db_counts(
        &server.attacker,
        "SELECT state, COUNT(*) FROM access_requests GROUP BY state",
    )
    .await;
    assert_eq!(
        stored,
        BTreeMap::from([("cancelled".to_owned(), 1.0), ("denied".to_owned(), 2.0)])
    );
    for (state, n) in &requests {
        assert_eq!(*n, stored.get(state).copied().unwrap_or(0.0), "{state}");
    }
    assert_eq!(
        metrics.by("latch_vault_rotations", "state"),
        BTreeMap::from([
            ("confirmed".to_owned(), 0.0),
            ("failed".to_owned(), 0.0),
            ("pending".to_owned(), 0.0),
        ])
    );
    assert_eq!(
        metrics.by("latch_grants_unrevoked", "state"),
        BTreeMap::from([
            ("revocation_stuck".to_owned(), 0.0),
            ("revoking".to_owned(), 0.0),
        ])
    );

    // Request latencies: by route template (never the raw path) and status class.
    let polls = metrics
        .samples("latch_http_request_duration_seconds_count")
        .find(|s| {
            s.labels.get("route") == Some("/v1/agent/jobs")
                && s.labels.get("method") == Some("GET")
                && s.labels.get("status") == Some("2xx")
        })
        .unwrap_or_else(|| panic!("no poll histogram in\n{}", metrics.text));
    assert_eq!(polls.value, Metric::Untyped(2.0));
    assert!(
        metrics
            .samples("latch_http_request_duration_seconds_count")
            .any(|s| s.labels.get("route") == Some("/v1/jobs")),
        "{}",
        metrics.text
    );
    assert!(
        !metrics.text.contains(&leased),
        "a job id (a raw path) became a label"
    );
    let (status, _) = server.call("GET", "/no/such/path/xyz", None, None).await;
    assert_eq!(status, 404);
    let metrics = server.scrape().await;
    assert!(!metrics.text.contains("/no/such"), "{}", metrics.text);
    assert!(
        metrics
            .samples("latch_http_request_duration_seconds_count")
            .any(|s| s.labels.get("route") == Some("unmatched")
                && s.labels.get("status") == Some("4xx")),
        "{}",
        metrics.text
    );
}
both_stores!(scrape_matches_the_store);

async fn metrics_need_a_token_and_health_needs_none(db: TestDb) {
    let server = Server::start(db).await;
    let (status, answer) = server.call("GET", "/metrics", None, None).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["code"], "authentication_error");
    let (status, answer) = server.call("GET", "/healthz", None, None).await;
    assert_eq!((status, &answer), (200, &json!({"status": "ok"})));
    let (status, answer) = server.call("GET", "/readyz", None, None).await;
    assert_eq!((status, &answer), (200, &json!({"status": "ok"})));

    // The database loses Latch's tables: not ready (503 service_offline), yet alive.
    server
        .attacker
        .exec("ALTER TABLE hosts RENAME TO hosts_away")
        .await;
    let (status, answer) = server.call("GET", "/readyz", None, None).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["code"], "service_offline");
    let (status, _) = server.call("GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    server
        .attacker
        .exec("ALTER TABLE hosts_away RENAME TO hosts")
        .await;
    let (status, answer) = server.call("GET", "/readyz", None, None).await;
    assert_eq!(status, 200, "{answer}");
}
both_stores!(metrics_need_a_token_and_health_needs_none);
