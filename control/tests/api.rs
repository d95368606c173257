//! The HTTP API over a real socket: authentication, malformed input, limits and paging. Each bad
//! request must get a 4xx with the documented code and change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::sync::Arc;

use latch_control::api::limits::RateLimits;
use latch_control::client::{AdminClient, ClientError};
use latch_control::{Control, ControlConfig, datadir, server};
use serde_json::{Value, json};
use support::TestDb;

struct Api {
    url: String,
    /// The bootstrap admin's bearer token.
    admin: String,
    /// The bootstrap admin's API key (`admin.token`).
    admin_key: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _db: TestDb,
}

impl Api {
    async fn start(db: TestDb) -> Api {
        Self::start_with(db, ControlConfig::default()).await
    }

    async fn start_with(db: TestDb, config: ControlConfig) -> Api {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let data = datadir::open(dir.path(), &db.options()).await.unwrap();
        let admin = std::fs::read_to_string(&data.admin_token_path)
            .unwrap()
            .trim()
            .to_owned();
        let control = Arc::new(
            Control::new(data.store, config, data.signer).with_master_key(data.master_key),
        );
        let listener = server::bind("127.0.0.1:0".parse().unwrap(), false)
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(server::run(control, listener, None, std::future::pending()));
        let mut api = Api {
            url,
            admin: String::new(),
            admin_key: admin,
            http: reqwest::Client::new(),
            _dir: dir,
            _db: db,
        };
        // The admin token file holds the bootstrap admin's API key: exchange it for a bearer.
        let body = json!({"api_key": api.admin_key}).to_string().into_bytes();
        let (status, issued, _) = api
            .call(
                "POST",
                "/v1/service_token",
                None,
                Some(("application/json", body)),
            )
            .await;
        assert_eq!(status, 201, "{issued}");
        api.admin = issued["token"].as_str().unwrap().to_owned();
        api
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        self.call_forwarded(method, path, token, body, None).await
    }

    /// `call` with an `X-Forwarded-For` header, as a reverse proxy (or a liar) would send.
    async fn call_forwarded(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
        forwarded_for: Option<&str>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(forwarded_for) = forwarded_for {
            request = request.header("x-forwarded-for", forwarded_for);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, bytes)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        )
    }

    async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
        self.call(method, path, Some(&self.admin.clone()), body)
            .await
    }

    async fn enroll(&self, hostname: &str) -> String {
        let (_, token, _) = self
            .admin("POST", "/v1/enroll-tokens", Some(json!({})))
            .await;
        let facts = json!({"hostname": hostname, "os": "Debian 12", "kernel": "6.1", "arch": "x86_64",
                           "cpus": 2, "memory_bytes": 1024, "machine_id": "0123456789abcdef0123456789abcdef"});
        let body = json!({"token": token["token"], "facts": facts});
        let (status, enrolled, _) = self
            .call(
                "POST",
                "/v1/enroll",
                None,
                Some(("application/json", body.to_string().into_bytes())),
            )
            .await;
        assert_eq!(status, 201, "{enrolled}");
        enrolled["credential"].as_str().unwrap().to_owned()
    }
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], want_code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn admin_endpoints_need_the_admin_token_and_hosts_cannot_use_them(db: TestDb) {
    let api = Api::start(db).await;
    let host_credential = api.enroll("db1").await;
    for (method, path) in [
        ("GET", "/v1/hosts"),
        ("GET", "/v1/jobs"),
        ("POST", "/v1/enroll-tokens"),
    ] {
        let body = Some(("application/json", b"{}".to_vec()));
        let (status, error, _) = api.call(method, path, None, body.clone()).await;
        assert_error(status, &error, 401, "authentication_error");
        let (status, error, _) = api
            .call(method, path, Some("latch_admin_guess"), body.clone())
            .await;
        assert_error(status, &error, 401, "authentication_error");
        let (status, error, _) = api.call(method, path, Some(&host_credential), body).await;
        assert_error(status, &error, 401, "authentication_error");
    }
    let (status, error, _) = api
        .call("GET", "/v1/agent/jobs?wait=0", Some(&api.admin), None)
        .await;
    assert_error(status, &error, 401, "authentication_error");
    let (status, _, _) = api
        .call("GET", "/v1/agent/jobs?wait=0", Some(&host_credential), None)
        .await;
    assert_eq!(status, 200);
}
both_stores!(admin_endpoints_need_the_admin_token_and_hosts_cannot_use_them);

async fn malformed_bodies_get_clear_codes_and_queue_nothing(db: TestDb) {
    let api = Api::start(db).await;
    api.enroll("db1").await;
    let admin = api.admin.clone();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "text/plain",
            br#"{"host":"db1"}"#.to_vec(),
            415,
            "unsupported_content_type",
        ),
        (
            "application/json",
            b"{not json".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            br#"{"host": 5, "kind": "delete-account", "user": "alice"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            br#"{"host": "db1", "kind": "delete-account", "user": "alice", "force": true}"#
                .to_vec(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            br#"{"host": "db1", "kind": "run-shell", "user": "alice"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            br#"{"host": "db1", "kind": "delete-account", "user": "al\u0000ice"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "application/json",
            br#"{"host": "db1'; DROP TABLE jobs; --", "kind": "delete-account", "user": "alice"}"#
                .to_vec(),
            404,
            "resource_does_not_exist",
        ),
        (
            "application/json",
            format!(
                r#"{{"host": "db1", "kind": "delete-account", "user": "{}"}}"#,
                "a".repeat(100_000)
            )
            .into_bytes(),
            413,
            "invalid_request",
        ),
    ];
    for (content_type, body, want_status, want_code) in cases {
        let (status, error, _) = api
            .call("POST", "/v1/jobs", Some(&admin), Some((content_type, body)))
            .await;
        assert_error(status, &error, want_status, want_code);
    }
    let (status, jobs, _) = api.admin("GET", "/v1/jobs", None).await;
    assert_eq!((status, jobs), (200, json!({"list": []})));
}
both_stores!(malformed_bodies_get_clear_codes_and_queue_nothing);

async fn ids_in_paths_and_queries_are_checked(db: TestDb) {
    let api = Api::start(db).await;
    for path in [
        "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
        "/v1/hosts/a%0Ab",
        "/v1/jobs?status=done",
        "/v1/jobs?count=0",
        "/v1/jobs?count=abc",
        "/v1/jobs?bogus=1",
    ] {
        let (status, error, _) = api.admin("GET", path, None).await;
        assert_error(status, &error, 400, "invalid_request");
    }
    let (status, error, _) = api
        .admin("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000", None)
        .await;
    assert_error(status, &error, 404, "resource_does_not_exist");
    let (status, error, _) = api.admin("GET", "/v1/nothing-here", None).await;
    assert_error(status, &error, 404, "resource_does_not_exist");
    let (status, error, _) = api.admin("DELETE", "/v1/jobs", None).await;
    assert_error(status, &error, 405, "invalid_request");
}
both_stores!(ids_in_paths_and_queries_are_checked);

async fn lists_are_paged_with_link_headers(db: TestDb) {
    let api = Api::start(db).await;
    api.enroll("db1").await;
    for user in ["u1", "u2", "u3"] {
        let (status, _, _) = api
            .admin(
                "POST",
                "/v1/jobs",
                Some(json!({"host": "db1", "kind": "delete-account", "user": user})),
            )
            .await;
        assert_eq!(status, 201);
    }
    let (_, page, headers) = api.admin("GET", "/v1/jobs?host=db1&count=2", None).await;
    assert_eq!(page["list"].as_array().unwrap().len(), 2);
    let link = headers["link"].to_str().unwrap();
    assert!(
        link.contains("rel=\"next\"") && link.contains("offset=2") && link.contains("host=db1"),
        "{link}"
    );
    assert!(!link.contains("rel=\"prev\""), "{link}");
    let (_, page, headers) = api
        .admin("GET", "/v1/jobs?host=db1&count=2&offset=2", None)
        .await;
    assert_eq!(page["list"].as_array().unwrap().len(), 1);
    let link = headers["link"].to_str().unwrap();
    assert!(
        link.contains("rel=\"prev\"") && !link.contains("rel=\"next\""),
        "{link}"
    );
}
both_stores!(lists_are_paged_with_link_headers);

