//! `latch-fleet-sim`: a fleet of simulated agents against a real `latch-control`, to measure
//! how fast jobs reach hosts and how many a control plane can carry.
//!
//! Each simulated agent speaks the real protocol over its own HTTPS keep-alive connection
//! (pinned CA): it enrolls with an enrollment token, long-polls `/v1/agent/jobs?wait=30`,
//! verifies each job's Ed25519 signature with the key it got at enrollment, refuses forged,
//! replayed, late or foreign jobs, waits a configurable fake work time (no account changes),
//! and reports `confirmed`. Meanwhile the simulator queues create-account / delete-account jobs
//! for random simulated hosts at a given rate through the admin API and measures enqueue →
//! confirmed per job, jobs confirmed per second, errors by kind, and the server's CPU and memory
//! from `/proc`.
//!
//! Layout: [`run`] (the phases: server, enrollment, polling, load, drain; the report) ·
//! [`agent`] (one simulated agent) · [`http`] (one HTTP/1.1 connection over rustls, CA pinned) ·
//! [`server`] (starting `latch-control serve` with raised limits) · [`stats`] (histograms,
//! errors, the report) · [`procfs`] (CPU, RSS and open files of a process).

pub mod agent;
pub mod http;
pub mod procfs;
pub mod run;
pub mod server;
pub mod stats;
