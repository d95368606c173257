//! Single sign-on against a real OpenID Connect provider (oidc-provider, started per test on
//! loopback), on both stores: the code flow with PKCE signs a user in, maps the provider's groups
//! to Latch groups and starts a stepped-up session when `amr` shows a second factor; a replayed
//! state, an ID token signed with a key the provider does not publish, a wrong nonce and an
//! expired ID token are refused through the real validation, and nothing is created for them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;
#[path = "support/oidc.rs"]
mod oidc;

use std::sync::Arc;

use chrono::{Duration, Utc};
use latch_control::audit::AuditEvent;
use latch_control::error::ControlError;
use latch_control::sso::{Sso, SsoConfig};
use latch_control::store::Store;
use latch_control::store::people::{GroupRecord, PrincipalKind, SessionKind};
use latch_control::{Control, ControlConfig};
use oidc::Provider;
use support::TestDb;

/// `latchctl login` listens here; the provider accepts any loopback port (RFC 8252).
const REDIRECT: &str = "http://127.0.0.1:47001/callback";

fn control(
    store: &Arc<dyn Store>,
    provider: &Provider,
    tweak: impl FnOnce(&mut SsoConfig),
) -> Control {
    let mut config = SsoConfig::new(&provider.issuer, "latch", &provider.secret);
    tweak(&mut config);
    Control::new(
        store.clone(),
        ControlConfig::default(),
        latch_control::signing::JobSigner::generate().unwrap(),
    )
    .with_sso(Sso::new(config).unwrap())
}

async fn map_group(store: &Arc<dyn Store>, name: &str, idp: &str) {
    let group = GroupRecord {
        id: format!("grp_{name}"),
        name: name.into(),
        description: String::new(),
        idp_group: Some(idp.into()),
        created_at: Utc::now(),
    };
    store
        .insert_group(&group, AuditEvent::new("test", "group.create"), Utc::now())
        .await
        .unwrap()
        .unwrap();
}

/// Signs `account` in through the browser side and returns (code, state).
async fn browse(control: &Control, provider: &Provider, account: &str) -> (String, String) {
    provider.next(&[("account", account)]).await;
    let start = control.sso_start(REDIRECT).await.unwrap();
    assert!(
        start
            .authorization_url
            .contains("code_challenge_method=S256")
    );
    assert!(start.authorization_url.contains("nonce="));
    assert!(start.expires_at <= Utc::now() + Duration::minutes(10));
    let (code, state) = provider.authorize(&start.authorization_url, REDIRECT).await;
    assert_eq!(state, start.state);
    (code, state)
}

async fn actions(store: &Arc<dyn Store>) -> Vec<String> {
    store
        .audit_chain()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect()
}

async fn users(store: &Arc<dyn Store>) -> usize {
    store
        .principals(Some(PrincipalKind::User))
        .await
        .unwrap()
        .len()
}

