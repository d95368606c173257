//! Request limits (DESIGN.md §5): a fixed one-minute window per principal — the bearer token
//! (by hash) when one is sent, else the peer address — with `X-RateLimit-Limit`,
//! `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds) and `X-RateLimit-Retry-At` (RFC 3339)
//! on every response and `429 too_many_requests` past the limit. Refused credentials also count
//! against the peer address, which is throttled first, so guessing tokens is slowed to the
//! failure budget whatever tokens are tried.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::error::ApiError;

/// Limits per one-minute window.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// Requests per principal (admin token, host credential, or peer address).
    pub per_principal: u32,
    /// Refused credentials per peer address before it is throttled.
    pub auth_failures: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        // A host long-polls about twice a minute; an admin script waiting on jobs polls 10×/s.
        RateLimits {
            per_principal: 3000,
            auth_failures: 30,
        }
    }
}

const WINDOW: Duration = Duration::from_secs(60);
/// Longest a request may take (a long-poll waits at most 30 s).
pub const REQUEST_TIME_LIMIT: Duration = Duration::from_secs(45);
/// Windows kept before old entries are swept.
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
struct Window {
    start: Option<DateTime<Utc>>,
    count: u32,
}

impl Window {
    /// Counts one event at `now` and returns (count in window, window end).
    fn hit(&mut self, now: DateTime<Utc>) -> (u32, DateTime<Utc>) {
        let window = chrono::Duration::from_std(WINDOW).unwrap_or_default();
        match self.start {
            Some(start) if now < start + window => self.count += 1,
            _ => {
                self.start = Some(now);
                self.count = 1;
            }
        }
        (self.count, self.start.unwrap_or(now) + window)
    }

    fn current(&self, now: DateTime<Utc>) -> u32 {
        let window = chrono::Duration::from_std(WINDOW).unwrap_or_default();
        match self.start {
            Some(start) if now < start + window => self.count,
            _ => 0,
        }
    }
}

/// The limiter's state, shared by all requests.
pub struct Limiter {
    limits: RateLimits,
    principals: Mutex<HashMap<String, Window>>,
    failures: Mutex<HashMap<IpAddr, Window>>,
}

impl Limiter {
    /// A limiter with `limits`.
    pub fn new(limits: RateLimits) -> Arc<Limiter> {
        Arc::new(Limiter {
            limits,
            principals: Mutex::default(),
            failures: Mutex::default(),
        })
    }
}

fn principal(headers: &HeaderMap, peer: IpAddr) -> String {
    match headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        Some(value) => format!("bearer:{}", &crate::secret::hash_token(value)[..24]),
        None => format!("ip:{peer}"),
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

fn sweep<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Window>, now: DateTime<Utc>) {
    if map.len() > MAX_TRACKED {
        map.retain(|_, window| window.current(now) > 0);
    }
}

/// The middleware.
pub async fn limit(
    State(limiter): State<Arc<Limiter>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let now = Utc::now();
    let ip = peer.ip();
    let limits = limiter.limits;
    {
        let failures = limiter.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(window) = failures.get(&ip)
            && window.current(now) >= limits.auth_failures
        {
            let reset_at = window.start.unwrap_or(now)
                + chrono::Duration::from_std(WINDOW).unwrap_or_default();
            return too_many(
                limits.auth_failures,
                window.current(now),
                reset_at,
                now,
                "too many refused credentials from this address",
            );
        }
    }
    let key = principal(request.headers(), ip);
    let (used, reset_at) = {
        let mut principals = limiter.principals.lock().unwrap_or_else(|p| p.into_inner());
        sweep(&mut principals, now);
        principals.entry(key).or_default().hit(now)
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
    let Ok(mut response) = tokio::time::timeout(REQUEST_TIME_LIMIT, next.run(request)).await else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_offline",
            "the request took too long and was stopped; try again",
        )
        .into_response();
    };
    if response.status() == StatusCode::UNAUTHORIZED {
        let mut failures = limiter.failures.lock().unwrap_or_else(|p| p.into_inner());
        sweep(&mut failures, now);
        failures.entry(ip).or_default().hit(now);
    }
    set_headers(
        response.headers_mut(),
        limits.per_principal,
        used,
        reset_at,
        now,
    );
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
}
