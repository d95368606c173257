//! The agent's side of the HTTP API. The transport (reqwest with rustls and the ring provider)
//! is configured here and nowhere else.

use std::time::Duration;

use latch_common::api::{
    AgentJob, ApiErrorBody, EnrollRequest, EnrollResponse, ReportRequest, RevocationReport,
};
use latch_common::protocol::{
    MIN_CONTROL_PROTOCOL, PROTOCOL_HEADER, PROTOCOL_VERSION, parse_protocol,
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
    /// The pinned CA fingerprint is not one (e.g. the `sha256:…` placeholder of the README).
    #[error(
        "the CA fingerprint {fingerprint:?} {reason}; copy the real one (sha256: followed by 64 hex digits) from the enroll command `latchctl enroll-token create` prints, or from the `CA fingerprint:` line `latch-control serve` prints at start"
    )]
    BadFingerprint {
        /// What was given.
        fingerprint: String,
        /// What is wrong with it.
        reason: &'static str,
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
    /// Network or TLS failure (the message includes every cause, e.g. a fingerprint mismatch).
    #[error("cannot reach the control plane: {0}")]
    Transport(String),
    /// The agent and the control plane speak agent-protocol versions that do not work together
    /// (either side refused); the message names both versions and what to upgrade.
    #[error("{0}")]
    Protocol(String),
}

impl From<reqwest::Error> for ClientError {
    fn from(error: reqwest::Error) -> Self {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        ClientError::Transport(message)
    }
}

/// Checks the control plane's protocol header (none: protocol 1, release 0.1): an older
/// protocol than this agent works with is refused before any job from it is applied.
fn check_control_protocol(
    header: Option<&reqwest::header::HeaderValue>,
) -> Result<(), ClientError> {
    let protocol = parse_protocol(header.map(reqwest::header::HeaderValue::as_bytes))
        .map_err(|reason| ClientError::Protocol(format!("the control plane's answer: {reason}")))?;
    if protocol < MIN_CONTROL_PROTOCOL {
        return Err(ClientError::Protocol(format!(
            "the control plane speaks agent protocol {protocol}, older than this agent (latch-agent {}) works with (protocols {MIN_CONTROL_PROTOCOL} to {PROTOCOL_VERSION}): upgrade latch-control, or install an older latch-agent",
            env!("CARGO_PKG_VERSION")
        )));
    }
    Ok(())
}

pub use crate::pinning::check_fingerprint;

/// How the agent reaches the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS, trusting only the CA whose SHA-256 fingerprint (`sha256:…`) was pinned.
    Pinned(String),
    /// Plain HTTP to a loopback address (development only, `--insecure-http`).
    InsecureHttp,
}

