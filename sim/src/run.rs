//! One run: start (or reach) the control plane, enroll the fleet, wait until every agent
//! long-polls, queue jobs at the asked rate, wait for their outcomes, and report.
//!
//! Enqueue → confirmed is measured in this one process, on one clock: from the moment an
//! admin connection sends `POST /v1/jobs` to the moment the control plane answers `204` to the
//! agent's `confirmed` report. Jobs are `create-account sim<N>` for a random simulated host and
//! `delete-account` of an account a confirmed create-account made earlier (every second job,
//! when there is one), so grants are made and revoked as in real use.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use hyper::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use latch_common::api::{CreateEnrollTokenRequest, CreateJobRequest, EnrollTokenView};
use latch_common::job::JobKind;
use thiserror::Error;
use tokio::task::JoinSet;

use crate::agent::{self, REQUEST_TIMEOUT};
use crate::http::{Connection, Endpoint, EndpointError, tls_config};
use crate::procfs::{self, Usage};
use crate::server::{ServerError, ServerOptions, ServerProcess};
use crate::stats::{JobCounts, JobKindSim, Report, Stats};

/// Most uses one enrollment token may have (the control plane's limit).
const MAX_TOKEN_USES: usize = 10_000;

/// Where the control plane comes from.
pub enum Target {
    /// Start `latch-control serve` with these options.
    Start(ServerOptions),
    /// Use running control planes (agents are spread over them in turn).
    Connect {
        /// Their URLs.
        urls: Vec<String>,
        /// Their CA certificate (PEM) and where it was read from.
        ca: Option<(Vec<u8>, String)>,
        /// An admin token.
        token: String,
        /// The server's process id, to report its CPU and memory (same machine only).
        pid: Option<u32>,
    },
}

/// What to run.
pub struct Config {
    /// Simulated agents.
    pub agents: usize,
    /// Jobs to queue.
    pub jobs: u64,
    /// Jobs per second.
    pub rate: f64,
    /// Fake work per job on the simulated host.
    pub work_time: Duration,
    /// Long-poll wait (`wait=` seconds).
    pub poll_wait: Duration,
    /// Enrollments in flight at once.
    pub enroll_concurrency: usize,
    /// Admin connections queueing jobs.
    pub queue_connections: usize,
    /// How long to wait for every agent to long-poll after enrolling.
    pub connect_timeout: Duration,
    /// How long to wait for outcomes after the last job was queued.
    pub drain_timeout: Duration,
    /// The control plane.
    pub target: Target,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
    /// The command line, for the report.
    pub command: String,
}

/// Why a run could not be made.
#[derive(Debug, Error)]
pub enum SimError {
    /// The server did not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The server's address or CA is unusable.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// An admin request failed.
    #[error("{what} failed: {detail}")]
    Admin {
        /// Which request.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// No agent could enroll.
    #[error("no simulated agent could enroll; the first error: {0}")]
    NoAgents(String),
    /// --database-url was given but the server started on SQLite.
    #[error(
        "the started latch-control ignored --database-url (its banner names no PostgreSQL store); it needs a build with the PostgreSQL store"
    )]
    DatabaseUrlIgnored,
    /// The latency histograms could not be made.
    #[error("cannot create the latency histograms: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
}

/// State shared by the agents and the queueing tasks.
pub struct Shared {
    /// Counters.
    pub stats: Stats,
    /// Long-poll wait.
    pub poll_wait: Duration,
    /// Fake work per job.
    pub work_time: Duration,
    /// Jobs queued (or being queued) and not finished: their enqueue instant.
    pending: Mutex<HashMap<(JobKindSim, u64), Instant>>,
    /// Confirmed create-account jobs (number, agent) whose account may now be deleted.
    created: Mutex<VecDeque<(u64, usize)>>,
    /// When the last job was confirmed.
    last_confirmed: Mutex<Option<Instant>>,
}

