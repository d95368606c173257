//! People and permissions: who a caller is ([`Authority`]), what they may do ([`Scope`]), and
//! the service users, API keys, short-lived tokens and role bindings behind that.
//!
//! Credentials are random tokens with a prefix naming their kind (`latch_key_` for an API key,
//! `latch_tok_` for a bearer token); the database keeps only their keyed hash
//! ([`crate::audit::AuditKey::credential_hash`]). Authorization is decided here, in the library,
//! never in an HTTP handler: every method that changes something takes the caller's
//! [`Authority`] and checks the one permission it needs.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use latch_common::authz::{Permission, Role};
use latch_common::labels::{Labels, Selector, validate_labels};
use latch_common::names::ValidationError;

use crate::Control;
use crate::audit::{Actor, AuditEvent};
use crate::error::ControlError;
use crate::secret::new_token;
use crate::store::people::{
    ApiKeyRecord, BindingSubject, PeopleRefusal, PrincipalKind, PrincipalRecord, RoleBinding,
    SessionKind, SessionRecord,
};

mod bootstrap;
mod sessions;

pub use bootstrap::{Bootstrap, BootstrapError, bootstrap};
pub use sessions::MAX_LISTED_SESSIONS;

/// Prefix of a service user's API key.
pub const API_KEY_PREFIX: &str = "latch_key_";
/// Prefix of the admin token of an installation made before people and roles; such a token is
/// now an API key of the bootstrap admin.
pub const LEGACY_ADMIN_PREFIX: &str = "latch_admin_";
/// Name and id of the bootstrap admin, the `pam_admin` service user made at initialisation
/// whose API key is `admin.token` in the data directory.
pub const BOOTSTRAP_ADMIN: &str = "admin";
const BOOTSTRAP_ADMIN_ID: &str = "svc_admin";
/// Prefix of a bearer token (service token or session).
pub const TOKEN_PREFIX: &str = "latch_tok_";
/// How long a service user's bearer token lives unless the request asks for less.
pub const DEFAULT_SERVICE_TOKEN_TTL: Duration = Duration::hours(1);
/// The longest a service user's bearer token may live.
pub const MAX_SERVICE_TOKEN_TTL: Duration = Duration::hours(12);

/// Where a permission applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// On everything.
    Everywhere,
    /// Only on hosts matching one of these selectors (a delegated admin's).
    Within(Vec<Selector>),
}

impl Scope {
    /// Whether a host with `labels` is inside the scope.
    pub fn covers(&self, labels: &Labels) -> bool {
        match self {
            Scope::Everywhere => true,
            Scope::Within(selectors) => selectors.iter().any(|s| s.matches(labels)),
        }
    }
}

/// An authenticated caller and the roles that apply to them.
#[derive(Debug, Clone)]
pub struct Authority {
    /// Who.
    pub principal: PrincipalRecord,
    /// The session (or service token) the request carried.
    pub session: SessionRecord,
    grants: Vec<(Role, Option<Selector>)>,
    /// The address the request came from, recorded with every change it makes.
    pub address: Option<String>,
}

impl Authority {
    /// An authority with these role grants (the library and tests build callers this way).
    pub fn new(
        principal: PrincipalRecord,
        session: SessionRecord,
        grants: Vec<(Role, Option<Selector>)>,
    ) -> Self {
        Self {
            principal,
            session,
            grants,
            address: None,
        }
    }

    /// The same caller, acting from `address` (the request's peer).
    pub fn from_address(mut self, address: Option<String>) -> Self {
        self.address = address;
        self
    }

