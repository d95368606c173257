//! Wire types and input validation shared by `latch-agent` and `latch-control`.
//!
//! Invariant: this crate does no I/O. It defines
//! - [`names`]: the rules every user name, group name, shell, SSH key and password hash must pass
//!   before it may reach a colon-separated account file or a shadow-utils tool;
//! - [`job`]: the job kinds, their parameters ([`job::JobSpec`]), statuses and stable error codes;
//! - [`api`]: request and response bodies of the HTTP API, agent side and admin side;
//! - [`signing`]: the signed job payload and its verification (Ed25519, ring);
//! - [`authz`]: the named permissions and the five fixed roles;
//! - [`labels`]: host labels and label selectors;
//! - [`people`]: bodies of the people-and-permissions endpoints;
//! - [`protocol`]: the agent-protocol version handshake and a host's recorded agent;
//! - [`config_file`]: the binaries' TOML configuration files read with positions, and mistakes
//!   that point at a line.
//!
//! Both the control plane (at the API edge) and the agent (before acting) call
//! [`job::JobSpec::validate`], so hostile input is refused twice.

pub mod access;
pub mod api;
pub mod authz;
pub mod config_file;
pub mod job;
pub mod labels;
pub mod names;
pub mod people;
pub mod protocol;
pub mod signing;
pub mod vault;
pub mod webhooks;