async fn code_flow_signs_in_and_maps_groups(db: TestDb) {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let store = db.store().await;
    map_group(&store, "db-admins", "dbas").await;
    map_group(&store, "web-admins", "webs").await;
    let control = control(&store, &provider, |_| {});

    let (code, state) = browse(&control, &provider, "alice").await;
    let session = control
        .sso_finish(&state, &code, Some("127.0.0.1".into()))
        .await
        .unwrap();
    assert_eq!(session.name, "alice");
    assert_eq!(session.groups, ["db-admins"]);
    assert!(
        session.mfa_at.is_none(),
        "alice signed in with a password only"
    );
    let hours = (session.expires_at - Utc::now()).num_minutes();
    assert!((7 * 60..=8 * 60).contains(&hours), "{hours} minutes");

    let who = control.authenticate(&session.token).await.unwrap();
    assert_eq!(who.principal.name, "alice");
    assert_eq!(who.principal.kind, PrincipalKind::User);
    assert_eq!(who.principal.email.as_deref(), Some("alice@example.test"));
    assert_eq!(
        who.principal.idp,
        Some((provider.issuer.clone(), "alice".to_owned()))
    );
    assert_eq!(who.session.kind, SessionKind::Sso);
    let groups: Vec<String> = store
        .groups_of(&who.principal.id)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(groups, ["db-admins"]);

    // A second sign-in finds the same user; bob has no groups.
    let (code, state) = browse(&control, &provider, "alice").await;
    let again = control.sso_finish(&state, &code, None).await.unwrap();
    let who_again = control.authenticate(&again.token).await.unwrap();
    assert_eq!(who_again.principal.id, who.principal.id);
    let (code, state) = browse(&control, &provider, "bob").await;
    let bob = control.sso_finish(&state, &code, None).await.unwrap();
    assert!(bob.groups.is_empty());
    assert_eq!(users(&store).await, 2);

    let actions = actions(&store).await;
    assert_eq!(actions.iter().filter(|a| *a == "sso.login").count(), 3);
    assert_eq!(actions.iter().filter(|a| *a == "user.create").count(), 2);
    // The client secret and the session token appear in no audit entry.
    let chain = format!("{:?}", store.audit_chain().await.unwrap());
    assert!(!chain.contains(&provider.secret));
    assert!(!chain.contains(&session.token));
}
both_stores!(code_flow_signs_in_and_maps_groups);

async fn amr_with_a_second_factor_starts_a_stepped_up_session(db: TestDb) {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let store = db.store().await;
    let control = control(&store, &provider, |_| {});
    let (code, state) = browse(&control, &provider, "carol").await;
    let session = control.sso_finish(&state, &code, None).await.unwrap();
    let mfa_at = session.mfa_at.expect("carol's amr has otp");
    assert!((Utc::now() - mfa_at).num_seconds() < 30);
    let who = control.authenticate(&session.token).await.unwrap();
    let stored = who.session.mfa_at.expect("stored with the session");
    assert_eq!(stored.timestamp_millis(), mfa_at.timestamp_millis());

    // A configured acr counts too, but alice's token has none: no step-up.
    let control = self::control(&store, &provider, |c| c.mfa_acr = Some("urn:mfa".into()));
    let (code, state) = browse(&control, &provider, "alice").await;
    assert!(
        control
            .sso_finish(&state, &code, None)
            .await
            .unwrap()
            .mfa_at
            .is_none()
    );
}
both_stores!(amr_with_a_second_factor_starts_a_stepped_up_session);

fn assert_refused(result: Result<latch_control::sso::SsoSession, ControlError>, needle: &str) {
    match result {
        Err(ControlError::SsoRefused(why)) => {
            assert!(
                why.to_lowercase().contains(needle),
                "{why:?} does not mention {needle:?}"
            )
        }
        other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
    }
}

async fn replayed_state_is_refused(db: TestDb) {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let store = db.store().await;
    let control = control(&store, &provider, |_| {});
    let (code, state) = browse(&control, &provider, "alice").await;
    control.sso_finish(&state, &code, None).await.unwrap();
    assert_refused(
        control.sso_finish(&state, &code, None).await,
        "already finished",
    );
    // A fresh code with the used state is refused too, and so is a state never issued.
    let (fresh, _) = browse(&control, &provider, "alice").await;
    assert_refused(
        control.sso_finish(&state, &fresh, None).await,
        "already finished",
    );
    assert_refused(control.sso_finish("made-up", &fresh, None).await, "unknown");
    // A sign-in begun more than its 10 minutes ago cannot be finished.
    let (code, state) = browse(&control, &provider, "alice").await;
    let mut login = store.sso_login(&state, Utc::now()).await.unwrap().unwrap();
    store
        .take_sso_login(&state, Utc::now())
        .await
        .unwrap()
        .unwrap();
    login.id = "state-of-a-stale-sign-in".into();
    login.created_at = Utc::now() - Duration::minutes(11);
    login.expires_at = Utc::now() - Duration::minutes(1);
    store.insert_sso_login(&login).await.unwrap();
    assert_refused(control.sso_finish(&login.id, &code, None).await, "expired");
    assert!(actions(&store).await.iter().any(|a| a == "sso.refused"));
}
both_stores!(replayed_state_is_refused);

