//! Just-in-time access (issue 12): access policies ([`policy`]) — who may request which
//! access on which hosts, for how long, approved by whom —, requests up to their decision
//! ([`requests`]), how people see them ([`views`]), and what follows approval: provisioning on each host, the window, early
//! revocation and the removal ([`provision`]).

pub mod certificates;
pub mod keys;
pub mod policy;
pub mod provision;
pub mod requests;
pub mod views;

pub use policy::{Allowed, Approval, Ask, Requester, evaluate};