impl ClientError {
    /// Whether retrying later can help (network trouble, server errors, and a protocol
    /// mismatch, which ends when one side is upgraded: nothing is dropped meanwhile).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport(_) | ClientError::Protocol(_) => true,
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

/// Checks a control-plane URL against the transport: `https://…` with a pinned CA, or
/// `http://` to a loopback address with `--insecure-http` only.
pub fn check_server_url(url: &str, transport: &Transport) -> Result<Url, ClientError> {
    let bad = |reason: &str| ClientError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    match (parsed.scheme(), transport) {
        ("https", Transport::Pinned(_)) => {}
        ("https", Transport::InsecureHttp) => {
            return Err(bad(
                "--insecure-http is for http:// URLs; for https:// give --ca-fingerprint",
            ));
        }
        ("http", Transport::Pinned(_)) => {
            return Err(bad(
                "plain http:// is refused; use https:// (or, for development on loopback, --insecure-http)",
            ));
        }
        ("http", Transport::InsecureHttp) => {
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

/// The control-plane URL a running agent uses, as recorded for `latch-agent status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerInUse {
    /// The URL.
    pub server: String,
    /// Since when.
    pub since: chrono::DateTime<chrono::Utc>,
}

/// Client of the agent endpoints (cheap to clone: clones share one connection pool and the
/// choice of server).
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    /// The control plane's URLs (replicas): the one in use, then the next on failure.
    servers: std::sync::Arc<[Url]>,
    /// Index of the URL in use.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Where to record the URL in use when it changes (`latch-agent status` reads it).
    record: Option<std::path::PathBuf>,
    credential: Option<String>,
}

impl AgentClient {
    /// A client for `server` over `transport`, authenticating with `credential` when given.
    pub fn new(
        server: &str,
        transport: &Transport,
        credential: Option<String>,
    ) -> Result<AgentClient, ClientError> {
        Self::with_servers(&[server], transport, credential)
    }

    /// A client for the replicas `servers` (at least one; duplicates dropped), starting with
    /// the first. A request that cannot reach its server or gets a 5xx answer moves the client
    /// to the next URL (round robin) for the next request; callers retry with their backoff.
    pub fn with_servers(
        servers: &[&str],
        transport: &Transport,
        credential: Option<String>,
    ) -> Result<AgentClient, ClientError> {
        let mut checked: Vec<Url> = Vec::new();
        for server in servers {
            let url = check_server_url(server, transport)?;
            if !checked.contains(&url) {
                checked.push(url);
            }
        }
        if checked.is_empty() {
            return Err(ClientError::BadUrl {
                url: String::new(),
                reason: "no control-plane URL given".into(),
            });
        }
        let mut builder = reqwest::Client::builder();
        if let Transport::Pinned(fingerprint) = transport {
            builder = builder.tls_backend_preconfigured(crate::pinning::pinned_tls_config(
                &check_fingerprint(fingerprint)?,
            )?);
        }
        let http = builder
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(
                latch_common::api::MAX_POLL_WAIT_SECS + 20,
            ))
            .user_agent(concat!("latch-agent/", env!("CARGO_PKG_VERSION")))
            .default_headers(reqwest::header::HeaderMap::from_iter([(
                reqwest::header::HeaderName::from_static(PROTOCOL_HEADER),
                reqwest::header::HeaderValue::from(PROTOCOL_VERSION),
            )]))
            .build()?;
        Ok(AgentClient {
            http,
            servers: checked.into(),
            current: std::sync::Arc::default(),
            record: None,
            credential,
        })
    }

    /// Records the URL in use in `path` now and whenever it changes.
    pub fn recording_in(mut self, path: std::path::PathBuf) -> Self {
        self.record = Some(path);
        self.record_in_use();
        self
    }

    fn record_in_use(&self) {
        if let Some(path) = &self.record {
            let in_use = ServerInUse {
                server: self.server().to_owned(),
                since: chrono::Utc::now(),
            };
            if let Err(error) = crate::state::write_json_file(path, &in_use) {
                tracing::warn!(%error, "cannot record the control-plane URL in use");
            }
        }
    }

    /// The URL in use.
    pub fn server(&self) -> &str {
        let index = self.current.load(std::sync::atomic::Ordering::Acquire);
        self.servers[index % self.servers.len()]
            .as_str()
            .trim_end_matches('/')
    }

    /// Sends the request `build` makes for `path` on the server in use and reads the answer;
    /// moves to the next server when that one failed.
    async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        build: impl FnOnce(String) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let used = self.server().to_owned();
        let result = async { Self::answer(build(format!("{used}{path}")).send().await?).await };
        self.fail_over(&used, result.await)
    }

    /// Moves to the next URL when `result` says the server in use failed (unreachable, 5xx).
    fn fail_over<T>(&self, used: &str, result: Result<T, ClientError>) -> Result<T, ClientError> {
        let down = match &result {
            Err(ClientError::Transport(_)) => true,
            Err(ClientError::Api { status, .. }) => *status >= 500,
            _ => false,
        };
        if down && self.servers.len() > 1 {
            let index = self.current.load(std::sync::atomic::Ordering::Acquire);
            // Only the first of several requests failing on the same server moves on.
            if self.servers[index % self.servers.len()]
                .as_str()
                .trim_end_matches('/')
                == used
                && self
                    .current
                    .compare_exchange(
                        index,
                        (index + 1) % self.servers.len(),
                        std::sync::atomic::Ordering::AcqRel,
                        std::sync::atomic::Ordering::Acquire,
                    )
                    .is_ok()
            {
                tracing::warn!(
                    failed = used,
                    next = self.server(),
                    "the control-plane replica failed; moving to the next URL"
                );
                self.record_in_use();
            }
        }
        result
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
            // Only the control plane's own answers are checked: a proxy's error page or the
            // rate limiter's 429 carries no header and is handled by its status.
            check_control_protocol(response.headers().get(PROTOCOL_HEADER))?;
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
        if status == StatusCode::UPGRADE_REQUIRED && body.code == "agent_protocol_unsupported" {
            return Err(ClientError::Protocol(format!(
                "the control plane refuses this agent (latch-agent {}, protocol {PROTOCOL_VERSION}): {}",
                env!("CARGO_PKG_VERSION"),
                body.message
            )));
        }
        Err(ClientError::Api {
            status: status.as_u16(),
            code: body.code,
            message: body.message,
        })
    }

