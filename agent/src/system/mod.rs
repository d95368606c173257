//! The only code that touches the host: running shadow-utils, reading account files, writing
//! `authorized_keys` and sshd's certificate files, ending processes. Everything above this module decides; this module acts.

pub mod accounts;
pub mod cmd;
pub mod etc;
pub mod files;
pub mod keys;
pub mod mounts;
pub mod nss;
pub mod procs;
pub mod sshd;
pub mod sudo;
