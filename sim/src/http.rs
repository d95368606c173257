//! One HTTP/1.1 keep-alive connection per simulated agent (hyper's client connection over
//! tokio-rustls), trusting only the control plane's CA — as the real agent pins it.
//!
//! A [`Connection`] connects lazily and again after the server or the network closed it; the
//! caller decides whether a failed request is retried (a poll and a report may be; the real
//! agent retries both).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject as _;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why a request got no HTTP response.
#[derive(Debug, Error)]
pub enum HttpError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}; is the control plane running there?")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong CA, wrong name).
    #[error(
        "TLS handshake with {addr} failed: {source}; pass the control plane's CA with --ca-file"
    )]
    Tls {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed (connection closed, malformed response).
    #[error("HTTP exchange failed: {0}")]
    Exchange(#[from] hyper::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request could not be built (a header value the server name cannot carry).
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
}

impl HttpError {
    /// A short name for the error table.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Connect { .. } => "connect",
            HttpError::Tls { .. } => "tls",
            HttpError::Exchange(e) if e.is_closed() || e.is_incomplete_message() => "closed",
            HttpError::Exchange(_) => "http",
            HttpError::Timeout(_) => "timeout",
            HttpError::Request(_) => "request",
        }
    }
}

/// Why the control plane's address or CA cannot be used.
#[derive(Debug, Error)]
pub enum EndpointError {
    /// The URL does not parse or is not http(s)://host:port.
    #[error("{url:?} is not a usable server URL ({why}); use e.g. https://127.0.0.1:8443")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// The CA file could not be read or holds no certificate.
    #[error(
        "cannot read the CA certificate {path}: {why}; pass the server's ca.crt with --ca-file"
    )]
    Ca {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
}

/// A control-plane address with the TLS settings to reach it.
#[derive(Clone)]
pub struct Endpoint {
    /// As given (`https://127.0.0.1:8443`).
    pub url: String,
    addr: SocketAddr,
    authority: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// The TLS client configuration trusting only `ca_pem` (ring provider, HTTP/1.1 by ALPN).
pub fn tls_config(ca_pem: &[u8], path: &str) -> Result<Arc<rustls::ClientConfig>, EndpointError> {
    let ca_error = |why: String| EndpointError::Ca {
        path: path.to_owned(),
        why,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| ca_error(e.to_string()))?;
        roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_error("no PEM certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ca_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Endpoint {
    /// `url` (https:// needs `tls`; http:// is for a server run with --insecure-http).
    pub fn new(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Self, EndpointError> {
        let bad = |why: &str| EndpointError::Url {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let host = parsed.host_str().ok_or_else(|| bad("no host"))?.to_owned();
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| bad("no port"))?;
        let ip_text = host.trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr = ip_text
            .parse()
            .map_err(|_| bad("the simulator connects to an IP address, e.g. 127.0.0.1"))?;
        let addr = SocketAddr::new(ip, port);
        let tls = match (parsed.scheme(), tls) {
            ("https", Some(config)) => {
                let name = ServerName::try_from(ip_text.to_owned())
                    .map_err(|_| bad("the host is not a valid TLS server name"))?;
                Some((TlsConnector::from(config), name))
            }
            ("https", None) => return Err(bad("https:// needs the server's CA (--ca-file)")),
            ("http", _) => None,
            _ => return Err(bad("the scheme must be https or http")),
        };
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            addr,
            authority: format!("{host}:{port}"),
            tls,
        })
    }
}

/// An answer: status and body.
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The API error code of an error body (`{"code": …}`), or the status when the body is not
    /// one.
    pub fn error_code(&self) -> String {
        serde_json::from_slice::<latch_common::api::ApiErrorBody>(&self.body)
            .map(|b| b.code)
            .unwrap_or_else(|_| self.status.as_u16().to_string())
    }
}

/// One keep-alive connection to an endpoint, made when first needed and again after it closed.
pub struct Connection {
    endpoint: Endpoint,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Connections made so far (1 after the first request, more after reconnects).
    pub connects: u64,
}

impl Connection {
    /// A connection to `endpoint` (not yet connected).
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            sender: None,
            connects: 0,
        }
    }

    async fn connect(&mut self) -> Result<SendRequest<Full<Bytes>>, HttpError> {
        let addr = self.endpoint.addr;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| HttpError::Connect { addr, source })?;
        // Small requests and answers: send them at once.
        let _ = tcp.set_nodelay(true);
        self.connects += 1;
        let sender = match &self.endpoint.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| HttpError::Tls { addr, source })?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                sender
            }
            None => {
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(connection);
                sender
            }
        };
        Ok(sender)
    }

    /// Sends one request and reads the whole answer, within `timeout`. A connection that
    /// failed is dropped, so the next request connects again.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        json: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        let result = tokio::time::timeout(timeout, self.exchange(method, path, bearer, json)).await;
        let result = result.unwrap_or(Err(HttpError::Timeout(timeout)));
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        json: Option<Vec<u8>>,
    ) -> Result<Answer, HttpError> {
        let mut sender = match self.sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        sender.ready().await?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.endpoint.authority);
        if let Some(token) = bearer {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match json {
            Some(json) => {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(json))
            }
            None => Full::new(Bytes::new()),
        };
        let response = sender.send_request(request.body(body)?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        self.sender = Some(sender);
        Ok(Answer { status, body })
    }
}
