//! The people directory as the API shows and changes it: views of users, service users, groups
//! and role bindings, and the API's requests turned into the checked library calls of
//! [`crate::people`] and [`crate::users`].
//!
//! Reading needs `users.view`; every change needs `users.manage` everywhere and a recent second
//! factor ([`Control::require_people_change`]). No change may leave the installation without an
//! enabled `pam_admin`: the last one cannot be unbound, disabled or removed from the group that
//! makes it one.

use std::collections::{BTreeSet, HashMap};

use chrono::Utc;
use latch_common::authz::{Permission, Role};
use latch_common::names::ValidationError;
use latch_common::people::{
    ApiKeyView, BindRoleRequest, CreateUserRequest, GroupView, NewApiKeyResponse, PrincipalView,
    RoleBindingView, RoleView, SubjectKind,
};

use crate::Control;
use crate::error::ControlError;
use crate::people::Authority;
use crate::store::people::{
    ApiKeyRecord, BindingSubject, GroupRecord, PrincipalKind, PrincipalRecord, RoleBinding,
};
use crate::users::NewUser;

/// What a change would take away, for the last-`pam_admin` check.
#[derive(Debug, Default)]
pub(crate) struct Removal<'a> {
    /// A binding being deleted.
    pub binding: Option<&'a str>,
    /// A principal being disabled.
    pub principal: Option<&'a str>,
    /// A membership being ended: (group id, principal id).
    pub membership: Option<(&'a str, &'a str)>,
    /// A group being deleted.
    pub group: Option<&'a str>,
}

/// The API's view of a principal (no password hash, no keys).
pub fn principal_view(p: &PrincipalRecord) -> PrincipalView {
    PrincipalView {
        id: p.id.clone(),
        kind: p.kind.as_str().to_owned(),
        name: p.name.clone(),
        display_name: p.display_name.clone(),
        email: p.email.clone(),
        idp_issuer: p.idp.as_ref().map(|(issuer, _)| issuer.clone()),
        local_password: p.password_hash.is_some(),
        disabled_at: p.disabled_at,
        created_at: p.created_at,
        last_seen_at: p.last_seen_at,
        groups: Vec::new(),
        roles: Vec::new(),
    }
}

fn group_view(g: &GroupRecord) -> GroupView {
    GroupView {
        id: g.id.clone(),
        name: g.name.clone(),
        description: g.description.clone(),
        idp_group: g.idp_group.clone(),
        created_at: g.created_at,
        members: Vec::new(),
    }
}

fn key_view(k: &ApiKeyRecord) -> ApiKeyView {
    ApiKeyView {
        id: k.id.clone(),
        created_at: k.created_at,
        last_used_at: k.last_used_at,
        revoked_at: k.revoked_at,
    }
}

/// The API's view of a role binding whose subject is called `subject_name`.
fn binding_view(b: RoleBinding, subject_name: String) -> RoleBindingView {
    let (subject_kind, subject_id) = match b.subject {
        BindingSubject::Principal(id) => (SubjectKind::Principal, id),
        BindingSubject::Group(id) => (SubjectKind::Group, id),
    };
    RoleBindingView {
        id: b.id,
        role: b.role,
        subject_kind,
        subject_id,
        subject_name,
        selector: b.selector,
        created_at: b.created_at,
    }
}

/// Every role and its permissions.
pub fn role_views() -> Vec<RoleView> {
    Role::ALL
        .into_iter()
        .map(|role| RoleView {
            role,
            delegated: role.is_delegated(),
            permissions: role.permissions().to_vec(),
        })
        .collect()
}

fn kind_word(kind: PrincipalKind) -> &'static str {
    match kind {
        PrincipalKind::User => "user",
        PrincipalKind::Service => "service user",
    }
}

impl Control {
    /// Users or service users, by name.
    pub async fn list_principals(
        &self,
        by: &Authority,
        kind: PrincipalKind,
    ) -> Result<Vec<PrincipalView>, ControlError> {
        by.require_everywhere(Permission::UsersView)?;
        Ok(self
            .store
            .principals(Some(kind))
            .await?
            .iter()
            .map(principal_view)
            .collect())
    }

    /// The principal of `kind` that `key` (name or id) names.
    async fn principal_of_kind(
        &self,
        key: &str,
        kind: PrincipalKind,
    ) -> Result<PrincipalRecord, ControlError> {
        self.principal_named(key)
            .await?
            .filter(|p| p.kind == kind)
            .ok_or_else(|| ControlError::NotFound {
                what: kind_word(kind),
                key: key.to_owned(),
            })
    }