async fn enrollment_refuses_hostile_facts_and_bad_tokens(db: TestDb) {
    let api = Api::start(db).await;
    let (_, token, _) = api
        .admin("POST", "/v1/enroll-tokens", Some(json!({"uses": 5})))
        .await;
    let facts = |hostname: &str| {
        json!({"hostname": hostname, "os": "Debian", "kernel": "6.1", "arch": "x86_64",
                                         "cpus": 2, "memory_bytes": 1, "machine_id": "0123456789abcdef0123456789abcdef"})
    };
    for hostname in ["evil\nhost", "", "a b", "../../x"] {
        let body = json!({"token": token["token"], "facts": facts(hostname)})
            .to_string()
            .into_bytes();
        let (status, error, _) = api
            .call("POST", "/v1/enroll", None, Some(("application/json", body)))
            .await;
        assert_error(status, &error, 400, "invalid_request");
    }
    let body = json!({"token": "latch_enroll_guess", "facts": facts("db1")})
        .to_string()
        .into_bytes();
    let (status, error, _) = api
        .call("POST", "/v1/enroll", None, Some(("application/json", body)))
        .await;
    assert_error(status, &error, 401, "authentication_error");
    for bad in [
        json!({"ttl_seconds": 0}),
        json!({"uses": 0}),
        json!({"ttl_seconds": 99_999_999}),
    ] {
        let (status, error, _) = api.admin("POST", "/v1/enroll-tokens", Some(bad)).await;
        assert_error(status, &error, 400, "invalid_request");
    }
    let (_, hosts, _) = api.admin("GET", "/v1/hosts", None).await;
    assert_eq!(hosts, json!({"list": []}));
}
both_stores!(enrollment_refuses_hostile_facts_and_bad_tokens);

async fn every_response_carries_rate_limit_headers_and_429_past_the_limit(db: TestDb) {
    let limits = latch_control::api::limits::RateLimits {
        per_principal: 5,
        ..Default::default()
    };
    let api = Api::start_with(
        db,
        ControlConfig {
            rate_limits: limits,
            ..ControlConfig::default()
        },
    )
    .await;
    for i in 1..=5u32 {
        let (status, _, headers) = api.admin("GET", "/v1/hosts", None).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-ratelimit-limit"], "5");
        assert_eq!(
            headers["x-ratelimit-remaining"],
            (5 - i).to_string().as_str()
        );
        assert!(
            headers.contains_key("x-ratelimit-reset")
                && headers.contains_key("x-ratelimit-retry-at")
        );
    }
    let (status, error, headers) = api.admin("GET", "/v1/hosts", None).await;
    assert_error(status, &error, 429, "too_many_requests");
    assert!(headers.contains_key("retry-after") && headers["x-ratelimit-remaining"] == "0");
    // Another principal has its own budget.
    let (status, _, _) = api.call("GET", "/v1/health", None, None).await;
    assert_eq!(status, 200);
}
both_stores!(every_response_carries_rate_limit_headers_and_429_past_the_limit);

fn limits(auth_failures: u32, address_auth_failures: u32) -> ControlConfig {
    ControlConfig {
        rate_limits: RateLimits {
            per_principal: 10_000,
            auth_failures,
            address_auth_failures,
            trusted_proxies: Vec::new(),
        },
        ..ControlConfig::default()
    }
}

fn enroll_body(token: &str) -> Option<(&'static str, Vec<u8>)> {
    let facts = json!({"hostname": "db9", "os": "Debian 12", "kernel": "6.1", "arch": "x86_64",
                       "cpus": 2, "memory_bytes": 1024, "machine_id": "0123456789abcdef0123456789abcdef"});
    Some((
        "application/json",
        json!({"token": token, "facts": facts})
            .to_string()
            .into_bytes(),
    ))
}

async fn guessing_credentials_is_throttled_per_address(db: TestDb) {
    let api = Api::start_with(db, limits(100, 3)).await;
    for guess in 0..3 {
        let (status, _, _) = api
            .call(
                "GET",
                "/v1/hosts",
                Some(&format!("latch_admin_guess{guess}")),
                None,
            )
            .await;
        assert_eq!(status, 401);
    }
    // New guesses — and even enrollment attempts — from the same address now wait.
    let (status, error, _) = api
        .call("GET", "/v1/hosts", Some("latch_admin_another"), None)
        .await;
    assert_error(status, &error, 429, "too_many_requests");
    let (status, _, _) = api
        .call(
            "POST",
            "/v1/enroll",
            None,
            enroll_body("latch_enroll_guess"),
        )
        .await;
    assert_eq!(status, 429);
}
both_stores!(guessing_credentials_is_throttled_per_address);

/// Finding 18: one agent retrying a dead credential from behind a NAT used to lock every agent
/// (and the admin) behind that NAT out. Now the credential is throttled, not the address.
async fn finding_18_a_refused_credential_throttles_itself_not_its_address(db: TestDb) {
    let api = Api::start_with(db, limits(30, 300)).await;
    let host = api.enroll("db1").await;
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let (status, body, _) = api
            .call("GET", "/v1/agent/self", Some("latch_host_removed0"), None)
            .await;
        if status == 429 {
            assert_error(status, &body, 429, "too_many_requests");
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .contains("with this credential"),
                "{body}"
            );
        }
        statuses.push(status);
    }
    assert_eq!(statuses[..30], [401; 30], "{statuses:?}");
    assert_eq!(statuses[30..], [429; 10], "{statuses:?}");
    // Everyone else at the same address carries on: a host, the admin, a new enrollment, and
    // even a different wrong token is told it is wrong (401), not to wait.
    let (status, _, _) = api.call("GET", "/v1/agent/self", Some(&host), None).await;
    assert_eq!(status, 200);
    let (status, _, _) = api.admin("GET", "/v1/hosts", None).await;
    assert_eq!(status, 200);
    api.enroll("db2").await;
    let (status, _, _) = api
        .call("GET", "/v1/agent/self", Some("latch_host_other"), None)
        .await;
    assert_eq!(status, 401);

    // The same holds for an enrollment token, which travels in the body.
    let mut statuses = Vec::new();
    for _ in 0..31 {
        let (status, _, _) = api
            .call(
                "POST",
                "/v1/enroll",
                None,
                enroll_body("latch_enroll_expired"),
            )
            .await;
        statuses.push(status);
    }
    assert_eq!(statuses[..30], [401; 30], "{statuses:?}");
    assert_eq!(statuses[30], 429, "{statuses:?}");
    api.enroll("db3").await;
}
both_stores!(finding_18_a_refused_credential_throttles_itself_not_its_address);

/// Finding 18: spraying many different guesses is bounded by a separate, much higher budget per
/// address; past it the address waits — but credentials that authenticated recently do not.
async fn finding_18_many_distinct_bad_tokens_stay_under_the_address_budget(db: TestDb) {
    let api = Api::start_with(db, limits(30, 60)).await;
    let host = api.enroll("db1").await;
    let (status, _, _) = api.call("GET", "/v1/agent/self", Some(&host), None).await;
    assert_eq!(status, 200);
    let (status, _, _) = api.admin("GET", "/v1/hosts", None).await;
    assert_eq!(status, 200);
    for guess in 0..60 {
        let (status, _, _) = api
            .call(
                "GET",
                "/v1/hosts",
                Some(&format!("latch_admin_guess{guess}")),
                None,
            )
            .await;
        assert_eq!(status, 401, "guess {guess}");
    }
    let (status, body, headers) = api
        .call("GET", "/v1/hosts", Some("latch_admin_guess60"), None)
        .await;
    assert_error(status, &body, 429, "too_many_requests");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("from this address"),
        "{body}"
    );
    assert_eq!(headers["x-ratelimit-limit"], "60");
    assert!(headers.contains_key("retry-after"));
    // Unknown credentials and enrollments from this address wait…
    let (status, _, _) = api
        .call(
            "POST",
            "/v1/enroll",
            None,
            enroll_body("latch_enroll_guess"),
        )
        .await;
    assert_eq!(status, 429);
    // …the host and the admin, who authenticated before, do not.
    let (status, _, _) = api.call("GET", "/v1/agent/self", Some(&host), None).await;
    assert_eq!(status, 200);
    let (status, _, _) = api.admin("GET", "/v1/hosts", None).await;
    assert_eq!(status, 200);
}
both_stores!(finding_18_many_distinct_bad_tokens_stay_under_the_address_budget);

