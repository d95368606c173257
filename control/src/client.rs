//! A small client for the admin API, used by `latchctl` and usable by other tools.

use std::time::Duration;

use latch_common::api::{
    ApiErrorBody, CreateEnrollTokenRequest, CreateJobRequest, EnrollTokenView, GrantView, HostView,
    JobView, ListResponse, TokenResponse,
};
use latch_common::labels::Labels;
use latch_common::people::{
    ApiKeyView, BindRoleRequest, CreateGroupRequest, CreateServiceUserRequest, CreateUserRequest,
    CreatedServiceUser, EndedSessions, GroupView, LocalLoginRequest, NewApiKeyResponse,
    PrincipalView, RoleBindingView, RoleView, SessionView, TotpEnrollResponse, TotpVerifyRequest,
    TotpVerifyResponse,
};
use latch_common::vault::{
    BreakGlassRequest, CheckinRequest, CheckoutGranted, CheckoutRequest, CheckoutView,
    CreateIdentityRequest, CreateOrganizationRequest, CreateVaultGrantRequest, CreateVaultRequest,
    EmergencyDisableRequest, EmergencyDisabled, EnableSupportAccessRequest, EnrollAccountRequest,
    EnrolledAccount, IdentityView, OrganizationView, RevealedSecret, RotateRequest, RotationView,
    SupportAccessView, UpdateIdentityRequest, UpdateOrganizationRequest, UpdateVaultRequest,
    VaultGrantView, VaultView,
};
use latch_common::webhooks::{CreateWebhookRequest, DeliveryView, WebhookView};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// Why an admin API call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The control plane could not be reached.
    #[error(
        "cannot reach the control plane at {server}: {source}; is `latch-control serve` running there? (set --server or LATCH_SERVER)"
    )]
    Unreachable {
        /// The server URL.
        server: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The control plane answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
    /// The answer could not be decoded.
    #[error("the control plane's answer could not be read: {0}")]
    Decode(String),
    /// The server URL is plain `http://` to a host that is not loopback: the admin token would
    /// cross the network in clear text. Nothing was sent.
    #[error(
        "refusing to send the admin token over plain http:// to {server}: use https:// (the control plane serves plain HTTP only on loopback, with --insecure-http, anyway)"
    )]
    InsecureServer {
        /// The server URL.
        server: String,
    },
    /// The server URL cannot be used.
    #[error(
        "the server URL {server:?} {reason}; give e.g. https://latch.example.com:8443 (--server or LATCH_SERVER)"
    )]
    BadServerUrl {
        /// The server URL.
        server: String,
        /// What is wrong.
        reason: String,
    },
}

