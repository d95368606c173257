//! Single sign-on through OpenID Connect: the control plane is the OIDC client (it holds the
//! client secret), `latchctl login` only carries the browser's redirect back to it.
//!
//! The authorization-code flow with PKCE (S256) and a loopback redirect: [`Control::sso_start`]
//! discovers the provider, makes a `state`, a nonce and a PKCE verifier, and keeps them in the
//! database (table `sso_logins`, the verifier sealed, at most [`LOGIN_TTL`]) so any replica can
//! finish the sign-in; [`Control::sso_finish`] takes that record once, exchanges the code, and
//! validates the ID token with `openidconnect` (issuer, audience, expiry, signature against the
//! provider's JWKS, nonce) before it creates or finds the user, makes their identity-provider
//! group memberships those the groups claim names (groups whose `idp_group` matches), and opens
//! a session of kind `sso`. An ID token whose `amr` shows a second factor (or whose `acr` is the
//! configured one) starts the session stepped up (`mfa_at`).

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenClaims, IdTokenFields, IssuerUrl, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, StandardErrorResponse,
    StandardTokenResponse, TokenResponse as _,
};
use serde::{Deserialize, Serialize};

use crate::Control;
use crate::audit::AuditEvent;
use crate::error::ControlError;
use crate::people::{TOKEN_PREFIX, validate_principal_name};
use crate::secret::new_token;
use crate::store::people::{
    PrincipalKind, PrincipalRecord, SessionKind, SessionRecord, SsoFlow, SsoLoginRecord,
};

/// How long a begun sign-in may be finished.
pub const LOGIN_TTL: Duration = Duration::minutes(10);
/// How long a single sign-on session lives unless configured otherwise.
pub const DEFAULT_SESSION_TTL: Duration = Duration::hours(8);
/// `amr` values (RFC 8176) that show a second factor.
pub const MFA_AMR: &[&str] = &[
    "mfa", "otp", "hwk", "swk", "sms", "fpt", "face", "iris", "sc",
];

/// How the control plane signs people in through the identity provider.
#[derive(Clone)]
pub struct SsoConfig {
    /// The issuer URL (`https://idp.example.com/realms/x`); discovery reads
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// The client id registered for Latch.
    pub client_id: String,
    /// The client secret (from a file or the environment, never the command line).
    pub client_secret: String,
    /// The ID-token claim that lists the user's groups.
    pub groups_claim: String,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
    /// How long a session lives.
    pub session_ttl: Duration,
    /// An `acr` value that shows a second factor (besides the `amr` values of [`MFA_AMR`]).
    pub mfa_acr: Option<String>,
    /// Added to the clock when the ID token's times are checked; zero except in tests that
    /// need a token to have expired.
    pub clock_offset: Duration,
}

impl SsoConfig {
    /// A configuration with the defaults: groups claim `groups`, scopes `profile email groups`,
    /// sessions of 8 hours.
    pub fn new(issuer: &str, client_id: &str, client_secret: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            groups_claim: "groups".to_owned(),
            scopes: vec!["profile".into(), "email".into(), "groups".into()],
            session_ttl: DEFAULT_SESSION_TTL,
            mfa_acr: None,
            clock_offset: Duration::zero(),
        }
    }
}

impl fmt::Debug for SsoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SsoConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("groups_claim", &self.groups_claim)
            .field("scopes", &self.scopes)
            .field("session_ttl", &self.session_ttl)
            .field("mfa_acr", &self.mfa_acr)
            .finish()
    }
}

/// The claims of an ID token beyond the standard ones (the groups claim is read from here).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtraClaims {
    /// Every claim the standard fields did not take, by name.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl AdditionalClaims for ExtraClaims {}

type SsoIdTokenFields = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type SsoTokenResponse = StandardTokenResponse<SsoIdTokenFields, CoreTokenType>;
type SsoClient = openidconnect::Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    SsoTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The identity provider connection: configuration and an HTTP client that follows no redirects.
#[derive(Debug, Clone)]
pub struct Sso {
    config: SsoConfig,
    http: reqwest::Client,
}

