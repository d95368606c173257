//! Request limits (DESIGN.md §5) and the throttle on refused credentials.
//!
//! - **Requests**: a fixed one-minute window per principal — the presented credential (by hash)
//!   when there is one, else the client address — with `X-RateLimit-Limit`,
//!   `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds) and `X-RateLimit-Retry-At` (RFC 3339)
//!   on every response and `429 too_many_requests` past the limit.
//! - **Refused credentials** are counted twice. Against the credential itself (by hash — our
//!   tokens are opaque random strings, so the hash is their id): past
//!   [`RateLimits::auth_failures`] a minute that credential gets 429, so one broken or removed
//!   agent retrying its dead credential throttles only itself. And against the client address,
//!   with the much higher [`RateLimits::address_auth_failures`]: that bounds spraying many
//!   different guesses from one place. An address over its budget gets 429 for every request
//!   except those carrying a credential that authenticated within the last day, so agents and
//!   admins behind the same NAT as a sprayer keep working. (IPv6 addresses count by /64, the
//!   block one subscriber usually holds.)
//! - **Client address**: the TCP peer, unless the peer is a trusted proxy
//!   ([`RateLimits::trusted_proxies`]); then the rightmost `X-Forwarded-For` entry that is not a
//!   trusted proxy itself. `X-Forwarded-For` from anyone else is ignored: it is whatever the
//!   client wrote.
//!
//! Why fixed windows rather than the `governor` crate's keyed GCRA limiters: the throttles must
//! ask "is this credential (address) over its failure budget?" *before* the handler runs, while
//! only a refusal — known after the handler ran — counts. governor's keyed limiter can only test
//! and consume a cell in one step (`check_key`); it has no read-only query. Emulating one means
//! charging every request in advance (which throttles valid agents behind a NAT after a
//! restart, the very failure this module fixes) or keeping a second "blocked until" map beside
//! governor, i.e. a hand-written limiter anyway. Windows also give the exact `Remaining` and
//! `Reset` the headers promise.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use ipnet::IpNet;

use super::error::ApiError;

/// Limits per one-minute window, and who may say where a request came from.
#[derive(Debug, Clone)]
pub struct RateLimits {
    /// Requests per principal (a credential, or the client address without one).
    pub per_principal: u32,
    /// Refused attempts with one credential before that credential gets 429.
    pub auth_failures: u32,
    /// Refused credentials from one client address (IPv6: one /64) before the address gets 429
    /// (except for credentials that authenticated recently).
    pub address_auth_failures: u32,
    /// Reverse proxies whose `X-Forwarded-For` is believed. Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for RateLimits {
    fn default() -> Self {
        // A host long-polls about twice a minute; an admin script waiting on jobs polls 10×/s.
        RateLimits {
            per_principal: 3000,
            auth_failures: 30,
            address_auth_failures: 300,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Parses a `--trusted-proxy` value: a CIDR block (`10.0.0.0/8`, `fd00::/8`) or one address.
pub fn parse_trusted_proxy(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| {
            format!(
                "{text:?} is not an address or CIDR block (e.g. 10.0.0.0/8, 192.0.2.10, fd00::/8)"
            )
        })
}

const WINDOW: Duration = Duration::from_secs(60);
/// Longest a request may take (a long-poll waits at most 30 s).
pub const REQUEST_TIME_LIMIT: Duration = Duration::from_secs(45);
/// Entries kept per map before old ones are swept.
const MAX_TRACKED: usize = 100_000;
/// How long a credential that authenticated counts as known-good (exempt from its address's
/// failure budget). Only a successful authentication makes an entry, so guesses cannot fill it.
const KNOWN_GOOD_FOR: chrono::TimeDelta = chrono::TimeDelta::hours(24);

fn window_length() -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(WINDOW).unwrap_or_default()
}

#[derive(Default)]
struct Window {
    start: Option<DateTime<Utc>>,
    count: u32,
}

impl Window {
    /// Counts one event at `now` and returns (count in window, window end).
    fn hit(&mut self, now: DateTime<Utc>) -> (u32, DateTime<Utc>) {
        match self.start {
            Some(start) if now < start + window_length() => {
                self.count = self.count.saturating_add(1);
            }
            _ => {
                self.start = Some(now);
                self.count = 1;
            }
        }
        (self.count, self.end(now))
    }