/// Finding 18: `X-Forwarded-For` names the client only when the peer is a trusted proxy, and
/// then its rightmost untrusted entry; from anyone else it is ignored.
async fn finding_18_forwarded_for_is_honoured_only_from_a_trusted_proxy(db: TestDb) {
    // No trusted proxy: every guess counts against the peer, whatever the header claims.
    let api = Api::start_with(db, limits(30, 3)).await;
    for guess in 0..3 {
        let (status, _, _) = api
            .call_forwarded(
                "GET",
                "/v1/hosts",
                Some(&format!("latch_admin_guess{guess}")),
                None,
                Some(&format!("203.0.113.{guess}")),
            )
            .await;
        assert_eq!(status, 401);
    }
    let (status, _, _) = api
        .call_forwarded(
            "GET",
            "/v1/hosts",
            Some("latch_admin_guess3"),
            None,
            Some("203.0.113.99"),
        )
        .await;
    assert_eq!(
        status, 429,
        "X-Forwarded-For from an untrusted peer was believed"
    );

    // The peer (loopback) is a trusted proxy: each forwarded client has its own budget.
    let mut config = limits(30, 3);
    config.rate_limits.trusted_proxies =
        vec![latch_control::api::limits::parse_trusted_proxy("127.0.0.0/8").unwrap()];
    let api = Api::start_with(api._db.another().await, config).await;
    let mut guess = 0;
    let mut try_from = async |forwarded: Option<&str>| {
        guess += 1;
        api.call_forwarded(
            "GET",
            "/v1/hosts",
            Some(&format!("latch_admin_guess{guess}")),
            None,
            forwarded,
        )
        .await
        .0
    };
    for _ in 0..3 {
        assert_eq!(try_from(Some("203.0.113.7")).await, 401);
    }
    assert_eq!(try_from(Some("203.0.113.7")).await, 429);
    // A client cannot escape by prepending addresses: the rightmost untrusted entry counts.
    assert_eq!(try_from(Some("198.51.100.1, 203.0.113.7")).await, 429);
    assert_eq!(try_from(Some("203.0.113.7, 127.0.0.1")).await, 429);
    // Another client behind the same proxy, and the proxy itself, are not affected.
    assert_eq!(try_from(Some("203.0.113.8")).await, 401);
    assert_eq!(try_from(None).await, 401);
}
both_stores!(finding_18_forwarded_for_is_honoured_only_from_a_trusted_proxy);

fn latchctl() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_latchctl"));
    command
        .env_remove("LATCH_SERVER")
        .env_remove("LATCH_TOKEN")
        .env_remove("LATCH_CA_FILE")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

async fn run_latchctl(args: &[&str]) -> (Option<i32>, String, String) {
    let output = latchctl().args(args).output().await.unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Finding 12: `latchctl` refuses plain `http://` to anything but loopback before it connects,
/// so the admin token is never sent in clear text. (192.0.2.1 is a documentation address; it is
/// never contacted.)
async fn finding_12_latchctl_refuses_plain_http_to_a_remote_server_before_sending_anything(
    db: TestDb,
) {
    let remote = "http://192.0.2.1:9";
    let error = match AdminClient::new(remote, "latch_admin_secret", None) {
        Err(error) => error,
        Ok(_) => panic!("a client for plain http:// to a remote host was built"),
    };
    assert!(
        matches!(error, ClientError::InsecureServer { .. }),
        "{error:?}"
    );
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = run_latchctl(&[
        "--server",
        remote,
        "--token",
        "latch_admin_secret",
        "hosts",
        "list",
    ])
    .await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "refused only after {:?}: it tried to connect",
        started.elapsed()
    );
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("refusing to send the admin token over plain http://")
            && stderr.contains("use https://")
            && stderr.contains("--insecure-http"),
        "{stderr}"
    );
    assert!(!stderr.contains("latch_admin_secret"), "{stderr}");
    // Loopback over plain HTTP (the development setup) still works.
    let api = Api::start(db).await;
    let (code, stdout, stderr) =
        run_latchctl(&["--server", &api.url, "--token", &api.admin, "hosts", "list"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}
both_stores!(finding_12_latchctl_refuses_plain_http_to_a_remote_server_before_sending_anything);

async fn latchctl_prints_errors_as_json_in_json_mode(db: TestDb) {
    let api = Api::start(db).await;
    // An API error keeps its code; it goes to stdout, nothing to stderr, exit status 1.
    let (code, stdout, stderr) = run_latchctl(&[
        "--output",
        "json",
        "--server",
        &api.url,
        "--token",
        &api.admin,
        "hosts",
        "show",
        "no-such-host",
    ])
    .await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let error: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(error["code"], "resource_does_not_exist", "{error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    let (code, stdout, _) = run_latchctl(&[
        "--output",
        "json",
        "--server",
        &api.url,
        "--token",
        "latch_admin_wrong",
        "hosts",
        "list",
    ])
    .await;
    assert_eq!(code, Some(1));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap()["code"],
        "authentication_error"
    );
    // Local errors get a code too: refused input, and flags that do not parse.
    for (args, want) in [
        (
            vec!["--server", "http://192.0.2.1:9", "hosts", "list"],
            "invalid_request",
        ),
        (
            vec!["enroll-token", "create", "--ttl", "0s"],
            "invalid_request",
        ),
    ] {
        let mut all = vec!["--output", "json", "--token", "x"];
        all.extend(args);
        let (code, stdout, stderr) = run_latchctl(&all).await;
        assert_ne!(code, Some(0), "{all:?}");
        assert!(stderr.is_empty(), "{all:?}: {stderr}");
        let error: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{all:?}: not JSON ({e}): {stdout}"));
        assert_eq!(error["code"], want, "{error}");
    }
    // The server cannot be reached.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (code, stdout, _) = run_latchctl(&[
        "--output", "json", "--server", &url, "--token", "x", "hosts", "list",
    ])
    .await;
    assert_eq!(code, Some(1));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap()["code"],
        "service_offline"
    );
    // Table mode keeps `error: …` on stderr.
    let (code, stdout, stderr) = run_latchctl(&[
        "--server",
        &api.url,
        "--token",
        &api.admin,
        "hosts",
        "show",
        "no-such-host",
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.starts_with("error: "), "{stderr}");
}
both_stores!(latchctl_prints_errors_as_json_in_json_mode);

async fn latchctl_exits_quietly_when_its_output_is_closed(db: TestDb) {
    let api = Api::start(db).await;
    for output in ["table", "json"] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader); // like `| head` that already exited
        // (`output()` would replace the closed pipe with one of its own.)
        let result = latchctl()
            .args([
                "--output", output, "--server", &api.url, "--token", &api.admin, "hosts", "list",
            ])
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
            .wait_with_output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(
            !stderr.contains("panicked") && stderr.is_empty(),
            "{output}: {stderr}"
        );
        assert_eq!(result.status.code(), Some(141), "{output}: {stderr}");
    }
}
both_stores!(latchctl_exits_quietly_when_its_output_is_closed);