impl Sso {
    /// Checks the configuration and builds the HTTP client.
    pub fn new(config: SsoConfig) -> Result<Self, ControlError> {
        IssuerUrl::new(config.issuer.clone()).map_err(|e| {
            ControlError::Internal(format!(
                "the SSO issuer {:?} is not a URL ({e}); set it to the provider's issuer, e.g. https://idp.example.com",
                config.issuer
            ))
        })?;
        if config.client_id.is_empty() || config.client_secret.is_empty() {
            return Err(ControlError::Internal(
                "SSO needs a client id and a client secret (the secret from a file or the environment)".into(),
            ));
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| {
                ControlError::Internal(format!("cannot build the SSO HTTP client: {e}"))
            })?;
        Ok(Self { config, http })
    }

    /// The configuration.
    pub fn config(&self) -> &SsoConfig {
        &self.config
    }

    async fn send(
        http: reqwest::Client,
        request: openidconnect::HttpRequest,
    ) -> Result<openidconnect::HttpResponse, reqwest::Error> {
        let (parts, body) = request.into_parts();
        let response = http
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await?;
        let mut builder = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let body = response.bytes().await?.to_vec();
        // Status and headers come from a parsed response, so building cannot fail; map anyway.
        Ok(builder
            .body(body.clone())
            .unwrap_or_else(|_| http::Response::new(body)))
    }

    async fn client(&self, redirect_uri: Option<&str>) -> Result<SsoClient, ControlError> {
        let http = self.http.clone();
        let send = move |request| Self::send(http.clone(), request);
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| ControlError::Internal(format!("SSO issuer: {e}")))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &send)
            .await
            .map_err(|e| {
                ControlError::IdentityProvider(format!(
                    "discovery at {}/.well-known/openid-configuration failed ({e}); check the issuer URL and that the provider is reachable from the control plane",
                    self.config.issuer
                ))
            })?;
        let client = SsoClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(self.config.client_secret.clone())),
        );
        Ok(match redirect_uri {
            Some(uri) => client.set_redirect_uri(
                RedirectUrl::new(uri.to_owned())
                    .map_err(|e| ControlError::Internal(format!("redirect URI: {e}")))?,
            ),
            None => client,
        })
    }
}

/// A begun sign-in: where to send the browser, and the state that finishes it.
#[derive(Debug, Clone)]
pub struct SsoStart {
    /// The provider's authorization URL to open in a browser.
    pub authorization_url: String,
    /// The OAuth `state`; the redirect carries it back with the code.
    pub state: String,
    /// When the sign-in can no longer be finished.
    pub expires_at: DateTime<Utc>,
}

/// A finished sign-in: the session's bearer token.
#[derive(Debug)]
pub struct SsoSession {
    /// The bearer token (`latch_tok_…`), shown once.
    pub token: String,
    /// When the session ends.
    pub expires_at: DateTime<Utc>,
    /// The user's name in Latch.
    pub name: String,
    /// The Latch groups the identity provider's groups claim mapped to.
    pub groups: Vec<String>,
    /// When the sign-in showed a second factor (the session starts stepped up), if it did.
    pub mfa_at: Option<DateTime<Utc>>,
}

/// Checks that a redirect URI is a loopback `http` URI (RFC 8252 §7.3): `latchctl login`
/// listens on 127.0.0.1 or [::1], and nothing else may receive a code.
pub fn check_loopback_redirect(uri: &str) -> Result<(), ControlError> {
    let refuse = |why: &str| {
        ControlError::Invalid(latch_common::names::ValidationError::new(
            "redirect_uri",
            format!(
                "{why}; the redirect URI must be http://127.0.0.1:PORT/… or http://[::1]:PORT/… (latchctl login listens there)"
            ),
        ))
    };
    if uri.len() > 512 {
        return Err(refuse("the redirect URI is longer than 512 characters"));
    }
    let url = url::Url::parse(uri).map_err(|_| refuse("the redirect URI is not a URL"))?;
    if url.scheme() != "http" {
        return Err(refuse("the redirect URI is not plain http on loopback"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(refuse("the redirect URI carries credentials or a fragment"));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    };
    if loopback {
        Ok(())
    } else {
        Err(refuse("the redirect URI is not on a loopback address"))
    }
}

fn check_param(field: &'static str, value: &str) -> Result<(), ControlError> {
    if value.is_empty() || value.len() > 2048 || !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ControlError::Invalid(
            latch_common::names::ValidationError::new(
                field,
                "must be 1 to 2048 printable ASCII characters, as the identity provider's redirect gave it",
            ),
        ));
    }
    Ok(())
}

