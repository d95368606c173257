//! The HTTP API (DESIGN.md §5). Handlers only parse, authenticate and call [`Control`]; every
//! decision lives in the library modules. `/v1/enroll` and `/v1/agent/*` carry the agent
//! protocol's version in both directions ([`protocol`]).
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | GET | `/v1/health` | anyone | liveness |
//! | GET | `/healthz`, `/readyz` | anyone | the process serves; it can reach its database ([`metrics`]) |
//! | GET | `/metrics` | hosts.view everywhere | Prometheus metrics ([`metrics`]) |
//! | GET | `/v1/openapi.json` | anyone | this API's OpenAPI document ([`openapi`]) |
//! | POST | `/v1/enroll` | enrollment token | enroll a host |
//! | POST | `/v1/login/start` (`{"redirect_uri"}`) | anyone | begin a single sign-on (code flow) |
//! | POST | `/v1/login/finish` (`{"state", "code"}`) | anyone | finish it: a session token |
//! | POST | `/v1/login/device` | anyone | begin a device-flow sign-in (user code, URL) |
//! | POST | `/v1/login/device/poll` (`{"id"}`) | anyone | pending, or the session token |
//! | POST | `/v1/logout` | user or service token | end the session |
//! | GET | `/v1/whoami` | user or service token | name, kind, roles, groups, session |
//! | GET | `/v1/sessions`, DELETE `/v1/sessions/{id}` | user or service token | the caller's own live sessions; end one |
//! | POST | `/v1/sessions/end-others` | user or service token | end every session of the caller but this one |
//! | GET | `/v1/agent/jobs?wait=SECS` | host | long-poll for the next job |
//! | POST | `/v1/agent/jobs/{id}/report` | host | report an outcome |
//! | POST | `/v1/agent/revocations` | host | report a grant revoked at its expiry |
//! | POST | `/v1/agent/credential` | host | replace the host credential |
//! | POST | `/v1/enroll-tokens` (`{"ttl_seconds", "uses", "labels"}`) | admin | create an enrollment token |
//! | GET | `/v1/hosts?selector=`, `/v1/hosts/{id-or-name}` | admin | hosts (a label selector filters) |
//! | DELETE | `/v1/hosts/{id-or-name}` | admin | remove a host, cancel its jobs |
//! | POST/GET | `/v1/jobs`, GET `/v1/jobs?host=&status=&kind=&selector=`, `/v1/jobs/{id}` | admin | jobs |
//! | GET | `/v1/grants?host=&user=&state=&since=&selector=` | admin | grants: who has which access, how each ended |
//! | GET | `/v1/audit?since=&actor=&host=`, `/v1/audit/verify` | admin | audit trail, chain check |
//! | POST | `/v1/audit/verify` (`{"checkpoints": […]}`), `/v1/audit/checkpoints` | admin | check exported checkpoints; sign one |
//! | POST | `/v1/signing-key/rotate`, `/v1/signing-key/promote?force=` | admin | job-signing key rotation |
//! | POST | `/v1/login/local` (`{"name", "password"}`) | anyone | a local user's session token |
//! | GET/POST | `/v1/users`, GET `/v1/users/{name}` | users.view / users.manage | users |
//! | POST | `/v1/users/{name}/disable`, `/enable` | users.manage | end every session, or allow sign-in again |
//! | PUT | `/v1/users/{name}/password` (`{"password"}` or `null`) | users.manage | set or remove the local password; sessions end |
//! | GET/POST | `/v1/groups`, GET/DELETE `/v1/groups/{name}` | users.view / users.manage | groups |
//! | PUT/DELETE | `/v1/groups/{name}/members/{member}` | users.manage | membership |
//! | GET | `/v1/roles` | any signed-in caller | the five roles and their permissions |
//! | GET/POST | `/v1/role-bindings`, DELETE `/v1/role-bindings/{id}` | users.view / users.manage | who has which role |
//! | GET/POST | `/v1/service-users`, GET `/v1/service-users/{name}` | users.view / users.manage | service users (POST answers the first API key, once) |
//! | POST | `/v1/service-users/{name}/disable`, `/enable` | users.manage | end every token, or allow again |
//! | GET/POST | `/v1/service-users/{name}/keys`, DELETE `…/keys/{key_id}` | users.view / users.manage | API keys: list, add (shown once), revoke |
//! | POST | `/v1/mfa/totp`, `/v1/mfa/totp/verify` (`{"code"}`) | a signed-in user | enroll a TOTP factor; show a code (step-up) |
//! | PUT | `/v1/hosts/{host}/labels` (`{"labels": {…}}`) | hosts.manage everywhere | replace a host's labels |
//! | GET/POST | `/v1/vaults`, GET/PATCH/DELETE `/v1/vaults/{vault}` | pam_vaults.view or a grant / pam_vaults.manage | vaults (delete: only when empty) |
//! | GET/POST | `/v1/vaults/{vault}/grants`, DELETE `…/grants/{id}` | pam_vaults.manage | vault access grants |
//! | GET/POST | `/v1/vaults/{vault}/identities` | view / pam_vaults.manage (+ hosts.manage_users on linked hosts) | identities |
//! | GET/PATCH/DELETE | `/v1/identities/{id}` | view / pam_vaults.manage | one identity |
//! | POST | `/v1/identities/{id}/reveal` | grant ≥ view_credentials, MFA step-up | the credential (audited) |
//! | POST | `/v1/identities/{id}/checkout` (`{"reason", "duration_minutes", "host"}`) | grant ≥ checkout, MFA step-up | check out |
//! | POST | `/v1/identities/{id}/break-glass` (`{"reason"}`) | pam_vaults.break_glass, MFA step-up | emergency checkout, 3/min |
//! | GET | `/v1/identities/{id}/checkouts` | view | checkouts (others' only with pam_vaults.view) |
//! | POST | `/v1/checkouts/{id}/checkin` (`{"force"}`) | the holder; force: pam_vaults.manage | check in (rotates if configured) |
//! | POST | `/v1/identities/{id}/rotate` (`{"password"}`) | pam_vaults.manage | rotate on every linked host |
//! | GET | `/v1/identities/{id}/rotations`, `/v1/rotations/{id}` | view | rotations with per-host status |
//! | POST | `/v1/hosts/{host}/enroll-account` (`{"user", "vault", "name"}`) | hosts.manage_users + pam_vaults.manage, host online | one-click enrollment |
//! | GET/POST | `/v1/policies`, GET/PUT/DELETE `/v1/policies/{policy}` | policies.manage or access.view / policies.manage + step-up | access policies |
//! | GET/POST | `/v1/organizations`, PATCH `/v1/organizations/{org}` (`{"break_glass_minutes"}`) | vault view or settings.manage / settings.manage | organizations |
//! | GET/POST | `/v1/support-access` (`{"reason", "days", "organization"}`), DELETE `…/{id}` | settings.manage (+ step-up to change) | support access |
//! | POST | `/v1/support-access/emergency-disable` (`{"reason"}`) | settings.manage | end every support access at once |
//! | GET/POST | `/v1/webhooks` (`{"url", "events", "secret"}`), DELETE `/v1/webhooks/{id}` | settings.manage | signed webhooks |
//! | GET | `/v1/webhooks/{id}/deliveries` | settings.manage | a webhook's deliveries, newest first |