    /// One user or service user with its groups and the roles that apply to it.
    pub async fn show_principal(
        &self,
        by: &Authority,
        key: &str,
        kind: PrincipalKind,
    ) -> Result<PrincipalView, ControlError> {
        by.require_everywhere(Permission::UsersView)?;
        let principal = self.principal_of_kind(key, kind).await?;
        let mut view = principal_view(&principal);
        view.groups = self
            .store
            .groups_of(&principal.id)
            .await?
            .into_iter()
            .map(|g| g.name)
            .collect();
        let roles: BTreeSet<String> = self
            .store
            .effective_bindings(&principal.id)
            .await?
            .into_iter()
            .map(|b| match b.selector {
                Some(selector) => format!("{} ({selector})", b.role),
                None => b.role.to_string(),
            })
            .collect();
        view.roles = roles.into_iter().collect();
        Ok(view)
    }

    /// Creates a local user from an API request.
    pub async fn create_user_from(
        &self,
        by: &Authority,
        request: &CreateUserRequest,
    ) -> Result<PrincipalView, ControlError> {
        let user = NewUser {
            name: request.name.clone(),
            display_name: request
                .display_name
                .clone()
                .unwrap_or_else(|| request.name.clone()),
            email: request.email.clone(),
            password: request.password.clone(),
        };
        Ok(principal_view(&self.create_user(by, &user).await?))
    }

    /// Disables or enables a user or service user of `kind`; never the last `pam_admin`.
    pub async fn set_principal_disabled(
        &self,
        by: &Authority,
        key: &str,
        kind: PrincipalKind,
        disabled: bool,
    ) -> Result<(), ControlError> {
        self.require_people_change(by)?;
        let principal = self.principal_of_kind(key, kind).await?;
        if disabled {
            self.keep_a_pam_admin(Removal {
                principal: Some(&principal.id),
                ..Removal::default()
            })
            .await?;
        }
        self.set_disabled(by, &principal.id, disabled).await
    }

    /// Every group, by name.
    pub async fn list_groups(&self, by: &Authority) -> Result<Vec<GroupView>, ControlError> {
        by.require_everywhere(Permission::UsersView)?;
        Ok(self.store.groups().await?.iter().map(group_view).collect())
    }

    pub(crate) async fn group_named(&self, key: &str) -> Result<GroupRecord, ControlError> {
        self.store
            .group(key)
            .await?
            .filter(|g| {
                if crate::people::looks_like_id(key) {
                    g.id == key
                } else {
                    g.name == key
                }
            })
            .ok_or_else(|| ControlError::NotFound {
                what: "group",
                key: key.to_owned(),
            })
    }

    /// One group with its members.
    pub async fn show_group(&self, by: &Authority, key: &str) -> Result<GroupView, ControlError> {
        by.require_everywhere(Permission::UsersView)?;
        let group = self.group_named(key).await?;
        let mut view = group_view(&group);
        view.members = self
            .store
            .members(&group.id)
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect();
        Ok(view)
    }

    /// Deletes a group with its memberships and role bindings.
    pub async fn delete_group(&self, by: &Authority, key: &str) -> Result<(), ControlError> {
        self.require_people_change(by)?;
        let group = self.group_named(key).await?;
        self.keep_a_pam_admin(Removal {
            group: Some(&group.id),
            ..Removal::default()
        })
        .await?;
        let policies = self.policies_naming_group(&group.id).await?;
        if !policies.is_empty() {
            return Err(ControlError::Conflict(format!(
                "group {} is named by the access policies {}; change or delete them first (`latchctl policies show NAME`)",
                group.name,
                policies.join(", ")
            )));
        }
        let event = by
            .event("group.delete")
            .detail(serde_json::json!({"group": group.name, "id": group.id}));
        if self
            .store
            .delete_group(&group.id, event, Utc::now())
            .await?
        {
            Ok(())
        } else {
            Err(ControlError::NotFound {
                what: "group",
                key: key.to_owned(),
            })
        }
    }

    /// Adds a member to a group, or removes one (never the last `pam_admin`'s membership).
    pub async fn change_group_member(
        &self,
        by: &Authority,
        group: &str,
        member: &str,
        add: bool,
    ) -> Result<(), ControlError> {
        self.require_people_change(by)?;
        let group_record = self.group_named(group).await?;
        let principal =
            self.principal_named(member)
                .await?
                .ok_or_else(|| ControlError::NotFound {
                    what: "user or service user",
                    key: member.to_owned(),
                })?;
        if !add {
            self.keep_a_pam_admin(Removal {
                membership: Some((&group_record.id, &principal.id)),
                ..Removal::default()
            })
            .await?;
        }
        self.set_group_member(by, &group_record.id, &principal.id, add)
            .await
    }

    /// Every role binding, with its subject's name.
    pub async fn list_role_bindings(
        &self,
        by: &Authority,
    ) -> Result<Vec<RoleBindingView>, ControlError> {
        by.require_everywhere(Permission::UsersView)?;
        let names: HashMap<String, String> = self
            .store
            .principals(None)
            .await?
            .into_iter()
            .map(|p| (p.id, p.name))
            .chain(
                self.store
                    .groups()
                    .await?
                    .into_iter()
                    .map(|g| (g.id, g.name)),
            )
            .collect();
        Ok(self
            .store
            .role_bindings()
            .await?
            .into_iter()
            .map(|b| {
                let name = match &b.subject {
                    BindingSubject::Principal(id) | BindingSubject::Group(id) => {
                        names.get(id).cloned().unwrap_or_default()
                    }
                };
                binding_view(b, name)
            })
            .collect())
    }