/// What a validated ID token says about the user.
struct Identity {
    issuer: String,
    subject: String,
    name: String,
    email: Option<String>,
    display_name: String,
    groups: Vec<String>,
    mfa: bool,
}

fn identity(
    claims: &IdTokenClaims<ExtraClaims, CoreGenderClaim>,
    config: &SsoConfig,
) -> Result<Identity, ControlError> {
    let email = claims.email().map(|e| e.as_str().to_owned());
    let candidates = [
        claims
            .preferred_username()
            .map(|u| u.as_str().to_lowercase()),
        email.as_ref().map(|e| e.to_lowercase()),
    ];
    let name = candidates
        .into_iter()
        .flatten()
        .find(|n| validate_principal_name("name", n).is_ok())
        .ok_or_else(|| {
            ControlError::SsoRefused(
                "the ID token has no usable user name: neither preferred_username nor email is 1 to 64 characters of lowercase letters, digits, '.', '_', '-' or '@'; ask the identity provider's admin to release one".into(),
            )
        })?;
    let display_name = claims
        .name()
        .and_then(|n| n.get(None))
        .map(|n| n.as_str().chars().take(128).collect())
        .unwrap_or_else(|| name.clone());
    let groups = match claims.additional_claims().other.get(&config.groups_claim) {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        Some(serde_json::Value::Array(many)) => many
            .iter()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect(),
        Some(_) => {
            return Err(ControlError::SsoRefused(format!(
                "the ID token's {:?} claim is neither a string nor a list of strings; fix the identity provider's claim mapping",
                config.groups_claim
            )));
        }
    };
    let amr_mfa = claims
        .auth_method_refs()
        .is_some_and(|amr| amr.iter().any(|m| MFA_AMR.contains(&m.as_str())));
    let acr_mfa = match (&config.mfa_acr, claims.auth_context_ref()) {
        (Some(wanted), Some(acr)) => wanted == acr.as_str(),
        _ => false,
    };
    Ok(Identity {
        issuer: claims.issuer().as_str().to_owned(),
        subject: claims.subject().as_str().to_owned(),
        name,
        email,
        display_name,
        groups,
        mfa: amr_mfa || acr_mfa,
    })
}

impl Control {
    fn sso(&self) -> Result<&Sso, ControlError> {
        self.sso.as_ref().ok_or_else(|| {
            ControlError::SsoNotConfigured(
                "single sign-on is not configured on this control plane; set [sso] issuer, client_id and client_secret_file (see README, \"Connect an identity provider\")".into(),
            )
        })
    }

    /// Begins a sign-in with the authorization-code flow: the URL to open and its `state`.
    /// `redirect_uri` must be a loopback `http` URI (where `latchctl login` listens).
    pub async fn sso_start(&self, redirect_uri: &str) -> Result<SsoStart, ControlError> {
        self.sso()?;
        check_loopback_redirect(redirect_uri)?;
        self.begin_code_flow(redirect_uri).await
    }

    /// Begins a web-console sign-in: the code flow of [`Control::sso_start`], redirecting to
    /// the console's own callback, which the console builds from its configured public URL
    /// (never from the request; see [`crate::console`]).
    pub(crate) async fn sso_start_console(
        &self,
        callback: &url::Url,
    ) -> Result<SsoStart, ControlError> {
        self.begin_code_flow(callback.as_str()).await
    }

