//! The authorization matrix (issue 10): every route of the API × every kind of caller, checked
//! through a real HTTP server against `authz_matrix.json`, which lists for each route (method and
//! path template, as `control/src/api/mod.rs` declares them) the callers that must be allowed.
//!
//! An allowed call must answer the route's status (its body is valid and its objects are fresh,
//! so the call really does its work); a denied call must answer 401/403 (or the 404 that hides a
//! host outside a delegation) with the expected error code, and change nothing: the database's
//! rows (without the columns every authenticated request touches, `last_seen_at` and
//! `last_used_at`) and its audit entries other than `auth.failure` are the same before and after.
//! Every unexpected outcome is collected and printed as one table.
//!
//! A route that `mod.rs` declares but the data file lacks (or the other way round) fails
//! [`every_route_is_in_the_matrix`], so a new endpoint cannot skip the matrix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};
use latch_control::api::limits::RateLimits;
use latch_control::mfa::code_at;
use latch_control::{Control, ControlConfig, datadir, server};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row as _;
use support::{Attacker, TestDb, declared_routes};

const MATRIX: &str = include_str!("authz_matrix.json");
const ROUTER: &str = include_str!("../src/api/mod.rs");
const PASSWORD: &str = "matrix password 0123456789";
/// The five roles, as users of each are named and bound.
const ROLES: [&str; 5] = [
    "pam_admin",
    "resource_admin",
    "delegated_resource_admin",
    "security_admin",
    "end_user",
];
/// The label a delegated admin's selector names (`team=db`), and one outside it.
const INSIDE: &str = "db";
/// An SSH public key for access requests.
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGp5Zm9ydGVzdHNvbmx5MDEyMzQ1Njc4OWFiY2RlZmdo matrix";
const OUTSIDE: &str = "web";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatrixFile {
    #[serde(rename = "_comment")]
    _comment: Vec<String>,
    routes: Vec<Route>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Route {
    method: String,
    path: String,
    status: u16,
    allow: Vec<String>,
    #[serde(default)]
    deny: Option<String>,
    #[serde(default)]
    deny_as: BTreeMap<String, String>,
    #[serde(default)]
    fresh_caller: bool,
    #[serde(default, rename = "_note")]
    _note: Option<String>,
}

impl Route {
    fn key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// `None` when `caller` must be allowed, else the error code it must get.
    fn denial_for(&self, caller: &Caller) -> Option<String> {
        if self.allow.iter().any(|a| a == "*" || *a == caller.name) {
            return None;
        }
        if let Some(code) = self.deny_as.get(&caller.name) {
            return Some(code.clone());
        }
        if let Some(code) = &self.deny {
            return Some(code.clone());
        }
        Some(caller.kind.default_denial().to_owned())
    }
}

/// The status of a denial code.
fn status_of(code: &str) -> u16 {
    match code {
        "authentication_error" | "server_authorization_revoked" | "authorization_error" => 401,
        "forbidden_error" => 403,
        "resource_does_not_exist" => 404,
        other => panic!("authz_matrix.json names an unknown denial code {other:?}"),
    }
}

fn load_matrix() -> MatrixFile {
    serde_json::from_str(MATRIX).expect("authz_matrix.json parses")
}

/// Issue 10: a route the router declares without a row in the matrix fails here, and so does a
/// row for a route that no longer exists or a caller name or code the test does not know.
#[test]
fn every_route_is_in_the_matrix() {
    let declared = declared_routes(ROUTER);
    assert!(
        declared.len() >= ROUTER.matches(".route(").count(),
        "every .route( call yields at least one method: {declared:?}"
    );
    let matrix = load_matrix();
    let mut listed = BTreeSet::new();
    for route in &matrix.routes {
        assert!(
            listed.insert(route.key()),
            "{} is in authz_matrix.json twice",
            route.key()
        );
    }
    let missing: Vec<&String> = declared.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "routes of control/src/api/mod.rs missing from control/tests/authz_matrix.json (add a row saying who may call each): {missing:?}"
    );
    let stale: Vec<&String> = listed.difference(&declared).collect();
    assert!(
        stale.is_empty(),
        "authz_matrix.json lists routes that mod.rs does not declare: {stale:?}"
    );
    let names: BTreeSet<String> = caller_names().into_iter().collect();
    for route in &matrix.routes {
        for name in route.allow.iter().chain(route.deny_as.keys()) {
            assert!(
                name == "*" || names.contains(name),
                "{}: unknown caller {name:?} (callers: {names:?})",
                route.key()
            );
        }
        for code in route.deny.iter().chain(route.deny_as.values()) {
            status_of(code);
        }
        assert!(
            !route.allow.is_empty(),
            "{}: nobody may call it?",
            route.key()
        );
    }
}

/// The parser finds methods chained in any order and only real method routers.
#[test]
fn the_route_parser_reads_chained_methods() {
    let source = r#"
        .route("/v1/a", get(handlers::get_a).post(handlers::post_a))
        .route(
            "/v1/b/{id}",
            delete(people::delete_b),
        )
        .route("/v1/c", put(h::forget(x)))
    "#;
    let routes: Vec<String> = declared_routes(source).into_iter().collect();
    assert_eq!(
        routes,
        ["DELETE /v1/b/{id}", "GET /v1/a", "POST /v1/a", "PUT /v1/c"]
    );
}

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No `Authorization` header.
    Anonymous,
    /// A `pam_admin` service user's token past its end.
    Expired,
    /// A `pam_admin` service user's token whose API key was revoked.
    Revoked,
    /// A `pam_admin` user's session, the user disabled afterwards.
    Disabled,
    /// A host credential.
    Agent,
    /// A local user with one role; `step_up`: a TOTP code shown in the session; `outside`: a
    /// delegated admin acting on hosts outside its selector.
    User {
        role: &'static str,
        step_up: bool,
        outside: bool,
    },
    /// A `pam_admin` service user.
    Service,
}

impl Kind {
    fn default_denial(self) -> &'static str {
        match self {
            Kind::Anonymous | Kind::Expired | Kind::Agent => "authentication_error",
            Kind::Revoked | Kind::Disabled => "server_authorization_revoked",
            Kind::User { .. } | Kind::Service => "forbidden_error",
        }
    }

    fn delegated(self) -> bool {
        matches!(
            self,
            Kind::User {
                role: "delegated_resource_admin",
                ..
            }
        )
    }

    fn outside(self) -> bool {
        matches!(self, Kind::User { outside: true, .. })
    }
}

/// A TOTP factor and the last time step the test used (each step is accepted once).
#[derive(Debug, Clone)]
struct Totp {
    secret: String,
    last_step: i64,
}