    /// Binds a role as an API request asks: to exactly one user, service user or group.
    /// The same role bound twice to the same subject and selector is refused.
    pub async fn bind_role_from(
        &self,
        by: &Authority,
        request: &BindRoleRequest,
    ) -> Result<RoleBindingView, ControlError> {
        self.require_people_change(by)?;
        let role = request
            .role
            .ok_or_else(|| ValidationError::new("role", "is required"))?;
        let (subject, subject_name) = match (&request.user, &request.service_user, &request.group) {
            (Some(user), None, None) => {
                let p = self.principal_of_kind(user, PrincipalKind::User).await?;
                (BindingSubject::Principal(p.id), p.name)
            }
            (None, Some(service), None) => {
                let p = self
                    .principal_of_kind(service, PrincipalKind::Service)
                    .await?;
                (BindingSubject::Principal(p.id), p.name)
            }
            (None, None, Some(group)) => {
                let g = self.group_named(group).await?;
                (BindingSubject::Group(g.id), g.name)
            }
            _ => {
                return Err(ValidationError::new(
                    "subject",
                    "name exactly one of user, service_user or group",
                )
                .into());
            }
        };
        let wanted_selector = match &request.selector {
            Some(text) => Some(latch_common::labels::Selector::parse(text)?.to_string()),
            None => None,
        };
        let existing = self.store.role_bindings().await?;
        if let Some(same) = existing
            .iter()
            .find(|b| b.role == role && b.subject == subject && b.selector == wanted_selector)
        {
            return Err(ControlError::AlreadyExists {
                what: "role binding",
                key: same.id.clone(),
            });
        }
        let binding = self
            .bind_role(by, role, &subject, request.selector.as_deref())
            .await?;
        Ok(binding_view(binding, subject_name))
    }

    /// Removes a role binding, unless it is what keeps the last `pam_admin` one.
    pub async fn unbind_role_checked(
        &self,
        by: &Authority,
        binding_id: &str,
    ) -> Result<(), ControlError> {
        self.require_people_change(by)?;
        self.keep_a_pam_admin(Removal {
            binding: Some(binding_id),
            ..Removal::default()
        })
        .await?;
        self.unbind_role(by, binding_id).await
    }

    /// A service user's API keys (never the keys themselves).
    pub async fn api_key_views(
        &self,
        by: &Authority,
        service_user: &str,
    ) -> Result<Vec<ApiKeyView>, ControlError> {
        Ok(self
            .api_keys(by, service_user)
            .await?
            .iter()
            .map(key_view)
            .collect())
    }

    /// A new API key for a service user, shown once.
    pub async fn new_api_key(
        &self,
        by: &Authority,
        service_user: &str,
    ) -> Result<NewApiKeyResponse, ControlError> {
        let (key_id, api_key) = self.create_api_key(by, service_user).await?;
        Ok(NewApiKeyResponse {
            service_user: service_user.to_owned(),
            key_id,
            api_key,
        })
    }

    /// Refuses a change that would leave no enabled principal with `pam_admin`: nobody could
    /// manage people, roles or settings any more.
    pub(crate) async fn keep_a_pam_admin(&self, removal: Removal<'_>) -> Result<(), ControlError> {
        let bindings = self.store.role_bindings().await?;
        let enabled: HashMap<String, PrincipalRecord> = self
            .store
            .principals(None)
            .await?
            .into_iter()
            .filter(|p| p.disabled_at.is_none() && Some(p.id.as_str()) != removal.principal)
            .map(|p| (p.id.clone(), p))
            .collect();
        for binding in bindings.iter().filter(|b| b.role == Role::PamAdmin) {
            if Some(binding.id.as_str()) == removal.binding {
                continue;
            }
            match &binding.subject {
                BindingSubject::Principal(id) => {
                    if enabled.contains_key(id) {
                        return Ok(());
                    }
                }
                BindingSubject::Group(group_id) => {
                    if Some(group_id.as_str()) == removal.group {
                        continue;
                    }
                    let members = self.store.members(group_id).await?;
                    let still = members.iter().any(|m| {
                        enabled.contains_key(&m.id)
                            && removal.membership != Some((group_id.as_str(), m.id.as_str()))
                    });
                    if still {
                        return Ok(());
                    }
                }
            }
        }
        Err(ControlError::Conflict(
            "this would leave no enabled pam_admin, and nobody could manage people, roles or settings; bind pam_admin to another user or service user first".to_owned(),
        ))
    }
}