    /// The audit actor's name: `user:<name>` or `service:<name>`.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.principal.kind.as_str(), self.principal.name)
    }

    /// The audit actor with the request's address.
    pub fn audit_actor(&self) -> Actor {
        Actor {
            name: self.actor(),
            address: self.address.clone(),
        }
    }

    /// An audit event by this caller, naming the request's address.
    pub fn event(&self, action: &'static str) -> AuditEvent {
        self.audit_actor().event(action)
    }

    /// The roles that apply, each once.
    pub fn roles(&self) -> BTreeSet<Role> {
        self.grants.iter().map(|(role, _)| *role).collect()
    }

    /// Where the caller has `permission`, or `None` if nowhere. A delegated binding limits
    /// every permission it gives to its selector; any other binding gives it everywhere.
    pub fn scope(&self, permission: Permission) -> Option<Scope> {
        let mut within = Vec::new();
        for (role, selector) in &self.grants {
            if !role.permissions().contains(&permission) {
                continue;
            }
            match (role.is_delegated(), selector) {
                // An empty selector would match every host: it gives nothing.
                (true, Some(selector)) if selector.is_empty() => {}
                (true, Some(selector)) => within.push(selector.clone()),
                // A delegated binding without a selector gives nothing (the store refuses
                // such a binding; a hand-edited row must not widen it to everything).
                (true, None) => {}
                (false, _) => return Some(Scope::Everywhere),
            }
        }
        (!within.is_empty()).then_some(Scope::Within(within))
    }

    /// [`Authority::scope`], or `forbidden_error` naming the permission and how to get it.
    pub fn require(&self, permission: Permission) -> Result<Scope, ControlError> {
        self.scope(permission).ok_or_else(|| {
            let roles: Vec<&str> = Role::ALL
                .into_iter()
                .filter(|r| r.permissions().contains(&permission))
                .map(Role::as_str)
                .collect();
            ControlError::Forbidden(format!(
                "{} lacks the permission {permission}; it comes with the role {} (ask a pam_admin to bind one)",
                self.actor(),
                roles.join(" or ")
            ))
        })
    }

    /// Requires `permission` everywhere (not only within a delegation).
    pub fn require_everywhere(&self, permission: Permission) -> Result<(), ControlError> {
        match self.require(permission)? {
            Scope::Everywhere => Ok(()),
            Scope::Within(_) => Err(ControlError::Forbidden(format!(
                "{} has {permission} only on hosts within its delegation; this request needs it everywhere",
                self.actor()
            ))),
        }
    }
}

impl Control {
    /// The principal `key` names: by id when it has an id's prefix, by name otherwise (names
    /// never take an id's shape, so one key never names two principals).
    pub(crate) async fn principal_named(
        &self,
        key: &str,
    ) -> Result<Option<PrincipalRecord>, ControlError> {
        let found = self.store.principal(key).await?;
        Ok(found.filter(|p| {
            if looks_like_id(key) {
                p.id == key
            } else {
                p.name == key
            }
        }))
    }
}

/// A new service user, with its first API key (shown once).
#[derive(Debug)]
pub struct NewServiceUser {
    /// The service user.
    pub principal: PrincipalRecord,
    /// Its id.
    pub key_id: String,
    /// The API key itself: shown once, never stored.
    pub api_key: String,
}

/// A bearer token issued for an API key.
#[derive(Debug)]
pub struct IssuedToken {
    /// The token: `Authorization: Bearer <token>`.
    pub token: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// A new record id: `prefix` and 80 random bits in hex.
pub(crate) fn new_id(prefix: &str) -> Result<String, ControlError> {
    let bytes = crate::secret::random_bytes::<10>()?;
    Ok(format!("{prefix}{}", crate::secret::hex(&bytes)))
}

/// Prefixes of record ids: no name may start with one, so a name never reads as an id.
pub const ID_PREFIXES: [&str; 6] = ["usr_", "svc_", "grp_", "rb_", "key_", "ses_"];

/// Whether `text` has the shape of a record id (a known prefix).
pub fn looks_like_id(text: &str) -> bool {
    ID_PREFIXES.iter().any(|prefix| text.starts_with(prefix))
}

/// Checks a user's, service user's or group's name: 1–64 characters of `a-z 0-9 . _ - @`,
/// starting with a letter or digit, and not shaped like a record id (`usr_…`, `svc_…`, …).
pub fn validate_principal_name(field: &'static str, name: &str) -> Result<(), ValidationError> {
    if looks_like_id(name) {
        return Err(ValidationError::new(
            field,
            format!(
                "{name:?} starts like a record id ({}); choose another name",
                ID_PREFIXES.join(", ")
            ),
        ));
    }
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '@')
        });
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!(
                "{name:?} must be 1 to 64 characters of lowercase letters, digits, '.', '_', '-' or '@', starting with a letter or digit"
            ),
        ))
    }
}

impl Control {
    /// Checks that `by` may change people, groups and roles now: `users.manage` everywhere, and
    /// a recent second factor when the MFA policy asks for one.
    pub(crate) fn require_people_change(&self, by: &Authority) -> Result<(), ControlError> {
        by.require_everywhere(Permission::UsersManage)?;
        by.require_mfa(
            &self.config().mfa,
            crate::mfa::SensitiveAction::ChangeRoles,
            Utc::now(),
        )
    }

    fn refusal(refusal: PeopleRefusal, key: &str) -> ControlError {
        match refusal {
            PeopleRefusal::AlreadyExists(what) => ControlError::AlreadyExists {
                what,
                key: key.to_owned(),
            },
            PeopleRefusal::NotFound(what) => ControlError::NotFound {
                what,
                key: key.to_owned(),
            },
        }
    }

