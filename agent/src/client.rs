//! The agent's side of the HTTP API. The transport (reqwest with rustls and the ring provider)
//! is configured here and nowhere else.

use std::time::Duration;

use latch_common::api::{
    AgentJob, ApiErrorBody, EnrollRequest, EnrollResponse, ReportRequest, RevocationReport,
};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use thiserror::Error;

/// Why a call to the control plane failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server URL is not acceptable.
    #[error("server URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The credential or token was refused (401).
    #[error("the control plane refused this host's credentials: {0}")]
    Unauthorized(String),
    /// Any other error answer.
    #[error("the control plane answered HTTP {status}: {message} ({code})")]
    Api {
        /// Status.
        status: u16,
        /// Code.
        code: String,
        /// Message.
        message: String,
    },
    /// Network failure.
    #[error("cannot reach the control plane: {0}")]
    Transport(#[from] reqwest::Error),
}

impl ClientError {
    /// Whether retrying later can help (network trouble, server errors).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// One job of a poll answer: decoded, or refused at decoding with whatever identifies it.
#[derive(Debug)]
pub enum Delivered {
    /// A well-formed job.
    Job(AgentJob),
    /// A job that does not decode; reported failed if its id and lease can be read.
    Malformed {
        /// Its id, if readable.
        id: Option<String>,
        /// Its lease, if readable.
        lease: Option<String>,
        /// Why it does not decode.
        reason: String,
    },
}

/// Checks a control-plane URL: `https://…`, or `http://` to a loopback address only.
pub fn check_server_url(url: &str) -> Result<Url, ClientError> {
    let bad = |reason: &str| ClientError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    match parsed.scheme() {
        "https" => {}
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(name)) => name == "localhost",
                None => false,
            };
            if !loopback {
                return Err(bad(
                    "plain http:// is allowed only to a loopback address (127.0.0.1, ::1, localhost); use https://",
                ));
            }
        }
        _ => return Err(bad("must start with https:// (or http:// on loopback)")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.query().is_some() {
        return Err(bad("must not carry credentials or a query"));
    }
    Ok(parsed)
}

/// Time limit of a report: short, so a connection that died in a network partition is given up
/// quickly and the report retried on a fresh one.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Client of the agent endpoints (cheap to clone: clones share one connection pool).
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    server: Url,
    credential: Option<String>,
}

impl AgentClient {
    /// A client for `server`, authenticating with `credential` when given.
    pub fn new(server: &str, credential: Option<String>) -> Result<AgentClient, ClientError> {
        let server = check_server_url(server)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(
                latch_common::api::MAX_POLL_WAIT_SECS + 20,
            ))
            .user_agent(concat!("latch-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(AgentClient {
            http,
            server,
            credential,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.as_str().trim_end_matches('/'))
    }

    fn authed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credential {
            Some(credential) => request.bearer_auth(credential),
            None => request,
        }
    }

    async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
        let status = response.status();
        if status.is_success() {
            let bytes = response.bytes().await?;
            let bytes = if status == StatusCode::NO_CONTENT || bytes.is_empty() {
                &b"null"[..]
            } else {
                &bytes[..]
            };
            return serde_json::from_slice(bytes).map_err(|e| ClientError::Api {
                status: status.as_u16(),
                code: "invalid_response".into(),
                message: e.to_string(),
            });
        }
        let body: ApiErrorBody = response.json().await.unwrap_or(ApiErrorBody {
            code: "unknown_error".into(),
            message: "no error body".into(),
        });
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized(body.message));
        }
        Err(ClientError::Api {
            status: status.as_u16(),
            code: body.code,
            message: body.message,
        })
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<(), ClientError> {
        let response = self.http.get(self.url("/v1/health")).send().await?;
        Self::answer::<serde_json::Value>(response).await.map(drop)
    }

    /// `POST /v1/enroll`.
    pub async fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        let response = self
            .http
            .post(self.url("/v1/enroll"))
            .json(request)
            .send()
            .await?;
        Self::answer(response).await
    }

    /// `GET /v1/agent/jobs?wait=SECS`: the next job, if one arrives within `wait`.
    pub async fn poll(&self, wait: Duration) -> Result<Vec<Delivered>, ClientError> {
        let request = self
            .http
            .get(self.url("/v1/agent/jobs"))
            .query(&[("wait", wait.as_secs())]);
        let body: serde_json::Value = Self::answer(self.authed(request).send().await?).await?;
        let items = body
            .get("list")
            .and_then(|l| l.as_array())
            .cloned()
            .unwrap_or_default();
        Ok(items
            .into_iter()
            .map(|item| {
                let text = |key: &str| item.get(key).and_then(|v| v.as_str()).map(str::to_owned);
                let (id, lease) = (text("id"), text("lease"));
                match serde_json::from_value::<AgentJob>(item) {
                    Ok(job) => Delivered::Job(job),
                    Err(e) => Delivered::Malformed {
                        id,
                        lease,
                        reason: e.to_string(),
                    },
                }
            })
            .collect())
    }

    /// `POST /v1/agent/jobs/{id}/report`.
    pub async fn report(&self, job_id: &str, report: &ReportRequest) -> Result<(), ClientError> {
        let request = self
            .http
            .post(self.url(&format!("/v1/agent/jobs/{job_id}/report")))
            .timeout(REPORT_TIMEOUT)
            .json(report);
        let response = self.authed(request).send().await?;
        Self::answer::<serde_json::Value>(response).await.map(drop)
    }

    /// `POST /v1/agent/revocations`.
    pub async fn report_revocation(&self, report: &RevocationReport) -> Result<(), ClientError> {
        let request = self
            .http
            .post(self.url("/v1/agent/revocations"))
            .timeout(REPORT_TIMEOUT)
            .json(report);
        let response = self.authed(request).send().await?;
        Self::answer::<serde_json::Value>(response).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(check_server_url("http://127.0.0.1:8443").is_ok());
        assert!(check_server_url("http://localhost:8443").is_ok());
        assert!(check_server_url("http://[::1]:8443").is_ok());
        assert!(check_server_url("https://latch.example.com").is_ok());
        for url in [
            "http://192.0.2.1:8443",
            "ftp://127.0.0.1",
            "http://user:pw@127.0.0.1",
            "not a url",
        ] {
            assert!(check_server_url(url).is_err(), "{url}");
        }
    }
}
