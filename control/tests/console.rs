//! The web console over a real socket, as a browser without JavaScript would use it: sign-in,
//! the session cookie's flags, the security headers, CSRF refusals, what each role sees and may
//! open, the live job stream, filters and escaping. (The browser tests in tests/tests/console.rs
//! drive the same pages in Chromium.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;
#[path = "support/oidc.rs"]
mod oidc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use latch_control::sso::{Sso, SsoConfig};
use latch_control::{Control, ControlConfig, datadir, server};
use oidc::Provider;
use serde_json::{Value, json};
use support::TestDb;

struct Console {
    url: String,
    admin: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _db: TestDb,
}

/// One browser: its own cookies (kept by hand: the test server is plain HTTP on loopback, where
/// a cookie store would not send `Secure` cookies back).
struct Browser<'a> {
    console: &'a Console,
    cookies: BTreeMap<String, String>,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The value of the hidden `_csrf` field of the page's first form.
    fn csrf(&self) -> String {
        let marker = "name=\"_csrf\" value=\"";
        let start = self.body.find(marker).expect("a form with a CSRF field") + marker.len();
        let end = self.body[start..].find('"').unwrap();
        self.body[start..start + end].to_owned()
    }
}

impl Console {
    async fn start(db: TestDb) -> Console {
        let listener = server::bind("127.0.0.1:0".parse().unwrap(), false)
            .await
            .unwrap();
        Self::start_on(db, listener, None, ControlConfig::default()).await
    }