async fn bad_id_tokens_are_refused(db: TestDb) {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let store = db.store().await;
    let control = control(&store, &provider, |_| {});

    // Signed with a key the provider's JWKS does not publish (same key id, another key).
    let (code, state) = browse(&control, &provider, "alice").await;
    provider.next(&[("rogue_jwks", "1")]).await;
    assert_refused(control.sso_finish(&state, &code, None).await, "signature");
    provider.next(&[("rogue_jwks", "0")]).await;

    // A nonce other than the one this sign-in made.
    provider.next(&[("wrong_nonce", "1")]).await;
    let (code, state) = browse(&control, &provider, "alice").await;
    assert_refused(control.sso_finish(&state, &code, None).await, "nonce");
    provider.next(&[("wrong_nonce", "0")]).await;

    // Issued to another client: the ID token's audience is not Latch.
    provider.next(&[("foreign_audience", "1")]).await;
    let (code, state) = browse(&control, &provider, "alice").await;
    assert_refused(control.sso_finish(&state, &code, None).await, "audience");
    provider.next(&[("foreign_audience", "0")]).await;

    // Expired: the token lives 60 s and the control plane's clock reads 2 minutes later.
    provider.next(&[("id_token_ttl", "60")]).await;
    let late = self::control(&store, &provider, |c| c.clock_offset = Duration::minutes(2));
    let (code, state) = browse(&late, &provider, "alice").await;
    assert_refused(late.sso_finish(&state, &code, None).await, "expired");

    // Nothing was created for any of them.
    assert_eq!(users(&store).await, 0);
    assert!(!actions(&store).await.iter().any(|a| a == "sso.login"));
    // The same provider, behaving, signs alice in.
    let (code, state) = browse(&control, &provider, "alice").await;
    control.sso_finish(&state, &code, None).await.unwrap();
}
both_stores!(bad_id_tokens_are_refused);

async fn only_loopback_redirects_and_a_configured_provider(db: TestDb) {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let store = db.store().await;
    let control = control(&store, &provider, |_| {});
    for uri in [
        "http://evil.example/callback",
        "https://127.0.0.1:4000/callback",
        "http://192.0.2.9:4000/callback",
        "http://user:pw@127.0.0.1:4000/callback",
        "not a url",
    ] {
        assert!(
            matches!(control.sso_start(uri).await, Err(ControlError::Invalid(_))),
            "{uri} accepted"
        );
    }
    control
        .sso_start("http://[::1]:4000/callback")
        .await
        .unwrap();
    let plain = Control::new(
        store.clone(),
        ControlConfig::default(),
        latch_control::signing::JobSigner::generate().unwrap(),
    );
    assert!(matches!(
        plain.sso_start(REDIRECT).await,
        Err(ControlError::SsoNotConfigured(_))
    ));
}
both_stores!(only_loopback_redirects_and_a_configured_provider);