/// Checks an admin API URL before anything is sent to it: `https://` to any host, plain
/// `http://` only to a loopback address (127.0.0.0/8, ::1, localhost), no credentials, query or
/// fragment in it.
pub fn check_server_url(server: &str) -> Result<reqwest::Url, ClientError> {
    let bad = |reason: String| ClientError::BadServerUrl {
        server: server.to_owned(),
        reason,
    };
    let url = reqwest::Url::parse(server).map_err(|e| bad(format!("is not a URL ({e})")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "carries a user name or password; the admin token is given with --token".to_owned(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment".to_owned()));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_host(url.host_str().unwrap_or("")) => Ok(url),
        "http" => Err(ClientError::InsecureServer {
            server: server.to_owned(),
        }),
        other => Err(bad(format!(
            "has the scheme {other}:, not https:// (or http:// to a loopback address)"
        ))),
    }
}

/// Whether `host` (as in a URL: IPv6 in brackets) is a loopback address or `localhost`.
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// `name` as one URL path segment: every byte outside `A-Z a-z 0-9 - . _ ~ @` percent-encoded,
/// so a name can never reach another path (`..`, `/`) or a query.
fn segment(name: &str) -> String {
    if name == "." || name == ".." {
        return name.replace('.', "%2E");
    }
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The last path segment of the disable/enable endpoints.
fn switch(disabled: bool) -> &'static str {
    if disabled { "disable" } else { "enable" }
}

/// Admin API client.
pub struct AdminClient {
    http: reqwest::Client,
    server: String,
    /// What the caller gave: a bearer token (`latch_tok_`), or an API key (`latch_key_`, or a
    /// legacy `latch_admin_` token) that is exchanged for one at the first call.
    credential: String,
    bearer: tokio::sync::Mutex<Option<String>>,
}

impl AdminClient {
    /// A client for `server` (e.g. `https://127.0.0.1:8443`) with the admin `token`, trusting
    /// only the CA in `ca_pem` when given (the control plane's own CA, `ca.crt`). Plain
    /// `http://` is refused unless the server is on loopback ([`check_server_url`]), so the token
    /// never crosses a network in clear text.
    pub fn new(server: &str, token: &str, ca_pem: Option<&[u8]>) -> Result<Self, ClientError> {
        check_server_url(server)?;
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(pem) = ca_pem {
            let ca =
                reqwest::Certificate::from_pem(pem).map_err(|source| ClientError::Unreachable {
                    server: server.to_owned(),
                    source,
                })?;
            builder = builder.tls_certs_only([ca]);
        }
        let http = builder.build().map_err(|source| ClientError::Unreachable {
            server: server.to_owned(),
            source,
        })?;
        Ok(Self {
            http,
            server: server.trim_end_matches('/').to_owned(),
            credential: token.to_owned(),
            bearer: tokio::sync::Mutex::new(None),
        })
    }

    /// The bearer token to send: the one given, or the one an API key was exchanged for
    /// (`POST /v1/service_token`, once per client).
    async fn bearer(&self) -> Result<String, ClientError> {
        let is_key = self.credential.starts_with(crate::people::API_KEY_PREFIX)
            || self
                .credential
                .starts_with(crate::people::LEGACY_ADMIN_PREFIX);
        if !is_key {
            return Ok(self.credential.clone());
        }
        let mut bearer = self.bearer.lock().await;
        if let Some(token) = bearer.as_ref() {
            return Ok(token.clone());
        }
        let request = latch_common::api::ServiceTokenRequest {
            api_key: self.credential.clone(),
            ttl_seconds: None,
        };
        let issued: latch_common::api::TokenResponse = self
            .send(Method::POST, "/v1/service_token", &[], Some(&request), None)
            .await?;
        *bearer = Some(issued.token.clone());
        Ok(issued.token)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let bearer = self.bearer().await?;
        // No credential (sign-in endpoints): no Authorization header at all.
        let bearer = (!bearer.is_empty()).then_some(bearer.as_str());
        self.send(method, path, query, body, bearer).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&(impl Serialize + ?Sized)>,
        bearer: Option<&str>,
    ) -> Result<T, ClientError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.server))
            .query(query);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                server: self.server.clone(),
                source,
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if !status.is_success() {
            let error: ApiErrorBody = serde_json::from_slice(&bytes).unwrap_or(ApiErrorBody {
                code: "unknown_error".into(),
                message: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            });
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: error.code,
                message: error.message,
            });
        }
        let bytes = if status == StatusCode::NO_CONTENT {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `POST /v1/enroll-tokens`.
    pub async fn create_enroll_token(
        &self,
        request: &CreateEnrollTokenRequest,
    ) -> Result<EnrollTokenView, ClientError> {
        self.call(Method::POST, "/v1/enroll-tokens", &[], Some(request))
            .await
    }

    /// `GET /v1/hosts` (all pages), only the hosts matching `selector` if one is given
    /// (`env=prod,team in (db,web)`).
    pub async fn list_hosts(&self, selector: Option<&str>) -> Result<Vec<HostView>, ClientError> {
        let mut query = Vec::new();
        if let Some(selector) = selector {
            query.push(("selector", selector.to_owned()));
        }
        self.all_pages("/v1/hosts", query).await
    }

    /// `GET /v1/hosts/{host}`.
    pub async fn show_host(&self, host: &str) -> Result<HostView, ClientError> {
        self.call(Method::GET, &format!("/v1/hosts/{host}"), &[], None::<&()>)
            .await
    }

    /// `DELETE /v1/hosts/{host}`: `{"id", "removed", "cancelled_jobs"}`.
    pub async fn remove_host(&self, host: &str) -> Result<serde_json::Value, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/hosts/{host}"),
            &[],
            None::<&()>,
        )
        .await
    }

    /// `PUT /v1/hosts/{host}/labels`: replaces the host's labels; answers the host as it is now.
    pub async fn set_host_labels(
        &self,
        host: &str,
        labels: &Labels,
    ) -> Result<HostView, ClientError> {
        self.call(
            Method::PUT,
            &format!("/v1/hosts/{host}/labels"),
            &[],
            Some(&serde_json::json!({ "labels": labels })),
        )
        .await
    }

    /// `POST /v1/jobs`.
    pub async fn create_job(&self, request: &CreateJobRequest) -> Result<JobView, ClientError> {
        self.call(Method::POST, "/v1/jobs", &[], Some(request))
            .await
    }

    /// `GET /v1/jobs` with filters (all pages): `host` (id or name), `status`, and `selector`
    /// (jobs of hosts whose labels match).
    pub async fn list_jobs(
        &self,
        host: Option<&str>,
        status: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Vec<JobView>, ClientError> {
        let mut query = Vec::new();
        if let Some(host) = host {
            query.push(("host", host.to_owned()));
        }
        if let Some(status) = status {
            query.push(("status", status.to_owned()));
        }
        if let Some(selector) = selector {
            query.push(("selector", selector.to_owned()));
        }
        self.all_pages("/v1/jobs", query).await
    }

    /// `GET /v1/grants` with filters (all pages): `host` (id or name), `user`, `state`,
    /// `since` (grants created or revoked since then, plus every grant not over yet), and
    /// `selector` (grants on hosts whose labels match).
    pub async fn list_grants(
        &self,
        host: Option<&str>,
        user: Option<&str>,
        state: Option<&str>,
        since: Option<chrono::DateTime<chrono::Utc>>,
        selector: Option<&str>,
    ) -> Result<Vec<GrantView>, ClientError> {
        let mut query = Vec::new();
        if let Some(host) = host {
            query.push(("host", host.to_owned()));
        }
        if let Some(user) = user {
            query.push(("user", user.to_owned()));
        }
        if let Some(state) = state {
            query.push(("state", state.to_owned()));
        }
        if let Some(since) = since {
            query.push(("since", since.to_rfc3339()));
        }
        if let Some(selector) = selector {
            query.push(("selector", selector.to_owned()));
        }
        self.all_pages("/v1/grants", query).await
    }

    /// `GET /v1/audit` with filters (all pages).
    pub async fn list_audit(
        &self,
        since: Option<chrono::DateTime<chrono::Utc>>,
        actor: Option<&str>,
        host: Option<&str>,
    ) -> Result<Vec<crate::audit::AuditEntry>, ClientError> {
        let mut query = Vec::new();
        if let Some(since) = since {
            query.push(("since", since.to_rfc3339()));
        }
        if let Some(actor) = actor {
            query.push(("actor", actor.to_owned()));
        }
        if let Some(host) = host {
            query.push(("host", host.to_owned()));
        }
        self.all_pages("/v1/audit", query).await
    }

    /// `POST /v1/login/start` (no token needed).
    pub async fn login_start(
        &self,
        request: &crate::sso::LoginStartRequest,
    ) -> Result<crate::sso::LoginStartResponse, ClientError> {
        self.call(Method::POST, "/v1/login/start", &[], Some(request))
            .await
    }

    /// `POST /v1/login/finish` (no token needed): the session token.
    pub async fn login_finish(
        &self,
        request: &crate::sso::LoginFinishRequest,
    ) -> Result<crate::sso::LoginFinishResponse, ClientError> {
        self.call(Method::POST, "/v1/login/finish", &[], Some(request))
            .await
    }

    /// `POST /v1/login/device` (no token needed).
    pub async fn login_device(&self) -> Result<crate::sso::SsoDeviceStart, ClientError> {
        self.call(Method::POST, "/v1/login/device", &[], None::<&()>)
            .await
    }

    /// `POST /v1/login/device/poll` (no token needed).
    pub async fn login_device_poll(
        &self,
        id: &str,
    ) -> Result<crate::sso::DevicePollResponse, ClientError> {
        let request = crate::sso::DevicePollRequest { id: id.to_owned() };
        self.call(Method::POST, "/v1/login/device/poll", &[], Some(&request))
            .await
    }

    /// `POST /v1/logout`: ends the session of this client's token.
    pub async fn logout(&self) -> Result<serde_json::Value, ClientError> {
        self.call(Method::POST, "/v1/logout", &[], None::<&()>)
            .await
    }

    /// `GET /v1/whoami`.
    pub async fn whoami(&self) -> Result<crate::sso::WhoAmI, ClientError> {
        self.call(Method::GET, "/v1/whoami", &[], None::<&()>).await
    }

    /// `GET /v1/sessions`: the caller's own live sessions, newest first.
    pub async fn list_sessions(&self) -> Result<Vec<SessionView>, ClientError> {
        self.all_pages("/v1/sessions", Vec::new()).await
    }

    /// `DELETE /v1/sessions/{id}`: ends one of the caller's own sessions.
    pub async fn end_session(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/sessions/{}", segment(id));
        self.call(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// `POST /v1/sessions/end-others`: ends every session of the caller but this one.
    pub async fn end_other_sessions(&self) -> Result<EndedSessions, ClientError> {
        self.call(Method::POST, "/v1/sessions/end-others", &[], None::<&()>)
            .await
    }

    /// `POST /v1/signing-key/rotate`: `{"next_key", "jobs"}`.
    pub async fn rotate_signing_key(&self) -> Result<serde_json::Value, ClientError> {
        self.call(Method::POST, "/v1/signing-key/rotate", &[], None::<&()>)
            .await
    }

    /// `POST /v1/signing-key/promote`.
    pub async fn promote_signing_key(&self, force: bool) -> Result<serde_json::Value, ClientError> {
        self.call(
            Method::POST,
            "/v1/signing-key/promote",
            &[("force", force.to_string())],
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/audit/verify`: `{"ok", "entries", "first_bad", "checkpoints", …}`.
    pub async fn verify_audit(&self) -> Result<serde_json::Value, ClientError> {
        self.call(Method::GET, "/v1/audit/verify", &[], None::<&()>)
            .await
    }

    /// `POST /v1/audit/verify` with checkpoints exported earlier (JSON documents).
    pub async fn verify_audit_with(
        &self,
        checkpoints: &[serde_json::Value],
    ) -> Result<serde_json::Value, ClientError> {
        self.call(
            Method::POST,
            "/v1/audit/verify",
            &[],
            Some(&serde_json::json!({ "checkpoints": checkpoints })),
        )
        .await
    }

    /// `POST /v1/audit/checkpoints`: a signed checkpoint of the audit chain's head.
    pub async fn audit_checkpoint(&self) -> Result<serde_json::Value, ClientError> {
        self.call(Method::POST, "/v1/audit/checkpoints", &[], None::<&()>)
            .await
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn show_job(&self, id: &str) -> Result<JobView, ClientError> {
        self.call(Method::GET, &format!("/v1/jobs/{id}"), &[], None::<&()>)
            .await
    }

    /// `POST /v1/login/local` (no token needed): a local user's session token.
    pub async fn login_local(
        &self,
        request: &LocalLoginRequest,
    ) -> Result<TokenResponse, ClientError> {
        self.send(Method::POST, "/v1/login/local", &[], Some(request), None)
            .await
    }

    /// `GET /v1/users`.
    pub async fn list_users(&self) -> Result<Vec<PrincipalView>, ClientError> {
        self.all_pages("/v1/users", Vec::new()).await
    }

    /// `GET /v1/users/{name}`: the user with their groups and roles.
    pub async fn show_user(&self, name: &str) -> Result<PrincipalView, ClientError> {
        let path = format!("/v1/users/{}", segment(name));
        self.call(Method::GET, &path, &[], None::<&()>).await
    }

    /// `POST /v1/users`.
    pub async fn create_user(
        &self,
        request: &CreateUserRequest,
    ) -> Result<PrincipalView, ClientError> {
        self.call(Method::POST, "/v1/users", &[], Some(request))
            .await
    }

    /// `POST /v1/users/{name}/disable` (`disabled`) or `…/enable`: disabling ends every
    /// session of the user.
    pub async fn set_user_disabled(&self, name: &str, disabled: bool) -> Result<(), ClientError> {
        let path = format!("/v1/users/{}/{}", segment(name), switch(disabled));
        self.call(Method::POST, &path, &[], None::<&()>).await
    }

    /// `PUT /v1/users/{name}/password`: a new local password, or `None` to remove local
    /// sign-in; the user's sessions end.
    pub async fn set_user_password(
        &self,
        name: &str,
        password: Option<String>,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/users/{}/password", segment(name));
        let body = latch_common::people::SetPasswordRequest { password };
        self.call(Method::PUT, &path, &[], Some(&body)).await
    }

    /// `GET /v1/groups`.
    pub async fn list_groups(&self) -> Result<Vec<GroupView>, ClientError> {
        self.all_pages("/v1/groups", Vec::new()).await
    }

    /// `GET /v1/groups/{name}`: the group with its members.
    pub async fn show_group(&self, name: &str) -> Result<GroupView, ClientError> {
        let path = format!("/v1/groups/{}", segment(name));
        self.call(Method::GET, &path, &[], None::<&()>).await
    }

    /// `POST /v1/groups`.
    pub async fn create_group(
        &self,
        request: &CreateGroupRequest,
    ) -> Result<GroupView, ClientError> {
        self.call(Method::POST, "/v1/groups", &[], Some(request))
            .await
    }

    /// `DELETE /v1/groups/{name}`.
    pub async fn delete_group(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/v1/groups/{}", segment(name));
        self.call(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// `PUT /v1/groups/{group}/members/{member}` (`add`) or `DELETE` it.
    pub async fn change_group_member(
        &self,
        group: &str,
        member: &str,
        add: bool,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/groups/{}/members/{}", segment(group), segment(member));
        let method = if add { Method::PUT } else { Method::DELETE };
        self.call(method, &path, &[], None::<&()>).await
    }

    /// `GET /v1/roles`: the five roles and their permissions.
    pub async fn list_roles(&self) -> Result<Vec<RoleView>, ClientError> {
        self.all_pages("/v1/roles", Vec::new()).await
    }

    /// `GET /v1/role-bindings`.
    pub async fn list_role_bindings(&self) -> Result<Vec<RoleBindingView>, ClientError> {
        self.all_pages("/v1/role-bindings", Vec::new()).await
    }

    /// `POST /v1/role-bindings`.
    pub async fn bind_role(
        &self,
        request: &BindRoleRequest,
    ) -> Result<RoleBindingView, ClientError> {
        self.call(Method::POST, "/v1/role-bindings", &[], Some(request))
            .await
    }

    /// `DELETE /v1/role-bindings/{id}`.
    pub async fn unbind_role(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/role-bindings/{}", segment(id));
        self.call(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// `GET /v1/service-users`.
    pub async fn list_service_users(&self) -> Result<Vec<PrincipalView>, ClientError> {
        self.all_pages("/v1/service-users", Vec::new()).await
    }

    /// `GET /v1/service-users/{name}`: the service user with its groups and roles.
    pub async fn show_service_user(&self, name: &str) -> Result<PrincipalView, ClientError> {
        let path = format!("/v1/service-users/{}", segment(name));
        self.call(Method::GET, &path, &[], None::<&()>).await
    }

    /// `POST /v1/service-users`: the service user and its first API key (shown once).
    pub async fn create_service_user(
        &self,
        request: &CreateServiceUserRequest,
    ) -> Result<CreatedServiceUser, ClientError> {
        self.call(Method::POST, "/v1/service-users", &[], Some(request))
            .await
    }

    /// `POST /v1/service-users/{name}/disable` (`disabled`) or `…/enable`: disabling ends
    /// every token of the service user.
    pub async fn set_service_user_disabled(
        &self,
        name: &str,
        disabled: bool,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/service-users/{}/{}", segment(name), switch(disabled));
        self.call(Method::POST, &path, &[], None::<&()>).await
    }

    /// `GET /v1/service-users/{name}/keys`: the API keys' records (never the keys).
    pub async fn list_api_keys(&self, service_user: &str) -> Result<Vec<ApiKeyView>, ClientError> {
        let path = format!("/v1/service-users/{}/keys", segment(service_user));
        self.all_pages(&path, Vec::new()).await
    }

    /// `POST /v1/service-users/{name}/keys`: a new API key (shown once).
    pub async fn create_api_key(
        &self,
        service_user: &str,
    ) -> Result<NewApiKeyResponse, ClientError> {
        let path = format!("/v1/service-users/{}/keys", segment(service_user));
        self.call(Method::POST, &path, &[], None::<&()>).await
    }

    /// `DELETE /v1/service-users/{name}/keys/{key_id}`: the key and every token issued for it
    /// stop working at once.
    pub async fn revoke_api_key(
        &self,
        service_user: &str,
        key_id: &str,
    ) -> Result<(), ClientError> {
        let path = format!(
            "/v1/service-users/{}/keys/{}",
            segment(service_user),
            segment(key_id)
        );
        self.call(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// `POST /v1/mfa/totp`: a new TOTP factor for the signed-in user (confirmed by the first
    /// good code given to [`AdminClient::verify_totp`]).
    pub async fn enroll_totp(&self) -> Result<TotpEnrollResponse, ClientError> {
        self.call(Method::POST, "/v1/mfa/totp", &[], None::<&()>)
            .await
    }

    /// `POST /v1/mfa/totp/verify`: shows a second factor in this session (step-up).
    pub async fn verify_totp(&self, code: &str) -> Result<TotpVerifyResponse, ClientError> {
        let request = TotpVerifyRequest {
            code: code.to_owned(),
        };
        self.call(Method::POST, "/v1/mfa/totp/verify", &[], Some(&request))
            .await
    }

    /// `GET /v1/vaults` (all pages): the vaults the caller may see.
    pub async fn list_vaults(&self) -> Result<Vec<VaultView>, ClientError> {
        self.all_pages("/v1/vaults", Vec::new()).await
    }

    /// `GET /v1/vaults/{vault}` (id or name).
    pub async fn show_vault(&self, vault: &str) -> Result<VaultView, ClientError> {
        let path = format!("/v1/vaults/{}", segment(vault));
        self.call(Method::GET, &path, &[], None::<&()>).await
    }

    /// `POST /v1/vaults`: the caller becomes its owner.
    pub async fn create_vault(
        &self,
        request: &CreateVaultRequest,
    ) -> Result<VaultView, ClientError> {
        self.call(Method::POST, "/v1/vaults", &[], Some(request))
            .await
    }

    /// `PATCH /v1/vaults/{vault}`: fields left out stay as they are.
    pub async fn update_vault(
        &self,
        vault: &str,
        request: &UpdateVaultRequest,
    ) -> Result<VaultView, ClientError> {
        let path = format!("/v1/vaults/{}", segment(vault));
        self.call(Method::PATCH, &path, &[], Some(request)).await
    }

    /// `DELETE /v1/vaults/{vault}`: refused (409) while it holds identities.
    pub async fn delete_vault(&self, vault: &str) -> Result<(), ClientError> {
        let path = format!("/v1/vaults/{}", segment(vault));
        self.call(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// `GET /v1/vaults/{vault}/grants` (all pages).
    pub async fn list_vault_grants(&self, vault: &str) -> Result<Vec<VaultGrantView>, ClientError> {
        self.all_pages(&format!("/v1/vaults/{}/grants", segment(vault)), Vec::new())
            .await
    }

    /// `POST /v1/vaults/{vault}/grants`: access for a user or a group.
    pub async fn create_vault_grant(
        &self,
        vault: &str,
        request: &CreateVaultGrantRequest,
    ) -> Result<VaultGrantView, ClientError> {
        let path = format!("/v1/vaults/{}/grants", segment(vault));
        self.call(Method::POST, &path, &[], Some(request)).await
    }

    /// `DELETE /v1/vaults/{vault}/grants/{grant}`.
    pub async fn delete_vault_grant(&self, vault: &str, grant: &str) -> Result<(), ClientError> {
        let path = format!("/v1/vaults/{}/grants/{}", segment(vault), segment(grant));
        self.call(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// `GET /v1/vaults/{vault}/identities` (all pages).
    pub async fn list_identities(&self, vault: &str) -> Result<Vec<IdentityView>, ClientError> {
        self.all_pages(
            &format!("/v1/vaults/{}/identities", segment(vault)),
            Vec::new(),
        )
        .await
    }

    /// `POST /v1/vaults/{vault}/identities`.
    pub async fn create_identity(
        &self,
        vault: &str,
        request: &CreateIdentityRequest,
    ) -> Result<IdentityView, ClientError> {
        let path = format!("/v1/vaults/{}/identities", segment(vault));
        self.call(Method::POST, &path, &[], Some(request)).await
    }

    /// `GET /v1/identities/{identity}` (id): with its linked hosts and latest rotation state.
    pub async fn show_identity(&self, identity: &str) -> Result<IdentityView, ClientError> {
        let path = format!("/v1/identities/{}", segment(identity));
        self.call(Method::GET, &path, &[], None::<&()>).await
    }

    /// `PATCH /v1/identities/{identity}`: fields left out stay as they are; `hosts` replaces
    /// the linked hosts.
    pub async fn update_identity(
        &self,
        identity: &str,
        request: &UpdateIdentityRequest,
    ) -> Result<IdentityView, ClientError> {
        let path = format!("/v1/identities/{}", segment(identity));
        self.call(Method::PATCH, &path, &[], Some(request)).await
    }

    /// `DELETE /v1/identities/{identity}`: refused (409) while checked out.
    pub async fn delete_identity(&self, identity: &str) -> Result<(), ClientError> {
        let path = format!("/v1/identities/{}", segment(identity));
        self.call(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// `POST /v1/identities/{identity}/reveal`: the current credential (audited; may need the
    /// MFA step-up `reveal` first).
    pub async fn reveal_identity(&self, identity: &str) -> Result<RevealedSecret, ClientError> {
        let path = format!("/v1/identities/{}/reveal", segment(identity));
        self.call(Method::POST, &path, &[], None::<&()>).await
    }

    /// `POST /v1/identities/{identity}/checkout`: the checkout and the credential.
    pub async fn checkout_identity(
        &self,
        identity: &str,
        request: &CheckoutRequest,
    ) -> Result<CheckoutGranted, ClientError> {
        let path = format!("/v1/identities/{}/checkout", segment(identity));
        self.call(Method::POST, &path, &[], Some(request)).await
    }

    /// `POST /v1/identities/{identity}/break-glass`: an emergency checkout (audited as
    /// critical; every account admin is notified).
    pub async fn break_glass(
        &self,
        identity: &str,
        request: &BreakGlassRequest,
    ) -> Result<CheckoutGranted, ClientError> {
        let path = format!("/v1/identities/{}/break-glass", segment(identity));
        self.call(Method::POST, &path, &[], Some(request)).await
    }

    /// `GET /v1/identities/{identity}/checkouts` (all pages): open and past, newest first.
    pub async fn list_checkouts(&self, identity: &str) -> Result<Vec<CheckoutView>, ClientError> {
        self.all_pages(
            &format!("/v1/identities/{}/checkouts", segment(identity)),
            Vec::new(),
        )
        .await
    }

    /// `POST /v1/checkouts/{checkout}/checkin`: `force` checks in someone else's checkout.
    pub async fn checkin(&self, checkout: &str, force: bool) -> Result<CheckoutView, ClientError> {
        let path = format!("/v1/checkouts/{}/checkin", segment(checkout));
        self.call(Method::POST, &path, &[], Some(&CheckinRequest { force }))
            .await
    }

    /// `POST /v1/identities/{identity}/rotate`: a new credential on every linked host.
    pub async fn rotate_identity(
        &self,
        identity: &str,
        request: &RotateRequest,
    ) -> Result<RotationView, ClientError> {
        let path = format!("/v1/identities/{}/rotate", segment(identity));
        self.call(Method::POST, &path, &[], Some(request)).await
    }

    /// `GET /v1/identities/{identity}/rotations` (all pages).
    pub async fn list_rotations(&self, identity: &str) -> Result<Vec<RotationView>, ClientError> {
        self.all_pages(
            &format!("/v1/identities/{}/rotations", segment(identity)),
            Vec::new(),
        )
        .await
    }

    /// `GET /v1/rotations/{rotation}`: its state and per-host jobs.
    pub async fn show_rotation(&self, rotation: &str) -> Result<RotationView, ClientError> {
        let path = format!("/v1/rotations/{}", segment(rotation));
        self.call(Method::GET, &path, &[], None::<&()>).await
    }

    /// `GET /v1/policies` (all pages).
    pub async fn list_policies(
        &self,
    ) -> Result<Vec<latch_common::access::PolicyView>, ClientError> {
        self.all_pages("/v1/policies", Vec::new()).await
    }

    /// `GET /v1/policies/{policy}` (id or name).
    pub async fn show_policy(
        &self,
        policy: &str,
    ) -> Result<latch_common::access::PolicyView, ClientError> {
        let path = format!("/v1/policies/{}", segment(policy));
        self.call(Method::GET, &path, &[], None::<&()>).await
    }

    /// `POST /v1/policies`.
    pub async fn create_policy(
        &self,
        request: &latch_common::access::PolicyRequest,
    ) -> Result<latch_common::access::PolicyView, ClientError> {
        self.call(Method::POST, "/v1/policies", &[], Some(request))
            .await
    }

    /// `PUT /v1/policies/{policy}`: replaces every field.
    pub async fn replace_policy(
        &self,
        policy: &str,
        request: &latch_common::access::PolicyRequest,
    ) -> Result<latch_common::access::PolicyView, ClientError> {
        let path = format!("/v1/policies/{}", segment(policy));
        self.call(Method::PUT, &path, &[], Some(request)).await
    }

    /// `DELETE /v1/policies/{policy}`.
    pub async fn delete_policy(&self, policy: &str) -> Result<(), ClientError> {
        let path = format!("/v1/policies/{}", segment(policy));
        self.call(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// `GET /v1/access/requests` (all pages): the caller's own (`mine`), or every request it
    /// may see; optionally only those in `state`.
    pub async fn list_access_requests(
        &self,
        mine: bool,
        state: Option<&str>,
    ) -> Result<Vec<latch_common::access::AccessRequestView>, ClientError> {
        let mut query = Vec::new();
        if mine {
            query.push(("mine", "true".to_owned()));
        }
        if let Some(state) = state {
            query.push(("state", state.to_owned()));
        }
        self.all_pages("/v1/access/requests", query).await
    }

    /// `POST /v1/access/requests`: the answer carries the generated private key, if any.
    pub async fn create_access_request(
        &self,
        request: &latch_common::access::AccessRequestCreate,
    ) -> Result<latch_common::access::AccessRequestView, ClientError> {
        self.call(Method::POST, "/v1/access/requests", &[], Some(request))
            .await
    }

    /// `GET /v1/access/requests/{id}`.
    pub async fn show_access_request(
        &self,
        id: &str,
    ) -> Result<latch_common::access::AccessRequestView, ClientError> {
        let path = format!("/v1/access/requests/{}", segment(id));
        self.call(Method::GET, &path, &[], None::<&()>).await
    }

    /// `POST /v1/access/requests/{id}/{action}` with `approve`, `deny`, `cancel`, `revoke`
    /// or `confirm`.
    pub async fn act_on_access_request(
        &self,
        id: &str,
        action: &str,
        reason: &str,
    ) -> Result<latch_common::access::AccessRequestView, ClientError> {
        let path = format!("/v1/access/requests/{}/{action}", segment(id));
        if action == "confirm" {
            return self.call(Method::POST, &path, &[], None::<&()>).await;
        }
        let body = latch_common::access::AccessDecision {
            reason: reason.to_owned(),
        };
        self.call(Method::POST, &path, &[], Some(&body)).await
    }

    /// `GET /v1/organizations` (all pages).
    pub async fn list_organizations(&self) -> Result<Vec<OrganizationView>, ClientError> {
        self.all_pages("/v1/organizations", Vec::new()).await
    }

    /// `POST /v1/organizations`: a new organization with a data key of its own.
    pub async fn create_organization(
        &self,
        request: &CreateOrganizationRequest,
    ) -> Result<OrganizationView, ClientError> {
        self.call(Method::POST, "/v1/organizations", &[], Some(request))
            .await
    }

    /// `PATCH /v1/organizations/{organization}`.
    pub async fn update_organization(
        &self,
        organization: &str,
        request: &UpdateOrganizationRequest,
    ) -> Result<OrganizationView, ClientError> {
        let path = format!("/v1/organizations/{}", segment(organization));
        self.call(Method::PATCH, &path, &[], Some(request)).await
    }

    /// `GET /v1/webhooks` (all pages).
    pub async fn list_webhooks(&self) -> Result<Vec<WebhookView>, ClientError> {
        self.all_pages("/v1/webhooks", Vec::new()).await
    }

    /// `POST /v1/webhooks`: adds a webhook (its secret is sealed on the server).
    pub async fn create_webhook(
        &self,
        request: &CreateWebhookRequest,
    ) -> Result<WebhookView, ClientError> {
        self.call(Method::POST, "/v1/webhooks", &[], Some(request))
            .await
    }

    /// `DELETE /v1/webhooks/{id}`.
    pub async fn delete_webhook(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/webhooks/{}", segment(id));
        self.call(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// `GET /v1/webhooks/{id}/deliveries` (all pages, newest first).
    pub async fn list_webhook_deliveries(
        &self,
        id: &str,
    ) -> Result<Vec<DeliveryView>, ClientError> {
        let path = format!("/v1/webhooks/{}/deliveries", segment(id));
        self.all_pages(&path, Vec::new()).await
    }

    /// `GET /v1/support-access` (all pages).
    pub async fn list_support_access(&self) -> Result<Vec<SupportAccessView>, ClientError> {
        self.all_pages("/v1/support-access", Vec::new()).await
    }

    /// `POST /v1/support-access`: lets the support group see the vault's metadata.
    pub async fn enable_support_access(
        &self,
        request: &EnableSupportAccessRequest,
    ) -> Result<SupportAccessView, ClientError> {
        self.call(Method::POST, "/v1/support-access", &[], Some(request))
            .await
    }

    /// `DELETE /v1/support-access/{id}`.
    pub async fn disable_support_access(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/support-access/{}", segment(id));
        self.call(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// `POST /v1/support-access/emergency-disable`: ends every support access at once.
    pub async fn emergency_disable_support_access(
        &self,
        request: &EmergencyDisableRequest,
    ) -> Result<EmergencyDisabled, ClientError> {
        self.call(
            Method::POST,
            "/v1/support-access/emergency-disable",
            &[],
            Some(request),
        )
        .await
    }

    /// `POST /v1/hosts/{host}/enroll-account`: adopts an existing account into a vault and
    /// starts the rotation that sets its first password.
    pub async fn enroll_account(
        &self,
        host: &str,
        request: &EnrollAccountRequest,
    ) -> Result<EnrolledAccount, ClientError> {
        let path = format!("/v1/hosts/{}/enroll-account", segment(host));
        self.call(Method::POST, &path, &[], Some(request)).await
    }

    async fn all_pages<T: DeserializeOwned>(
        &self,
        path: &str,
        query: Vec<(&str, String)>,
    ) -> Result<Vec<T>, ClientError> {
        const COUNT: usize = 500;
        let mut all = Vec::new();
        loop {
            let mut page_query = query.clone();
            page_query.push(("count", COUNT.to_string()));
            page_query.push(("offset", all.len().to_string()));
            let page: ListResponse<T> = self
                .call(Method::GET, path, &page_query, None::<&()>)
                .await?;
            // Fewer than asked for: the last page. (More: a server from before every list was
            // paged, which answered its whole list at once.)
            let done = page.list.len() != COUNT;
            all.extend(page.list);
            if done {
                return Ok(all);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_cannot_leave_their_place() {
        assert_eq!(segment("alice@example.com"), "alice@example.com");
        assert_eq!(segment("ci-deploy_1.x"), "ci-deploy_1.x");
        assert_eq!(segment("../admin"), "..%2Fadmin");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("a b?c#d"), "a%20b%3Fc%23d");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn plain_http_is_refused_unless_the_server_is_on_loopback() {
        for ok in [
            "https://latch.example.com:8443",
            "https://192.0.2.1",
            "http://127.0.0.1:8443",
            "http://127.1.2.3",
            "http://[::1]:8443/",
            "http://localhost:8443",
            "http://LOCALHOST",
        ] {
            assert!(check_server_url(ok).is_ok(), "{ok}");
        }
        for insecure in [
            "http://192.0.2.1:9",
            "http://latch.example.com",
            "http://[2001:db8::1]",
            "http://localhost.example.com",
            "http://10.0.0.1",
        ] {
            assert!(
                matches!(
                    check_server_url(insecure),
                    Err(ClientError::InsecureServer { .. })
                ),
                "{insecure}"
            );
        }
        for bad in [
            "ftp://127.0.0.1",
            "127.0.0.1:8443",
            "https://admin:pw@latch.example.com",
            "https://latch.example.com/?token=x",
        ] {
            assert!(
                matches!(check_server_url(bad), Err(ClientError::BadServerUrl { .. })),
                "{bad}"
            );
        }
        let message = check_server_url("http://192.0.2.1:9")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("https://") && message.contains("loopback"),
            "{message}"
        );
    }
}