    async fn begin_code_flow(&self, redirect_uri: &str) -> Result<SsoStart, ControlError> {
        let sso = self.sso()?;
        let client = sso.client(Some(redirect_uri)).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in &sso.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let now = Utc::now();
        let id = state.secret().clone();
        let sealed = self
            .store
            .audit_key()
            .seal(&id, verifier.secret().as_bytes())
            .map_err(|e| ControlError::Internal(format!("cannot seal the PKCE verifier: {e}")))?;
        let login = SsoLoginRecord {
            id: id.clone(),
            flow: SsoFlow::Code,
            nonce: Some(nonce.secret().clone()),
            sealed_pkce_verifier: Some(sealed),
            redirect_uri: Some(redirect_uri.to_owned()),
            sealed_device_code: None,
            created_at: now,
            expires_at: now + LOGIN_TTL,
            used_at: None,
        };
        self.store.insert_sso_login(&login).await?;
        Ok(SsoStart {
            authorization_url: url.to_string(),
            state: id,
            expires_at: login.expires_at,
        })
    }

    /// Finishes a sign-in begun by [`Control::sso_start`] with the `code` the provider's
    /// redirect carried: each `state` finishes once, within [`LOGIN_TTL`].
    pub async fn sso_finish(
        &self,
        state: &str,
        code: &str,
        address: Option<String>,
    ) -> Result<SsoSession, ControlError> {
        let sso = self.sso()?;
        check_param("state", state)?;
        check_param("code", code)?;
        let now = Utc::now();
        let Some(login) = self
            .store
            .take_sso_login(state, now)
            .await?
            .filter(|l| l.flow == SsoFlow::Code)
        else {
            return Err(self
                .sso_refused(
                    "the sign-in is unknown, expired or already finished; run `latchctl login` again"
                        .into(),
                    &address,
                )
                .await);
        };
        let verifier = login
            .sealed_pkce_verifier
            .as_deref()
            .and_then(|sealed| self.store.audit_key().open(&login.id, sealed))
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| {
                ControlError::Internal(format!(
                    "the PKCE verifier of sign-in {} does not open under this control plane's key; run `latchctl login` again",
                    crate::secret::hash_token(&login.id)
                ))
            })?;
        let client = sso.client(login.redirect_uri.as_deref()).await?;
        let http = sso.http.clone();
        let send = move |request| Sso::send(http.clone(), request);
        let exchanged = match client.exchange_code(AuthorizationCode::new(code.to_owned())) {
            Ok(request) => {
                request
                    .set_pkce_verifier(PkceCodeVerifier::new(verifier))
                    .request_async(&send)
                    .await
            }
            Err(e) => {
                return Err(ControlError::IdentityProvider(format!(
                    "the identity provider names no token endpoint ({e}); check its discovery document"
                )));
            }
        };
        let response = match exchanged {
            Ok(response) => response,
            Err(e) => {
                return Err(self
                    .sso_refused(
                        format!("the identity provider did not exchange the code ({e}); run `latchctl login` again"),
                        &address,
                    )
                    .await);
            }
        };
        let nonce = Nonce::new(login.nonce.clone().unwrap_or_default());
        let offset = sso.config.clock_offset;
        let id_verifier = client
            .id_token_verifier()
            .set_time_fn(move || Utc::now() + offset);
        let Some(id_token) = response.id_token() else {
            return Err(self
                .sso_refused(
                    "the identity provider returned no ID token; is the `openid` scope allowed for this client?".into(),
                    &address,
                )
                .await);
        };
        let claims = match id_token.claims(&id_verifier, &nonce) {
            Ok(claims) => claims,
            Err(e) => {
                return Err(self
                    .sso_refused(format!("the ID token was refused: {e}"), &address)
                    .await);
            }
        };
        let identity = match identity(claims, &sso.config) {
            Ok(identity) => identity,
            Err(e) => return Err(self.sso_refused(e.to_string(), &address).await),
        };
        self.open_sso_session(identity, address).await
    }

    async fn sso_refused(&self, why: String, address: &Option<String>) -> ControlError {
        let event = AuditEvent::new("anonymous", "sso.refused")
            .detail(serde_json::json!({"reason": why, "address": address}));
        if let Err(e) = self.store.append_audit(&event, Utc::now()).await {
            return e.into();
        }
        ControlError::SsoRefused(why)
    }

    async fn open_sso_session(
        &self,
        who: Identity,
        address: Option<String>,
    ) -> Result<SsoSession, ControlError> {
        let sso = self.sso()?;
        let now = Utc::now();
        let principal = match self
            .store
            .principal_by_idp(&who.issuer, &who.subject)
            .await?
        {
            Some(principal) => principal,
            None => {
                let principal = PrincipalRecord {
                    id: crate::people::new_id("usr_")?,
                    kind: PrincipalKind::User,
                    name: who.name.clone(),
                    display_name: who.display_name.clone(),
                    email: who.email.clone(),
                    idp: Some((who.issuer.clone(), who.subject.clone())),
                    password_hash: None,
                    disabled_at: None,
                    created_at: now,
                    last_seen_at: None,
                };
                let event = AuditEvent::new("sso", "user.create").detail(serde_json::json!({
                    "user": principal.name,
                    "id": principal.id,
                    "issuer": who.issuer,
                    "subject": who.subject,
                }));
                if self
                    .store
                    .insert_principal(&principal, event, now)
                    .await?
                    .is_err()
                {
                    // Either the name belongs to someone else, or a concurrent first sign-in
                    // of the same subject won the race.
                    match self
                        .store
                        .principal_by_idp(&who.issuer, &who.subject)
                        .await?
                    {
                        Some(existing) => existing,
                        None => {
                            return Err(self
                                .sso_refused(
                                    format!(
                                        "the user name {:?} already belongs to another principal; ask a pam_admin to rename or remove it",
                                        who.name
                                    ),
                                    &address,
                                )
                                .await);
                        }
                    }
                } else {
                    principal
                }
            }
        };
        if principal.disabled_at.is_some() {
            return Err(ControlError::AuthorizationRevoked(format!(
                "user {} is disabled in Latch; ask a pam_admin to enable it",
                principal.name
            )));
        }
        let claimed: BTreeSet<&str> = who.groups.iter().map(String::as_str).collect();
        let mapped: Vec<_> = self
            .store
            .groups()
            .await?
            .into_iter()
            .filter(|g| g.idp_group.as_deref().is_some_and(|i| claimed.contains(i)))
            .collect();
        let group_ids: Vec<String> = mapped.iter().map(|g| g.id.clone()).collect();
        self.store
            .sync_idp_memberships(&principal.id, &group_ids, now)
            .await?;
        let token = new_token(TOKEN_PREFIX)?;
        let mfa_at = who.mfa.then_some(now);
        let session = SessionRecord {
            id: crate::people::new_id("ses_")?,
            principal_id: principal.id.clone(),
            kind: SessionKind::Sso,
            api_key_id: None,
            created_at: now,
            expires_at: now + sso.config.session_ttl,
            revoked_at: None,
            mfa_at,
            address: address.clone(),
        };
        let groups: Vec<String> = mapped.into_iter().map(|g| g.name).collect();
        let event = AuditEvent::new(format!("user:{}", principal.name), "sso.login").detail(
            serde_json::json!({
                "session_id": session.id,
                "issuer": who.issuer,
                "groups": groups,
                "mfa": who.mfa,
                "expires_at": session.expires_at.to_rfc3339(),
                "address": address,
            }),
        );
        let hash = self.store.audit_key().credential_hash(&token);
        self.store
            .insert_session(&session, &hash, event, now)
            .await?;
        Ok(SsoSession {
            token,
            expires_at: session.expires_at,
            name: principal.name,
            groups,
            mfa_at,
        })
    }
}