    /// `POST /v1/enroll`.
    pub async fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.call("/v1/enroll", |url| self.http.post(url).json(request))
            .await
    }

    /// `GET /v1/agent/jobs?wait=SECS`: the next job, if one arrives within `wait`.
    /// `applied`: the highest job sequence applied here, when the control plane should check its
    /// own sequence is above it.
    pub async fn poll(
        &self,
        wait: Duration,
        applied: Option<i64>,
    ) -> Result<Vec<Delivered>, ClientError> {
        let body: serde_json::Value = self
            .call("/v1/agent/jobs", |url| {
                let mut request = self.http.get(url).query(&[("wait", wait.as_secs())]);
                if let Some(applied) = applied {
                    request = request.query(&[("applied", applied)]);
                }
                self.authed(request)
            })
            .await?;
        Ok(Self::delivered(&body))
    }

    /// The jobs in a `{"list": [...]}` answer (none for any other body, e.g. a 204's).
    fn delivered(body: &serde_json::Value) -> Vec<Delivered> {
        let items = body
            .get("list")
            .and_then(|l| l.as_array())
            .cloned()
            .unwrap_or_default();
        items
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
            .collect()
    }

    /// `POST /v1/agent/jobs/{id}/report`; with `next`, asks for the host's next job in the
    /// answer (`?next=true`) and returns it — none from a server that answers 204.
    pub async fn report(
        &self,
        job_id: &str,
        report: &ReportRequest,
        next: bool,
    ) -> Result<Vec<Delivered>, ClientError> {
        let body: serde_json::Value = self
            .call(&format!("/v1/agent/jobs/{job_id}/report"), |url| {
                let mut request = self.http.post(url).timeout(REPORT_TIMEOUT).json(report);
                if next {
                    request = request.query(&[("next", "true")]);
                }
                self.authed(request)
            })
            .await?;
        Ok(Self::delivered(&body))
    }

    /// `GET /v1/agent/self`: whether the credential is accepted (no side effect).
    pub async fn check_credential(&self) -> Result<(), ClientError> {
        self.call::<serde_json::Value>("/v1/agent/self", |url| self.authed(self.http.get(url)))
            .await
            .map(drop)
    }

    /// `POST /v1/agent/credential`: switch this host to `new_credential`.
    pub async fn rotate_credential(&self, new_credential: &str) -> Result<(), ClientError> {
        let body = latch_common::api::RotateCredentialRequest {
            new_credential: new_credential.to_owned(),
        };
        self.call::<serde_json::Value>("/v1/agent/credential", |url| {
            self.authed(self.http.post(url).timeout(REPORT_TIMEOUT).json(&body))
        })
        .await
        .map(drop)
    }

    /// `POST /v1/agent/revocations`.
    pub async fn report_revocation(&self, report: &RevocationReport) -> Result<(), ClientError> {
        self.call::<serde_json::Value>("/v1/agent/revocations", |url| {
            self.authed(self.http.post(url).timeout(REPORT_TIMEOUT).json(report))
        })
        .await
        .map(drop)
    }
}