mod access;
mod audit;
pub mod error;
pub mod extract;
mod handlers;
pub mod limits;
pub mod metrics;
pub mod openapi;
mod pagination;
mod people;
pub mod protocol;
mod vault;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post, put};

use crate::Control;
use error::ApiError;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The API's router over `control`.
pub fn router(control: Arc<Control>) -> Router {
    let http_metrics = metrics::HttpMetrics::default();
    Router::new()
        .route("/v1/health", get(handlers::health))
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .route("/healthz", get(metrics::healthz))
        .route("/readyz", get(metrics::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/enroll", post(handlers::enroll))
        .route("/v1/service_token", post(handlers::service_token))
        .route("/v1/login/start", post(handlers::login_start))
        .route("/v1/login/finish", post(handlers::login_finish))
        .route("/v1/login/device", post(handlers::login_device))
        .route("/v1/login/device/poll", post(handlers::login_device_poll))
        .route("/v1/logout", post(handlers::logout))
        .route("/v1/whoami", get(handlers::whoami))
        .route("/v1/sessions", get(people::list_sessions))
        .route("/v1/sessions/end-others", post(people::end_other_sessions))
        .route("/v1/sessions/{id}", delete(people::end_session))
        .route("/v1/agent/jobs", get(handlers::poll_jobs))
        .route("/v1/agent/jobs/{id}/report", post(handlers::report_job))
        .route("/v1/agent/revocations", post(handlers::report_revocation))
        .route("/v1/agent/credential", post(handlers::rotate_credential))
        .route("/v1/agent/self", get(handlers::agent_self))
        .route("/v1/enroll-tokens", post(handlers::create_enroll_token))
        .route("/v1/hosts", get(handlers::list_hosts))
        .route(
            "/v1/hosts/{host}",
            get(handlers::show_host).delete(handlers::remove_host),
        )
        .route(
            "/v1/jobs",
            post(handlers::create_job).get(handlers::list_jobs),
        )
        .route("/v1/jobs/{id}", get(handlers::show_job))
        .route("/v1/grants", get(handlers::list_grants))
        .route("/v1/signing-key/rotate", post(handlers::rotate_signing_key))
        .route(
            "/v1/signing-key/promote",
            post(handlers::promote_signing_key),
        )
        .route("/v1/audit", get(audit::list_audit))
        .route(
            "/v1/audit/verify",
            get(audit::verify_audit).post(audit::verify_audit_with),
        )
        .route("/v1/audit/checkpoints", post(audit::audit_checkpoint))
        .route("/v1/login/local", post(people::login_local))
        .route(
            "/v1/users",
            get(people::list_users).post(people::create_user),
        )
        .route("/v1/users/{key}", get(people::show_user))
        .route("/v1/users/{key}/disable", post(people::disable_user))
        .route("/v1/users/{key}/enable", post(people::enable_user))
        .route("/v1/users/{key}/password", put(people::set_user_password))
        .route(
            "/v1/groups",
            get(people::list_groups).post(people::create_group),
        )
        .route(
            "/v1/groups/{key}",
            get(people::show_group).delete(people::delete_group),
        )
        .route(
            "/v1/groups/{group}/members/{member}",
            put(people::add_member).delete(people::remove_member),
        )
        .route("/v1/roles", get(people::list_roles))
        .route(
            "/v1/role-bindings",
            get(people::list_role_bindings).post(people::bind_role),
        )
        .route("/v1/role-bindings/{id}", delete(people::unbind_role))
        .route(
            "/v1/service-users",
            get(people::list_service_users).post(people::create_service_user),
        )
        .route("/v1/service-users/{key}", get(people::show_service_user))
        .route(
            "/v1/service-users/{key}/disable",
            post(people::disable_service_user),
        )
        .route(
            "/v1/service-users/{key}/enable",
            post(people::enable_service_user),
        )
        .route(
            "/v1/service-users/{key}/keys",
            get(people::list_api_keys).post(people::create_api_key),
        )
        .route(
            "/v1/service-users/{key}/keys/{key_id}",
            delete(people::revoke_api_key),
        )
        .route("/v1/mfa/totp", post(people::enroll_totp))
        .route("/v1/mfa/totp/verify", post(people::verify_totp))
        .route("/v1/hosts/{host}/labels", put(people::set_host_labels))
        .route(
            "/v1/vaults",
            get(vault::list_vaults).post(vault::create_vault),
        )
        .route(
            "/v1/vaults/{key}",
            get(vault::show_vault)
                .patch(vault::update_vault)
                .delete(vault::delete_vault),
        )
        .route(
            "/v1/vaults/{key}/grants",
            get(vault::list_vault_grants).post(vault::grant_vault_access),
        )
        .route(
            "/v1/vaults/{key}/grants/{grant}",
            delete(vault::revoke_vault_access),
        )
        .route(
            "/v1/vaults/{key}/identities",
            get(vault::list_identities).post(vault::create_identity),
        )
        .route(
            "/v1/identities/{id}",
            get(vault::show_identity)
                .patch(vault::update_identity)
                .delete(vault::delete_identity),
        )
        .route("/v1/identities/{id}/reveal", post(vault::reveal_identity))
        .route(
            "/v1/identities/{id}/checkout",
            post(vault::checkout_identity),
        )
        .route("/v1/identities/{id}/break-glass", post(vault::break_glass))
        .route("/v1/identities/{id}/checkouts", get(vault::list_checkouts))
        .route("/v1/checkouts/{id}/checkin", post(vault::checkin))
        .route("/v1/identities/{id}/rotate", post(vault::rotate_identity))
        .route("/v1/identities/{id}/rotations", get(vault::list_rotations))
        .route("/v1/rotations/{id}", get(vault::show_rotation))
        .route(
            "/v1/hosts/{host}/enroll-account",
            post(vault::enroll_account),
        )
        .route(
            "/v1/policies",
            get(access::list_policies).post(access::create_policy),
        )
        .route(
            "/v1/policies/{key}",
            get(access::show_policy)
                .put(access::replace_policy)
                .delete(access::delete_policy),
        )
        .route(
            "/v1/organizations",
            get(vault::list_organizations).post(vault::create_organization),
        )
        .route("/v1/organizations/{key}", patch(vault::update_organization))
        .route(
            "/v1/support-access",
            get(vault::list_support_access).post(vault::enable_support_access),
        )
        .route(
            "/v1/support-access/emergency-disable",
            post(vault::emergency_disable_support_access),
        )
        .route(
            "/v1/support-access/{id}",
            delete(vault::disable_support_access),
        )
        .route(
            "/v1/webhooks",
            get(webhooks::list_webhooks).post(webhooks::create_webhook),
        )
        .route("/v1/webhooks/{id}", delete(webhooks::delete_webhook))
        .route(
            "/v1/webhooks/{id}/deliveries",
            get(webhooks::list_deliveries),
        )
        .route(
            "/v1/access/requests",
            get(access::list_requests).post(access::create_request),
        )
        .route("/v1/access/requests/{id}", get(access::show_request))
        .route(
            "/v1/access/requests/{id}/approve",
            post(access::approve_request),
        )
        .route("/v1/access/requests/{id}/deny", post(access::deny_request))
        .route(
            "/v1/access/requests/{id}/cancel",
            post(access::cancel_request),
        )
        .route(
            "/v1/access/requests/{id}/revoke",
            post(access::revoke_request),
        )
        .route(
            "/v1/access/requests/{id}/confirm",
            post(access::confirm_request),
        )
        // The web console's pages, under the same limiter and metrics.
        .merge(crate::console::routes())
        .fallback(|request: axum::extract::Request| async move {
            if crate::console::wants_html(&request) {
                return crate::console::not_found_page();
            }
            axum::response::IntoResponse::into_response(ApiError::not_found(
                "no such endpoint; see the API table in README.md",
            ))
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "this endpoint does not accept that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            limits::Limiter::new(control.config().rate_limits.clone()),
            limits::limit,
        ))
        // Outside the limiter: its refusals name the protocol too.
        .layer(axum::middleware::from_fn(protocol::handshake))
        // Outermost: times every answer, the limiter's refusals included.
        .layer(axum::middleware::from_fn_with_state(
            http_metrics.clone(),
            metrics::time_requests,
        ))
        .layer(axum::Extension(http_metrics))
        .with_state(control)
}