/// `POST /v1/login/start`: where `latchctl login` listens for the redirect.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginStartRequest {
    /// A loopback `http` URI.
    pub redirect_uri: String,
}

/// The answer to `POST /v1/login/start`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoginStartResponse {
    /// Open this in a browser.
    pub authorization_url: String,
    /// The `state` the redirect will carry back.
    pub state: String,
    /// When the sign-in can no longer be finished.
    pub expires_at: DateTime<Utc>,
}

/// `POST /v1/login/finish`: what the provider's redirect carried.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginFinishRequest {
    /// The `state` parameter.
    pub state: String,
    /// The `code` parameter.
    pub code: String,
}

/// The answer to `POST /v1/login/finish`: the session's bearer token.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoginFinishResponse {
    /// `Authorization: Bearer <token>`; shown once.
    pub token: String,
    /// When the session ends.
    pub expires_at: DateTime<Utc>,
    /// The user's name in Latch.
    pub name: String,
    /// The Latch groups mapped from the provider's groups claim.
    pub groups: Vec<String>,
    /// When a second factor was shown, if the sign-in showed one.
    pub mfa_at: Option<DateTime<Utc>>,
}

impl From<SsoSession> for LoginFinishResponse {
    fn from(s: SsoSession) -> Self {
        Self {
            token: s.token,
            expires_at: s.expires_at,
            name: s.name,
            groups: s.groups,
            mfa_at: s.mfa_at,
        }
    }
}

