//! One-click PAM enrollment: an existing account on an online host becomes a vault identity.
//! The agent adopts the account (it must exist; root and system accounts only where the
//! host's own config allows), then a generated password is set there by the identity's first
//! rotation; the identity's state follows those two jobs.

use latch_common::authz::Permission;
use latch_common::names::{ValidationError, validate_user_name};
use latch_common::vault::{CreateIdentityRequest, EnrollAccountRequest, EnrolledAccount};

use super::access::Need;
use super::rotation::rotation_view;
use crate::people::Authority;
use crate::{Control, ControlError};

/// The default identity name of `user` on `hostname`: `user@hostname`, in the name rules.
fn default_name(user: &str, hostname: &str) -> String {
    let mut name: String = format!("{user}@{hostname}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '@') {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(64);
    name
}

impl Control {
    /// Enrolls the existing account `request.user` of host `host_key` into a vault: needs
    /// `hosts.manage_users` on the host, `pam_vaults.manage`, and the host online.
    pub async fn enroll_account(
        &self,
        by: &Authority,
        host_key: &str,
        request: &EnrollAccountRequest,
    ) -> Result<EnrolledAccount, ControlError> {
        let (host, labels) = self
            .host_for(by, Permission::HostsManageUsers, host_key)
            .await?;
        let vault = self.vault_for(by, &request.vault, Need::Manage).await?;
        validate_user_name(&request.user).map_err(|e| ValidationError::new("user", e.reason))?;
        let view = self.host_view(host.clone(), labels);
        if !view.online {
            return Err(ControlError::Conflict(format!(
                "host {} is offline (last seen {}); enrollment needs its agent running — start latch-agent there and retry",
                view.facts.hostname,
                view.last_seen
                    .map_or_else(|| "never".to_owned(), |t| t.to_rfc3339())
            )));
        }
        let name = match &request.name {
            Some(name) => name.clone(),
            None => default_name(&request.user, &view.facts.hostname),
        };
        let create = CreateIdentityRequest {
            name,
            username: request.user.clone(),
            hosts: vec![host.id.clone()],
            ..Default::default()
        };
        let identity = self.create_identity(by, &vault.id, &create).await?;
        let rotation = self
            .store
            .rotations(&identity.id)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                ControlError::Internal(format!(
                    "identity {} was enrolled without its first rotation",
                    identity.id
                ))
            })?;
        Ok(EnrolledAccount {
            identity,
            rotation: rotation_view(rotation),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_follow_the_rules() {
        assert_eq!(default_name("app", "db-01.example"), "app@db-01.example");
        assert_eq!(default_name("app", "DB_01 x"), "app@db_01-x");
        assert_eq!(default_name("a", &"h".repeat(100)).len(), 64);
        assert!(
            latch_common::vault::validate_vault_name("name", &default_name("app", "Db!")).is_ok()
        );
    }
}
