//! Just-in-time access (issue 12). So far: access policies ([`policy`]) — who may request which
//! access on which hosts, for how long, approved by whom — and requests up to their decision
//! ([`requests`]). Provisioning and revocation build on them next.

pub mod certificates;
pub mod keys;
pub mod policy;
pub mod requests;

pub use policy::{Allowed, Approval, Ask, Requester, evaluate};