/// `GET /v1/whoami`: the caller as the control plane sees them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct WhoAmI {
    /// The principal's name.
    pub name: String,
    /// `user` or `service`.
    pub kind: String,
    /// The roles that apply (own and through groups).
    pub roles: Vec<String>,
    /// The groups the principal is in.
    pub groups: Vec<String>,
    /// How the session was obtained: `sso`, `local` or `service`.
    pub session_kind: String,
    /// When the session ends.
    pub expires_at: DateTime<Utc>,
    /// When a second factor was last shown in the session.
    pub mfa_at: Option<DateTime<Utc>>,
}

impl Control {
    /// The caller: name, kind, roles, groups and session.
    pub async fn whoami(&self, who: &crate::people::Authority) -> Result<WhoAmI, ControlError> {
        let groups = self
            .store
            .groups_of(&who.principal.id)
            .await?
            .into_iter()
            .map(|g| g.name)
            .collect();
        Ok(WhoAmI {
            name: who.principal.name.clone(),
            kind: who.principal.kind.as_str().to_owned(),
            roles: who
                .roles()
                .into_iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            groups,
            session_kind: who.session.kind.as_str().to_owned(),
            expires_at: who.session.expires_at,
            mfa_at: who.session.mfa_at,
        })
    }

    /// Ends the caller's session at once (its token stops working).
    pub async fn logout(&self, who: &crate::people::Authority) -> Result<(), ControlError> {
        let event = who
            .event("session.logout")
            .detail(serde_json::json!({"session_id": who.session.id}));
        self.store
            .revoke_session(&who.session.id, event, Utc::now())
            .await?;
        Ok(())
    }
}

/// `text` encoded as `application/x-www-form-urlencoded`.
fn form_encoded(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A begun device-flow sign-in: what the person enters, where, and how to poll.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SsoDeviceStart {
    /// Poll with this (`POST /v1/login/device/poll`).
    pub id: String,
    /// The code the person enters at the provider.
    pub user_code: String,
    /// Where to enter it (any browser, on any machine).
    pub verification_uri: String,
    /// The same with the code filled in, when the provider offers one.
    pub verification_uri_complete: Option<String>,
    /// Seconds to wait between polls.
    pub interval: u64,
    /// When the sign-in can no longer be finished.
    pub expires_at: DateTime<Utc>,
}

/// The state of a device-flow sign-in.
#[derive(Debug)]
pub enum SsoDevicePoll {
    /// The person has not finished at the provider yet; poll again after the interval (longer
    /// if `slow_down`).
    Pending {
        /// The provider asked for slower polling.
        slow_down: bool,
    },
    /// Signed in.
    Done(SsoSession),
}

/// `POST /v1/login/device/poll`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePollRequest {
    /// The id [`Control::sso_device_start`] returned.
    pub id: String,
}