    /// Creates a service user with these roles and its first API key.
    pub async fn create_service_user(
        &self,
        by: &Authority,
        name: &str,
        roles: &[Role],
    ) -> Result<NewServiceUser, ControlError> {
        self.require_people_change(by)?;
        validate_principal_name("name", name)?;
        if let Some(role) = roles.iter().find(|r| r.is_delegated()) {
            return Err(ValidationError::new(
                "roles",
                format!("{role} needs a label selector: bind it after creating the service user"),
            )
            .into());
        }
        let now = Utc::now();
        let principal = PrincipalRecord {
            id: new_id("svc_")?,
            kind: PrincipalKind::Service,
            name: name.to_owned(),
            display_name: name.to_owned(),
            email: None,
            idp: None,
            password_hash: None,
            disabled_at: None,
            created_at: now,
            last_seen_at: None,
        };
        let event = by.event("service_user.create").detail(serde_json::json!({
            "service_user": name,
            "id": principal.id,
        }));
        self.store
            .insert_principal(&principal, event, now)
            .await?
            .map_err(|r| Self::refusal(r, name))?;
        for role in roles {
            self.bind_role(
                by,
                *role,
                &BindingSubject::Principal(principal.id.clone()),
                None,
            )
            .await?;
        }
        let (key_id, api_key) = self.add_api_key(by, &principal).await?;
        Ok(NewServiceUser {
            principal,
            key_id,
            api_key,
        })
    }

    async fn add_api_key(
        &self,
        by: &Authority,
        principal: &PrincipalRecord,
    ) -> Result<(String, String), ControlError> {
        let now = Utc::now();
        let api_key = new_token(API_KEY_PREFIX)?;
        let record = ApiKeyRecord {
            id: new_id("key_")?,
            principal_id: principal.id.clone(),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        };
        let hash = self.store.audit_key().credential_hash(&api_key);
        let event = by
            .event("service_user.key_create")
            .detail(serde_json::json!({"service_user": principal.name, "key_id": record.id}));
        self.store
            .insert_api_key(&record, &hash, event, now)
            .await?;
        Ok((record.id, api_key))
    }

    async fn service_user(&self, name_or_id: &str) -> Result<PrincipalRecord, ControlError> {
        self.principal_named(name_or_id)
            .await?
            .filter(|p| p.kind == PrincipalKind::Service)
            .ok_or_else(|| ControlError::NotFound {
                what: "service user",
                key: name_or_id.to_owned(),
            })
    }

    /// A new API key for a service user (for rotation: revoke the old one after switching).
    pub async fn create_api_key(
        &self,
        by: &Authority,
        service_user: &str,
    ) -> Result<(String, String), ControlError> {
        self.require_people_change(by)?;
        let principal = self.service_user(service_user).await?;
        self.add_api_key(by, &principal).await
    }

    /// Revokes an API key; every token issued for it stops working at once.
    pub async fn revoke_api_key(
        &self,
        by: &Authority,
        service_user: &str,
        key_id: &str,
    ) -> Result<(), ControlError> {
        self.require_people_change(by)?;
        let principal = self.service_user(service_user).await?;
        let event = by
            .event("service_user.key_revoke")
            .detail(serde_json::json!({"service_user": principal.name, "key_id": key_id}));
        if self
            .store
            .revoke_api_key(&principal.id, key_id, event, Utc::now())
            .await?
        {
            Ok(())
        } else {
            Err(ControlError::NotFound {
                what: "unrevoked API key",
                key: key_id.to_owned(),
            })
        }
    }

    /// A service user's API keys.
    pub async fn api_keys(
        &self,
        by: &Authority,
        service_user: &str,
    ) -> Result<Vec<ApiKeyRecord>, ControlError> {
        by.require_everywhere(Permission::UsersView)?;
        let principal = self.service_user(service_user).await?;
        Ok(self.store.api_keys(&principal.id).await?)
    }