/// Test support: a one-request HTTP server standing in for the control plane.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod test_server {
    /// A one-request HTTP server on loopback answering `status` with `headers` (each line ending
    /// in CRLF) and `body`; the receiver gets the request's head.
    pub(crate) async fn answer_with(
        status: u16,
        headers: &'static str,
        body: &'static str,
    ) -> (String, tokio::sync::oneshot::Receiver<String>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (sender, receiver) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0_u8; 4096];
            let read = socket.read(&mut request).await.unwrap();
            let _ = sender.send(String::from_utf8_lossy(&request[..read]).into_owned());
            let reply = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}connection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(reply.as_bytes()).await.unwrap();
        });
        (url, receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::answer_with;
    use super::*;

    /// A one-request HTTP server on loopback answering `status` with an empty JSON object.
    async fn answer_once(status: u16) -> String {
        answer_with(status, "", "{}").await.0
    }

    fn client_for(url: &str) -> AgentClient {
        AgentClient::new(url, &Transport::InsecureHttp, Some("credential".into())).unwrap()
    }

    #[tokio::test]
    async fn every_request_names_the_agent_protocol() {
        let (url, request) = answer_with(200, "latch-protocol: 1\r\n", "{}").await;
        client_for(&url).check_credential().await.unwrap();
        let head = request.await.unwrap().to_ascii_lowercase();
        assert!(
            head.contains(&format!("\r\nlatch-protocol: {PROTOCOL_VERSION}\r\n")),
            "{head}"
        );
    }

    #[test]
    fn a_control_plane_too_old_for_this_agent_is_refused_with_what_to_upgrade() {
        use reqwest::header::HeaderValue;
        assert!(
            check_control_protocol(None).is_ok(),
            "no header: a 0.1 control plane"
        );
        assert!(check_control_protocol(Some(&HeaderValue::from(PROTOCOL_VERSION))).is_ok());
        assert!(check_control_protocol(Some(&HeaderValue::from(MIN_CONTROL_PROTOCOL))).is_ok());
        if MIN_CONTROL_PROTOCOL > 1 {
            let older = HeaderValue::from(MIN_CONTROL_PROTOCOL - 1);
            let Err(ClientError::Protocol(message)) = check_control_protocol(Some(&older)) else {
                panic!("an older control plane must be refused");
            };
            assert!(message.contains("upgrade latch-control"), "{message}");
        }
        for garbled in ["0", "two", ""] {
            assert!(matches!(
                check_control_protocol(Some(&HeaderValue::from_static(garbled))),
                Err(ClientError::Protocol(_))
            ));
        }
    }

    #[tokio::test]
    async fn no_job_is_taken_from_an_answer_with_an_unusable_protocol() {
        let (url, _) = answer_with(200, "latch-protocol: 0\r\n", r#"{"list": []}"#).await;
        assert!(matches!(
            client_for(&url).poll(Duration::ZERO, None).await,
            Err(ClientError::Protocol(_))
        ));
        // No header at all: a 0.1 control plane, protocol 1, served.
        let (url, _) = answer_with(200, "", "{}").await;
        client_for(&url).check_credential().await.unwrap();
    }

    #[tokio::test]
    async fn a_control_plane_refusing_this_agent_s_protocol_is_reported_as_such() {
        let (url, _) = answer_with(
            426,
            "latch-protocol: 9\r\n",
            r#"{"code": "agent_protocol_unsupported", "message": "this agent speaks protocol 1, older than this control plane serves (protocols 5 to 9): upgrade latch-agent on this host"}"#,
        )
        .await;
        let Err(error @ ClientError::Protocol(_)) = client_for(&url).check_credential().await
        else {
            panic!("426 agent_protocol_unsupported must be a protocol error");
        };
        assert!(
            error.is_transient(),
            "kept and retried until one side is upgraded, never dropped"
        );
        let text = error.to_string();
        assert!(
            text.contains("upgrade latch-agent") && text.contains("protocol 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_failed_replica_moves_the_client_to_the_next_url() {
        // Nothing listens on `down` (bound, then closed).
        let down = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let failing = answer_once(503).await;
        let up = answer_once(200).await;
        let client = AgentClient::with_servers(
            &[&down, &failing, &up, &down],
            &Transport::InsecureHttp,
            Some("credential".into()),
        )
        .unwrap();
        assert_eq!(client.server(), down);
        assert!(client.check_credential().await.is_err());
        assert_eq!(client.server(), failing, "unreachable: next URL");
        assert!(client.check_credential().await.is_err());
        assert_eq!(client.server(), up, "5xx: next URL");
        client.check_credential().await.unwrap();
        assert_eq!(client.server(), up, "a working replica is kept");
        // A clone shares the choice; the duplicate URL was dropped, so the next is the first.
        let clone = client.clone();
        assert_eq!(clone.server(), up);
    }

    #[tokio::test]
    async fn a_refusal_does_not_move_the_client() {
        let refusing = answer_once(401).await;
        let other = answer_once(200).await;
        let client = AgentClient::with_servers(
            &[&refusing, &other],
            &Transport::InsecureHttp,
            Some("credential".into()),
        )
        .unwrap();
        assert!(matches!(
            client.check_credential().await,
            Err(ClientError::Unauthorized(_))
        ));
        assert_eq!(client.server(), refusing);
    }

    #[test]
    fn transports_and_urls_must_agree() {
        let pinned = Transport::Pinned(format!("sha256:{}", "a".repeat(64)));
        assert!(check_server_url("https://latch.example.com", &pinned).is_ok());
        assert!(check_server_url("http://127.0.0.1:8443", &pinned).is_err());
        assert!(check_server_url("http://127.0.0.1:8443", &Transport::InsecureHttp).is_ok());
        assert!(check_server_url("http://[::1]:8443", &Transport::InsecureHttp).is_ok());
        assert!(check_server_url("https://127.0.0.1", &Transport::InsecureHttp).is_err());
        for url in [
            "http://192.0.2.1:8443",
            "ftp://127.0.0.1",
            "http://user:pw@127.0.0.1",
            "not a url",
        ] {
            assert!(
                check_server_url(url, &Transport::InsecureHttp).is_err(),
                "{url}"
            );
        }
        assert!(matches!(
            check_fingerprint("sha256:00"),
            Err(ClientError::BadFingerprint { .. })
        ));
        assert!(check_fingerprint(&format!("sha1:{}", "a".repeat(64))).is_err());
        assert_eq!(
            check_fingerprint(&format!("sha256:{}", "AB".repeat(32))).unwrap(),
            format!("sha256:{}", "ab".repeat(32))
        );
    }
}