impl Shared {
    fn new(poll_wait: Duration, work_time: Duration) -> Result<Self, SimError> {
        Ok(Self {
            stats: Stats::new()?,
            poll_wait,
            work_time,
            pending: Mutex::default(),
            created: Mutex::default(),
            last_confirmed: Mutex::default(),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<(JobKindSim, u64), Instant>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An agent's report for job `number` of `kind` was acknowledged at `at`.
    pub fn finished(
        &self,
        kind: JobKindSim,
        number: u64,
        agent: usize,
        at: Instant,
        confirmed: bool,
    ) {
        let Some(start) = self.pending().remove(&(kind, number)) else {
            // Delivered again after its outcome was recorded, or not queued by this run.
            return;
        };
        if !confirmed {
            return;
        }
        self.stats.record_latency(kind, at.duration_since(start));
        self.stats.confirmed.fetch_add(1, Ordering::Relaxed);
        let mut last = self
            .last_confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *last = Some(last.map_or(at, |l| l.max(at)));
        drop(last);
        if kind == JobKindSim::CreateAccount {
            self.created
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back((number, agent));
        }
    }
}

fn bar(show: bool, len: u64, prefix: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_prefix(prefix);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Largest open-file count seen by the sampler, per process.
#[derive(Default)]
struct Peaks {
    server_fds: AtomicU64,
    simulator_fds: AtomicU64,
}

async fn admin_request<T: serde::de::DeserializeOwned>(
    conn: &mut Connection,
    token: &str,
    what: &'static str,
    path: &str,
    body: &impl serde::Serialize,
) -> Result<T, SimError> {
    let admin = |detail: String| SimError::Admin { what, detail };
    let body = serde_json::to_vec(body).map_err(|e| admin(e.to_string()))?;
    let answer = conn
        .request(Method::POST, path, Some(token), Some(body), REQUEST_TIMEOUT)
        .await
        .map_err(|e| admin(e.to_string()))?;
    if !answer.status.is_success() {
        return Err(admin(format!(
            "{} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        )));
    }
    serde_json::from_slice(&answer.body).map_err(|e| admin(e.to_string()))
}

/// The bearer token for `credential`: an API key (`latch_key_`, or a legacy `latch_admin_`
/// token) is exchanged for one at `POST /v1/service_token`, valid for the longest a run may take.
async fn bearer_for(conn: &mut Connection, credential: &str) -> Result<String, SimError> {
    if !(credential.starts_with("latch_key_") || credential.starts_with("latch_admin_")) {
        return Ok(credential.to_owned());
    }
    let what = "exchanging the admin API key for a token";
    let admin = |detail: String| SimError::Admin { what, detail };
    let body = serde_json::json!({"api_key": credential, "ttl_seconds": 12 * 3600});
    let body = serde_json::to_vec(&body).map_err(|e| admin(e.to_string()))?;
    let answer = conn
        .request(
            Method::POST,
            "/v1/service_token",
            None,
            Some(body),
            REQUEST_TIMEOUT,
        )
        .await
        .map_err(|e| admin(e.to_string()))?;
    if !answer.status.is_success() {
        return Err(admin(format!(
            "{} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        )));
    }
    let issued: latch_common::api::TokenResponse =
        serde_json::from_slice(&answer.body).map_err(|e| admin(e.to_string()))?;
    Ok(issued.token)
}

/// A job to queue.
struct Order {
    kind: JobKindSim,
    number: u64,
    host_id: String,
}

/// Runs the simulation and returns its report.
pub async fn run(config: Config) -> Result<Report, SimError> {
    let date = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let settings = config_parts(&config);
    let (server, urls, ca, token, pid, store) = match config.target {
        Target::Start(options) => {
            let server = ServerProcess::start(&options).await?;
            let store = server.store();
            if options.database_url.is_some() && store != "postgres" {
                server.stop().await;
                return Err(SimError::DatabaseUrlIgnored);
            }
            let ca = (!server.ca_pem.is_empty())
                .then(|| (server.ca_pem.clone(), server.ca_file.display().to_string()));
            let (urls, token, pid) = (vec![server.url.clone()], server.token.clone(), server.pid);
            (Some(server), urls, ca, token, Some(pid), store)
        }
        Target::Connect {
            urls,
            ca,
            token,
            pid,
        } => (None, urls, ca, token, pid, "external"),
    };
    let result = simulate(&config.command, &urls, ca, &token, pid, &settings).await;
    if let Some(server) = server {
        server.stop().await;
    }
    let mut report = result?;
    report.date = date;
    report.store = store.to_owned();
    Ok(report)
}

/// The numeric settings of a run (everything but the target).
struct Settings {
    agents: usize,
    jobs: u64,
    rate: f64,
    work_time: Duration,
    poll_wait: Duration,
    enroll_concurrency: usize,
    queue_connections: usize,
    connect_timeout: Duration,
    drain_timeout: Duration,
    progress: bool,
}

fn config_parts(config: &Config) -> Settings {
    Settings {
        agents: config.agents,
        jobs: config.jobs,
        rate: config.rate,
        work_time: config.work_time,
        poll_wait: config.poll_wait,
        enroll_concurrency: config.enroll_concurrency.max(1),
        queue_connections: config.queue_connections.max(1),
        connect_timeout: config.connect_timeout,
        drain_timeout: config.drain_timeout,
        progress: config.progress,
    }
}

async fn simulate(
    command: &str,
    urls: &[String],
    ca: Option<(Vec<u8>, String)>,
    token: &str,
    pid: Option<u32>,
    s: &Settings,
) -> Result<Report, SimError> {
    let tls = match &ca {
        Some((pem, path)) => Some(tls_config(pem, path)?),
        None => None,
    };
    let endpoints = urls
        .iter()
        .map(|url| Endpoint::new(url, tls.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let endpoint = |i: usize| endpoints[i % endpoints.len()].clone();
    let shared = Arc::new(Shared::new(s.poll_wait, s.work_time)?);
    let stats = &shared.stats;
    let mut admin = Connection::new(endpoint(0));
    let bearer = bearer_for(&mut admin, token).await?;
    let token = bearer.as_str();

    // Enrollment tokens (at most 10,000 uses each).
    let mut tokens = Vec::new();
    let mut left = s.agents;
    while left > 0 {
        let uses = left.min(MAX_TOKEN_USES);
        let view: EnrollTokenView = admin_request(
            &mut admin,
            token,
            "creating an enrollment token",
            "/v1/enroll-tokens",
            &CreateEnrollTokenRequest {
                ttl_seconds: Some(3600),
                uses: u32::try_from(uses).ok(),
                ..Default::default()
            },
        )
        .await?;
        tokens.push(view.token);
        left -= uses;
    }

    // Sample the server and this process each second for their open files.
    let peaks = Arc::new(Peaks::default());
    let sampler = {
        let peaks = peaks.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Some(sample) = pid.and_then(procfs::sample) {
                    peaks
                        .server_fds
                        .fetch_max(sample.open_fds, Ordering::Relaxed);
                }
                if let Some(sample) = procfs::sample(std::process::id()) {
                    peaks
                        .simulator_fds
                        .fetch_max(sample.open_fds, Ordering::Relaxed);
                }
            }
        })
    };

    // Enroll, then keep long-polling on the same connection.
    let tag = format!("{:08x}", fastrand::u32(..));
    let enroll_start = Instant::now();
    let server_before_enroll = pid.and_then(procfs::sample);
    let permits = Arc::new(tokio::sync::Semaphore::new(s.enroll_concurrency));
    let (enrolled_tx, mut enrolled_rx) = tokio::sync::mpsc::unbounded_channel();
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let mut agents = JoinSet::new();
    for index in 0..s.agents {
        let mut conn = Connection::new(endpoint(index));
        let token = tokens[index / MAX_TOKEN_USES].clone();
        let (permits, shared, tag) = (permits.clone(), shared.clone(), tag.clone());
        let (enrolled_tx, first_error) = (enrolled_tx.clone(), first_error.clone());
        agents.spawn(async move {
            let identity = {
                let Ok(_permit) = permits.acquire().await else {
                    return;
                };
                agent::enroll(&mut conn, &token, &tag, index).await
            };
            match identity {
                Ok(identity) => {
                    shared.stats.enrolled.fetch_add(1, Ordering::Relaxed);
                    let _ = enrolled_tx.send((index, identity.host_id.clone()));
                    agent::run(identity, conn, shared).await;
                }
                Err(error) => {
                    shared.stats.error(error.kind());
                    shared.stats.enroll_failed.fetch_add(1, Ordering::Relaxed);
                    let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert_with(|| error.to_string());
                }
            }
        });
    }
    drop(enrolled_tx);
    let progress = bar(s.progress, s.agents as u64, "enrolling");
    let mut hosts: Vec<Option<String>> = vec![None; s.agents];
    let mut enrolled = 0usize;
    loop {
        while let Ok((index, host_id)) = enrolled_rx.try_recv() {
            hosts[index] = Some(host_id);
            enrolled += 1;
        }
        let failed =
            usize::try_from(stats.enroll_failed.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        progress.set_position(enrolled as u64);
        progress.set_message(format!("{failed} errors"));
        if enrolled + failed >= s.agents {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.finish_and_clear();
    if enrolled == 0 {
        let first = first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        return Err(SimError::NoAgents(first.unwrap_or_default()));
    }
    let progress = bar(s.progress, enrolled as u64, "polling");
    let connect_deadline = Instant::now() + s.connect_timeout;
    loop {
        let polling = u64::try_from(stats.polling.load(Ordering::Relaxed)).unwrap_or(0);
        progress.set_position(polling);
        if polling >= enrolled as u64 || Instant::now() >= connect_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.finish_and_clear();
    let enroll_seconds = enroll_start.elapsed().as_secs_f64();
    let server_after_enroll = pid.and_then(procfs::sample);
    let polling_at_load_start = u64::try_from(stats.polling.load(Ordering::Relaxed)).unwrap_or(0);

    // Queue jobs at the asked rate over a few admin connections.
    let host_ids: Arc<Vec<(usize, String)>> = Arc::new(
        hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.clone().map(|h| (i, h)))
            .collect(),
    );
    let by_index: Arc<Vec<Option<String>>> = Arc::new(hosts);
    let server_before = pid.and_then(procfs::sample);
    let me_before = procfs::sample(std::process::id());
    let load_start = Instant::now();
    let (order_tx, order_rx) = tokio::sync::mpsc::channel::<Order>(s.queue_connections * 4);
    let order_rx = Arc::new(tokio::sync::Mutex::new(order_rx));
    let mut queuers = JoinSet::new();
    for w in 0..s.queue_connections {
        let mut conn = Connection::new(endpoint(w));
        let (order_rx, shared, token) = (order_rx.clone(), shared.clone(), token.to_owned());
        queuers.spawn(async move {
            loop {
                let order = order_rx.lock().await.recv().await;
                let Some(order) = order else { return };
                queue_one(&mut conn, &token, &shared, order).await;
            }
        });
    }
    let generator = {
        let (shared, host_ids, by_index) = (shared.clone(), host_ids.clone(), by_index.clone());
        let (jobs, rate) = (s.jobs, s.rate);
        tokio::spawn(async move {
            for n in 0..jobs {
                let due = load_start + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let deletion = if n % 2 == 1 {
                    shared
                        .created
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pop_front()
                } else {
                    None
                };
                let order = match deletion {
                    Some((number, agent)) => match &by_index[agent] {
                        Some(host_id) => Order {
                            kind: JobKindSim::DeleteAccount,
                            number,
                            host_id: host_id.clone(),
                        },
                        None => continue,
                    },
                    None => {
                        let (_, host_id) = &host_ids[fastrand::usize(..host_ids.len())];
                        Order {
                            kind: JobKindSim::CreateAccount,
                            number: n,
                            host_id: host_id.clone(),
                        }
                    }
                };
                if order_tx.send(order).await.is_err() {
                    return;
                }
            }
        })
    };
    let progress = bar(s.progress, s.jobs, "jobs");
    let show = |progress: &ProgressBar| {
        let (all, _, _) = stats.latencies();
        progress.set_position(stats.confirmed.load(Ordering::Relaxed));
        progress.set_message(format!(
            "queued {}, p50 {:.1} ms, p99 {:.1} ms, errors {}",
            stats.queued.load(Ordering::Relaxed),
            all.p50,
            all.p99,
            stats.error_total()
        ));
    };
    while !generator.is_finished() {
        show(&progress);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = generator.await;
    while queuers.join_next().await.is_some() {}
    let queue_seconds = load_start.elapsed().as_secs_f64();
    let drain_deadline = Instant::now() + s.drain_timeout;
    while !shared.pending().is_empty() && Instant::now() < drain_deadline {
        show(&progress);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    show(&progress);
    progress.finish_and_clear();
    let server_after = pid.and_then(procfs::sample);
    let me_after = procfs::sample(std::process::id());
    let not_confirmed = shared.pending().len() as u64;
    stats.errors_add("not_confirmed", not_confirmed);
    agents.abort_all();
    sampler.abort();

    let usage = |before: Option<procfs::Sample>, after: Option<procfs::Sample>, peak: u64| {
        before.zip(after).map(|(b, a)| Usage::between(&b, &a, peak))
    };
    let server_fds = peaks.server_fds.load(Ordering::Relaxed);
    let last_confirmed = *shared
        .last_confirmed
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let confirmed = stats.confirmed.load(Ordering::Relaxed);
    let queued = stats.queued.load(Ordering::Relaxed);
    let (latency_ms, latency_create_ms, latency_delete_ms) = stats.latencies();
    Ok(Report {
        date: String::new(),
        command: command.to_owned(),
        store: String::new(),
        servers: urls.to_vec(),
        agents: s.agents as u64,
        enrolled: enrolled as u64,
        polling_at_load_start,
        enroll_seconds,
        jobs: JobCounts {
            requested: s.jobs,
            queued,
            confirmed,
            refused: stats.refused.load(Ordering::Relaxed),
            not_confirmed,
        },
        rate_target: s.rate,
        queue_rate: if queue_seconds > 0.0 {
            queued as f64 / queue_seconds
        } else {
            0.0
        },
        confirmed_per_second: match last_confirmed {
            Some(last) if last > load_start => {
                confirmed as f64 / last.duration_since(load_start).as_secs_f64()
            }
            _ => 0.0,
        },
        work_time_ms: s.work_time.as_secs_f64() * 1000.0,
        latency_ms,
        latency_create_ms,
        latency_delete_ms,
        polls: stats.polls.load(Ordering::Relaxed),
        reconnects: stats.reconnects.load(Ordering::Relaxed),
        errors: stats.errors(),
        error_total: stats.error_total(),
        server: usage(server_before, server_after, server_fds),
        server_enroll: usage(server_before_enroll, server_after_enroll, server_fds),
        simulator: usage(
            me_before,
            me_after,
            peaks.simulator_fds.load(Ordering::Relaxed),
        )
        .unwrap_or_default(),
    })
}

/// Queues one job over an admin connection.
async fn queue_one(conn: &mut Connection, token: &str, shared: &Shared, order: Order) {
    let stats = &shared.stats;
    let key = (order.kind, order.number);
    let request = CreateJobRequest {
        host: order.host_id,
        kind: Some(match order.kind {
            JobKindSim::CreateAccount => JobKind::CreateAccount,
            JobKindSim::DeleteAccount => JobKind::DeleteAccount,
        }),
        user: agent::user_name(order.number),
        ..CreateJobRequest::default()
    };
    let Ok(body) = serde_json::to_vec(&request) else {
        stats.error("queue:encode");
        return;
    };
    // The clock starts before the request leaves.
    shared.pending().insert(key, Instant::now());
    let answer = conn
        .request(
            Method::POST,
            "/v1/jobs",
            Some(token),
            Some(body),
            REQUEST_TIMEOUT,
        )
        .await;
    let error = match answer {
        Ok(answer) if answer.status == StatusCode::CREATED => {
            stats.queued.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ok(answer) => format!("queue:{}", answer.error_code()),
        Err(error) => format!("queue:{}", error.kind()),
    };
    stats.error(error);
    shared.pending().remove(&key);
}
