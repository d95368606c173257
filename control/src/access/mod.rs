//! Just-in-time access (issue 12). So far: access policies ([`policy`]) — who may request which
//! access on which hosts, for how long, approved by whom. Requests, approvals, provisioning and
//! revocation build on them next.

pub mod policy;

pub use policy::{Allowed, Approval, Ask, Requester, evaluate};