async fn login_endpoints_whoami_and_logout(db: TestDb) {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let store = db.store().await;
    map_group(&store, "db-admins", "dbas").await;
    let url = serve(control(&store, &provider, |_| {})).await;
    let http = reqwest::Client::new();
    let post =
        |path: &str, body: serde_json::Value| http.post(format!("{url}{path}")).json(&body).send();

    let refused = post(
        "/v1/login/start",
        serde_json::json!({"redirect_uri": "http://evil.example/cb"}),
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), 400);
    provider.next(&[("account", "alice")]).await;
    let start = post(
        "/v1/login/start",
        serde_json::json!({"redirect_uri": REDIRECT}),
    )
    .await
    .unwrap();
    assert_eq!(start.status(), 201);
    let start: serde_json::Value = start.json().await.unwrap();
    let (code, state) = provider
        .authorize(start["authorization_url"].as_str().unwrap(), REDIRECT)
        .await;
    let finish = post(
        "/v1/login/finish",
        serde_json::json!({"state": state, "code": code}),
    )
    .await
    .unwrap();
    assert_eq!(finish.status(), 201);
    let finish: serde_json::Value = finish.json().await.unwrap();
    let token = finish["token"].as_str().unwrap().to_owned();
    let replay = post(
        "/v1/login/finish",
        serde_json::json!({"state": state, "code": code}),
    )
    .await
    .unwrap();
    assert_eq!(replay.status(), 401);

    let whoami = |token: String| {
        http.get(format!("{url}/v1/whoami"))
            .bearer_auth(token)
            .send()
    };
    let me = whoami(token.clone()).await.unwrap();
    assert_eq!(me.status(), 200);
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(me["name"], "alice");
    assert_eq!(me["kind"], "user");
    assert_eq!(me["session_kind"], "sso");
    assert_eq!(me["groups"], serde_json::json!(["db-admins"]));
    assert!(me["mfa_at"].is_null());

    let out = http
        .post(format!("{url}/v1/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let after = whoami(token).await.unwrap();
    assert_eq!(after.status(), 401);
    let body: serde_json::Value = after.json().await.unwrap();
    assert_eq!(body["code"], "server_authorization_revoked");
}
both_stores!(login_endpoints_whoami_and_logout);

/// Serves the API of `control` on a free loopback port; its URL.
async fn serve(control: Control) -> String {
    let listener = latch_control::server::bind("127.0.0.1:0".parse().unwrap(), false)
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(latch_control::server::run(
        Arc::new(control),
        listener,
        None,
        std::future::pending(),
    ));
    url
}

async fn latchctl(url: &str, config: &std::path::Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_latchctl"))
        .args(["--server", url])
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .env_remove("LATCH_TOKEN")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

async fn latchctl_login_whoami_and_logout(db: TestDb) {
    use std::os::unix::fs::PermissionsExt as _;
    use tokio::io::AsyncBufReadExt as _;
    let Some(provider) = Provider::start().await else {
        return;
    };
    let store = db.store().await;
    map_group(&store, "db-admins", "dbas").await;
    let url = serve(control(&store, &provider, |_| {})).await;
    let config = tempfile::tempdir().unwrap();

    provider.next(&[("account", "carol")]).await;
    let mut login = tokio::process::Command::new(env!("CARGO_BIN_EXE_latchctl"))
        .args([
            "--server",
            &url,
            "login",
            "--no-browser",
            "--timeout",
            "60s",
        ])
        .env("XDG_CONFIG_HOME", config.path())
        .env_remove("LATCH_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(login.stderr.take().unwrap()).lines();
    let authorization_url = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("latchctl prints the URL");
        if let Some(found) = line.trim().strip_prefix(&provider.issuer) {
            break format!("{}{found}", provider.issuer);
        }
    };
    let redirect_uri = reqwest::Url::parse(&authorization_url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .unwrap()
        .1
        .into_owned();
    assert!(
        redirect_uri.starts_with("http://127.0.0.1:"),
        "{redirect_uri}"
    );
    // The browser follows the provider's redirect to latchctl's loopback listener.
    let back = provider.redirect(&authorization_url, &redirect_uri).await;
    let page = reqwest::get(back).await.unwrap();
    assert_eq!(page.status(), 200);
    let done = login.wait_with_output().await.unwrap();
    assert!(done.status.success(), "{done:?}");
    assert!(String::from_utf8_lossy(&done.stdout).contains("signed in as carol"));
    let file = config.path().join("latch/session");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let me = latchctl(&url, config.path(), &["--output", "json", "whoami"]).await;
    assert!(me.status.success(), "{me:?}");
    let me: serde_json::Value = serde_json::from_slice(&me.stdout).unwrap();
    assert_eq!(me["name"], "carol");
    assert_eq!(me["groups"], serde_json::json!(["db-admins"]));
    assert!(me["mfa_at"].is_string(), "carol signed in with otp");

    let out = latchctl(&url, config.path(), &["logout"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(!file.exists());
    let after = latchctl(&url, config.path(), &["whoami"]).await;
    assert!(!after.status.success());
    assert!(String::from_utf8_lossy(&after.stderr).contains("latchctl login"));
}
both_stores!(latchctl_login_whoami_and_logout);

async fn device_flow_signs_in_once(db: TestDb) {
    use latch_control::sso::SsoDevicePoll;
    let Some(provider) = Provider::start().await else {
        return;
    };
    let store = db.store().await;
    map_group(&store, "db-admins", "dbas").await;
    let control = control(&store, &provider, |_| {});
    provider.next(&[("account", "alice")]).await;
    let start = control.sso_device_start().await.unwrap();
    assert!(start.verification_uri.starts_with(&provider.issuer));
    assert!(start.expires_at <= Utc::now() + Duration::minutes(10));
    assert!(matches!(
        control.sso_device_poll(&start.id, None).await.unwrap(),
        SsoDevicePoll::Pending { .. }
    ));
    provider
        .enter_device_code(&start.verification_uri, &start.user_code)
        .await;
    let session = match control.sso_device_poll(&start.id, None).await.unwrap() {
        SsoDevicePoll::Done(session) => session,
        other => panic!("expected a session, got {other:?}"),
    };
    assert_eq!(session.name, "alice");
    assert_eq!(session.groups, ["db-admins"]);
    let who = control.authenticate(&session.token).await.unwrap();
    assert_eq!(who.session.kind, SessionKind::Sso);
    // Finished once: polling again is refused, and so is an id never issued.
    assert_refused(
        control
            .sso_device_poll(&start.id, None)
            .await
            .map(|_| unreachable_session()),
        "device sign-in",
    );
    assert_refused(
        control
            .sso_device_poll("sso_madeup", None)
            .await
            .map(|_| unreachable_session()),
        "unknown",
    );

    // A device sign-in whose ID token is signed with an unpublished key is refused.
    let start = control.sso_device_start().await.unwrap();
    provider
        .enter_device_code(&start.verification_uri, &start.user_code)
        .await;
    provider.next(&[("rogue_jwks", "1")]).await;
    assert_refused(
        control
            .sso_device_poll(&start.id, None)
            .await
            .map(|_| unreachable_session()),
        "signature",
    );
}
both_stores!(device_flow_signs_in_once);

/// Stands for a session in a `Result` whose success the assertion rules out.
fn unreachable_session() -> latch_control::sso::SsoSession {
    panic!("expected a refusal")
}

async fn latchctl_login_device_flow(db: TestDb) {
    use tokio::io::AsyncBufReadExt as _;
    let Some(provider) = Provider::start().await else {
        return;
    };
    let store = db.store().await;
    let url = serve(control(&store, &provider, |_| {})).await;
    let config = tempfile::tempdir().unwrap();
    provider.next(&[("account", "bob")]).await;
    let mut login = tokio::process::Command::new(env!("CARGO_BIN_EXE_latchctl"))
        .args(["--server", &url, "login", "--device", "--timeout", "60s"])
        .env("XDG_CONFIG_HOME", config.path())
        .env_remove("LATCH_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(login.stderr.take().unwrap()).lines();
    let mut page = None;
    let code = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("latchctl prints the code");
        if line.trim().starts_with(&provider.issuer) {
            page = Some(line.trim().split('?').next().unwrap().to_owned());
        }
        if let Some(code) = line.strip_prefix("and enter the code ") {
            break code.trim().to_owned();
        }
    };
    let page = page.expect("latchctl prints the provider's device page");
    provider.enter_device_code(&page, &code).await;
    let done = login.wait_with_output().await.unwrap();
    assert!(done.status.success(), "{done:?}");
    assert!(String::from_utf8_lossy(&done.stdout).contains("signed in as bob"));
    let me = latchctl(&url, config.path(), &["--output", "json", "whoami"]).await;
    assert!(me.status.success(), "{me:?}");
    let me: serde_json::Value = serde_json::from_slice(&me.stdout).unwrap();
    assert_eq!(me["name"], "bob");
}
both_stores!(latchctl_login_device_flow);
