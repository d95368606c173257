//! Permissions and the five fixed roles (DESIGN.md §4).
//!
//! Every endpoint declares the one [`Permission`] it needs; a principal's permissions are the
//! union of the [`Role`]s granted to it directly and to the groups it is in. The roles' meanings
//! are fixed by the product, so the table lives here, in code, where a test pins it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::names::ValidationError;

/// A named permission, as endpoints declare them and `latchctl roles show` prints them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
pub enum Permission {
    /// See hosts, their facts, labels and state.
    #[serde(rename = "hosts.view")]
    HostsView,
    /// Enroll hosts (enrollment tokens), set labels, remove hosts.
    #[serde(rename = "hosts.manage")]
    HostsManage,
    /// Queue account jobs on hosts: create, delete, lock, sudo membership, passwords, adoption.
    #[serde(rename = "hosts.manage_users")]
    HostsManageUsers,
    /// Queue jobs of any kind (includes key rotation jobs).
    #[serde(rename = "jobs.create")]
    JobsCreate,
    /// See jobs, their events and the grants they made.
    #[serde(rename = "jobs.view")]
    JobsView,
    /// Read and verify the audit trail, export checkpoints.
    #[serde(rename = "audit.view")]
    AuditView,
    /// Write access policies.
    #[serde(rename = "policies.manage")]
    PoliciesManage,
    /// Request just-in-time access for oneself.
    #[serde(rename = "access.request")]
    AccessRequest,
    /// Approve or deny other people's access requests (where a policy names the approver).
    #[serde(rename = "access.approve")]
    AccessApprove,
    /// See every access request and grant, not only one's own.
    #[serde(rename = "access.view")]
    AccessView,
    /// See vaults and identities' metadata.
    #[serde(rename = "pam_vaults.view")]
    PamVaultsView,
    /// Create, change and delete vaults and identities; rotate credentials.
    #[serde(rename = "pam_vaults.manage")]
    PamVaultsManage,
    /// Break-glass: reveal a credential outside the normal grants, loudly audited.
    #[serde(rename = "pam_vaults.break_glass")]
    PamVaultsBreakGlass,
    /// See users, groups, service users and role assignments.
    #[serde(rename = "users.view")]
    UsersView,
    /// Manage users, groups, service users and role assignments.
    #[serde(rename = "users.manage")]
    UsersManage,
    /// Change server settings: signing-key rotation, MFA requirements, identity provider mapping.
    #[serde(rename = "settings.manage")]
    SettingsManage,
}

impl Permission {
    /// Every permission, in a stable order.
    pub const ALL: [Permission; 16] = [
        Self::HostsView,
        Self::HostsManage,
        Self::HostsManageUsers,
        Self::JobsCreate,
        Self::JobsView,
        Self::AuditView,
        Self::PoliciesManage,
        Self::AccessRequest,
        Self::AccessApprove,
        Self::AccessView,
        Self::PamVaultsView,
        Self::PamVaultsManage,
        Self::PamVaultsBreakGlass,
        Self::UsersView,
        Self::UsersManage,
        Self::SettingsManage,
    ];

    /// The permission's name (`hosts.view`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HostsView => "hosts.view",
            Self::HostsManage => "hosts.manage",
            Self::HostsManageUsers => "hosts.manage_users",
            Self::JobsCreate => "jobs.create",
            Self::JobsView => "jobs.view",
            Self::AuditView => "audit.view",
            Self::PoliciesManage => "policies.manage",
            Self::AccessRequest => "access.request",
            Self::AccessApprove => "access.approve",
            Self::AccessView => "access.view",
            Self::PamVaultsView => "pam_vaults.view",
            Self::PamVaultsManage => "pam_vaults.manage",
            Self::PamVaultsBreakGlass => "pam_vaults.break_glass",
            Self::UsersView => "users.view",
            Self::UsersManage => "users.manage",
            Self::SettingsManage => "settings.manage",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| {
                ValidationError::new(
                    "permission",
                    format!("unknown permission {text:?}; `latchctl roles list` shows them"),
                )
            })
    }
}