/// The answer to `POST /v1/login/device/poll`: `{"status": "pending", "slow_down"}` or
/// `{"status": "done", "session": {…}}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DevicePollResponse {
    /// Not finished at the provider yet: poll again after the interval.
    Pending {
        /// Poll more slowly.
        slow_down: bool,
    },
    /// Signed in.
    Done {
        /// The session.
        session: LoginFinishResponse,
    },
}

impl From<SsoDevicePoll> for DevicePollResponse {
    fn from(poll: SsoDevicePoll) -> Self {
        match poll {
            SsoDevicePoll::Pending { slow_down } => Self::Pending { slow_down },
            SsoDevicePoll::Done(session) => Self::Done {
                session: session.into(),
            },
        }
    }
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    error_description: Option<String>,
}

impl Control {
    /// Begins a sign-in with the device flow (RFC 8628), for machines without a browser.
    pub async fn sso_device_start(&self) -> Result<SsoDeviceStart, ControlError> {
        let sso = self.sso()?;
        let client = sso.client(None).await?;
        let endpoint = sso.discovery_field("device_authorization_endpoint").await?;
        let client = client.set_device_authorization_url(
            openidconnect::DeviceAuthorizationUrl::new(endpoint).map_err(|e| {
                ControlError::IdentityProvider(format!(
                    "the device authorization endpoint is not a URL: {e}"
                ))
            })?,
        );
        let http = sso.http.clone();
        let send = move |request| Sso::send(http.clone(), request);
        let mut request = client.exchange_device_code();
        for scope in &sso.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let details: openidconnect::core::CoreDeviceAuthorizationResponse = request
            .request_async(&send)
            .await
            .map_err(|e| {
                ControlError::IdentityProvider(format!(
                    "the identity provider did not start a device sign-in ({e}); is the device grant enabled for this client?"
                ))
            })?;
        let now = Utc::now();
        let lifetime = Duration::from_std(details.expires_in()).unwrap_or(LOGIN_TTL);
        let id = format!(
            "sso_{}",
            crate::secret::hex(&crate::secret::random_bytes::<16>()?)
        );
        let sealed = self
            .store
            .audit_key()
            .seal(&id, details.device_code().secret().as_bytes())
            .map_err(|e| ControlError::Internal(format!("cannot seal the device code: {e}")))?;
        let login = SsoLoginRecord {
            id: id.clone(),
            flow: SsoFlow::Device,
            nonce: None,
            sealed_pkce_verifier: None,
            redirect_uri: None,
            sealed_device_code: Some(sealed),
            created_at: now,
            expires_at: now + lifetime.min(LOGIN_TTL),
            used_at: None,
        };
        self.store.insert_sso_login(&login).await?;
        Ok(SsoDeviceStart {
            id,
            user_code: details.user_code().secret().clone(),
            verification_uri: details.verification_uri().to_string(),
            verification_uri_complete: details
                .verification_uri_complete()
                .map(|u| u.secret().clone()),
            interval: details.interval().as_secs().max(1),
            expires_at: login.expires_at,
        })
    }