#[tokio::test]
async fn latchctl_refuses_a_zero_negative_or_garbage_ttl_in_plain_words() {
    for (ttl, want) in [
        ("0s", "at least 1s"),
        ("0", "at least 1s"),
        ("500ms", "at least 1s"),
        ("-5m", "cannot be negative"),
        ("soon", "is not a duration"),
    ] {
        let (code, _, stderr) = run_latchctl(&[
            "--server",
            "https://127.0.0.1:1",
            "--token",
            "x",
            "enroll-token",
            "create",
            "--ttl",
            ttl,
        ])
        .await;
        assert_eq!(code, Some(2), "{ttl}: {stderr}");
        assert!(stderr.contains(want), "{ttl}: {stderr}");
    }
}

/// Issue 4 test 6: every hostile request in `hostile_inputs.json` gets its 4xx with the right
/// code — never a 500 — and nothing changes.
async fn hostile_inputs_to_every_endpoint_are_refused_and_change_nothing(db: TestDb) {
    let api = Api::start(db).await;
    let host = api.enroll("db1").await;
    let (status, vault, _) = api
        .admin("POST", "/v1/vaults", Some(json!({"name": "hv"})))
        .await;
    assert_eq!(status, 201, "{vault}");
    let before = (
        api.admin("GET", "/v1/hosts", None).await.1,
        api.admin("GET", "/v1/jobs", None).await.1,
        api.admin("GET", "/v1/vaults", None).await.1,
        api.admin("GET", "/v1/vaults/hv/identities", None).await.1,
        api.admin("GET", "/v1/vaults/hv/grants", None).await.1,
        api.admin("GET", "/v1/access/requests", None).await.1,
    );
    let cases: Value = serde_json::from_str(include_str!("hostile_inputs.json")).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let token = match case["auth"].as_str().unwrap() {
            "admin" => Some(api.admin.clone()),
            "host" => Some(host.clone()),
            _ => None,
        };
        let body = case["body"].as_str().map(|body| {
            let bytes = match body {
                "BIG" => format!(
                    "{{\"host\": \"db1\", \"user\": \"{}\"}}",
                    "a".repeat(100_000)
                )
                .into_bytes(),
                "NESTED" => format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
                other => other.as_bytes().to_vec(),
            };
            (
                case["content_type"].as_str().unwrap_or("application/json"),
                bytes,
            )
        });
        let (status, error, _) = api
            .call(
                case["method"].as_str().unwrap(),
                case["path"].as_str().unwrap(),
                token.as_deref(),
                body,
            )
            .await;
        assert_eq!(
            status,
            case["expect_status"].as_u64().unwrap() as u16,
            "{name}: {error}"
        );
        assert_eq!(error["code"], case["expect_code"], "{name}: {error}");
    }
    let after = (
        api.admin("GET", "/v1/hosts", None).await.1,
        api.admin("GET", "/v1/jobs", None).await.1,
        api.admin("GET", "/v1/vaults", None).await.1,
        api.admin("GET", "/v1/vaults/hv/identities", None).await.1,
        api.admin("GET", "/v1/vaults/hv/grants", None).await.1,
        api.admin("GET", "/v1/access/requests", None).await.1,
    );
    assert_eq!(before, after, "a hostile request changed something");
}
both_stores!(hostile_inputs_to_every_endpoint_are_refused_and_change_nothing);

impl Api {
    /// Queues a job as admin and has the host (`credential`) confirm it; returns the job.
    async fn confirmed(&self, credential: &str, body: Value) -> Value {
        let (status, job, _) = self.admin("POST", "/v1/jobs", Some(body)).await;
        assert_eq!(status, 201, "{job}");
        let (status, polled, _) = self
            .call("GET", "/v1/agent/jobs?wait=0", Some(credential), None)
            .await;
        assert_eq!(status, 200, "{polled}");
        let delivered = &polled["list"][0];
        assert_eq!(delivered["id"], job["id"]);
        let report = json!({"lease": delivered["lease"], "outcome": {"status": "confirmed"}});
        let (status, _, _) = self
            .call(
                "POST",
                &format!("/v1/agent/jobs/{}/report", job["id"].as_str().unwrap()),
                Some(credential),
                Some(("application/json", report.to_string().into_bytes())),
            )
            .await;
        assert_eq!(status, 204);
        job
    }
}