    /// Exchanges an API key for a bearer token that lives `ttl` (at most the key's life).
    pub async fn issue_service_token(
        &self,
        api_key: &str,
        ttl: Duration,
        address: Option<String>,
    ) -> Result<IssuedToken, ControlError> {
        const REFUSED: &str = "the API key is not valid (revoked, or not a key of this control plane); ask an admin for a new one: `latchctl service-users keys create NAME`";
        if ttl < Duration::minutes(1) || ttl > MAX_SERVICE_TOKEN_TTL {
            return Err(ValidationError::new(
                "ttl_seconds",
                format!(
                    "a token lives 60 to {} seconds",
                    MAX_SERVICE_TOKEN_TTL.num_seconds()
                ),
            )
            .into());
        }
        let known_prefix =
            api_key.starts_with(API_KEY_PREFIX) || api_key.starts_with(LEGACY_ADMIN_PREFIX);
        let now = Utc::now();
        let found = if known_prefix && api_key.len() <= 128 {
            let hash = self.store.audit_key().credential_hash(api_key);
            self.store.use_api_key(&hash, now).await?
        } else {
            None
        };
        let Some((key, principal)) = found else {
            let event = AuditEvent::new("anonymous", "auth.failure")
                .detail(serde_json::json!({"credential": "api_key"}));
            self.store.append_audit(&event, now).await?;
            return Err(ControlError::Unauthenticated(REFUSED));
        };
        if principal.disabled_at.is_some() {
            let event = AuditEvent::new(format!("service:{}", principal.name), "auth.failure")
                .detail(serde_json::json!({"credential": "api_key", "reason": "disabled", "key_id": key.id}));
            self.store.append_audit(&event, now).await?;
            return Err(ControlError::AuthorizationRevoked(format!(
                "service user {} is disabled; ask an admin to enable it",
                principal.name
            )));
        }
        let token = new_token(TOKEN_PREFIX)?;
        let session = SessionRecord {
            id: new_id("ses_")?,
            principal_id: principal.id.clone(),
            kind: SessionKind::Service,
            api_key_id: Some(key.id.clone()),
            created_at: now,
            expires_at: now + ttl,
            revoked_at: None,
            mfa_at: None,
            address: address.clone(),
        };
        let event = AuditEvent::new(format!("service:{}", principal.name), "service_token.issue")
            .detail(serde_json::json!({
                "key_id": key.id,
                "session_id": session.id,
                "expires_at": session.expires_at.to_rfc3339(),
                "address": address,
            }));
        let hash = self.store.audit_key().credential_hash(&token);
        self.store
            .insert_session(&session, &hash, event, now)
            .await?;
        Ok(IssuedToken {
            token,
            expires_at: session.expires_at,
        })
    }

    /// `POST /v1/service_token`: checks the requested life and exchanges the key.
    pub async fn exchange_api_key(
        &self,
        request: &latch_common::api::ServiceTokenRequest,
        address: Option<String>,
    ) -> Result<latch_common::api::TokenResponse, ControlError> {
        let ttl = match request.ttl_seconds {
            None => DEFAULT_SERVICE_TOKEN_TTL,
            Some(seconds) => {
                let max = MAX_SERVICE_TOKEN_TTL.num_seconds();
                match i64::try_from(seconds) {
                    Ok(s) if (60..=max).contains(&s) => Duration::seconds(s),
                    _ => {
                        return Err(ValidationError::new(
                            "ttl_seconds",
                            format!("must be between 60 and {max}"),
                        )
                        .into());
                    }
                }
            }
        };
        let issued = self
            .issue_service_token(&request.api_key, ttl, address)
            .await?;
        Ok(latch_common::api::TokenResponse {
            token: issued.token,
            expires_at: issued.expires_at,
        })
    }

    /// The caller a bearer token belongs to, with the roles that apply now.
    pub async fn authenticate(&self, token: &str) -> Result<Authority, ControlError> {
        const UNKNOWN: &str = "the bearer token is not valid; sign in again (`latchctl login`) or exchange the API key again (POST /v1/service_token)";
        let now = Utc::now();
        let found = if token.starts_with(TOKEN_PREFIX) && token.len() <= 128 {
            let hash = self.store.audit_key().credential_hash(token);
            self.store.session(&hash).await?
        } else {
            None
        };
        let Some((session, principal)) = found else {
            let event = AuditEvent::new("anonymous", "auth.failure")
                .detail(serde_json::json!({"credential": "bearer"}));
            self.store.append_audit(&event, now).await?;
            return Err(ControlError::Unauthenticated(UNKNOWN));
        };
        if session.revoked_at.is_some() || principal.disabled_at.is_some() {
            return Err(ControlError::AuthorizationRevoked(format!(
                "the token of {}:{} was revoked{}; get a new one",
                principal.kind.as_str(),
                principal.name,
                if principal.disabled_at.is_some() {
                    " (the principal is disabled)"
                } else {
                    ""
                }
            )));
        }
        if session.expires_at <= now {
            return Err(ControlError::Unauthenticated(
                "the bearer token has expired; sign in again or exchange the API key again",
            ));
        }
        let mut grants = Vec::new();
        for binding in self.store.effective_bindings(&principal.id).await? {
            let selector = match &binding.selector {
                Some(text) => Some(Selector::parse(text).map_err(|e| {
                    ControlError::Internal(format!(
                        "role binding {} holds a selector that does not parse ({e}); fix or delete it",
                        binding.id
                    ))
                })?),
                None => None,
            };
            grants.push((binding.role, selector));
        }
        Ok(Authority::new(principal, session, grants))
    }