    /// A console whose sign-in also goes through `provider` (started for this console's
    /// callback on `listener`'s port).
    async fn start_on(
        db: TestDb,
        listener: tokio::net::TcpListener,
        provider: Option<&Provider>,
        config: ControlConfig,
    ) -> Console {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let data = datadir::open(dir.path(), &db.options()).await.unwrap();
        let key = std::fs::read_to_string(&data.admin_token_path)
            .unwrap()
            .trim()
            .to_owned();
        let mut control =
            Control::new(data.store, config, data.signer).with_master_key(data.master_key);
        if let Some(provider) = provider {
            let config = SsoConfig::new(&provider.issuer, "latch", &provider.secret);
            control = control.with_sso(Sso::new(config).unwrap());
        }
        let control = Arc::new(control);
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(server::run(control, listener, None, std::future::pending()));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let issued: Value = http
            .post(format!("{url}/v1/service_token"))
            .json(&json!({"api_key": key}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Console {
            url,
            admin: issued["token"].as_str().unwrap().to_owned(),
            http,
            _dir: dir,
            _db: db,
        }
    }

    /// An API call as the bootstrap admin.
    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api_as(&self.admin, method, path, body).await
    }

    async fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A user with a local password and `role` (none for `None`).
    async fn user(&self, name: &str, role: Option<&str>) {
        let (status, body) = self
            .api(
                "POST",
                "/v1/users",
                Some(json!({"name": name, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        if let Some(role) = role {
            let (status, body) = self
                .api(
                    "POST",
                    "/v1/role-bindings",
                    Some(json!({"role": role, "user": name})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
    }

    /// Enrolls a host by the API; its credential.
    async fn enroll(&self, hostname: &str) -> String {
        let (_, token) = self.api("POST", "/v1/enroll-tokens", Some(json!({}))).await;
        let facts = json!({"hostname": hostname, "os": "Debian 12", "kernel": "6.1", "arch": "x86_64",
                           "cpus": 2, "memory_bytes": 1073741824u64, "machine_id": "0123456789abcdef0123456789abcdef"});
        let response = self
            .http
            .post(format!("{}/v1/enroll", self.url))
            .json(&json!({"token": token["token"], "facts": facts}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let enrolled: Value = response.json().await.unwrap();
        enrolled["credential"].as_str().unwrap().to_owned()
    }

    /// Acts as the host's agent: takes its next job, which must be `job` (its JSON from
    /// `POST /v1/jobs`), and reports `outcome` for it.
    async fn report_next_job(&self, credential: &str, job: &Value, outcome: Value) {
        let (_, polled) = self
            .api_as(credential, "GET", "/v1/agent/jobs?wait=0", None)
            .await;
        let delivered = &polled["list"][0];
        let id = job["id"].as_str().unwrap();
        assert_eq!(delivered["id"], id, "{polled}");
        let path = format!("/v1/agent/jobs/{id}/report");
        let report = json!({"lease": delivered["lease"], "outcome": outcome});
        let (status, body) = self.api_as(credential, "POST", &path, Some(report)).await;
        assert_eq!(status, 204, "{body}");
    }

    fn browser(&self) -> Browser<'_> {
        Browser {
            console: self,
            cookies: BTreeMap::new(),
        }
    }
}

const PASSWORD: &str = "correct-horse-battery-staple";

impl Browser<'_> {
    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, headers: &reqwest::header::HeaderMap) {
        for value in headers.get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let (pair, _) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Answer {
        let response = request
            .header("cookie", self.cookie_header())
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        self.keep_cookies(&headers);
        let body = response.text().await.unwrap();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        let request = self.console.http.get(format!("{}{path}", self.console.url));
        self.send(request).await
    }

    /// Posts a form as the page would: with this browser's origin.
    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let origin = self.console.url.clone();
        self.post_from(path, form, &origin).await
    }

    async fn post_from(&mut self, path: &str, form: &[(&str, &str)], origin: &str) -> Answer {
        let request = self
            .console
            .http
            .post(format!("{}{path}", self.console.url))
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap());
        self.send(request).await
    }

    async fn sign_in(&mut self, name: &str, password: &str) -> Answer {
        let page = self.get("/login").await;
        assert_eq!(page.status, 200);
        let csrf = page.csrf();
        self.post(
            "/login",
            &[
                ("_csrf", &csrf),
                ("name", name),
                ("password", password),
                ("next", "/jobs"),
            ],
        )
        .await
    }

    /// The CSRF token of the signed-in session (from any page's forms).
    async fn csrf(&mut self) -> String {
        self.get("/vault").await.csrf()
    }
}

async fn sign_in_sets_a_strict_session_cookie_and_pages_carry_security_headers(db: TestDb) {
    let console = Console::start(db).await;
    console.user("alice", Some("pam_admin")).await;
    let mut browser = console.browser();

    // Not signed in: pages send the browser to the sign-in page, keeping where it was going.
    let answer = browser.get("/hosts").await;
    assert_eq!(answer.status, 303);
    assert_eq!(answer.location(), "/login?next=%2Fhosts");

    let login = browser.get("/login").await;
    let csp = login.headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(login.headers["x-frame-options"], "DENY");
    assert_eq!(login.headers["x-content-type-options"], "nosniff");
    assert_eq!(login.headers["cache-control"], "no-store");
    assert!(
        !login.body.contains("<script>"),
        "no inline script: {}",
        login.body
    );

    // A wrong password: the form again, with the reason, and no session.
    let wrong = browser.sign_in("alice", "not-the-password").await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(
        wrong.body.contains("user name or password is wrong"),
        "{}",
        wrong.body
    );
    assert!(!browser.cookies.contains_key("__Host-latch_session"));

    let signed_in = browser.sign_in("alice", PASSWORD).await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert_eq!(signed_in.location(), "/jobs");
    let set_cookie: Vec<&str> = signed_in
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let session = set_cookie
        .iter()
        .find(|c| c.starts_with("__Host-latch_session="))
        .expect("a session cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(flag), "{session}");
    }
    assert!(!session.contains("Domain"), "{session}");

    for (path, heading) in [
        ("/jobs", "Jobs"),
        ("/hosts", "Hosts"),
        ("/access", "Access"),
        ("/vault", "Vault"),
        ("/audit", "Audit"),
    ] {
        let page = browser.get(path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(page.body.contains(&format!("<h1>{heading}</h1>")), "{path}");
        assert!(
            page.headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        assert_eq!(page.headers["cache-control"], "no-store");
    }
    // The assets come from the binary, with their types.
    let css = browser.get("/assets/console.css").await;
    assert_eq!(css.status, 200);
    assert!(
        css.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    let js = browser.get("/assets/console.js").await;
    assert!(
        js.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );

    // Signing out ends the session everywhere: the cookie's token no longer works.
    let token = browser.cookies["__Host-latch_session"].clone();
    let csrf = browser.csrf().await;
    let out = browser.post("/logout", &[("_csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert!(!browser.cookies.contains_key("__Host-latch_session"));
    let (status, _) = console.api_as(&token, "GET", "/v1/whoami", None).await;
    assert_eq!(status, 401);
    let mut stale = console.browser();
    stale.cookies.insert("__Host-latch_session".into(), token);
    let answer = stale.get("/jobs").await;
    assert_eq!(answer.status, 303);
    assert!(
        answer.location().starts_with("/login?"),
        "{}",
        answer.location()
    );
}
both_stores!(sign_in_sets_a_strict_session_cookie_and_pages_carry_security_headers);

async fn forms_without_the_csrf_token_or_from_another_site_change_nothing(db: TestDb) {
    let console = Console::start(db).await;
    console.user("alice", Some("pam_admin")).await;
    let mut browser = console.browser();
    browser.sign_in("alice", PASSWORD).await;
    let csrf = browser.csrf().await;
    let tokens_before = console.api("GET", "/v1/audit?count=1000", None).await.1["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "enroll_token.create")
        .count();
    let form = |token: &'static str| {
        vec![
            ("ttl_minutes", "60"),
            ("uses", "1"),
            ("labels", ""),
            ("_csrf", token),
        ]
    };

    // No token, a wrong token, another session's token: 403 csrf_refused.
    let other = {
        let mut other = console.browser();
        console.user("bob", Some("pam_admin")).await;
        other.sign_in("bob", PASSWORD).await;
        other.csrf().await
    };
    for token in [String::new(), "0".repeat(64), other] {
        let token: &'static str = Box::leak(token.into_boxed_str());
        let answer = browser.post("/enroll-tokens", &form(token)).await;
        assert_eq!(answer.status, 403, "{}", answer.body);
        assert!(answer.body.contains("csrf_refused"), "{}", answer.body);
    }
    // The right token, but sent by another site.
    let token: &'static str = Box::leak(csrf.clone().into_boxed_str());
    let answer = browser
        .post_from("/enroll-tokens", &form(token), "https://evil.example")
        .await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    // Signing out needs the token too.
    let answer = browser.post("/logout", &[]).await;
    assert_eq!(answer.status, 403);
    assert_eq!(browser.get("/jobs").await.status, 200, "still signed in");

    let tokens_after = console.api("GET", "/v1/audit?count=1000", None).await.1["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "enroll_token.create")
        .count();
    assert_eq!(
        tokens_before, tokens_after,
        "a refused form created a token"
    );

    // With the token, from this console: the token and the command are shown once.
    let answer = browser.post("/enroll-tokens", &form(token)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("latch_enroll_"), "{}", answer.body);
    assert!(
        answer.body.contains("latch-agent enroll"),
        "{}",
        answer.body
    );
    // Against the address this console is served at.
    assert!(
        answer.body.contains(&format!("--server {} ", console.url)),
        "{}",
        answer.body
    );
    assert_eq!(answer.headers["cache-control"], "no-store");

    // The sign-in form has its own token (before there is a session).
    let mut fresh = console.browser();
    fresh.get("/login").await;
    let answer = fresh
        .post(
            "/login",
            &[
                ("_csrf", "forged"),
                ("name", "alice"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(!fresh.cookies.contains_key("__Host-latch_session"));
}
both_stores!(forms_without_the_csrf_token_or_from_another_site_change_nothing);

async fn each_role_sees_only_its_pages_and_actions(db: TestDb) {
    let console = Console::start(db).await;
    console.user("admin1", Some("pam_admin")).await;
    console.user("eve", Some("end_user")).await;
    console.enroll("db1").await;

    let mut admin = console.browser();
    admin.sign_in("admin1", PASSWORD).await;
    let hosts = admin.get("/hosts").await;
    assert!(
        hosts.body.contains("Create enrollment token"),
        "admin sees enrollment"
    );
    assert!(hosts.body.contains("db1"));
    let jobs = admin.get("/jobs").await;
    for section in ["href=\"/hosts\"", "href=\"/audit\"", "href=\"/jobs\""] {
        assert!(jobs.body.contains(section), "admin nav lacks {section}");
    }

    let mut eve = console.browser();
    let signed_in = eve.sign_in("eve", PASSWORD).await;
    assert_eq!(signed_in.status, 303);
    let access = eve.get("/access").await;
    assert_eq!(access.status, 200, "{}", access.body);
    assert!(access.body.contains("Request access"));
    for admin_only in [
        "href=\"/hosts\"",
        "href=\"/audit\"",
        "href=\"/jobs\"",
        "Waiting for your approval",
        "Create enrollment token",
    ] {
        assert!(
            !access.body.contains(admin_only),
            "end_user sees {admin_only}"
        );
    }
    // The admin pages' URLs: 403, and their data is not on the page.
    for path in ["/jobs", "/hosts", "/audit", "/jobs/events", "/hosts/db1"] {
        let page = eve.get(path).await;
        assert_eq!(page.status, 403, "{path}: {}", page.body);
        assert!(!page.body.contains("Debian 12"), "{path} leaks host facts");
    }
    let csrf = eve.csrf().await;
    let answer = eve
        .post(
            "/enroll-tokens",
            &[("_csrf", &csrf), ("ttl_minutes", "60"), ("uses", "1")],
        )
        .await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(!answer.body.contains("latch_enroll_"));
    let answer = eve
        .post(
            "/hosts/db1/enroll-account",
            &[("_csrf", &csrf), ("user", "deploy"), ("vault", "x")],
        )
        .await;
    assert!(
        answer.status == 403 || answer.status == 404,
        "{}",
        answer.body
    );
}
both_stores!(each_role_sees_only_its_pages_and_actions);

async fn jobs_filter_and_follow_changes_live(db: TestDb) {
    let console = Console::start(db).await;
    console.user("alice", Some("pam_admin")).await;
    let credential = console.enroll("db1").await;
    let (status, first) = console
        .api(
            "POST",
            "/v1/jobs",
            Some(json!({"host": "db1", "kind": "create-account", "user": "dave"})),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    let mut browser = console.browser();
    browser.sign_in("alice", PASSWORD).await;

    let page = browser.get("/jobs?kind=create-account&state=pending").await;
    assert!(
        page.body
            .contains(&format!("job-{}", first["id"].as_str().unwrap()))
    );
    let none = browser.get("/jobs?kind=set-password").await;
    assert!(none.body.contains("No jobs match."), "{}", none.body);
    assert_eq!(browser.get("/jobs?kind=format-disk").await.status, 400);
    assert_eq!(browser.get("/jobs?state=done").await.status, 400);
    // The API has the same kind filter.
    let (status, listed) = console
        .api("GET", "/v1/jobs?kind=create-account", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["list"].as_array().unwrap().len(), 1);
    let (status, _) = console.api("GET", "/v1/jobs?kind=bogus", None).await;
    assert_eq!(status, 400);

    // The live stream: a failed report shows up as a changed row with the code and what to do.
    let response = browser
        .console
        .http
        .get(format!("{}/jobs/events", console.url))
        .header("cookie", browser.cookie_header())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    console
        .report_next_job(
            &credential,
            &first,
            json!({"status": "failed", "error": {"code": "tool_failed",
                "message": "useradd exited with 1: <script>alert(1)</script>"}}),
        )
        .await;
    let mut stream = response;
    let (data, seen) = next_event(&mut stream, "jobs", 10).await;
    let data = data.unwrap_or_else(|| panic!("no jobs event: {seen}"));
    let rows: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(rows[0]["status"], "failed");
    let html = rows[0]["html"].as_str().unwrap();
    assert!(html.contains("tool_failed"), "{html}");
    assert!(html.contains("What to do"), "{html}");
    assert!(
        html.contains("&lt;script&gt;"),
        "the message is escaped: {html}"
    );
    assert!(!html.contains("<script>"), "{html}");
}
both_stores!(jobs_filter_and_follow_changes_live);

async fn the_jobs_stream_ends_when_the_session_does(db: TestDb) {
    let console = Console::start(db).await;
    console.user("alice", Some("pam_admin")).await;
    let mut browser = console.browser();
    browser.sign_in("alice", PASSWORD).await;
    let mut stream = console
        .http
        .get(format!("{}/jobs/events", console.url))
        .header("cookie", browser.cookie_header())
        .send()
        .await
        .unwrap();
    let csrf = browser.csrf().await;
    browser.post("/logout", &[("_csrf", &csrf)]).await;
    let seen = read_stream(&mut stream, "event: ended", 10).await;
    assert!(
        seen.contains("event: ended"),
        "the stream went on after sign-out: {seen}"
    );
}
both_stores!(the_jobs_stream_ends_when_the_session_does);

async fn hostile_input_is_escaped_and_redirects_stay_on_the_console(db: TestDb) {
    let console = Console::start(db).await;
    console.user("alice", Some("pam_admin")).await;
    let mut browser = console.browser();
    // After sign-in, `next` only ever leads to a path of this console.
    for (next, expected) in [
        ("//evil.example/x", "/jobs"),
        ("https://evil.example", "/jobs"),
        ("/hosts", "/hosts"),
    ] {
        let page = browser.get("/login").await;
        let csrf = page.csrf();
        let answer = browser
            .post(
                "/login",
                &[
                    ("_csrf", &csrf),
                    ("name", "alice"),
                    ("password", PASSWORD),
                    ("next", next),
                ],
            )
            .await;
        assert_eq!(answer.location(), expected, "next={next}");
    }
    // Reflected values are escaped.
    let page = browser.get("/audit?actor=%3Cscript%3E").await;
    assert_eq!(page.status, 400, "{}", page.body);
    let page = browser.get("/audit?action=%22%3E%3Cimg%20src%3Dx%3E").await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("<img src=x>"), "{}", page.body);
    assert!(
        page.body.contains("&quot;&gt;&lt;img src=x&gt;"),
        "{}",
        page.body
    );
    // A page that does not exist, asked for by a browser: an HTML page, not JSON.
    let missing = browser.get("/nowhere").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("<h1>Not found</h1>"));
    // The API's own answers stay JSON.
    let (status, body) = console.api("GET", "/v1/nowhere", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "resource_does_not_exist");
}
both_stores!(hostile_input_is_escaped_and_redirects_stay_on_the_console);

async fn sign_in_through_the_identity_provider_is_bound_to_the_browser_that_began_it(db: TestDb) {
    let listener = server::bind("127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let callback = format!("{url}/login/callback");
    let Some(provider) = Provider::start_for_console(&callback).await else {
        return;
    };
    let console = Console::start_on(db, listener, Some(&provider), ControlConfig::default()).await;
    provider.next(&[("account", "alice")]).await;
    let mut browser = console.browser();
    let login = browser.get("/login").await;
    assert!(
        login.body.contains("Sign in with your identity provider"),
        "{}",
        login.body
    );

    let begun = browser.get("/login/sso?next=%2Faccess").await;
    assert_eq!(begun.status, 303, "{}", begun.body);
    let authorize = begun.location().to_owned();
    assert!(authorize.starts_with(&provider.issuer), "{authorize}");
    assert!(
        authorize.contains("code_challenge_method=S256"),
        "{authorize}"
    );
    let bound = begun
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("__Host-latch_sso="))
        .expect("the sign-in is bound to this browser");
    assert!(
        bound.contains("SameSite=Lax") && bound.contains("HttpOnly"),
        "{bound}"
    );

    let redirect = provider.redirect(&authorize, &callback).await;
    let back = &redirect.as_str()[url.len()..];

    // Another browser (an attacker who sends a victim the link, or replays it) cannot finish
    // it: the state is not bound to it. Nothing is used up by the refusal.
    let mut other = console.browser();
    let refused = other.get(back).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("csrf_refused"));
    assert!(!other.cookies.contains_key("__Host-latch_session"));

    let finished = browser.get(back).await;
    assert_eq!(finished.status, 200, "{}", finished.body);
    assert!(finished.body.contains("url=/access"), "{}", finished.body);
    assert!(browser.cookies.contains_key("__Host-latch_session"));
    assert!(
        !browser.cookies.contains_key("__Host-latch_sso"),
        "the binding is cleared"
    );
    let access = browser.get("/access").await;
    assert_eq!(access.status, 200, "{}", access.body);
    assert!(
        access.body.contains("<strong>alice</strong>"),
        "{}",
        access.body
    );

    // The same answer again: refused (each sign-in finishes once).
    browser
        .cookies
        .insert("__Host-latch_sso".into(), refused_state(back));
    let again = browser.get(back).await;
    assert_eq!(again.status, 401, "{}", again.body);

    // The provider's own refusal of the sign-in this browser began is shown, not trusted.
    let state = refused_state(back);
    let denied = browser
        .get(&format!(
            "/login/callback?state={state}&error=access_denied&error_description=%3Cb%3Eno%3C%2Fb%3E"
        ))
        .await;
    assert_eq!(denied.status, 401);
    assert!(
        denied.body.contains("&lt;b&gt;no&lt;/b&gt;"),
        "{}",
        denied.body
    );
    // A link anyone can write (no state this browser began) does not put its text on the
    // console's page.
    for query in [
        "error=access_denied&error_description=Call%20the%20helpdesk%20at%20555-0100",
        "state=forged&error=access_denied&error_description=Call%20the%20helpdesk%20at%20555-0100",
    ] {
        let spoofed = other.get(&format!("/login/callback?{query}")).await;
        assert_eq!(spoofed.status, 401);
        assert!(spoofed.body.contains("sso_refused"), "{}", spoofed.body);
        assert!(!spoofed.body.contains("helpdesk"), "{}", spoofed.body);
    }
}
both_stores!(sign_in_through_the_identity_provider_is_bound_to_the_browser_that_began_it);

/// The `state` of a callback path, as the binding cookie holds it.
fn refused_state(path: &str) -> String {
    let url = reqwest::Url::parse(&format!("http://x{path}")).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

/// Reads an event stream until `until` appears in it (or `seconds` pass); what was read.
async fn read_stream(stream: &mut reqwest::Response, until: &str, seconds: u64) -> String {
    read_until(stream, seconds, |seen| seen.contains(until)).await
}

/// Reads an event stream until an event named `name` is complete (or `seconds` pass): its
/// data, and what was read.
async fn next_event(
    stream: &mut reqwest::Response,
    name: &str,
    seconds: u64,
) -> (Option<String>, String) {
    let marker = format!("event: {name}\n");
    let complete = |seen: &str| {
        seen.find(&marker)
            .is_some_and(|at| seen[at..].contains("\n\n"))
    };
    let seen = read_until(stream, seconds, complete).await;
    let data = seen.find(&marker).and_then(|at| {
        seen[at..]
            .lines()
            .find_map(|line| line.strip_prefix("data: "))
            .map(str::to_owned)
    });
    (data, seen)
}

async fn read_until(
    stream: &mut reqwest::Response,
    seconds: u64,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut seen = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(seconds), async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if done(&seen) {
                return;
            }
        }
    })
    .await;
    seen
}

async fn open_stream(console: &Console, browser: &Browser<'_>) -> reqwest::Response {
    console
        .http
        .get(format!("{}/jobs/events", console.url))
        .header("cookie", browser.cookie_header())
        .send()
        .await
        .unwrap()
}

/// The status of a new stream, retried for up to `seconds` until it is 200.
async fn stream_status_within(console: &Console, browser: &Browser<'_>, seconds: u64) -> u16 {
    let mut status = 0;
    for _ in 0..seconds * 10 {
        status = open_stream(console, browser).await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status
}

async fn the_jobs_stream_ends_when_the_viewer_loses_the_permission(db: TestDb) {
    let console = Console::start(db).await;
    console.user("alice", None).await;
    let (status, binding) = console
        .api(
            "POST",
            "/v1/role-bindings",
            Some(json!({"role": "pam_admin", "user": "alice"})),
        )
        .await;
    assert_eq!(status, 201, "{binding}");
    console.enroll("db1").await;
    let mut browser = console.browser();
    browser.sign_in("alice", PASSWORD).await;
    let mut stream = open_stream(&console, &browser).await;
    assert_eq!(stream.status().as_u16(), 200);

    // The role is taken away while the page is open; a job is queued afterwards.
    let (status, body) = console
        .api(
            "DELETE",
            &format!("/v1/role-bindings/{}", binding["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(status == 200 || status == 204, "{status} {body}");
    let (status, job) = console
        .api(
            "POST",
            "/v1/jobs",
            Some(json!({"host": "db1", "kind": "create-account", "user": "secretive"})),
        )
        .await;
    assert_eq!(status, 201, "{job}");

    let seen = read_stream(&mut stream, "event: ended", 10).await;
    assert!(
        !seen.contains("event: jobs") && !seen.contains("secretive"),
        "the stream showed a job to a viewer who may no longer see jobs: {seen}"
    );
    assert!(
        seen.contains("event: ended") && seen.contains("data: forbidden"),
        "the stream went on after the role was taken away: {seen}"
    );
}
both_stores!(the_jobs_stream_ends_when_the_viewer_loses_the_permission);

async fn one_user_cannot_hold_open_unbounded_job_streams(db: TestDb) {
    // Sixteen per user (console::jobs::STREAMS_PER_USER).
    const PER_USER: usize = 16;
    let console = Console::start(db).await;
    console.user("alice", Some("pam_admin")).await;
    console.user("bob", Some("pam_admin")).await;
    let mut alice = console.browser();
    alice.sign_in("alice", PASSWORD).await;
    let mut open = Vec::new();
    for _ in 0..PER_USER {
        let stream = open_stream(&console, &alice).await;
        assert_eq!(stream.status().as_u16(), 200);
        open.push(stream);
    }
    let refused = open_stream(&console, &alice).await;
    assert_eq!(refused.status().as_u16(), 429);
    assert!(
        refused.text().await.unwrap().contains("too_many_requests"),
        "the refusal names its code"
    );
    // Others are not affected.
    let mut bob = console.browser();
    bob.sign_in("bob", PASSWORD).await;
    let stream = open_stream(&console, &bob).await;
    assert_eq!(stream.status().as_u16(), 200);

    // Ended streams free their places: after signing out and in again, alice may follow jobs.
    let csrf = alice.csrf().await;
    alice.post("/logout", &[("_csrf", &csrf)]).await;
    for stream in &mut open {
        let seen = read_stream(stream, "event: ended", 10).await;
        assert!(seen.contains("event: ended"), "{seen}");
    }
    drop(open);
    alice.sign_in("alice", PASSWORD).await;
    assert_eq!(
        stream_status_within(&console, &alice, 5).await,
        200,
        "the ended streams still count"
    );

    // Streams of pages the browser left free their places too, within a few seconds.
    let mut left = Vec::new();
    while left.len() < PER_USER {
        let stream = open_stream(&console, &alice).await;
        if stream.status().as_u16() == 200 {
            left.push(stream);
        } else {
            assert_eq!(stream.status().as_u16(), 429);
            break;
        }
    }
    assert_eq!(open_stream(&console, &alice).await.status().as_u16(), 429);
    drop(left);
    assert_eq!(
        stream_status_within(&console, &alice, 10).await,
        200,
        "streams the browser left still count"
    );
}
both_stores!(one_user_cannot_hold_open_unbounded_job_streams);

async fn refused_session_cookies_count_in_the_rate_limiter(db: TestDb) {
    let console = Console::start(db).await;
    console.user("alice", Some("pam_admin")).await;
    // A guessed (or stale) session cookie: a redirect to the sign-in page, counted like a
    // refused bearer token, so its owner is throttled after 30 a minute (the default budget).
    let mut guesser = console.browser();
    guesser
        .cookies
        .insert("__Host-latch_session".into(), "latch_guess".into());
    let mut statuses = Vec::new();
    for _ in 0..35 {
        statuses.push(guesser.get("/jobs").await.status);
    }
    assert_eq!(statuses[0], 303);
    assert_eq!(
        statuses.last(),
        Some(&429),
        "refused session cookies are not throttled: {statuses:?}"
    );
    // A real session from the same address is not affected.
    let mut alice = console.browser();
    alice.sign_in("alice", PASSWORD).await;
    assert_eq!(alice.get("/jobs").await.status, 200);
}
both_stores!(refused_session_cookies_count_in_the_rate_limiter);

async fn the_host_page_shows_no_text_from_its_link(db: TestDb) {
    let console = Console::start(db).await;
    console.user("alice", Some("pam_admin")).await;
    console.enroll("db1").await;
    let mut browser = console.browser();
    browser.sign_in("alice", PASSWORD).await;
    // A link to the host's page naming no identity the viewer may see: no notice at all, so
    // a crafted link cannot make the console say something.
    for enrolled in ["Call_the-helpdesk.555-0100", "%3Cb%3Ehello%3C%2Fb%3E"] {
        let page = browser
            .get(&format!("/hosts/db1?enrolled={enrolled}"))
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(!page.body.contains("Enrollment queued"), "{}", page.body);
        assert!(!page.body.contains("helpdesk"), "{}", page.body);
        assert!(!page.body.contains("hello"), "{}", page.body);
    }
}
both_stores!(the_host_page_shows_no_text_from_its_link);

/// A job that changes after the page was rendered but before its event stream starts is sent at
/// the stream's first look (the page's `since`), not lost.
async fn a_change_between_the_page_and_its_stream_is_not_lost(db: TestDb) {
    let console = Console::start(db).await;
    console.user("alice", Some("pam_admin")).await;
    let credential = console.enroll("db1").await;
    let mut browser = console.browser();
    browser.sign_in("alice", PASSWORD).await;
    // A job that finished long before the page: seen, never sent again.
    let (_, old) = console
        .api(
            "POST",
            "/v1/jobs",
            Some(json!({"host": "db1", "kind": "create-account", "user": "olga"})),
        )
        .await;
    console
        .report_next_job(&credential, &old, json!({"status": "confirmed"}))
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let (_, job) = console
        .api(
            "POST",
            "/v1/jobs",
            Some(json!({"host": "db1", "kind": "create-account", "user": "dave"})),
        )
        .await;
    let page = browser.get("/jobs").await;
    let marker = "data-events=\"";
    let start = page.body.find(marker).expect("a live table") + marker.len();
    let events = page.body[start..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert!(events.contains("since="), "{events}");
    // The host confirms the job before the page's stream opens.
    console
        .report_next_job(&credential, &job, json!({"status": "confirmed"}))
        .await;

    let mut stream = console
        .http
        .get(format!("{}{events}", console.url))
        .header("cookie", browser.cookie_header())
        .send()
        .await
        .unwrap();
    let (data, seen) = next_event(&mut stream, "jobs", 10).await;
    let data = data.unwrap_or_else(|| panic!("the change was lost: {seen}"));
    let rows: Value = serde_json::from_str(&data).unwrap();
    let ids: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [job["id"].as_str().unwrap()],
        "only the row that changed since the page: {rows}"
    );
    assert_eq!(rows[0]["status"], "confirmed");
}
both_stores!(a_change_between_the_page_and_its_stream_is_not_lost);

/// Behind a reverse proxy that rewrites `Host`, forms are checked against `public_url`: a form
/// from the public origin is taken, one whose `Origin` merely matches `Host` is refused.
async fn behind_a_proxy_forms_are_checked_against_the_public_url(db: TestDb) {
    let listener = server::bind("127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let config = ControlConfig {
        public_url: Some("https://latch.example.com".parse().unwrap()),
        ..ControlConfig::default()
    };
    let console = Console::start_on(db, listener, None, config).await;
    console.user("alice", Some("pam_admin")).await;
    let public = "https://latch.example.com";
    let mut browser = console.browser();
    let page = browser.get("/login").await;
    let csrf = page.csrf();
    let refused = browser
        .post(
            "/login",
            &[("_csrf", &csrf), ("name", "alice"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(
        refused.status, 403,
        "an Origin that is only the Host: {}",
        refused.body
    );
    let signed_in = browser
        .post_from(
            "/login",
            &[("_csrf", &csrf), ("name", "alice"), ("password", PASSWORD)],
            public,
        )
        .await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    let csrf = browser.csrf().await;
    let form = [
        ("_csrf", csrf.as_str()),
        ("ttl_minutes", "60"),
        ("uses", "1"),
    ];
    let answer = browser.post_from("/enroll-tokens", &form, public).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // The enroll command names the public address.
    assert!(
        answer.body.contains("--server https://latch.example.com "),
        "{}",
        answer.body
    );
    let answer = browser.post("/enroll-tokens", &form).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.body.contains("csrf_refused"));
}
both_stores!(behind_a_proxy_forms_are_checked_against_the_public_url);

/// A person sets up an authenticator app in the console: the QR code and secret once, the first
/// code confirms it, and replacing it needs a code from the current one.
async fn a_person_sets_up_an_authenticator_app_in_the_console(db: TestDb) {
    let console = Console::start(db).await;
    console.user("mark", Some("end_user")).await;
    let mut browser = console.browser();
    browser.sign_in("mark", PASSWORD).await;
    let account = browser.get("/account").await;
    assert_eq!(account.status, 200, "{}", account.body);
    assert!(
        account.body.contains("Set up an authenticator app"),
        "{}",
        account.body
    );
    let csrf = account.csrf();

    let enrolled = browser.post("/account/totp", &[("_csrf", &csrf)]).await;
    assert_eq!(enrolled.status, 200, "{}", enrolled.body);
    assert_eq!(enrolled.headers["cache-control"], "no-store");
    assert!(
        enrolled.body.contains("<svg"),
        "a QR code: {}",
        enrolled.body
    );
    let marker = "id=\"totp-secret\">";
    let start = enrolled.body.find(marker).expect("the secret") + marker.len();
    let secret = enrolled.body[start..].split('<').next().unwrap().to_owned();
    assert!(secret.len() >= 16, "{secret}");

    let code = latch_control::mfa::code_at(&secret, chrono::Utc::now()).unwrap();
    let confirmed = browser
        .post(
            "/mfa",
            &[("_csrf", &csrf), ("code", &code), ("next", "/account")],
        )
        .await;
    assert_eq!(confirmed.status, 303, "{}", confirmed.body);
    let account = browser.get("/account").await;
    assert!(
        account.body.contains("Replace the authenticator app"),
        "{}",
        account.body
    );
    assert!(!account.body.contains(&secret), "the secret is shown again");

    // In another session (a stolen cookie, say), replacing the factor without a code from the
    // current one is refused, and a wrong code is not a second factor.
    let mut other = console.browser();
    other.sign_in("mark", PASSWORD).await;
    let csrf = other.csrf().await;
    let refused = other.post("/account/totp", &[("_csrf", &csrf)]).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(
        refused.body.contains("code from the current one"),
        "{}",
        refused.body
    );
    let wrong = other
        .post("/account/totp", &[("_csrf", &csrf), ("totp", "000000")])
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(
        !wrong.body.contains("<svg"),
        "a wrong code gave a new factor"
    );
}
both_stores!(a_person_sets_up_an_authenticator_app_in_the_console);

/// The ids of the sessions listed on an Account page, in order.
fn listed_sessions(page: &Answer) -> Vec<String> {
    page.body
        .split("<tr id=\"session-")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

async fn a_person_lists_their_sessions_and_ends_others(db: TestDb) {
    let console = Console::start(db).await;
    console.user("mark", Some("end_user")).await;
    console.user("eve", Some("end_user")).await;
    let mut laptop = console.browser();
    laptop.sign_in("mark", PASSWORD).await;
    let mut phone = console.browser();
    phone.sign_in("mark", PASSWORD).await;

    let account = laptop.get("/account").await;
    assert_eq!(account.status, 200, "{}", account.body);
    let listed = listed_sessions(&account);
    assert_eq!(listed.len(), 2, "{}", account.body);
    // Newest first: the phone's, with an End button; the laptop's is this session.
    let (phone_id, laptop_id) = (listed[0].clone(), listed[1].clone());
    assert!(
        account
            .body
            .contains(&format!("/account/sessions/{phone_id}/end"))
    );
    assert!(
        !account
            .body
            .contains(&format!("/account/sessions/{laptop_id}/end"))
    );
    assert!(account.body.contains("this session"), "{}", account.body);

    // Someone else's session is not theirs to end; a form without the token changes nothing.
    let mut eve = console.browser();
    eve.sign_in("eve", PASSWORD).await;
    let eve_csrf = eve.csrf().await;
    let refused = eve
        .post(
            &format!("/account/sessions/{phone_id}/end"),
            &[("_csrf", &eve_csrf)],
        )
        .await;
    assert_eq!(refused.status, 404, "{}", refused.body);
    assert!(!listed_sessions(&eve.get("/account").await).contains(&phone_id));
    let forged = laptop
        .post(&format!("/account/sessions/{phone_id}/end"), &[])
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert_eq!(
        phone.get("/account").await.status,
        200,
        "the phone is still signed in"
    );

    let csrf = account.csrf();
    let ended = laptop
        .post(
            &format!("/account/sessions/{phone_id}/end"),
            &[("_csrf", &csrf)],
        )
        .await;
    assert_eq!(ended.status, 303, "{}", ended.body);
    assert_eq!(ended.location(), "/account?ended=1");
    let gone = phone.get("/account").await;
    assert_eq!(gone.status, 303, "{}", gone.body);
    assert!(gone.location().starts_with("/login"), "{}", gone.location());
    assert_eq!(
        listed_sessions(&laptop.get("/account").await),
        std::slice::from_ref(&laptop_id)
    );

    // End all others: two more sign-ins (one of them latchctl's bearer token) end; this stays.
    phone.sign_in("mark", PASSWORD).await;
    let (status, token) = console
        .api_as(
            "",
            "POST",
            "/v1/login/local",
            Some(json!({"name": "mark", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    let token = token["token"].as_str().expect("a bearer token").to_owned();
    // Through the API too, eve cannot end mark's session: not found, and it still works.
    let (status, eve_token) = console
        .api_as(
            "",
            "POST",
            "/v1/login/local",
            Some(json!({"name": "eve", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 201, "{eve_token}");
    let eve_token = eve_token["token"].as_str().unwrap().to_owned();
    let (status, listed) = console.api_as(&token, "GET", "/v1/sessions", None).await;
    assert_eq!(status, 200, "{listed}");
    let marks = listed["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .and_then(|s| s["id"].as_str())
        .unwrap()
        .to_owned();
    let (status, refused) = console
        .api_as(&eve_token, "DELETE", &format!("/v1/sessions/{marks}"), None)
        .await;
    assert_eq!(status, 404, "{refused}");
    assert_eq!(
        console.api_as(&token, "GET", "/v1/whoami", None).await.0,
        200
    );
    let page = laptop.get("/account").await;
    assert_eq!(listed_sessions(&page).len(), 3, "{}", page.body);
    assert!(
        page.body.contains("End all other sessions"),
        "{}",
        page.body
    );
    let forged = laptop.post("/account/sessions/end-others", &[]).await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert_eq!(
        console.api_as(&token, "GET", "/v1/whoami", None).await.0,
        200
    );
    let ended = laptop
        .post("/account/sessions/end-others", &[("_csrf", &page.csrf())])
        .await;
    assert_eq!(ended.status, 303, "{}", ended.body);
    assert_eq!(ended.location(), "/account?ended=2");
    let (status, _) = console.api_as(&token, "GET", "/v1/whoami", None).await;
    assert_eq!(status, 401, "latchctl's token was ended too");
    assert!(phone.get("/account").await.location().starts_with("/login"));
    let junk = laptop.get("/account?ended=%3Cb%3E").await;
    assert_eq!(junk.status, 200, "anything but a number is ignored");
    assert!(!junk.body.contains("were ended"), "{}", junk.body);
    let after = laptop.get("/account?ended=2").await;
    assert_eq!(after.status, 200);
    assert!(
        after.body.contains("2 sessions were ended"),
        "{}",
        after.body
    );
    assert_eq!(listed_sessions(&after), [laptop_id]);
}
both_stores!(a_person_lists_their_sessions_and_ends_others);