async fn grants_are_listed_with_filters_states_and_link_headers(db: TestDb) {
    let api = Api::start(db).await;
    let host = api.enroll("db1").await;
    for user in ["u1", "u2", "u3"] {
        api.confirmed(
            &host,
            json!({"host": "db1", "kind": "create-account", "user": user, "expires_in_ms": 3_600_000}),
        )
        .await;
    }
    api.confirmed(
        &host,
        json!({"host": "db1", "kind": "delete-account", "user": "u1"}),
    )
    .await;
    let (status, page, headers) = api.admin("GET", "/v1/grants?count=2", None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["list"].as_array().unwrap().len(), 2);
    let link = headers["link"].to_str().unwrap();
    assert!(
        link.contains("rel=\"next\"") && link.contains("offset=2"),
        "{link}"
    );
    let (_, page, _) = api
        .admin("GET", "/v1/grants?host=db1&state=active", None)
        .await;
    let active: Vec<&str> = page["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["user"].as_str().unwrap())
        .collect();
    assert_eq!(active, ["u3", "u2"]);
    let (_, page, _) = api.admin("GET", "/v1/grants?user=u1", None).await;
    let grant = &page["list"][0];
    assert_eq!(grant["state"], "revoked", "{grant}");
    assert_eq!(grant["revoked_by"], "job", "{grant}");
    assert_eq!(grant["host_name"], "db1", "{grant}");
    assert!(grant["revoked_by_job"].is_string(), "{grant}");
    let (_, page, _) = api.admin("GET", "/v1/grants?host=nohost", None).await;
    assert_eq!(page, json!({"list": []}));
    // Jobs show the host's name and the grant state.
    let (_, jobs, _) = api.admin("GET", "/v1/jobs?host=db1", None).await;
    let jobs = jobs["list"].as_array().unwrap();
    assert!(jobs.iter().all(|j| j["host_name"] == "db1"), "{jobs:?}");
    assert_eq!(
        jobs.iter()
            .filter(|j| j["grant_state"] == "revoked")
            .count(),
        1
    );
    for path in [
        "/v1/grants?state=gone",
        "/v1/grants?user=a%0Ab",
        "/v1/grants?user=-x",
        "/v1/grants?host=..%2Fetc",
        "/v1/grants?since=yesterday",
        "/v1/grants?count=0",
        "/v1/grants?all_hosts=1",
    ] {
        let (status, error, _) = api.admin("GET", path, None).await;
        assert_error(status, &error, 400, "invalid_request");
    }
    let (status, error, _) = api.call("GET", "/v1/grants", Some(&host), None).await;
    assert_error(status, &error, 401, "authentication_error");
}
both_stores!(grants_are_listed_with_filters_states_and_link_headers);

/// Finding 20 at the API: windows that are not positive or beyond the maximum are refused with
/// `invalid_request` naming the limit; no end means the default window; `permanent` has none.
async fn finding_20_the_api_refuses_grant_windows_outside_the_limit(db: TestDb) {
    let api = Api::start(db).await;
    api.enroll("db1").await;
    let past = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let far = (chrono::Utc::now() + chrono::Duration::days(100_000)).to_rfc3339();
    for body in [
        json!({"host": "db1", "kind": "create-account", "user": "alice", "expires_in_ms": 0}),
        json!({"host": "db1", "kind": "create-account", "user": "alice", "expires_at": past}),
        json!({"host": "db1", "kind": "add-group", "user": "alice", "group": "sudo", "expires_at": far}),
        json!({"host": "db1", "kind": "add-group", "user": "alice", "group": "sudo", "expires_in_ms": 8_640_000_000_000_u64}),
    ] {
        let (status, error, _) = api.admin("POST", "/v1/jobs", Some(body.clone())).await;
        assert_error(status, &error, 400, "invalid_request");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("at most 24h") && message.contains("--max-grant-duration"),
            "{body}: {message}"
        );
    }
    for body in [
        json!({"host": "db1", "kind": "create-account", "user": "alice", "expires_in_ms": -300000}),
        json!({"host": "db1", "kind": "create-account", "user": "alice", "permanent": true, "expires_in_ms": 60000}),
        json!({"host": "db1", "kind": "delete-account", "user": "alice", "permanent": true}),
        json!({"host": "db1", "kind": "delete-account", "user": "alice", "expires_in_ms": 60000}),
    ] {
        let (status, error, _) = api.admin("POST", "/v1/jobs", Some(body.clone())).await;
        assert_error(status, &error, 400, "invalid_request");
    }
    let (_, jobs, _) = api.admin("GET", "/v1/jobs", None).await;
    assert_eq!(jobs, json!({"list": []}));
    let (status, job, _) = api
        .admin(
            "POST",
            "/v1/jobs",
            Some(json!({"host": "db1", "kind": "create-account", "user": "alice"})),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let at =
        |field: &str| chrono::DateTime::parse_from_rfc3339(job[field].as_str().unwrap()).unwrap();
    let window = at("expires_at") - at("created_at");
    assert!(
        (window - chrono::Duration::hours(1)).abs() < chrono::Duration::seconds(5),
        "{job}"
    );
    let (status, job, _) = api
        .admin(
            "POST",
            "/v1/jobs",
            Some(
                json!({"host": "db1", "kind": "create-account", "user": "bob", "permanent": true}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    assert!(job["expires_at"].is_null(), "{job}");
}
both_stores!(finding_20_the_api_refuses_grant_windows_outside_the_limit);

/// `POST …/report?next=true` answers with the host's next job, leased as a poll would lease
/// it (an empty list when none is queued); without the parameter the answer stays 204.
async fn a_report_can_carry_the_next_job(db: TestDb) {
    let api = Api::start(db).await;
    let host = api.enroll("db1").await;
    let mut ids = Vec::new();
    for user in ["u1", "u2", "u3"] {
        let (status, job, _) = api
            .admin(
                "POST",
                "/v1/jobs",
                Some(json!({"host": "db1", "kind": "create-account", "user": user, "expires_in_ms": 3_600_000})),
            )
            .await;
        assert_eq!(status, 201, "{job}");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let (status, polled, _) = api
        .call("GET", "/v1/agent/jobs?wait=0", Some(&host), None)
        .await;
    assert_eq!(status, 200, "{polled}");
    let mut delivered = polled["list"][0].clone();
    let report = |lease: &Value| {
        json!({"lease": lease, "outcome": {"status": "confirmed"}})
            .to_string()
            .into_bytes()
    };
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(delivered["id"], id.as_str());
        let query = if i == 1 { "" } else { "?next=true" };
        let (status, answer, _) = api
            .call(
                "POST",
                &format!("/v1/agent/jobs/{id}/report{query}"),
                Some(&host),
                Some(("application/json", report(&delivered["lease"]))),
            )
            .await;
        let (_, job, _) = api.admin("GET", &format!("/v1/jobs/{id}"), None).await;
        assert_eq!(job["status"], "confirmed", "{job}");
        match i {
            0 => {
                assert_eq!(status, 200, "{answer}");
                delivered = answer["list"][0].clone();
                assert_eq!(delivered["id"], ids[1].as_str(), "{answer}");
                assert!(delivered["lease"].is_string() && delivered["signature"].is_string());
            }
            1 => {
                assert_eq!(status, 204, "without ?next the answer is 204: {answer}");
                let (_, polled, _) = api
                    .call("GET", "/v1/agent/jobs?wait=0", Some(&host), None)
                    .await;
                delivered = polled["list"][0].clone();
            }
            _ => {
                assert_eq!(status, 200, "{answer}");
                assert_eq!(answer["list"], json!([]), "nothing queued: {answer}");
            }
        }
    }
}
both_stores!(a_report_can_carry_the_next_job);

impl Api {
    /// Enrolls `hostname` with a new token made from `token_request` (as admin); returns the
    /// host credential.
    async fn enroll_with(&self, hostname: &str, token_request: Value) -> String {
        let (status, token, _) = self
            .admin("POST", "/v1/enroll-tokens", Some(token_request))
            .await;
        assert_eq!(status, 201, "{token}");
        let facts = json!({"hostname": hostname, "os": "Debian 12", "kernel": "6.1", "arch": "x86_64",
                           "cpus": 2, "memory_bytes": 1024, "machine_id": "0123456789abcdef0123456789abcdef"});
        let body = json!({"token": token["token"], "facts": facts});
        let (status, enrolled, _) = self
            .call(
                "POST",
                "/v1/enroll",
                None,
                Some(("application/json", body.to_string().into_bytes())),
            )
            .await;
        assert_eq!(status, 201, "{enrolled}");
        enrolled["credential"].as_str().unwrap().to_owned()
    }

    /// Audit entries with this action, their details decoded.
    async fn audit_details(&self, action: &str) -> Vec<Value> {
        let (status, entries, _) = self.admin("GET", "/v1/audit?count=1000", None).await;
        assert_eq!(status, 200, "{entries}");
        entries["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| serde_json::from_str(e["detail"].as_str().unwrap()).unwrap())
            .collect()
    }

    /// Every item of a list, following `Link: rel="next"` from `path` as `token`; returns the
    /// pages' items (each page's `field` values).
    async fn pages(&self, path: &str, token: &str, field: &str) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(path) = next.take() {
            let (status, page, headers) = self.call("GET", &path, Some(token), None).await;
            assert_eq!(status, 200, "{path}: {page}");
            pages.push(
                page["list"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|item| item[field].as_str().unwrap().to_owned())
                    .collect(),
            );
            let link = headers
                .get("link")
                .map(|l| l.to_str().unwrap().to_owned())
                .unwrap_or_default();
            next = link
                .split(", ")
                .find(|l| l.ends_with("rel=\"next\""))
                .map(|l| l[1..l.find('>').unwrap()].to_owned());
            assert!(pages.len() < 100, "the pages never end: {path}");
        }
        pages
    }
}

async fn enroll_tokens_carry_labels_to_the_hosts_they_enroll(db: TestDb) {
    let api = Api::start(db).await;
    let (status, token, _) = api
        .admin(
            "POST",
            "/v1/enroll-tokens",
            Some(json!({"uses": 2, "labels": {"env": "prod", "team": "db"}})),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    assert_eq!(token["labels"], json!({"env": "prod", "team": "db"}));
    let facts = |hostname: &str| {
        json!({"hostname": hostname, "os": "Debian 12", "kernel": "6.1", "arch": "x86_64",
               "cpus": 2, "memory_bytes": 1024, "machine_id": "0123456789abcdef0123456789abcdef"})
    };
    for hostname in ["db-01", "db-02"] {
        let body = json!({"token": token["token"], "facts": facts(hostname)});
        let (status, enrolled, _) = api
            .call(
                "POST",
                "/v1/enroll",
                None,
                Some(("application/json", body.to_string().into_bytes())),
            )
            .await;
        assert_eq!(status, 201, "{enrolled}");
    }
    api.enroll("web-01").await;
    for (host, want) in [
        ("db-01", json!({"env": "prod", "team": "db"})),
        ("db-02", json!({"env": "prod", "team": "db"})),
        ("web-01", json!({})),
    ] {
        let (status, view, _) = api.admin("GET", &format!("/v1/hosts/{host}"), None).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["labels"], want, "{host}: {view}");
    }
    // The audit trail names the labels the token carried and the ones each host got.
    let created = api.audit_details("enroll_token.create").await;
    assert_eq!(created.len(), 2, "{created:?}");
    assert_eq!(created[0]["labels"], json!({"env": "prod", "team": "db"}));
    assert_eq!(created[1]["labels"], json!({}));
    let enrolled = api.audit_details("host.enroll").await;
    let labelled: Vec<(&str, &Value)> = enrolled
        .iter()
        .map(|e| (e["hostname"].as_str().unwrap(), &e["labels"]))
        .collect();
    assert_eq!(
        labelled,
        [
            ("db-01", &json!({"env": "prod", "team": "db"})),
            ("db-02", &json!({"env": "prod", "team": "db"})),
            ("web-01", &json!({})),
        ]
    );

    // Bad labels are refused, naming the problem, and no token is made.
    let too_many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (labels, says) in [
        (json!({"Env": "prod"}), "label key \"Env\""),
        (json!({"env": "pro d"}), "the value of label \"env\""),
        (
            json!({"-env": "prod"}),
            "must start and end with a letter or digit",
        ),
        (json!({"env": "x".repeat(64)}), "longer than 63"),
        (Value::Object(too_many), "at most 64 labels"),
    ] {
        let (status, error, _) = api
            .admin("POST", "/v1/enroll-tokens", Some(json!({"labels": labels})))
            .await;
        assert_error(status, &error, 400, "invalid_request");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(says), "{labels}: {message}");
    }
    assert_eq!(api.audit_details("enroll_token.create").await.len(), 2);
}
both_stores!(enroll_tokens_carry_labels_to_the_hosts_they_enroll);

async fn selectors_filter_hosts_jobs_and_grants(db: TestDb) {
    let api = Api::start(db).await;
    let mut credentials = std::collections::HashMap::new();
    for (host, labels) in [
        ("db-01", json!({"team": "db", "env": "prod"})),
        ("db-02", json!({"team": "db", "env": "dev"})),
        ("web-01", json!({"team": "web", "env": "prod"})),
        ("misc-01", json!({})),
    ] {
        let credential = api.enroll_with(host, json!({"labels": labels})).await;
        credentials.insert(host, credential);
    }
    let admin = api.admin.clone();
    let hosts = |selector: &str| {
        let path = format!(
            "/v1/hosts?selector={}",
            url::form_urlencoded::byte_serialize(selector.as_bytes()).collect::<String>()
        );
        let api = &api;
        let admin = admin.clone();
        async move { api.pages(&path, &admin, "hostname").await.concat() }
    };
    assert_eq!(hosts("team=db").await, ["db-01", "db-02"]);
    assert_eq!(
        hosts("team in (db,web),env=prod").await,
        ["db-01", "web-01"]
    );
    assert_eq!(hosts("env!=prod").await, ["db-02", "misc-01"]);
    assert_eq!(hosts("!team").await, ["misc-01"]);
    assert_eq!(hosts("team notin (db)").await, ["misc-01", "web-01"]);
    assert_eq!(hosts("team=ops").await, Vec::<String>::new());
    assert_eq!(
        hosts("").await,
        ["db-01", "db-02", "misc-01", "web-01"],
        "an empty selector matches every host"
    );

    // Jobs and grants of the matching hosts only: one confirmed grant per host.
    for (host, credential) in &credentials {
        api.confirmed(
            credential,
            json!({"host": host, "kind": "create-account", "user": "alice", "expires_in_ms": 3_600_000}),
        )
        .await;
    }
    let mut jobs = api
        .pages("/v1/jobs?selector=env%3Dprod&count=1", &admin, "host_name")
        .await;
    assert!(jobs.iter().all(|page| page.len() == 1), "{jobs:?}");
    jobs.sort();
    assert_eq!(jobs.concat(), ["db-01", "web-01"]);
    let mut grants = api
        .pages("/v1/grants?selector=team%3Ddb&count=1", &admin, "host_name")
        .await
        .concat();
    grants.sort();
    assert_eq!(grants, ["db-01", "db-02"]);
    let (_, both, _) = api
        .admin("GET", "/v1/jobs?host=db-01&selector=team%3Dweb", None)
        .await;
    assert_eq!(both, json!({"list": []}), "host and selector both apply");

    for path in [
        "/v1/hosts?selector=team%20in%20(db",
        "/v1/jobs?selector=Team%3Ddb",
        "/v1/grants?selector=team%3D%3D%3Ddb",
    ] {
        let (status, error, _) = api.admin("GET", path, None).await;
        assert_error(status, &error, 400, "invalid_request");
        assert!(
            error["message"].as_str().unwrap().contains("selector"),
            "{path}: {error}"
        );
    }
}
both_stores!(selectors_filter_hosts_jobs_and_grants);

async fn a_delegated_admin_pages_through_exactly_its_hosts(db: TestDb) {
    let api = Api::start(db).await;
    // 14 hosts in name order, every other one the delegation's: a page filtered after the
    // store returned it would come back short, and the client would stop early.
    let mut mine = Vec::new();
    let mut credentials = Vec::new();
    for i in 0..14 {
        let host = format!("h-{i:02}");
        let team = if i % 2 == 0 { "db" } else { "web" };
        let env = if i % 4 == 0 { "prod" } else { "dev" };
        credentials.push(
            api.enroll_with(&host, json!({"labels": {"team": team, "env": env}}))
                .await,
        );
        if team == "db" {
            mine.push(host);
        }
    }
    let (status, made, _) = api
        .admin(
            "POST",
            "/v1/service-users",
            Some(json!({"name": "dba-bot"})),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let (status, bound, _) = api
        .admin(
            "POST",
            "/v1/role-bindings",
            Some(json!({"role": "delegated_resource_admin", "service_user": "dba-bot", "selector": "team=db"})),
        )
        .await;
    assert_eq!(status, 201, "{bound}");
    let body = json!({"api_key": made["key"]["api_key"]})
        .to_string()
        .into_bytes();
    let (status, issued, _) = api
        .call(
            "POST",
            "/v1/service_token",
            None,
            Some(("application/json", body)),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let dba = issued["token"].as_str().unwrap().to_owned();

    let pages = api.pages("/v1/hosts?count=3", &dba, "hostname").await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [3, 3, 1], "{pages:?}");
    assert_eq!(pages.concat(), mine, "each of its hosts once, in order");

    // A selector narrows the delegation further, and follows the Link header.
    let pages = api
        .pages("/v1/hosts?selector=env%3Dprod&count=2", &dba, "hostname")
        .await;
    assert_eq!(pages, [vec!["h-00", "h-04"], vec!["h-08", "h-12"]]);

    // Jobs: one per host, queued by the admin; the delegated admin pages through its own.
    for (i, credential) in credentials.iter().enumerate() {
        api.confirmed(
            credential,
            json!({"host": format!("h-{i:02}"), "kind": "create-account", "user": "alice", "expires_in_ms": 3_600_000}),
        )
        .await;
    }
    for path in ["/v1/jobs?count=2", "/v1/grants?count=2"] {
        let pages = api.pages(path, &dba, "host_name").await;
        let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 2, 2, 1], "{path}: {pages:?}");
        let mut seen = pages.concat();
        seen.sort();
        assert_eq!(seen, mine, "{path}");
    }
    let (_, all, _) = api.admin("GET", "/v1/jobs?count=1000", None).await;
    assert_eq!(all["list"].as_array().unwrap().len(), 14);

    // Labels decide delegations: the delegated admin sets none, not even on its own hosts.
    let (status, error, _) = api
        .call(
            "PUT",
            "/v1/hosts/h-00/labels",
            Some(&dba),
            Some((
                "application/json",
                json!({"labels": {"team": "db", "env": "dev"}})
                    .to_string()
                    .into_bytes(),
            )),
        )
        .await;
    assert_error(status, &error, 403, "forbidden_error");
    let (_, host, _) = api.admin("GET", "/v1/hosts/h-00", None).await;
    assert_eq!(host["labels"], json!({"team": "db", "env": "prod"}));
}
both_stores!(a_delegated_admin_pages_through_exactly_its_hosts);

async fn latchctl_creates_labelled_tokens_labels_hosts_and_filters_lists(db: TestDb) {
    let api = Api::start(db).await;
    let (code, stdout, stderr) = run_latchctl(&[
        "--server",
        &api.url,
        "--token",
        &api.admin,
        "--output",
        "json",
        "enroll-token",
        "create",
        "--label",
        "env=prod",
        "--label",
        "team=db",
    ])
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let token: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(token["labels"], json!({"env": "prod", "team": "db"}));
    let facts = json!({"hostname": "db-01", "os": "Debian 12", "kernel": "6.1", "arch": "x86_64",
                       "cpus": 2, "memory_bytes": 1024, "machine_id": "0123456789abcdef0123456789abcdef"});
    let body = json!({"token": token["token"], "facts": facts});
    let (status, enrolled, _) = api
        .call(
            "POST",
            "/v1/enroll",
            None,
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await;
    assert_eq!(status, 201, "{enrolled}");
    api.enroll("web-01").await;

    let ctl = |args: &[&str]| {
        let mut all = vec!["--server", &api.url, "--token", &api.admin];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            run_latchctl(&all).await
        }
    };
    let (code, stdout, stderr) =
        ctl(&["hosts", "label", "db-01", "owner=alice", "--remove", "env"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("owner=alice,team=db"), "{stdout}");
    let (_, host, _) = api.admin("GET", "/v1/hosts/db-01", None).await;
    assert_eq!(host["labels"], json!({"owner": "alice", "team": "db"}));

    let (code, stdout, stderr) = ctl(&["hosts", "list", "--selector", "team in (db,ops)"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("LABELS") && stdout.contains("owner=alice,team=db"),
        "{stdout}"
    );
    assert!(
        stdout.contains("db-01") && !stdout.contains("web-01"),
        "{stdout}"
    );
    let (code, stdout, _) = ctl(&["hosts", "show", "db-01"]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("labels: owner=alice,team=db"), "{stdout}");

    let (code, stdout, stderr) =
        ctl(&["--output", "json", "jobs", "list", "--selector", "!team"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        json!({"list": []})
    );
    let (code, stdout, stderr) = ctl(&["grants", "--selector", "team in (db"]).await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stderr.contains("selector"), "{stderr}");

    // Nothing to change, a key both set and removed, or a bad label: refused before any request.
    for (args, says) in [
        (vec!["hosts", "label", "db-01"], "nothing to change"),
        (
            vec!["hosts", "label", "db-01", "env=dev", "--remove", "env"],
            "both set and removed",
        ),
        (vec!["hosts", "label", "db-01", "Env=dev"], "label key"),
        (
            vec!["enroll-token", "create", "--label", "prod"],
            "write key=value",
        ),
    ] {
        let (code, stdout, stderr) = ctl(&args).await;
        assert_ne!(code, Some(0), "{args:?}: {stdout}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let (_, host, _) = api.admin("GET", "/v1/hosts/db-01", None).await;
    assert_eq!(host["labels"], json!({"owner": "alice", "team": "db"}));
}
both_stores!(latchctl_creates_labelled_tokens_labels_hosts_and_filters_lists);

/// Every change names the address it came from: the peer, or — behind a trusted proxy — the
/// client it forwarded for; a forwarded-for header from anyone else is not believed.
async fn audit_entries_name_the_requests_address(db: TestDb) {
    let group = |name: &str| {
        Some((
            "application/json",
            json!({"name": name, "description": "address test"})
                .to_string()
                .into_bytes(),
        ))
    };
    let address_of = async |api: &Api, name: &str| -> Value {
        let (status, audit, _) = api.call("GET", "/v1/audit", Some(&api.admin), None).await;
        assert_eq!(status, 200, "{audit}");
        let entry = audit["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "group.create" && e["detail"].as_str().unwrap().contains(name))
            .cloned()
            .unwrap_or_else(|| panic!("no group.create entry for {name}: {audit}"));
        assert_eq!(entry["actor"], "service:admin");
        let detail: Value = serde_json::from_str(entry["detail"].as_str().unwrap()).unwrap();
        detail["address"].clone()
    };

    let api = Api::start(db).await;
    let (status, body, _) = api
        .call_forwarded(
            "POST",
            "/v1/groups",
            Some(&api.admin),
            group("direct"),
            Some("203.0.113.9"),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        address_of(&api, "direct").await,
        "127.0.0.1",
        "the peer is recorded; a header from an untrusted peer is not"
    );

    let mut config = ControlConfig::default();
    config.rate_limits.trusted_proxies =
        vec![latch_control::api::limits::parse_trusted_proxy("127.0.0.0/8").unwrap()];
    let api = Api::start_with(api._db.another().await, config).await;
    let (status, body, _) = api
        .call_forwarded(
            "POST",
            "/v1/groups",
            Some(&api.admin),
            group("proxied"),
            Some("203.0.113.9"),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(address_of(&api, "proxied").await, "203.0.113.9");
}
both_stores!(audit_entries_name_the_requests_address);

/// Issue 11: a credential never rests in a cache on the way (`Cache-Control: no-store` on
/// reveal), vault lists page with `Link` headers, and break-glass past its limit is `429
/// too_many_requests`.
async fn vault_answers_carry_no_store_page_and_limit_break_glass(db: TestDb) {
    let config = ControlConfig {
        mfa: latch_control::mfa::MfaPolicy {
            required: Vec::new(),
            ..Default::default()
        },
        ..ControlConfig::default()
    };
    let api = Api::start_with(db, config).await;
    for name in ["v1", "v2", "v3"] {
        let (status, body, _) = api
            .admin("POST", "/v1/vaults", Some(json!({"name": name})))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, page, headers) = api.admin("GET", "/v1/vaults?count=2", None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["list"].as_array().unwrap().len(), 2);
    let link = headers["link"].to_str().unwrap();
    assert!(
        link.contains("offset=2") && link.contains("rel=\"next\""),
        "{link}"
    );
    let (_, rest, headers) = api.admin("GET", "/v1/vaults?count=2&offset=2", None).await;
    assert_eq!(rest["list"].as_array().unwrap().len(), 1);
    assert!(headers["link"].to_str().unwrap().contains("rel=\"prev\""));
    assert!(!headers["link"].to_str().unwrap().contains("rel=\"next\""));

    let (status, identity, _) = api
        .admin(
            "POST",
            "/v1/vaults/v1/identities",
            Some(json!({"name": "app", "username": "app", "secret": "Api-Secret-2026!"})),
        )
        .await;
    assert_eq!(status, 201, "{identity}");
    assert!(identity.get("secret").is_none(), "{identity}");
    let id = identity["id"].as_str().unwrap();
    let (status, revealed, headers) = api
        .admin("POST", &format!("/v1/identities/{id}/reveal"), None)
        .await;
    assert_eq!(status, 200, "{revealed}");
    assert_eq!(revealed["secret"], "Api-Secret-2026!");
    assert_eq!(headers["cache-control"], "no-store");
    let (status, _, headers) = api
        .admin("GET", &format!("/v1/identities/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert!(headers.get("cache-control").is_none_or(|v| v != "no-store"));

    let glass = json!({"reason": "api test"});
    for _ in 0..3 {
        let (status, body, headers) = api
            .admin(
                "POST",
                &format!("/v1/identities/{id}/break-glass"),
                Some(glass.clone()),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(headers["cache-control"], "no-store");
    }
    let (status, refused, _) = api
        .admin(
            "POST",
            &format!("/v1/identities/{id}/break-glass"),
            Some(glass),
        )
        .await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["code"], "too_many_requests");
}
both_stores!(vault_answers_carry_no_store_page_and_limit_break_glass);

/// The value `reference` (`#/components/…`) points at in `document`.
fn resolve<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
    document.pointer(reference.strip_prefix('#')?)
}

/// Every `$ref` in `value`.
fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                found.push(reference.clone());
            }
            map.values().for_each(|v| references(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

/// Every member of every `allOf` in `value`.
fn all_of_members<'a>(value: &'a Value, found: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(members)) = map.get("allOf") {
                found.extend(members);
            }
            map.values().for_each(|v| all_of_members(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| all_of_members(v, found)),
        _ => {}
    }
}

/// `schema`, with a `$ref` followed.
fn schema_of<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => resolve(document, reference).unwrap_or(&Value::Null),
        None => schema,
    }
}

/// Issue 12: `GET /v1/openapi.json` answers an OpenAPI 3 document, without a token, that names
/// every route of `control/src/api/mod.rs` (and no other), with the conventions on every
/// operation: the error answers, the rate-limit headers, and paging on every list.
async fn the_openapi_document_names_every_route(db: TestDb) {
    let api = Api::start(db).await;
    let (status, document, headers) = api.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200, "{document}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert!(headers.contains_key("x-ratelimit-limit"));
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "not an OpenAPI 3 document: {:?}",
        document["openapi"]
    );
    assert!(document["info"]["title"].is_string() && document["info"]["version"].is_string());
    // Every reference resolves.
    let mut found = Vec::new();
    references(&document, &mut found);
    assert!(found.len() > 100, "{}", found.len());
    for reference in &found {
        assert!(
            resolve(&document, reference).is_some(),
            "a $ref that resolves to nothing: {reference}"
        );
    }
    // A flattened struct that refuses unknown fields must not close the `allOf` it is part of
    // (HostView flattens HostFacts: every host answer failed the schema), in a component or
    // inlined (a generic `ListResponse<HostView>`).
    let mut all_ofs = Vec::new();
    all_of_members(&document, &mut all_ofs);
    assert!(!all_ofs.is_empty());
    for member in all_ofs {
        assert_ne!(
            schema_of(&document, member)["additionalProperties"],
            json!(false),
            "an allOf member refuses the other members' properties: {member}"
        );
    }
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
            let name = format!("{} {path}", method.to_uppercase());
            let responses = operation["responses"].as_object().unwrap();
            for status in ["400", "401", "403", "404", "429", "500"] {
                assert!(responses.contains_key(status), "{name} lacks {status}");
            }
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{name} documents no success"
            );
            for (status, response) in responses {
                let response = schema_of(&document, response);
                for header in [
                    "X-RateLimit-Limit",
                    "X-RateLimit-Remaining",
                    "X-RateLimit-Reset",
                    "X-RateLimit-Retry-At",
                ] {
                    assert!(
                        response["headers"].get(header).is_some(),
                        "{name} {status} lacks {header}"
                    );
                }
                if !status.starts_with('2') {
                    let schema = &response["content"]["application/json"]["schema"];
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/ApiErrorBody",
                        "{name} {status}"
                    );
                }
            }
            // Every list is paged: `count` and `offset`, and `Link` on its answer. (The agent's
            // long-poll answers at most one leased job in a list: a delivery, not a listing.)
            let ok = &responses.get("200").map(|r| schema_of(&document, r));
            let body =
                ok.map(|r| schema_of(&document, &r["content"]["application/json"]["schema"]));
            let is_list = body.is_some_and(|b| b["properties"]["list"].is_object());
            if method == "get" && is_list && path != "/v1/agent/jobs" {
                let parameters: Vec<&str> = operation["parameters"]
                    .as_array()
                    .map(|p| p.iter().filter_map(|p| p["name"].as_str()).collect())
                    .unwrap_or_default();
                assert!(
                    parameters.contains(&"count") && parameters.contains(&"offset"),
                    "{name} is a list without paging: {parameters:?}"
                );
                assert!(
                    ok.unwrap()["headers"].get("Link").is_some(),
                    "{name}: no Link header"
                );
            }
        }
    }
    let declared = support::declared_routes(include_str!("../src/api/mod.rs"));
    assert!(declared.len() > 80, "{declared:?}");
    let missing: Vec<_> = declared.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes of control/src/api/mod.rs missing from the OpenAPI document (annotate the handler with #[utoipa::path] and name it in control/src/api/openapi.rs): {missing:?}"
    );
    let stale: Vec<_> = documented.difference(&declared).collect();
    assert!(
        stale.is_empty(),
        "the OpenAPI document names routes that mod.rs does not declare: {stale:?}"
    );
    // Only the endpoints that take no bearer token say so.
    let anonymous: Vec<String> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .iter()
                .filter(|(_, op)| op["security"] == json!([{}]))
                .map(move |(method, _)| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    let matrix: Value = serde_json::from_str(include_str!("authz_matrix.json")).unwrap();
    let mut open: Vec<String> = matrix["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["allow"] == json!(["*"]))
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap()
            )
        })
        .collect();
    let mut anonymous = anonymous;
    anonymous.sort();
    open.sort();
    assert_eq!(
        anonymous, open,
        "security(()) must mark exactly the routes anyone may call"
    );
}
both_stores!(the_openapi_document_names_every_route);