impl Totp {
    /// The code of the next unused step: the current one, or the next one (the server accepts
    /// one step of skew) when the current one was used; waits for the clock otherwise.
    async fn next_code(&mut self) -> String {
        loop {
            let current = Utc::now().timestamp().div_euclid(30);
            let step = (self.last_step + 1).max(current);
            if step <= current + 1 {
                self.last_step = step;
                let at = DateTime::from_timestamp(step * 30, 0).unwrap();
                return code_at(&self.secret, at).unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

#[derive(Debug, Clone)]
struct Caller {
    name: String,
    kind: Kind,
    token: Option<String>,
    totp: Option<Totp>,
}

/// Every caller's name, in the matrix's order.
fn caller_names() -> Vec<String> {
    let mut names: Vec<String> = ["anonymous", "expired", "revoked", "disabled", "agent"]
        .into_iter()
        .map(String::from)
        .collect();
    names.extend(ROLES.iter().map(|r| r.to_string()));
    names.extend(ROLES.iter().map(|r| format!("{r}_no_step_up")));
    names.push("delegated_outside".to_owned());
    names.push("service_pam_admin".to_owned());
    names
}

/// A host of the test, with its agent's credential.
#[derive(Debug, Clone)]
struct TestHost {
    id: String,
    credential: String,
}

/// The server, its database as an attacker sees it, and the objects the calls act on.
struct Matrix {
    url: String,
    http: reqwest::Client,
    /// The bootstrap admin's bearer token: prepares each call's objects.
    admin: String,
    attacker: Attacker,
    counter: u64,
    inside: TestHost,
    outside: TestHost,
    agent: TestHost,
    /// Confirmed grants on the inside and outside hosts.
    job_inside: String,
    job_outside: String,
    /// A local user without roles (signs in, is looked at, joins groups).
    target_user: String,
    /// A service user without roles, with its API key.
    target_service: (String, String),
    /// A group to look at.
    target_group: String,
    /// The groups of the access policy `matrix-access`: who requests, who approves.
    requesters: String,
    approvers: String,
    /// The delivery each host's agent holds: `(job id, lease)`. A host's jobs are delivered in
    /// sequence, so a job leased and not reported (a refused report) must be the next one used.
    leases: HashMap<String, (String, String)>,
    /// Whether a signing-key rotation is under way (promotion needs one).
    rotating: bool,
    /// A vault nobody holds a grant on (the bootstrap admin owns it), its identity, and a
    /// rotation of that identity.
    vault_id: String,
    identity: String,
    rotation: String,
    _dir: tempfile::TempDir,
    _db: TestDb,
}

/// One call, ready to send.
struct Prepared {
    path: String,
    body: Option<Value>,
    /// Ids the (allowed) answer must contain, and ids it must not.
    listed: Vec<String>,
    unlisted: Vec<String>,
}

/// A call to `path` with `body`, whose answer is not checked for ids.
fn p(path: impl Into<String>, body: Option<Value>) -> Prepared {
    Prepared {
        path: path.into(),
        body,
        listed: Vec::new(),
        unlisted: Vec::new(),
    }
}

/// A webhook that could be added. It subscribes to break-glass only, which no cell raises
/// (access requests made here raise events; their deliveries must not change rows while a
/// cell is compared).
fn webhook_body() -> Value {
    json!({
        "url": "https://hooks.example.com/latch",
        "events": ["break_glass"],
        "secret": "matrix-webhook-secret-0123456789",
    })
}

/// Every row the test compares before and after a denied call, as `(table, row)` text.
const SNAPSHOT: &str = "\
    SELECT 'audit' AS t, CAST(COUNT(*) AS TEXT) AS v FROM audit_log WHERE action <> 'auth.failure' \
    UNION ALL SELECT 'enroll_tokens', hash || ':' || CAST(uses_left AS TEXT) FROM enroll_tokens \
    UNION ALL SELECT 'hosts', id || ':' || credential_hash || ':' || labels || ':' || COALESCE(CAST(removed_at AS TEXT), '-') FROM hosts \
    UNION ALL SELECT 'jobs', id || ':' || status || ':' || CAST(attempts AS TEXT) || ':' || COALESCE(lease, '-') || ':' || COALESCE(CAST(revoked_at AS TEXT), '-') FROM jobs \
    UNION ALL SELECT 'job_events', CAST(COUNT(*) AS TEXT) FROM job_events \
    UNION ALL SELECT 'principals', id || ':' || COALESCE(CAST(disabled_at AS TEXT), '-') || ':' || CAST(failed_logins AS TEXT) FROM principals \
    UNION ALL SELECT 'groups', id || ':' || name FROM groups \
    UNION ALL SELECT 'group_members', group_id || ':' || principal_id FROM group_members \
    UNION ALL SELECT 'role_bindings', id || ':' || role FROM role_bindings \
    UNION ALL SELECT 'api_keys', id || ':' || COALESCE(CAST(revoked_at AS TEXT), '-') FROM api_keys \
    UNION ALL SELECT 'sessions', id || ':' || CAST(expires_at AS TEXT) || ':' || COALESCE(CAST(revoked_at AS TEXT), '-') || ':' || COALESCE(CAST(mfa_at AS TEXT), '-') FROM sessions \
    UNION ALL SELECT 'totp', principal_id || ':' || secret || ':' || COALESCE(pending, '-') || ':' || COALESCE(CAST(confirmed_at AS TEXT), '-') || ':' || CAST(last_step AS TEXT) || ':' || CAST(failures AS TEXT) FROM totp \
    UNION ALL SELECT 'key_pins', name || ':' || public FROM key_pins \
    UNION ALL SELECT 'sso_logins', id FROM sso_logins \
    UNION ALL SELECT 'organizations', id || ':' || name || ':' || wrapped_data_key || ':' || COALESCE(CAST(break_glass_minutes AS TEXT), '-') FROM organizations \
    UNION ALL SELECT 'vaults', id || ':' || name || ':' || description FROM vaults \
    UNION ALL SELECT 'vault_grants', id || ':' || level FROM vault_grants \
    UNION ALL SELECT 'identities', id || ':' || name || ':' || COALESCE(secret, '-') || ':' || CAST(rotate_after_use AS TEXT) FROM identities \
    UNION ALL SELECT 'identity_hosts', identity_id || ':' || host_id FROM identity_hosts \
    UNION ALL SELECT 'checkouts', id || ':' || COALESCE(CAST(checked_in_at AS TEXT), '-') FROM checkouts \
    UNION ALL SELECT 'rotations', id || ':' || state FROM rotations \
    UNION ALL SELECT 'break_glass_uses', CAST(COUNT(*) AS TEXT) FROM break_glass_uses \
    UNION ALL SELECT 'access_policies', id || ':' || name || ':' || CAST(max_minutes AS TEXT) FROM access_policies \
    UNION ALL SELECT 'access_requests', id || ':' || state || ':' || CAST(version AS TEXT) FROM access_requests \
    UNION ALL SELECT 'access_request_hosts', request_id || ':' || host_id || ':' || state FROM access_request_hosts \
    UNION ALL SELECT 'access_decisions', request_id || ':' || principal_id FROM access_decisions \
    UNION ALL SELECT 'support_access', id || ':' || COALESCE(CAST(disabled_at AS TEXT), '-') FROM support_access \
    UNION ALL SELECT 'webhooks', id || ':' || url || ':' || secret || ':' || events FROM webhooks \
    UNION ALL SELECT 'webhook_deliveries', id || ':' || status || ':' || CAST(attempts AS TEXT) FROM webhook_deliveries \
    ORDER BY 1, 2";

async fn snapshot(attacker: &Attacker) -> Vec<(String, String)> {
    macro_rules! read {
        ($pool:expr) => {
            sqlx::query(SNAPSHOT)
                .fetch_all($pool)
                .await
                .unwrap()
                .iter()
                .map(|row| (row.get::<String, _>(0), row.get::<String, _>(1)))
                .collect()
        };
    }
    match attacker {
        Attacker::Sqlite(pool) => read!(pool),
        Attacker::Postgres(pool) => read!(pool),
    }
}

/// What changed between two snapshots, briefly.
fn difference(before: &[(String, String)], after: &[(String, String)]) -> String {
    let before: BTreeSet<&(String, String)> = before.iter().collect();
    let after: BTreeSet<&(String, String)> = after.iter().collect();
    let gone = before.difference(&after).map(|(t, v)| format!("-{t} {v}"));
    let new = after.difference(&before).map(|(t, v)| format!("+{t} {v}"));
    let all: Vec<String> = gone.chain(new).collect();
    let shown: Vec<String> = all.iter().take(4).cloned().collect();
    format!("changed {} row(s): {}", all.len(), shown.join(", "))
}

fn facts(hostname: &str) -> Value {
    json!({"hostname": hostname, "os": "Debian 12", "kernel": "6.1", "arch": "x86_64",
           "cpus": 2, "memory_bytes": 1024, "machine_id": "0123456789abcdef0123456789abcdef"})
}

impl Matrix {
    async fn start(db: TestDb) -> Matrix {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let data = datadir::open(dir.path(), &db.options()).await.unwrap();
        let admin_key = std::fs::read_to_string(&data.admin_token_path)
            .unwrap()
            .trim()
            .to_owned();
        let config = ControlConfig {
            // Hundreds of calls, many refused, from one address: no limit may decide a cell.
            rate_limits: RateLimits {
                per_principal: 1_000_000,
                auth_failures: 1_000_000,
                address_auth_failures: 1_000_000,
                trusted_proxies: Vec::new(),
            },
            // No lease may run out (and be swept) between the two snapshots of a cell.
            lease_ttl: Duration::hours(2),
            ..ControlConfig::default()
        };
        let control = std::sync::Arc::new(
            Control::new(data.store, config, data.signer).with_master_key(data.master_key),
        );
        let listener = server::bind("127.0.0.1:0".parse().unwrap(), false)
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(server::run(control, listener, None, std::future::pending()));
        let attacker = db.attacker(dir.path()).await;
        let mut matrix = Matrix {
            url,
            http: reqwest::Client::new(),
            admin: String::new(),
            attacker,
            counter: 0,
            inside: TestHost {
                id: String::new(),
                credential: String::new(),
            },
            outside: TestHost {
                id: String::new(),
                credential: String::new(),
            },
            agent: TestHost {
                id: String::new(),
                credential: String::new(),
            },
            job_inside: String::new(),
            job_outside: String::new(),
            target_user: String::new(),
            target_service: (String::new(), String::new()),
            target_group: String::new(),
            requesters: String::new(),
            approvers: String::new(),
            leases: HashMap::new(),
            rotating: false,
            vault_id: String::new(),
            identity: String::new(),
            rotation: String::new(),
            _dir: dir,
            _db: db,
        };
        matrix.admin = matrix.exchange(&admin_key).await;
        matrix.inside = matrix.enroll(Some(INSIDE)).await;
        matrix.outside = matrix.enroll(Some(OUTSIDE)).await;
        matrix.agent = matrix.enroll(None).await;
        let (inside, outside) = (matrix.inside.clone(), matrix.outside.clone());
        matrix.job_inside = matrix.confirmed_grant(&inside).await;
        matrix.job_outside = matrix.confirmed_grant(&outside).await;
        matrix.target_user = matrix.user(None).await;
        matrix.target_service = matrix.service_user(&[]).await;
        matrix.target_group = matrix.group().await;
        matrix.requesters = matrix.group().await;
        matrix.approvers = matrix.group().await;
        let policy = json!({"name": "matrix-access", "group": matrix.requesters,
            "access": ["sudo"], "hosts": "team in (db,web)", "max_minutes": 60,
            "approver_group": matrix.approvers, "reauth_minutes": 60});
        matrix.as_admin("POST", "/v1/policies", Some(policy)).await;
        let watch = json!({"name": "matrix-watch", "group": matrix.target_group,
            "access": ["sudo"], "hosts": "team=none", "max_minutes": 60,
            "approver_group": matrix.target_group});
        matrix.as_admin("POST", "/v1/policies", Some(watch)).await;
        let vault = matrix
            .as_admin("POST", "/v1/vaults", Some(json!({"name": "matrix"})))
            .await;
        matrix.vault_id = vault["id"].as_str().unwrap().to_owned();
        matrix.identity = matrix.identity_in("matrix").await;
        let rotation = matrix
            .as_admin(
                "POST",
                &format!("/v1/identities/{}/rotate", matrix.identity),
                Some(json!({})),
            )
            .await;
        matrix.rotation = rotation["id"].as_str().unwrap().to_owned();
        matrix
    }

    /// A new access policy's body, for the target group.
    fn policy_body(&mut self) -> Value {
        let name = self.fresh("policy");
        json!({"name": name, "group": self.target_group, "access": ["sudo"], "hosts": "team=db",
               "max_minutes": 60, "approver_group": self.target_group})
    }

    /// The caller's principal name, when the server knows the caller.
    async fn caller_name(&self, caller: &Caller) -> Option<String> {
        let (status, who) = self
            .call("GET", "/v1/whoami", caller.token.as_deref(), None)
            .await;
        (status == 200).then(|| who["name"].as_str().unwrap_or_default().to_owned())
    }

    /// Puts the caller (when the server knows it) into `group`.
    async fn join(&mut self, caller: &Caller, group: &str) {
        if let Some(name) = self.caller_name(caller).await {
            self.as_admin("PUT", &format!("/v1/groups/{group}/members/{name}"), None)
                .await;
        }
    }

    /// A new access request of policy `matrix-access` (approved by `approvers`, whom
    /// approve and deny calls join) or, with `watched`, of `matrix-watch` (approved by a group
    /// nobody joins) in `state` on a host of its own, made by the caller (when given and the
    /// server knows it) or by the target user: its id. An `active` one ends in an hour and is
    /// re-confirmed within ten minutes; the sweep has nothing to do on any of them.
    async fn access_request(
        &mut self,
        caller: Option<&Caller>,
        state: &str,
        watched: bool,
    ) -> String {
        let host = self.enroll(Some(INSIDE)).await;
        let policy = if watched {
            "matrix-watch"
        } else {
            "matrix-access"
        };
        let requester = match caller {
            Some(caller) => self.caller_name(caller).await,
            None => None,
        }
        .unwrap_or_else(|| self.target_user.clone());
        let id = self.fresh("ar_matrix");
        let now = Utc::now().timestamp_millis();
        let hour = now + 3_600_000;
        let (pending, active) = if state == "pending_approval" {
            (hour.to_string(), "NULL".to_owned())
        } else {
            ("NULL".to_owned(), now.to_string())
        };
        let (ends, confirm) = if state == "active" {
            (hour.to_string(), (now + 600_000).to_string())
        } else {
            ("NULL".to_owned(), "NULL".to_owned())
        };
        self.attacker
            .exec(&format!(
                "INSERT INTO access_requests (id, requester_id, target, access, minutes, reason, \
                 ssh_public_key, key_generated, policy_id, policy_name, approver_group_id, \
                 approvals_needed, exclusive, state, created_at, pending_until, account, \
                 activated_at, ends_at, confirm_by, version) SELECT '{id}', p.id, 'matrix', \
                 'sudo', 30, 'matrix', 'ssh-ed25519 AAAA', 0, a.id, a.name, a.approver_group_id, 1, \
                 0, '{state}', {now}, {pending}, 'matrix', {active}, {ends}, {confirm}, 0 \
                 FROM principals p, access_policies a WHERE p.name = '{requester}' \
                 AND a.name = '{policy}'"
            ))
            .await;
        // An active request whose host has nothing yet (`waiting`): revoking it ends it at
        // once, with no job for the sweep to settle while later cells compare rows.
        let host_state = if state == "active" && !watched {
            "active"
        } else {
            "waiting"
        };
        self.attacker
            .exec(&format!(
                "INSERT INTO access_request_hosts (request_id, host_id, state, updated_at) \
                 VALUES ('{id}', '{}', '{host_state}', {now})",
                host.id
            ))
            .await;
        id
    }

    /// A new identity (no linked host) in `vault`.
    async fn identity_in(&mut self, vault: &str) -> String {
        let name = self.fresh("idn");
        let made = self
            .as_admin(
                "POST",
                &format!("/v1/vaults/{vault}/identities"),
                Some(json!({"name": name, "username": "appsvc", "secret": "Matrix-Secret-2026!"})),
            )
            .await;
        made["id"].as_str().unwrap().to_owned()
    }

    /// A new vault whose identity the caller holds a checkout grant on (when it can be
    /// named: a caller the server refuses holds none): the identity's id.
    async fn granted_identity(&mut self, caller: &Caller) -> String {
        let vault = self.fresh("vault");
        self.as_admin("POST", "/v1/vaults", Some(json!({"name": vault})))
            .await;
        let (status, who) = self
            .call("GET", "/v1/whoami", caller.token.as_deref(), None)
            .await;
        if status == 200 {
            self.as_admin(
                "POST",
                &format!("/v1/vaults/{vault}/grants"),
                Some(json!({"user": who["name"], "level": "checkout"})),
            )
            .await;
        }
        self.identity_in(&vault).await
    }

    /// Whether `caller` sees every vault (pam_vaults.view or manage, in force everywhere).
    fn sees_vaults(caller: &Caller) -> bool {
        match caller.kind {
            Kind::Service => true,
            Kind::User { role, .. } => {
                matches!(role, "pam_admin" | "resource_admin" | "security_admin")
            }
            _ => false,
        }
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
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

    /// A call that must succeed (preparing the matrix, not part of it).
    async fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(method, path, Some(token), body.as_ref()).await;
        assert!(
            (200..300).contains(&status),
            "preparing: {method} {path} answered {status}: {answer}"
        );
        answer
    }

    async fn as_admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.ok(method, path, &self.admin, body).await
    }

    /// An API key's bearer token.
    async fn exchange(&self, api_key: &str) -> String {
        let body = json!({"api_key": api_key});
        let (status, issued) = self
            .call("POST", "/v1/service_token", None, Some(&body))
            .await;
        assert_eq!(status, 201, "{issued}");
        issued["token"].as_str().unwrap().to_owned()
    }

    async fn enroll_body(&mut self) -> Value {
        let token = self
            .as_admin("POST", "/v1/enroll-tokens", Some(json!({})))
            .await;
        let hostname = self.fresh("host");
        json!({"token": token["token"], "facts": facts(&hostname)})
    }

    /// A new host, labelled `team=<team>` when given.
    async fn enroll(&mut self, team: Option<&str>) -> TestHost {
        let body = self.enroll_body().await;
        let (status, enrolled) = self.call("POST", "/v1/enroll", None, Some(&body)).await;
        assert_eq!(status, 201, "{enrolled}");
        let host = TestHost {
            id: enrolled["host_id"].as_str().unwrap().to_owned(),
            credential: enrolled["credential"].as_str().unwrap().to_owned(),
        };
        if let Some(team) = team {
            self.as_admin(
                "PUT",
                &format!("/v1/hosts/{}/labels", host.id),
                Some(json!({"labels": {"team": team}})),
            )
            .await;
        }
        host
    }

    /// A job the host's agent has leased: `(id, lease)`: the one it holds, or the next one (a
    /// new one when none is waiting).
    async fn leased_job(&mut self, host: &TestHost) -> (String, String) {
        if let Some(held) = self.leases.get(&host.id) {
            return held.clone();
        }
        loop {
            let (status, polled) = self
                .call("GET", "/v1/agent/jobs?wait=0", Some(&host.credential), None)
                .await;
            assert_eq!(status, 200, "{polled}");
            if let Some(job) = polled["list"].get(0) {
                let held = (
                    job["id"].as_str().unwrap().to_owned(),
                    job["lease"].as_str().unwrap().to_owned(),
                );
                self.leases.insert(host.id.clone(), held.clone());
                return held;
            }
            let account = self.fresh("mx");
            self.as_admin(
                "POST",
                "/v1/jobs",
                Some(json!({"host": host.id, "kind": "create-account", "user": account, "expires_in_ms": 3_600_000})),
            )
            .await;
        }
    }

    /// A confirmed create-account grant on `host` (its agent confirms every job it is given
    /// until this one).
    async fn confirmed_grant(&mut self, host: &TestHost) -> String {
        let account = self.fresh("mx");
        let job = self
            .as_admin(
                "POST",
                "/v1/jobs",
                Some(json!({"host": host.id, "kind": "create-account", "user": account, "expires_in_ms": 3_600_000})),
            )
            .await;
        let id = job["id"].as_str().unwrap().to_owned();
        loop {
            let (job_id, lease) = self.leased_job(host).await;
            let report = json!({"lease": lease, "outcome": {"status": "confirmed"}});
            self.ok(
                "POST",
                &format!("/v1/agent/jobs/{job_id}/report"),
                &host.credential,
                Some(report),
            )
            .await;
            self.leases.remove(&host.id);
            if job_id == id {
                return id;
            }
        }
    }

    /// A new local user with a password, bound to `role` (a delegation: `team=db`).
    async fn user(&mut self, role: Option<&str>) -> String {
        let name = self.fresh("user");
        self.as_admin(
            "POST",
            "/v1/users",
            Some(json!({"name": name, "password": PASSWORD})),
        )
        .await;
        self.bind(role, &name).await;
        name
    }

    /// A new user without a password (nobody signs in as it: it is disabled and enabled).
    async fn user_without_password(&mut self) -> String {
        let name = self.fresh("user");
        self.as_admin("POST", "/v1/users", Some(json!({"name": name})))
            .await;
        name
    }

    async fn bind(&self, role: Option<&str>, name: &str) {
        if let Some(role) = role {
            let mut binding = json!({"role": role, "user": name});
            if role == "delegated_resource_admin" {
                binding["selector"] = json!(format!("team={INSIDE}"));
            }
            self.as_admin("POST", "/v1/role-bindings", Some(binding))
                .await;
        }
    }

    async fn sign_in(&self, name: &str) -> String {
        let body = json!({"name": name, "password": PASSWORD});
        let (status, issued) = self
            .call("POST", "/v1/login/local", None, Some(&body))
            .await;
        assert_eq!(status, 201, "{issued}");
        issued["token"].as_str().unwrap().to_owned()
    }

    /// Enrolls a TOTP factor in the session `token` and confirms it with a first code (which
    /// marks that session as stepped up).
    async fn totp(&self, token: &str) -> Totp {
        let enrolled = self.ok("POST", "/v1/mfa/totp", token, None).await;
        let mut totp = Totp {
            secret: enrolled["secret"].as_str().unwrap().to_owned(),
            last_step: 0,
        };
        let code = totp.next_code().await;
        self.ok(
            "POST",
            "/v1/mfa/totp/verify",
            token,
            Some(json!({"code": code})),
        )
        .await;
        totp
    }

    /// A new service user with these roles: `(name, API key)`.
    async fn service_user(&mut self, roles: &[&str]) -> (String, String) {
        let name = self.fresh("svc");
        let made = self
            .as_admin(
                "POST",
                "/v1/service-users",
                Some(json!({"name": name, "roles": roles})),
            )
            .await;
        (name, made["key"]["api_key"].as_str().unwrap().to_owned())
    }

    async fn group(&mut self) -> String {
        let name = self.fresh("group");
        self.as_admin(
            "POST",
            "/v1/groups",
            Some(json!({"name": name, "description": "matrix"})),
        )
        .await;
        name
    }

    /// A caller of `kind` with a credential of its own, named `name`.
    async fn caller(&mut self, name: &str, kind: Kind) -> Caller {
        let mut caller = Caller {
            name: name.to_owned(),
            kind,
            token: None,
            totp: None,
        };
        match kind {
            Kind::Anonymous => {}
            Kind::Agent => caller.token = Some(self.enroll(None).await.credential),
            Kind::Service => {
                let (_, key) = self.service_user(&["pam_admin"]).await;
                caller.token = Some(self.exchange(&key).await);
            }
            Kind::Expired => {
                let (service, key) = self.service_user(&["pam_admin"]).await;
                caller.token = Some(self.exchange(&key).await);
                let ended = (Utc::now() - Duration::minutes(1)).timestamp_millis();
                self.attacker
                    .exec(&format!(
                        "UPDATE sessions SET expires_at = {ended} WHERE principal_id = \
                         (SELECT id FROM principals WHERE name = '{service}')"
                    ))
                    .await;
            }
            Kind::Revoked => {
                let (service, key) = self.service_user(&["pam_admin"]).await;
                caller.token = Some(self.exchange(&key).await);
                let keys = self
                    .as_admin("GET", &format!("/v1/service-users/{service}/keys"), None)
                    .await;
                let key_id = keys["list"][0]["id"].as_str().unwrap().to_owned();
                self.as_admin(
                    "DELETE",
                    &format!("/v1/service-users/{service}/keys/{key_id}"),
                    None,
                )
                .await;
            }
            Kind::Disabled => {
                let user = self.user(Some("pam_admin")).await;
                let token = self.sign_in(&user).await;
                caller.totp = Some(self.totp(&token).await);
                caller.token = Some(token);
                self.as_admin("POST", &format!("/v1/users/{user}/disable"), None)
                    .await;
            }
            Kind::User { role, step_up, .. } => {
                let user = self.user(Some(role)).await;
                let token = self.sign_in(&user).await;
                caller.totp = Some(self.totp(&token).await);
                caller.token = Some(if step_up {
                    token
                } else {
                    self.sign_in(&user).await
                });
            }
        }
        caller
    }

    /// Every caller of the matrix. The users of one role share a principal: `<role>` is its
    /// stepped-up session, `<role>_no_step_up` a second session without a factor.
    async fn callers(&mut self) -> Vec<Caller> {
        let mut callers = Vec::new();
        for (name, kind) in [
            ("anonymous", Kind::Anonymous),
            ("expired", Kind::Expired),
            ("revoked", Kind::Revoked),
            ("disabled", Kind::Disabled),
        ] {
            callers.push(self.caller(name, kind).await);
        }
        // The agent whose jobs the agent endpoints' calls report on.
        callers.push(Caller {
            name: "agent".to_owned(),
            kind: Kind::Agent,
            token: Some(self.agent.credential.clone()),
            totp: None,
        });
        let mut sessions_without = Vec::new();
        for role in ROLES {
            let kind = Kind::User {
                role,
                step_up: true,
                outside: false,
            };
            let with = self.caller(role, kind).await;
            let user = self.whoami_name(&with).await;
            sessions_without.push(Caller {
                name: format!("{role}_no_step_up"),
                kind: Kind::User {
                    role,
                    step_up: false,
                    outside: false,
                },
                token: Some(self.sign_in(&user).await),
                totp: None,
            });
            if role == "delegated_resource_admin" {
                callers.push(Caller {
                    name: "delegated_outside".to_owned(),
                    kind: Kind::User {
                        role,
                        step_up: true,
                        outside: true,
                    },
                    ..with.clone()
                });
            }
            callers.push(with);
        }
        callers.extend(sessions_without);
        callers.push(self.caller("service_pam_admin", Kind::Service).await);
        let order = caller_names();
        callers.sort_by_key(|c| order.iter().position(|n| *n == c.name));
        assert_eq!(
            callers.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
            order
        );
        callers
    }

    async fn whoami_name(&self, caller: &Caller) -> String {
        let who = self
            .ok("GET", "/v1/whoami", caller.token.as_deref().unwrap(), None)
            .await;
        who["name"].as_str().unwrap().to_owned()
    }

    /// Each caller is what its name says: the right roles, a second factor shown or not, and
    /// the refused ones refused for their reason.
    async fn check_callers(&self, callers: &[Caller]) {
        for caller in callers {
            let (status, who) = self
                .call("GET", "/v1/whoami", caller.token.as_deref(), None)
                .await;
            let reason = match caller.kind {
                Kind::Anonymous => Some(("authentication_error", "missing")),
                Kind::Expired => Some(("authentication_error", "expired")),
                Kind::Revoked => Some(("server_authorization_revoked", "revoked")),
                Kind::Disabled => Some(("server_authorization_revoked", "disabled")),
                Kind::Agent => Some(("authentication_error", "not valid")),
                Kind::User { .. } | Kind::Service => None,
            };
            if let Some((code, word)) = reason {
                assert_eq!(status, 401, "{}: {who}", caller.name);
                assert_eq!(who["code"], code, "{}: {who}", caller.name);
                assert!(
                    who["message"].as_str().unwrap().contains(word),
                    "{}: {who}",
                    caller.name
                );
                continue;
            }
            assert_eq!(status, 200, "{}: {who}", caller.name);
            match caller.kind {
                Kind::User { role, step_up, .. } => {
                    assert_eq!(who["kind"], "user", "{}: {who}", caller.name);
                    assert_eq!(who["roles"], json!([role]), "{}: {who}", caller.name);
                    assert_eq!(who["mfa_at"].is_string(), step_up, "{}: {who}", caller.name);
                }
                _ => {
                    assert_eq!(who["kind"], "service", "{}: {who}", caller.name);
                    assert_eq!(who["roles"], json!(["pam_admin"]), "{}: {who}", caller.name);
                }
            }
        }
    }

    /// The host a host-scoped call of `caller` acts on: inside its delegation, or outside.
    fn target(&self, caller: &Caller) -> (&TestHost, &str) {
        if caller.kind.outside() {
            (&self.outside, self.job_outside.as_str())
        } else {
            (&self.inside, self.job_inside.as_str())
        }
    }

    /// Which of the two labelled hosts' objects a list must show `caller`, and which not.
    fn visible(&self, caller: &Caller, inside: &str, outside: &str) -> (Vec<String>, Vec<String>) {
        if caller.kind.delegated() {
            (vec![inside.to_owned()], vec![outside.to_owned()])
        } else {
            (vec![inside.to_owned(), outside.to_owned()], Vec::new())
        }
    }

    /// A new host with the labels of `caller`'s target (`team=db`, or `team=web` outside).
    async fn fresh_target_host(&mut self, caller: &Caller) -> TestHost {
        let team = if caller.kind.outside() {
            OUTSIDE
        } else {
            INSIDE
        };
        self.enroll(Some(team)).await
    }

    /// The call `route` makes for `caller`, with fresh objects where the call changes them.
    /// The id of the session `caller`'s token is, as `GET /v1/sessions` shows it; a made-up
    /// id for callers that cannot list theirs (refused before the id matters).
    async fn current_session(&self, caller: &Caller) -> String {
        let (status, listed) = self
            .call("GET", "/v1/sessions", caller.token.as_deref(), None)
            .await;
        if status != 200 {
            return "ses_matrix_unknown".to_owned();
        }
        listed["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["current"] == true)
            .and_then(|s| s["id"].as_str())
            .expect("the caller's own session is listed")
            .to_owned()
    }

    async fn prepare(&mut self, route: &Route, caller: &mut Caller) -> Option<Prepared> {
        let prepared = match route.key().as_str() {
            "GET /v1/health" => p("/v1/health", None),
            "GET /v1/openapi.json" => p("/v1/openapi.json", None),
            "GET /healthz" => p("/healthz", None),
            "GET /readyz" => p("/readyz", None),
            "GET /metrics" => p("/metrics", None),
            "POST /v1/enroll" => {
                let body = self.enroll_body().await;
                p("/v1/enroll", Some(body))
            }
            "POST /v1/service_token" => p(
                "/v1/service_token",
                Some(json!({"api_key": self.target_service.1})),
            ),
            "POST /v1/login/start" => p(
                "/v1/login/start",
                Some(json!({"redirect_uri": "http://127.0.0.1:9/callback"})),
            ),
            "POST /v1/login/finish" => p(
                "/v1/login/finish",
                Some(json!({"state": "matrix-state", "code": "matrix-code"})),
            ),
            "POST /v1/login/device" => p("/v1/login/device", None),
            "POST /v1/login/device/poll" => p(
                "/v1/login/device/poll",
                Some(json!({"id": "matrix-device-login"})),
            ),
            "POST /v1/login/local" => p(
                "/v1/login/local",
                Some(json!({"name": self.target_user, "password": PASSWORD})),
            ),
            "POST /v1/logout" => p("/v1/logout", None),
            "GET /v1/whoami" => p("/v1/whoami", None),
            "GET /v1/sessions" => p("/v1/sessions", None),
            "DELETE /v1/sessions/{id}" => {
                let id = self.current_session(caller).await;
                p(format!("/v1/sessions/{id}"), None)
            }
            "POST /v1/sessions/end-others" => p("/v1/sessions/end-others", None),
            "GET /v1/roles" => p("/v1/roles", None),
            "GET /v1/agent/jobs" => p("/v1/agent/jobs?wait=0", None),
            "POST /v1/agent/jobs/{id}/report" => {
                let agent = self.agent.clone();
                let (id, lease) = self.leased_job(&agent).await;
                p(
                    format!("/v1/agent/jobs/{id}/report"),
                    Some(json!({"lease": lease, "outcome": {"status": "confirmed"}})),
                )
            }
            "POST /v1/agent/revocations" => {
                let agent = self.agent.clone();
                let job = self.confirmed_grant(&agent).await;
                p(
                    "/v1/agent/revocations",
                    Some(json!({"job_id": job, "revoked_at": Utc::now()})),
                )
            }
            "POST /v1/agent/credential" => {
                let hex: String = (0..64)
                    .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap())
                    .collect();
                p(
                    "/v1/agent/credential",
                    Some(json!({"new_credential": format!("latch_host_{hex}")})),
                )
            }
            "GET /v1/agent/self" => p("/v1/agent/self", None),
            "POST /v1/enroll-tokens" => p("/v1/enroll-tokens", Some(json!({}))),
            "GET /v1/hosts" => {
                let (listed, unlisted) = self.visible(caller, &self.inside.id, &self.outside.id);
                Prepared {
                    listed,
                    unlisted,
                    ..p("/v1/hosts?count=1000", None)
                }
            }
            "GET /v1/hosts/{host}" => p(format!("/v1/hosts/{}", self.target(caller).0.id), None),
            "DELETE /v1/hosts/{host}" => {
                let host = self.fresh_target_host(caller).await;
                p(format!("/v1/hosts/{}", host.id), None)
            }
            "PUT /v1/hosts/{host}/labels" => {
                let host = self.fresh_target_host(caller).await;
                p(
                    format!("/v1/hosts/{}/labels", host.id),
                    Some(json!({"labels": {"team": INSIDE, "matrix": "relabelled"}})),
                )
            }
            "POST /v1/jobs" => {
                let account = self.fresh("mx");
                let host = self.target(caller).0.id.clone();
                p(
                    "/v1/jobs",
                    Some(
                        json!({"host": host, "kind": "create-account", "user": account, "expires_in_ms": 3_600_000}),
                    ),
                )
            }
            "GET /v1/jobs" | "GET /v1/grants" => {
                let (listed, unlisted) = self.visible(caller, &self.job_inside, &self.job_outside);
                let base = if route.path == "/v1/jobs" {
                    "/v1/jobs?count=1000"
                } else {
                    "/v1/grants?count=1000"
                };
                Prepared {
                    listed,
                    unlisted,
                    ..p(base, None)
                }
            }
            "GET /v1/jobs/{id}" => p(format!("/v1/jobs/{}", self.target(caller).1), None),
            "POST /v1/signing-key/rotate" => p("/v1/signing-key/rotate", None),
            "POST /v1/signing-key/promote" => {
                if !self.rotating {
                    self.as_admin("POST", "/v1/signing-key/rotate", None).await;
                    self.rotating = true;
                }
                p("/v1/signing-key/promote?force=true", None)
            }
            "GET /v1/audit" => p("/v1/audit", None),
            "GET /v1/audit/verify" => p("/v1/audit/verify", None),
            "POST /v1/audit/verify" => {
                let checkpoint = self.as_admin("POST", "/v1/audit/checkpoints", None).await;
                p(
                    "/v1/audit/verify",
                    Some(json!({"checkpoints": [checkpoint]})),
                )
            }
            "POST /v1/audit/checkpoints" => p("/v1/audit/checkpoints", None),
            "GET /v1/users" => p("/v1/users", None),
            "POST /v1/users" => {
                let name = self.fresh("user");
                p(
                    "/v1/users",
                    Some(json!({"name": name, "display_name": "Made By The Matrix"})),
                )
            }
            "GET /v1/users/{key}" => p(format!("/v1/users/{}", self.target_user), None),
            "POST /v1/users/{key}/disable" => {
                let user = self.user_without_password().await;
                p(format!("/v1/users/{user}/disable"), None)
            }
            "POST /v1/users/{key}/enable" => {
                let user = self.user_without_password().await;
                self.as_admin("POST", &format!("/v1/users/{user}/disable"), None)
                    .await;
                p(format!("/v1/users/{user}/enable"), None)
            }
            "PUT /v1/users/{key}/password" => {
                let user = self.user_without_password().await;
                p(
                    format!("/v1/users/{user}/password"),
                    Some(json!({"password": "a long enough passphrase"})),
                )
            }
            "GET /v1/groups" => p("/v1/groups", None),
            "POST /v1/groups" => {
                let name = self.fresh("group");
                p(
                    "/v1/groups",
                    Some(json!({"name": name, "description": "matrix"})),
                )
            }
            "GET /v1/groups/{key}" => p(format!("/v1/groups/{}", self.target_group), None),
            "DELETE /v1/groups/{key}" => {
                let group = self.group().await;
                p(format!("/v1/groups/{group}"), None)
            }
            "PUT /v1/groups/{group}/members/{member}" => {
                let group = self.group().await;
                p(
                    format!("/v1/groups/{group}/members/{}", self.target_user),
                    None,
                )
            }
            "DELETE /v1/groups/{group}/members/{member}" => {
                let group = self.group().await;
                let path = format!("/v1/groups/{group}/members/{}", self.target_user);
                self.as_admin("PUT", &path, None).await;
                p(path, None)
            }
            "GET /v1/role-bindings" => p("/v1/role-bindings", None),
            "POST /v1/role-bindings" => {
                let group = self.group().await;
                p(
                    "/v1/role-bindings",
                    Some(json!({"role": "end_user", "group": group})),
                )
            }
            "DELETE /v1/role-bindings/{id}" => {
                let group = self.group().await;
                let binding = self
                    .as_admin(
                        "POST",
                        "/v1/role-bindings",
                        Some(json!({"role": "end_user", "group": group})),
                    )
                    .await;
                p(
                    format!("/v1/role-bindings/{}", binding["id"].as_str().unwrap()),
                    None,
                )
            }
            "GET /v1/service-users" => p("/v1/service-users", None),
            "POST /v1/service-users" => {
                let name = self.fresh("svc");
                p(
                    "/v1/service-users",
                    Some(json!({"name": name, "roles": ["end_user"]})),
                )
            }
            "GET /v1/service-users/{key}" => {
                p(format!("/v1/service-users/{}", self.target_service.0), None)
            }
            "POST /v1/service-users/{key}/disable" => {
                let (service, _) = self.service_user(&[]).await;
                p(format!("/v1/service-users/{service}/disable"), None)
            }
            "POST /v1/service-users/{key}/enable" => {
                let (service, _) = self.service_user(&[]).await;
                self.as_admin(
                    "POST",
                    &format!("/v1/service-users/{service}/disable"),
                    None,
                )
                .await;
                p(format!("/v1/service-users/{service}/enable"), None)
            }
            "GET /v1/service-users/{key}/keys" => p(
                format!("/v1/service-users/{}/keys", self.target_service.0),
                None,
            ),
            "POST /v1/service-users/{key}/keys" => {
                let (service, _) = self.service_user(&[]).await;
                p(format!("/v1/service-users/{service}/keys"), None)
            }
            "DELETE /v1/service-users/{key}/keys/{key_id}" => {
                let (service, _) = self.service_user(&[]).await;
                let keys = self
                    .as_admin("GET", &format!("/v1/service-users/{service}/keys"), None)
                    .await;
                let key_id = keys["list"][0]["id"].as_str().unwrap().to_owned();
                p(format!("/v1/service-users/{service}/keys/{key_id}"), None)
            }
            "POST /v1/mfa/totp" => p("/v1/mfa/totp", None),
            "POST /v1/mfa/totp/verify" => {
                let code = match &mut caller.totp {
                    Some(totp) => totp.next_code().await,
                    None => "123456".to_owned(),
                };
                p("/v1/mfa/totp/verify", Some(json!({"code": code})))
            }
            "GET /v1/vaults" => {
                let vault = self.vault_id.clone();
                let (listed, unlisted) = if Self::sees_vaults(caller) {
                    (vec![vault], Vec::new())
                } else {
                    (Vec::new(), vec![vault])
                };
                Prepared {
                    listed,
                    unlisted,
                    ..p("/v1/vaults", None)
                }
            }
            "POST /v1/vaults" => {
                let name = self.fresh("vault");
                p("/v1/vaults", Some(json!({"name": name})))
            }
            "GET /v1/vaults/{key}" => p("/v1/vaults/matrix", None),
            "PATCH /v1/vaults/{key}" | "DELETE /v1/vaults/{key}" => {
                let name = self.fresh("vault");
                self.as_admin("POST", "/v1/vaults", Some(json!({"name": name})))
                    .await;
                let body = (route.method == "PATCH").then(|| json!({"description": "changed"}));
                p(format!("/v1/vaults/{name}"), body)
            }
            "GET /v1/vaults/{key}/grants" => p("/v1/vaults/matrix/grants", None),
            "POST /v1/vaults/{key}/grants" => p(
                "/v1/vaults/matrix/grants",
                Some(json!({"user": self.target_user, "level": "view_vault"})),
            ),
            "DELETE /v1/vaults/{key}/grants/{grant}" => {
                let grant = self
                    .as_admin(
                        "POST",
                        "/v1/vaults/matrix/grants",
                        Some(json!({"user": self.target_user, "level": "view_vault"})),
                    )
                    .await;
                p(
                    format!("/v1/vaults/matrix/grants/{}", grant["id"].as_str().unwrap()),
                    None,
                )
            }
            "GET /v1/vaults/{key}/identities" => p("/v1/vaults/matrix/identities", None),
            "POST /v1/vaults/{key}/identities" => {
                let name = self.fresh("idn");
                p(
                    "/v1/vaults/matrix/identities",
                    Some(
                        json!({"name": name, "username": "appsvc", "secret": "Matrix-Secret-2026!"}),
                    ),
                )
            }
            "GET /v1/identities/{id}" => p(format!("/v1/identities/{}", self.identity), None),
            "PATCH /v1/identities/{id}" | "DELETE /v1/identities/{id}" => {
                let identity = self.identity_in("matrix").await;
                let body = (route.method == "PATCH").then(|| json!({"rotate_after_use": true}));
                p(format!("/v1/identities/{identity}"), body)
            }
            "POST /v1/identities/{id}/reveal" => {
                let identity = self.granted_identity(caller).await;
                p(format!("/v1/identities/{identity}/reveal"), None)
            }
            "POST /v1/identities/{id}/checkout" => {
                let identity = self.granted_identity(caller).await;
                p(
                    format!("/v1/identities/{identity}/checkout"),
                    Some(json!({"reason": "matrix", "duration_minutes": 30})),
                )
            }
            "POST /v1/identities/{id}/break-glass" => {
                let identity = self.identity_in("matrix").await;
                p(
                    format!("/v1/identities/{identity}/break-glass"),
                    Some(json!({"reason": "matrix emergency"})),
                )
            }
            "GET /v1/identities/{id}/checkouts" => {
                p(format!("/v1/identities/{}/checkouts", self.identity), None)
            }
            "POST /v1/checkouts/{id}/checkin" => {
                let identity = self.identity_in("matrix").await;
                let checkout = self.fresh("co_matrix");
                let now = Utc::now().timestamp_millis();
                self.attacker
                    .exec(&format!(
                        "INSERT INTO checkouts (id, identity_id, principal_id, reason, break_glass, \
                         started_at, expires_at) SELECT '{checkout}', '{identity}', id, 'held', 0, \
                         {now}, {} FROM principals WHERE name = '{}'",
                        now + 3_600_000,
                        self.target_user
                    ))
                    .await;
                p(
                    format!("/v1/checkouts/{checkout}/checkin"),
                    Some(json!({"force": true})),
                )
            }
            "POST /v1/identities/{id}/rotate" => {
                let identity = self.identity_in("matrix").await;
                p(format!("/v1/identities/{identity}/rotate"), Some(json!({})))
            }
            "GET /v1/identities/{id}/rotations" => {
                p(format!("/v1/identities/{}/rotations", self.identity), None)
            }
            "GET /v1/rotations/{id}" => p(format!("/v1/rotations/{}", self.rotation), None),
            "POST /v1/hosts/{host}/enroll-account" => {
                let host = self.fresh_target_host(caller).await;
                // A poll makes the host online (it has no job to lease yet).
                let (status, _) = self
                    .call("GET", "/v1/agent/jobs?wait=0", Some(&host.credential), None)
                    .await;
                assert_eq!(status, 200);
                let name = self.fresh("enrolled");
                p(
                    format!("/v1/hosts/{}/enroll-account", host.id),
                    Some(json!({"user": "deploy", "vault": "matrix", "name": name})),
                )
            }
            "GET /v1/policies" => p("/v1/policies", None),
            "POST /v1/policies" => {
                let body = self.policy_body();
                p("/v1/policies", Some(body))
            }
            "GET /v1/policies/{key}" | "PUT /v1/policies/{key}" | "DELETE /v1/policies/{key}" => {
                let body = self.policy_body();
                let made = self.as_admin("POST", "/v1/policies", Some(body)).await;
                let name = made["name"].as_str().unwrap().to_owned();
                let replacement = (route.method == "PUT").then(|| {
                    let mut body = self.policy_body();
                    body["name"] = json!(name);
                    body["max_minutes"] = json!(30);
                    body
                });
                p(format!("/v1/policies/{name}"), replacement)
            }
            "GET /v1/access/requests" => p("/v1/access/requests?mine=true", None),
            "POST /v1/access/requests" => {
                let host = self.fresh_target_host(caller).await;
                let group = self.requesters.clone();
                self.join(caller, &group).await;
                p(
                    "/v1/access/requests",
                    Some(json!({"host": host.id, "access": "sudo", "minutes": 30,
                        "reason": "matrix", "ssh_public_key": KEY})),
                )
            }
            "GET /v1/access/requests/{id}" => {
                let id = self.access_request(None, "pending_approval", true).await;
                p(format!("/v1/access/requests/{id}"), None)
            }
            "POST /v1/access/requests/{id}/approve" | "POST /v1/access/requests/{id}/deny" => {
                let group = self.approvers.clone();
                self.join(caller, &group).await;
                let id = self.access_request(None, "pending_approval", false).await;
                let action = route.path.rsplit('/').next().unwrap_or_default().to_owned();
                p(
                    format!("/v1/access/requests/{id}/{action}"),
                    Some(json!({"reason": "matrix"})),
                )
            }
            "POST /v1/access/requests/{id}/cancel" => {
                let id = self
                    .access_request(Some(caller), "pending_approval", false)
                    .await;
                p(
                    format!("/v1/access/requests/{id}/cancel"),
                    Some(json!({"reason": "matrix"})),
                )
            }
            "POST /v1/access/requests/{id}/revoke" => {
                let id = self.access_request(None, "active", true).await;
                p(
                    format!("/v1/access/requests/{id}/revoke"),
                    Some(json!({"reason": "matrix"})),
                )
            }
            "POST /v1/access/requests/{id}/confirm" => {
                let id = self.access_request(Some(caller), "active", false).await;
                p(format!("/v1/access/requests/{id}/confirm"), None)
            }
            "GET /v1/organizations" => p("/v1/organizations", None),
            "POST /v1/organizations" => {
                let name = self.fresh("org");
                p("/v1/organizations", Some(json!({"name": name})))
            }
            "PATCH /v1/organizations/{key}" => p(
                "/v1/organizations/default",
                Some(json!({"break_glass_minutes": 30})),
            ),
            "GET /v1/support-access" => p("/v1/support-access", None),
            "POST /v1/support-access" => p(
                "/v1/support-access",
                Some(json!({"reason": "vendor ticket 42", "days": 7})),
            ),
            "DELETE /v1/support-access/{id}" => {
                let access = self
                    .as_admin(
                        "POST",
                        "/v1/support-access",
                        Some(json!({"reason": "vendor ticket 43", "days": 1})),
                    )
                    .await;
                p(
                    format!("/v1/support-access/{}", access["id"].as_str().unwrap()),
                    None,
                )
            }
            "POST /v1/support-access/emergency-disable" => p(
                "/v1/support-access/emergency-disable",
                Some(json!({"reason": "the vendor was breached"})),
            ),
            "GET /v1/webhooks" => p("/v1/webhooks", None),
            "POST /v1/webhooks" => p("/v1/webhooks", Some(webhook_body())),
            "DELETE /v1/webhooks/{id}" => {
                let webhook = self
                    .as_admin("POST", "/v1/webhooks", Some(webhook_body()))
                    .await;
                p(
                    format!("/v1/webhooks/{}", webhook["id"].as_str().unwrap()),
                    None,
                )
            }
            "GET /v1/webhooks/{id}/deliveries" => {
                let webhook = self
                    .as_admin("POST", "/v1/webhooks", Some(webhook_body()))
                    .await;
                p(
                    format!(
                        "/v1/webhooks/{}/deliveries",
                        webhook["id"].as_str().unwrap()
                    ),
                    None,
                )
            }
            _ => return None,
        };
        Some(prepared)
    }
}

impl Matrix {
    /// Keeps track of what a call changed that later calls depend on.
    fn observe(&mut self, route: &Route, status: u16, answer: &Value) {
        match (route.key().as_str(), status) {
            ("GET /v1/agent/jobs", 200) => {
                if let Some(job) = answer["list"].get(0) {
                    let held = (
                        job["id"].as_str().unwrap().to_owned(),
                        job["lease"].as_str().unwrap().to_owned(),
                    );
                    self.leases.insert(self.agent.id.clone(), held);
                }
            }
            ("POST /v1/agent/jobs/{id}/report", 204) => {
                self.leases.remove(&self.agent.id);
            }
            ("POST /v1/signing-key/rotate", 200) => self.rotating = true,
            ("POST /v1/signing-key/promote", 200) => self.rotating = false,
            _ => {}
        }
    }
}

/// One cell that did not answer as the matrix says.
struct Unexpected {
    route: String,
    caller: String,
    expected: String,
    got: String,
}

fn table(rows: &[Unexpected]) -> String {
    let width =
        |column: Vec<usize>, title: &str| column.into_iter().max().unwrap_or(0).max(title.len());
    let w0 = width(rows.iter().map(|r| r.route.len()).collect(), "route");
    let w1 = width(rows.iter().map(|r| r.caller.len()).collect(), "caller");
    let w2 = width(rows.iter().map(|r| r.expected.len()).collect(), "expected");
    let mut out = format!(
        "{} unexpected outcome(s):\n{:w0$} | {:w1$} | {:w2$} | got\n",
        rows.len(),
        "route",
        "caller",
        "expected"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:w0$} | {:w1$} | {:w2$} | {}",
            r.route, r.caller, r.expected, r.got
        );
    }
    out
}

/// Issue 10: every route × every caller answers as `authz_matrix.json` says, and no denied call
/// changes anything.
async fn every_endpoint_answers_every_caller_as_the_matrix_says(db: TestDb) {
    let matrix_file = load_matrix();
    let mut matrix = Matrix::start(db).await;
    let callers = matrix.callers().await;
    matrix.check_callers(&callers).await;
    let mut unexpected = Vec::new();
    let mut cells = 0;
    for route in &matrix_file.routes {
        for shared in &callers {
            cells += 1;
            let mut caller = match shared.kind {
                Kind::User { .. } | Kind::Service | Kind::Agent if route.fresh_caller => {
                    matrix.caller(&shared.name, shared.kind).await
                }
                _ => shared.clone(),
            };
            let denial = route.denial_for(&caller);
            let expected = match &denial {
                None => format!("{} (allowed)", route.status),
                Some(code) => format!("{} {code}", status_of(code)),
            };
            let name = caller.name.clone();
            let mut miss = |got: String| {
                unexpected.push(Unexpected {
                    route: route.key(),
                    caller: name.clone(),
                    expected: expected.clone(),
                    got,
                })
            };
            let Some(prepared) = matrix.prepare(route, &mut caller).await else {
                miss("no request: add one for this route to Matrix::prepare".to_owned());
                continue;
            };
            let before = match denial {
                Some(_) => Some(snapshot(&matrix.attacker).await),
                None => None,
            };
            let (status, answer) = matrix
                .call(
                    &route.method,
                    &prepared.path,
                    caller.token.as_deref(),
                    prepared.body.as_ref(),
                )
                .await;
            matrix.observe(route, status, &answer);
            let got_code = answer["code"].as_str().unwrap_or("").to_owned();
            let got = format!("{status} {got_code}");
            match &denial {
                None => {
                    if status != route.status {
                        miss(format!("{got}: {}", answer["message"]));
                        continue;
                    }
                    let text = answer.to_string();
                    for id in &prepared.listed {
                        if !text.contains(id.as_str()) {
                            miss(format!("{status}, but the list lacks {id}"));
                        }
                    }
                    for id in &prepared.unlisted {
                        if text.contains(id.as_str()) {
                            miss(format!("{status}, and the list shows {id}"));
                        }
                    }
                }
                Some(code) => {
                    let message_ok = answer["message"].as_str().is_some_and(|m| !m.is_empty());
                    if status != status_of(code) || got_code != *code || !message_ok {
                        miss(format!("{got}: {}", answer["message"]));
                    }
                    let after = snapshot(&matrix.attacker).await;
                    if let Some(before) = before
                        && before != after
                    {
                        miss(format!("{got}, but {}", difference(&before, &after)));
                    }
                }
            }
        }
    }
    // A filter naming a host must not tell a caller who may not see it whether it exists.
    let by_name: BTreeMap<&str, &Caller> = callers.iter().map(|c| (c.name.as_str(), c)).collect();
    let probes = [
        ("delegated_resource_admin", matrix.inside.id.clone(), "200 "),
        ("end_user", matrix.inside.id.clone(), "403 forbidden_error"),
        ("end_user", "no-such-host".to_owned(), "403 forbidden_error"),
        (
            "delegated_outside",
            matrix.outside.id.clone(),
            "404 resource_does_not_exist",
        ),
        (
            "delegated_outside",
            "no-such-host".to_owned(),
            "404 resource_does_not_exist",
        ),
    ];
    for (name, host, expected) in probes {
        let path = format!("/v1/jobs?host={host}");
        let (status, answer) = matrix
            .call("GET", &path, by_name[name].token.as_deref(), None)
            .await;
        let got = format!("{status} {}", answer["code"].as_str().unwrap_or(""));
        if got != expected {
            unexpected.push(Unexpected {
                route: format!("GET {path}"),
                caller: name.to_owned(),
                expected: expected.to_owned(),
                got,
            });
        }
    }
    eprintln!(
        "authorization matrix: {} routes × {} callers = {cells} cells, {} unexpected",
        matrix_file.routes.len(),
        callers.len(),
        unexpected.len()
    );
    assert!(unexpected.is_empty(), "{}", table(&unexpected));
}
both_stores!(every_endpoint_answers_every_caller_as_the_matrix_says);