    /// Asks the provider once whether the device-flow sign-in `id` is done; when it is, validates
    /// the ID token (issuer, audience, expiry, signature) and opens the session (once).
    pub async fn sso_device_poll(
        &self,
        id: &str,
        address: Option<String>,
    ) -> Result<SsoDevicePoll, ControlError> {
        let sso = self.sso()?;
        check_param("id", id)?;
        let now = Utc::now();
        let Some(login) = self
            .store
            .sso_login(id, now)
            .await?
            .filter(|l| l.flow == SsoFlow::Device)
        else {
            return Err(self
                .sso_refused(
                    "the device sign-in is unknown, expired or already finished; run `latchctl login --device` again".into(),
                    &address,
                )
                .await);
        };
        let device_code = login
            .sealed_device_code
            .as_deref()
            .and_then(|sealed| self.store.audit_key().open(&login.id, sealed))
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| {
                ControlError::Internal(
                    "a device code does not open under this control plane's key; run `latchctl login --device` again".into(),
                )
            })?;
        let client = sso.client(None).await?;
        let token_url = client
            .token_uri()
            .ok_or_else(|| {
                ControlError::IdentityProvider(
                    "the identity provider names no token endpoint; check its discovery document"
                        .into(),
                )
            })?
            .to_string();
        // Built before the request: the serializer may not be held across an await.
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:device_code")
            .append_pair("device_code", &device_code)
            .append_pair("client_id", &sso.config.client_id)
            .finish();
        let response = sso
            .http
            .post(token_url)
            // RFC 6749 §2.3.1: both are form-encoded before HTTP Basic (as the code flow's
            // client does), so a secret with `:`, `%` or non-ASCII characters arrives intact.
            .basic_auth(
                form_encoded(&sso.config.client_id),
                Some(form_encoded(&sso.config.client_secret)),
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| {
                ControlError::IdentityProvider(format!(
                    "the identity provider's token endpoint cannot be reached: {e}"
                ))
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            ControlError::IdentityProvider(format!("the token endpoint's answer was cut: {e}"))
        })?;
        if !status.is_success() {
            let error: OAuthError = serde_json::from_slice(&body).map_err(|_| {
                ControlError::IdentityProvider(format!(
                    "the token endpoint answered {status} without an OAuth error"
                ))
            })?;
            return match error.error.as_str() {
                "authorization_pending" => Ok(SsoDevicePoll::Pending { slow_down: false }),
                "slow_down" => Ok(SsoDevicePoll::Pending { slow_down: true }),
                other => {
                    // Denied or expired at the provider: this sign-in is over.
                    let _ = self.store.take_sso_login(id, now).await?;
                    let description: String = error
                        .error_description
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect();
                    Err(self
                        .sso_refused(
                            format!("the identity provider ended the device sign-in: {other} {description}"),
                            &address,
                        )
                        .await)
                }
            };
        }
        if self.store.take_sso_login(id, now).await?.is_none() {
            return Err(self
                .sso_refused("the device sign-in was finished already".into(), &address)
                .await);
        }
        let tokens: SsoTokenResponse = serde_json::from_slice(&body).map_err(|e| {
            ControlError::IdentityProvider(format!(
                "the token endpoint's answer does not parse: {e}"
            ))
        })?;
        let Some(id_token) = tokens.id_token() else {
            return Err(self
                .sso_refused(
                    "the identity provider returned no ID token for the device sign-in".into(),
                    &address,
                )
                .await);
        };
        let offset = sso.config.clock_offset;
        let verifier = client
            .id_token_verifier()
            .set_time_fn(move || Utc::now() + offset);
        // The device flow carries no nonce; the token is bound to this sign-in by the device
        // code, which only this control plane holds.
        let no_nonce = |_: Option<&Nonce>| Ok::<(), String>(());
        let claims = match id_token.claims(&verifier, no_nonce) {
            Ok(claims) => claims,
            Err(e) => {
                return Err(self
                    .sso_refused(format!("the ID token was refused: {e}"), &address)
                    .await);
            }
        };
        let identity = match identity(claims, &sso.config) {
            Ok(identity) => identity,
            Err(e) => return Err(self.sso_refused(e.to_string(), &address).await),
        };
        Ok(SsoDevicePoll::Done(
            self.open_sso_session(identity, address).await?,
        ))
    }
}

impl Sso {
    /// A string field of the provider's discovery document.
    async fn discovery_field(&self, field: &str) -> Result<String, ControlError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let document: serde_json::Value = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| ControlError::IdentityProvider(format!("discovery at {url} failed: {e}")))?
            .json()
            .await
            .map_err(|e| ControlError::IdentityProvider(format!("discovery at {url}: {e}")))?;
        document[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                ControlError::IdentityProvider(format!(
                    "the provider's discovery document has no {field}; enable the device flow at the provider"
                ))
            })
    }
}