/// A request (method, path, bearer, body) and the status and error code it must answer.
type AnswerCase<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<(&'a str, Vec<u8>)>,
    u16,
    Option<&'a str>,
);

/// Issue 12: every answer carries the rate-limit headers — successes, each kind of error,
/// unknown routes and methods, and axum's own rejections — and every error is
/// `{"code", "message"}` with a documented code.
async fn every_kind_of_answer_carries_the_rate_limit_headers(db: TestDb) {
    let api = Api::start(db).await;
    let admin = api.admin.clone();
    let json_body = |body: &str| Some(("application/json", body.as_bytes().to_vec()));
    let cases: Vec<AnswerCase> = vec![
        ("GET", "/v1/health", None, None, 200, None),
        ("GET", "/v1/openapi.json", None, None, 200, None),
        ("GET", "/v1/users?count=1", Some(&admin), None, 200, None),
        (
            "POST",
            "/v1/groups",
            Some(&admin),
            json_body(r#"{"name": "g1", "description": "d"}"#),
            201,
            None,
        ),
        ("DELETE", "/v1/groups/g1", Some(&admin), None, 204, None),
        (
            "GET",
            "/v1/hosts?count=0",
            Some(&admin),
            None,
            400,
            Some("invalid_request"),
        ),
        (
            "GET",
            "/v1/hosts?colour=red",
            Some(&admin),
            None,
            400,
            Some("invalid_request"),
        ),
        (
            "GET",
            "/v1/hosts/%FF",
            Some(&admin),
            None,
            400,
            Some("invalid_request"),
        ),
        (
            "POST",
            "/v1/jobs",
            Some(&admin),
            json_body("{"),
            400,
            Some("invalid_request"),
        ),
        (
            "POST",
            "/v1/jobs",
            Some(&admin),
            Some(("text/plain", b"{}".to_vec())),
            415,
            Some("unsupported_content_type"),
        ),
        (
            "POST",
            "/v1/jobs",
            Some(&admin),
            Some(("application/json", vec![b' '; 100_000])),
            413,
            Some("invalid_request"),
        ),
        (
            "GET",
            "/v1/hosts",
            None,
            None,
            401,
            Some("authentication_error"),
        ),
        (
            "GET",
            "/v1/hosts",
            Some("not-a-token"),
            None,
            401,
            Some("authentication_error"),
        ),
        (
            "GET",
            "/v1/hosts/nope",
            Some(&admin),
            None,
            404,
            Some("resource_does_not_exist"),
        ),
        (
            "GET",
            "/v1/no-such-endpoint",
            None,
            None,
            404,
            Some("resource_does_not_exist"),
        ),
        (
            "GET",
            "/nowhere",
            Some(&admin),
            None,
            404,
            Some("resource_does_not_exist"),
        ),
        (
            "DELETE",
            "/v1/health",
            None,
            None,
            405,
            Some("invalid_request"),
        ),
        (
            "POST",
            "/v1/groups",
            Some(&admin),
            json_body(r#"{"name": "admins", "description": "d"}"#),
            201,
            None,
        ),
        (
            "POST",
            "/v1/groups",
            Some(&admin),
            json_body(r#"{"name": "admins", "description": "d"}"#),
            409,
            Some("resource_already_exists"),
        ),
    ];
    for (method, path, token, body, want, code) in cases {
        let (status, answer, headers) = api.call(method, path, token, body).await;
        let what = format!("{method} {path}");
        assert_eq!(status, want, "{what}: {answer}");
        for header in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "x-ratelimit-retry-at",
        ] {
            assert!(
                headers.contains_key(header),
                "{what} ({status}) lacks {header}"
            );
        }
        if let Some(code) = code {
            assert_error(status, &answer, want, code);
            assert!(
                headers["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json"),
                "{what}"
            );
        }
    }
}
both_stores!(every_kind_of_answer_carries_the_rate_limit_headers);