    /// Deletes sessions and service tokens that ended more than a day ago (the day keeps
    /// "expired" and "revoked" answers precise for a while; the audit trail keeps the history).
    pub async fn purge_ended_sessions(&self) -> Result<u64, ControlError> {
        Ok(self
            .store
            .purge_sessions(Utc::now() - Duration::days(1))
            .await?)
    }

    /// Binds `role` to a principal or group; a `delegated_resource_admin` binding needs a
    /// non-empty label selector, any other role none.
    pub async fn bind_role(
        &self,
        by: &Authority,
        role: Role,
        subject: &BindingSubject,
        selector: Option<&str>,
    ) -> Result<RoleBinding, ControlError> {
        self.require_people_change(by)?;
        let selector = match (role.is_delegated(), selector) {
            (true, Some(text)) => {
                let parsed = Selector::parse(text)?;
                // Only what a host is labelled with may bring it in: a selector of negations
                // alone (`env!=prod`) would cover every host enrolled later, unlabelled.
                let positive = parsed.requirements().iter().any(|r| {
                    matches!(
                        r,
                        latch_common::labels::Requirement::In(..)
                            | latch_common::labels::Requirement::Exists(_)
                    )
                });
                if !positive {
                    return Err(ValidationError::new(
                        "selector",
                        "a delegation needs at least one label the hosts must have (e.g. team=db or team in (db,web)); negations alone would cover every unlabelled host",
                    )
                    .into());
                }
                Some(parsed.to_string())
            }
            (true, None) => {
                return Err(ValidationError::new(
                    "selector",
                    "delegated_resource_admin needs a label selector naming the hosts it covers (e.g. team=db)",
                )
                .into());
            }
            (false, Some(_)) => {
                return Err(ValidationError::new(
                    "selector",
                    format!("{role} applies everywhere and takes no selector; use delegated_resource_admin to limit host administration to labels"),
                )
                .into());
            }
            (false, None) => None,
        };
        let now = Utc::now();
        let binding = RoleBinding {
            id: new_id("rb_")?,
            role,
            subject: subject.clone(),
            selector,
            created_at: now,
        };
        let (kind, id) = match subject {
            BindingSubject::Principal(id) => ("principal", id),
            BindingSubject::Group(id) => ("group", id),
        };
        let event = by.event("role.bind").detail(serde_json::json!({
            "binding": binding.id,
            "role": role.as_str(),
            kind: id,
            "selector": binding.selector,
        }));
        self.store
            .insert_role_binding(&binding, event, now)
            .await?
            .map_err(|r| Self::refusal(r, id))?;
        Ok(binding)
    }

    /// Removes a role binding.
    pub async fn unbind_role(&self, by: &Authority, binding_id: &str) -> Result<(), ControlError> {
        self.require_people_change(by)?;
        let event = by
            .event("role.unbind")
            .detail(serde_json::json!({"binding": binding_id}));
        if self
            .store
            .delete_role_binding(binding_id, event, Utc::now())
            .await?
        {
            Ok(())
        } else {
            Err(ControlError::NotFound {
                what: "role binding",
                key: binding_id.to_owned(),
            })
        }
    }

    /// Replaces a host's labels. Labels decide who else may act on a host (delegations, and
    /// later access policies), so only an admin of every host may set them: a delegated admin
    /// could otherwise move hosts into other people's reach or out of stricter rules.
    pub async fn set_host_labels(
        &self,
        by: &Authority,
        host: &str,
        labels: Labels,
    ) -> Result<(), ControlError> {
        if let Some(Scope::Within(_)) = by.scope(Permission::HostsManage) {
            return Err(ControlError::Forbidden(format!(
                "{} administers hosts only within a delegation; labels decide delegations and policies, so only a resource_admin or pam_admin sets them",
                by.actor()
            )));
        }
        by.require_everywhere(Permission::HostsManage)?;
        validate_labels(&labels)?;
        let record = self.find_host(host).await?;
        let current = self.labels_of(&record.id).await?;
        let event = by
            .event("host.labels")
            .host(&record.id)
            .detail(serde_json::json!({"before": current, "after": labels}));
        if self
            .store
            .set_host_labels(&record.id, &labels, event, Utc::now())
            .await?
        {
            Ok(())
        } else {
            Err(ControlError::HostRemoved(record.id))
        }
    }
}