    fn current(&self, now: DateTime<Utc>) -> u32 {
        match self.start {
            Some(start) if now < start + window_length() => self.count,
            _ => 0,
        }
    }

    fn end(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.start.unwrap_or(now) + window_length()
    }
}

#[derive(Default)]
struct Counters {
    /// Requests per principal.
    requests: HashMap<String, Window>,
    /// Refusals per credential id.
    credential_failures: HashMap<String, Window>,
    /// Refusals per client address.
    address_failures: HashMap<IpAddr, Window>,
    /// Credential ids that authenticated, and when last.
    known_good: HashMap<String, DateTime<Utc>>,
}

impl Counters {
    fn sweep(&mut self, now: DateTime<Utc>) {
        if self.requests.len() > MAX_TRACKED {
            self.requests.retain(|_, w| w.current(now) > 0);
        }
        if self.credential_failures.len() > MAX_TRACKED {
            self.credential_failures.retain(|_, w| w.current(now) > 0);
        }
        if self.address_failures.len() > MAX_TRACKED {
            self.address_failures.retain(|_, w| w.current(now) > 0);
        }
        if self.known_good.len() > MAX_TRACKED {
            self.known_good.retain(|_, at| now - *at < KNOWN_GOOD_FOR);
        }
    }

    fn is_known_good(&self, credential: &str, now: DateTime<Utc>) -> bool {
        self.known_good
            .get(credential)
            .is_some_and(|at| now - *at < KNOWN_GOOD_FOR)
    }
}

/// The limiter's state, shared by all requests.
pub struct Limiter {
    limits: RateLimits,
    state: Mutex<Counters>,
}

impl Limiter {
    /// A limiter with `limits`.
    pub fn new(limits: RateLimits) -> Arc<Limiter> {
        Arc::new(Limiter {
            limits,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, Counters> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// 429 if `credential` is over its failure budget.
    fn check_credential(&self, credential: &str, now: DateTime<Utc>) -> Result<(), Box<Response>> {
        let state = self.state();
        match state.credential_failures.get(credential) {
            Some(window) if window.current(now) >= self.limits.auth_failures => {
                Err(Box::new(too_many(
                    self.limits.auth_failures,
                    window.current(now),
                    window.end(now),
                    now,
                    "too many refused attempts with this credential; check that it is current (a removed host must be enrolled again)",
                )))
            }
            _ => Ok(()),
        }
    }
}

/// The id of a presented credential: a prefix of its SHA-256 (never the secret itself).
fn credential_id(secret: &str) -> String {
    let mut hash = crate::secret::hash_token(secret);
    hash.truncate(24);
    hash
}

/// What the limiter knows about one request, shared with the extractors that authenticate it:
/// which credential it presented (the `Authorization` header, or a token in the body — see
/// [`AuthAttempt::present`]) and whether that credential was accepted. Extracting it outside
/// the limiter's middleware gives one that records nothing.
#[derive(Clone)]
pub struct AuthAttempt(Option<Arc<Attempt>>);

struct Attempt {
    limiter: Arc<Limiter>,
    credential: Mutex<Option<String>>,
    accepted: std::sync::atomic::AtomicBool,
    refused: std::sync::atomic::AtomicBool,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for AuthAttempt {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<AuthAttempt>()
            .cloned()
            .unwrap_or(AuthAttempt(None)))
    }
}

impl AuthAttempt {
    /// Records that the request presents `secret` (e.g. an enrollment token in the body), so a
    /// refusal is charged to it; `429` if it is already over its failure budget.
    pub fn present(&self, secret: &str) -> Result<(), ApiError> {
        let Some(attempt) = &self.0 else {
            return Ok(());
        };
        let id = credential_id(secret);
        attempt
            .limiter
            .check_credential(&id, Utc::now())
            .map_err(|_| {
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_requests",
                    "too many refused attempts with this token; create a new one with `latchctl enroll-token create`",
                )
            })?;
        *attempt.credential.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        Ok(())
    }

    /// Records that the presented credential was accepted.
    pub fn accepted(&self) {
        if let Some(attempt) = &self.0 {
            attempt
                .accepted
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Records that the presented credential was refused, for answers that are not `401` (the
    /// console sends a browser with an unknown session cookie to its sign-in page).
    pub fn refused(&self) {
        if let Some(attempt) = &self.0 {
            attempt
                .refused
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn was_refused(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|attempt| attempt.refused.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn was_accepted(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|attempt| attempt.accepted.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn credential(&self) -> Option<String> {
        self.0.as_ref().and_then(|attempt| {
            attempt
                .credential
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }
}

/// Marks the credential of the request whose extensions are `extensions` as accepted (called by
/// the extractors that authenticate; a no-op outside the limiter).
pub fn credential_accepted(extensions: &axum::http::Extensions) {
    if let Some(attempt) = extensions.get::<AuthAttempt>() {
        attempt.accepted();
    }
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy. An unreadable entry ends the walk
/// at the last address the trusted hops vouched for.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    // Several header lines are one list, in order; walk it from the right (the nearest hop).
    for line in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(line) = line.to_str() else {
            return client;
        };
        for hop in line.rsplit(',') {
            let Some(ip) = parse_hop(hop.trim()) else {
                return client;
            };
            client = ip;
            if !is_trusted(&ip) {
                return ip;
            }
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, optionally with a port (`192.0.2.1:443`,
/// `[2001:db8::1]:443`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse().ok())
        })
        .map(|ip: IpAddr| ip.to_canonical())
}

/// The key a client address is counted under: the address, or its /64 for IPv6.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(Ipv6Addr::from(segments))
        }
    }
}

fn set_headers(
    headers: &mut HeaderMap,
    limit: u32,
    used: u32,
    reset_at: DateTime<Utc>,
    now: DateTime<Utc>,
) {
    let reset = (reset_at - now).num_seconds().max(0);
    let pairs = [
        ("x-ratelimit-limit", limit.to_string()),
        (
            "x-ratelimit-remaining",
            limit.saturating_sub(used).to_string(),
        ),
        ("x-ratelimit-reset", reset.to_string()),
        (
            "x-ratelimit-retry-at",
            reset_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

fn too_many(
    limit: u32,
    used: u32,
    reset_at: DateTime<Utc>,
    now: DateTime<Utc>,
    what: &str,
) -> Response {
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        format!(
            "{what}; retry after {}",
            reset_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    )
    .into_response();
    set_headers(response.headers_mut(), limit, used, reset_at, now);
    if let Ok(value) = HeaderValue::from_str(&(reset_at - now).num_seconds().max(1).to_string()) {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, value);
    }
    response
}

/// The request's client address: the peer, or the address a trusted proxy forwarded for.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub std::net::IpAddr);

/// The middleware.
pub async fn limit(
    State(limiter): State<Arc<Limiter>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let now = Utc::now();
    let limits = &limiter.limits;
    let client = client_address(peer.ip(), request.headers(), &limits.trusted_proxies);
    let address = address_key(client);
    let credential = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|value| {
            let value = String::from_utf8_lossy(value.as_bytes());
            credential_id(value.strip_prefix("Bearer ").unwrap_or(&value))
        });
    if let Some(id) = &credential
        && let Err(response) = limiter.check_credential(id, now)
    {
        return *response;
    }
    let (used, reset_at) = {
        let mut state = limiter.state();
        state.sweep(now);
        if let Some(window) = state.address_failures.get(&address)
            && window.current(now) >= limits.address_auth_failures
            && !credential
                .as_ref()
                .is_some_and(|id| state.is_known_good(id, now))
        {
            return too_many(
                limits.address_auth_failures,
                window.current(now),
                window.end(now),
                now,
                "too many refused credentials from this address",
            );
        }
        let principal = match &credential {
            Some(id) => format!("credential:{id}"),
            None => format!("address:{client}"),
        };
        state.requests.entry(principal).or_default().hit(now)
    };
    if used > limits.per_principal {
        return too_many(
            limits.per_principal,
            used,
            reset_at,
            now,
            "rate limit reached",
        );
    }
    let attempt = AuthAttempt(Some(Arc::new(Attempt {
        limiter: limiter.clone(),
        credential: Mutex::new(credential),
        accepted: std::sync::atomic::AtomicBool::new(false),
        refused: std::sync::atomic::AtomicBool::new(false),
    })));
    request.extensions_mut().insert(attempt.clone());
    request.extensions_mut().insert(ClientAddress(client));
    let mut response = tokio::time::timeout(REQUEST_TIME_LIMIT, next.run(request))
        .await
        .unwrap_or_else(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_offline",
                "the request took too long and was stopped; try again",
            )
            .into_response()
        });
    if let Some(id) = attempt.credential() {
        let mut state = limiter.state();
        if response.status() == StatusCode::UNAUTHORIZED || attempt.was_refused() {
            state.known_good.remove(&id);
            state.credential_failures.entry(id).or_default().hit(now);
            state.address_failures.entry(address).or_default().hit(now);
        } else if attempt.was_accepted() {
            state.known_good.insert(id, now);
        }
    }
    if !response.headers().contains_key("x-ratelimit-limit") {
        set_headers(
            response.headers_mut(),
            limits.per_principal,
            used,
            reset_at,
            now,
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_and_reset() {
        let mut window = Window::default();
        let now = Utc::now();
        assert_eq!(window.hit(now).0, 1);
        assert_eq!(window.hit(now).0, 2);
        assert_eq!(window.current(now), 2);
        let later = now + chrono::Duration::seconds(61);
        assert_eq!(window.current(later), 0);
        assert_eq!(window.hit(later).0, 1);
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies_and_read_from_the_right() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let proxies = vec![
            parse_trusted_proxy("10.0.0.0/8").unwrap(),
            parse_trusted_proxy("192.0.2.10").unwrap(),
        ];
        let spoof = forwarded(&["203.0.113.9"]);
        // From an untrusted peer the header is ignored.
        assert_eq!(
            client_address(ip("198.51.100.1"), &spoof, &proxies),
            ip("198.51.100.1")
        );
        assert_eq!(client_address(ip("10.1.2.3"), &spoof, &[]), ip("10.1.2.3"));
        // From a trusted one: the rightmost entry that is not a trusted proxy.
        assert_eq!(
            client_address(ip("10.1.2.3"), &spoof, &proxies),
            ip("203.0.113.9")
        );
        let chain = forwarded(&["1.1.1.1, 203.0.113.9", "192.0.2.10, 10.9.9.9"]);
        assert_eq!(
            client_address(ip("10.1.2.3"), &chain, &proxies),
            ip("203.0.113.9")
        );
        // Ports and brackets are accepted; garbage stops the walk at the last vouched hop.
        assert_eq!(
            client_address(ip("10.1.2.3"), &forwarded(&["[2001:db8::5]:443"]), &proxies),
            ip("2001:db8::5")
        );
        assert_eq!(
            client_address(
                ip("10.1.2.3"),
                &forwarded(&["203.0.113.9, unknown, 10.0.0.7"]),
                &proxies
            ),
            ip("10.0.0.7")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_address(ip("10.1.2.3"), &HeaderMap::new(), &proxies),
            ip("10.1.2.3")
        );
        // IPv4-mapped peers count as their IPv4 address.
        assert_eq!(
            client_address(ip("::ffff:10.1.2.3"), &spoof, &proxies),
            ip("203.0.113.9")
        );
        assert!(parse_trusted_proxy("10.0.0.0/33").is_err());
        assert!(parse_trusted_proxy("proxy.example").is_err());
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
    }
}
