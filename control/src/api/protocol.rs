//! The agent-protocol handshake on `/v1/enroll` and `/v1/agent/*`: every answer carries the
//! control plane's [`PROTOCOL_VERSION`] in the `latch-protocol` header, and a request from an
//! agent whose protocol this control plane cannot serve is refused with
//! `426 agent_protocol_unsupported`, naming both versions and what to upgrade. An agent that
//! sends no header speaks protocol 1 (release 0.1).

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use latch_common::protocol::{
    MIN_AGENT_PROTOCOL, PROTOCOL_HEADER, PROTOCOL_VERSION, parse_protocol,
};

use super::error::ApiError;

/// Whether `path` belongs to the agent protocol.
fn is_agent_path(path: &str) -> bool {
    path == "/v1/enroll" || path.starts_with("/v1/agent/")
}

/// Why an agent speaking `protocol` cannot be served, if it cannot.
pub fn refusal(protocol: u32) -> Option<String> {
    if protocol < MIN_AGENT_PROTOCOL {
        Some(format!(
            "this agent speaks protocol {protocol}, older than this control plane serves (protocols {MIN_AGENT_PROTOCOL} to {PROTOCOL_VERSION}): upgrade latch-agent on this host"
        ))
    } else if protocol > PROTOCOL_VERSION {
        Some(format!(
            "this agent speaks protocol {protocol}, newer than this control plane serves (protocols {MIN_AGENT_PROTOCOL} to {PROTOCOL_VERSION}): upgrade latch-control first, then the agents"
        ))
    } else {
        None
    }
}

/// The middleware: checks the agent's protocol on agent paths and answers with ours.
pub async fn handshake(request: Request, next: Next) -> Response {
    if !is_agent_path(request.uri().path()) {
        return next.run(request).await;
    }
    let header = request
        .headers()
        .get(PROTOCOL_HEADER)
        .map(HeaderValue::as_bytes);
    let refused = match parse_protocol(header) {
        Ok(protocol) => refusal(protocol).map(|message| {
            ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "agent_protocol_unsupported",
                message,
            )
        }),
        Err(message) => Some(ApiError::invalid(message)),
    };
    let mut response = match refused {
        Some(error) => error.into_response(),
        None => next.run(request).await,
    };
    response
        .headers_mut()
        .insert(PROTOCOL_HEADER, HeaderValue::from(PROTOCOL_VERSION));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_versions_outside_the_served_range_are_refused_and_the_fix_is_named() {
        assert_eq!(refusal(PROTOCOL_VERSION), None);
        assert_eq!(refusal(MIN_AGENT_PROTOCOL), None);
        let newer = refusal(PROTOCOL_VERSION + 1).unwrap_or_default();
        assert!(newer.contains("upgrade latch-control"), "{newer}");
        if MIN_AGENT_PROTOCOL > 1 {
            let older = refusal(MIN_AGENT_PROTOCOL - 1).unwrap_or_default();
            assert!(older.contains("upgrade latch-agent"), "{older}");
        }
    }

    #[test]
    fn agent_paths_are_enroll_and_the_agent_api() {
        assert!(is_agent_path("/v1/enroll"));
        assert!(is_agent_path("/v1/agent/jobs"));
        assert!(!is_agent_path("/v1/enroll-tokens"));
        assert!(!is_agent_path("/v1/agents"));
        assert!(!is_agent_path("/v1/jobs"));
    }
}
