//! Users and groups as the name service sees them (NSS: the files, and LDAP, SSSD,
//! extrausers, … where `/etc/nsswitch.conf` lists them), through `uzers`.
//!
//! A look-up that fails (a directory server that does not answer) reads as "unknown": NSS does
//! not tell failure from absence through these calls. The agent's own files are checked first,
//! and UIDs come from a range the directory should not use.

use crate::plan::NameService;

/// The host's name service.
pub struct Nss;

impl NameService for Nss {
    fn user_exists(&self, name: &str) -> bool {
        uzers::get_user_by_name(name).is_some()
    }

    fn group_exists(&self, name: &str) -> bool {
        uzers::get_group_by_name(name).is_some()
    }

    fn uid_taken(&self, uid: u32) -> bool {
        uzers::get_user_by_uid(uid).is_some()
    }

    fn gid_taken(&self, gid: u32) -> bool {
        uzers::get_group_by_gid(gid).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_and_an_unused_id_does_not() {
        assert!(Nss.user_exists("root"));
        assert!(Nss.group_exists("root"));
        assert!(Nss.uid_taken(0));
        assert!(Nss.gid_taken(0));
        assert!(!Nss.user_exists("latch-no-such-user"));
        assert!(!Nss.uid_taken(4_000_000_000));
    }
}