/// One of the product's five roles; their permissions are fixed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including users, groups, roles and settings.
    PamAdmin,
    /// Hosts, jobs, enrollment tokens, vaults and identities.
    ResourceAdmin,
    /// What `resource_admin` may do, limited to hosts whose labels match the delegation.
    DelegatedResourceAdmin,
    /// Access policies, approvals, audit, break-glass oversight; reads everything.
    SecurityAdmin,
    /// Requests access; sees and uses their own grants and checkouts.
    EndUser,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 5] = [
        Self::PamAdmin,
        Self::ResourceAdmin,
        Self::DelegatedResourceAdmin,
        Self::SecurityAdmin,
        Self::EndUser,
    ];

    /// The role's name (`pam_admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PamAdmin => "pam_admin",
            Self::ResourceAdmin => "resource_admin",
            Self::DelegatedResourceAdmin => "delegated_resource_admin",
            Self::SecurityAdmin => "security_admin",
            Self::EndUser => "end_user",
        }
    }

    /// The permissions this role grants.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Self::PamAdmin => &Permission::ALL,
            Self::ResourceAdmin | Self::DelegatedResourceAdmin => &[
                HostsView,
                HostsManage,
                HostsManageUsers,
                JobsCreate,
                JobsView,
                PamVaultsView,
                PamVaultsManage,
                AccessRequest,
            ],
            Self::SecurityAdmin => &[
                HostsView,
                JobsView,
                AuditView,
                PoliciesManage,
                AccessRequest,
                AccessApprove,
                AccessView,
                PamVaultsView,
                UsersView,
            ],
            Self::EndUser => &[AccessRequest],
        }
    }

    /// Whether this role's host permissions apply only within a label selector.
    pub fn is_delegated(self) -> bool {
        self == Self::DelegatedResourceAdmin
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| {
                ValidationError::new(
                    "role",
                    format!(
                        "unknown role {text:?}; the roles are pam_admin, resource_admin, delegated_resource_admin, security_admin and end_user"
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The role table is the product's contract: changing it must be a deliberate edit here.
    #[test]
    fn the_role_table_is_pinned() {
        let table: Vec<(Role, Vec<&str>)> = Role::ALL
            .into_iter()
            .map(|r| (r, r.permissions().iter().map(|p| p.as_str()).collect()))
            .collect();
        assert_eq!(table[0].1.len(), Permission::ALL.len(), "pam_admin has all");
        assert_eq!(
            table[1].1,
            [
                "hosts.view",
                "hosts.manage",
                "hosts.manage_users",
                "jobs.create",
                "jobs.view",
                "pam_vaults.view",
                "pam_vaults.manage",
                "access.request"
            ]
        );
        assert_eq!(table[2].1, table[1].1, "delegated = resource_admin, scoped");
        assert_eq!(
            table[3].1,
            [
                "hosts.view",
                "jobs.view",
                "audit.view",
                "policies.manage",
                "access.request",
                "access.approve",
                "access.view",
                "pam_vaults.view",
                "users.view"
            ]
        );
        assert_eq!(table[4].1, ["access.request"]);
        for role in Role::ALL {
            assert!(
                !role.permissions().contains(&Permission::UsersManage) || role == Role::PamAdmin,
                "only pam_admin manages people"
            );
            assert!(
                !role
                    .permissions()
                    .contains(&Permission::PamVaultsBreakGlass)
                    || role == Role::PamAdmin,
                "break-glass only by explicit grant to pam_admin"
            );
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>().unwrap(), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
        assert!("hosts.*".parse::<Permission>().is_err());
        assert!("root".parse::<Role>().is_err());
        assert!("PAM_ADMIN".parse::<Role>().is_err());
    }
}
