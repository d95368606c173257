//! The control plane's TLS identity. Without configured certificate files, the first start
//! creates a private CA (`ca.crt`, `ca.key`, 0600) in the data directory ([`create_ca`], called
//! only by [`crate::datadir`] when the data directory is new); every start issues a fresh server
//! certificate from it for `localhost`, `127.0.0.1`, `::1` and the configured names ([`load`]).
//! Agents pin the CA by its SHA-256 fingerprint (`sha256:…`) at enrollment.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use ring::digest;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;

use crate::secret::hex;

pub use crate::files::{CA_CERT_FILE, CA_KEY_FILE};

/// Why the TLS identity could not be prepared.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("cannot create the TLS certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A stored file is not what it should be.
    #[error(
        "{0} is not a valid PEM key or certificate, or its pair is missing; restore ca.crt and ca.key from a backup of the data directory (agents pinned this CA)"
    )]
    Invalid(PathBuf),
    /// rustls refused the configuration.
    #[error("TLS configuration error: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server's TLS configuration and what agents pin.
pub struct TlsIdentity {
    /// rustls configuration for the listener.
    pub server_config: Arc<rustls::ServerConfig>,
    /// `sha256:<hex>` of the CA certificate (DER).
    pub ca_fingerprint: String,
    /// The CA certificate, PEM (for `latchctl --ca-file`).
    pub ca_pem: String,
}

/// `sha256:<hex>` of a certificate's DER bytes.
pub fn fingerprint(der: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(digest::digest(&digest::SHA256, der).as_ref())
    )
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "Latch control plane CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

fn write_private(path: &Path, content: &str, mode: u32) -> Result<(), TlsError> {
    crate::files::write_file(
        path,
        content.as_bytes(),
        mode,
        crate::files::Existing::Refuse,
    )
    .map_err(|source| TlsError::Io {
        action: "create",
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

fn ca_der(cert_path: &Path, pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|der: CertificateDer<'static>| der)
        .map_err(|_| TlsError::Invalid(cert_path.to_owned()))
}

/// Creates a new private CA in `dir` (`ca.key` 0600, then `ca.crt`); refuses to replace
/// existing files.
pub fn create_ca(dir: &Path) -> Result<(), TlsError> {
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    write_private(&dir.join(CA_KEY_FILE), &key.serialize_pem(), 0o600)?;
    write_private(&dir.join(CA_CERT_FILE), &cert.pem(), 0o644)
}

/// The fingerprint of the CA in `dir`, if `ca.crt` exists.
pub fn ca_fingerprint(dir: &Path) -> Result<Option<String>, TlsError> {
    let cert_path = dir.join(CA_CERT_FILE);
    read(&cert_path)?
        .map(|pem| ca_der(&cert_path, &pem).map(|der| fingerprint(&der)))
        .transpose()
}

/// Loads the CA in `dir` and issues a server certificate for the loopback names plus `names`
/// (host names or IP addresses). `Ok(None)` if neither CA file exists; an error if only one
/// does.
pub fn load(dir: &Path, names: &[String]) -> Result<Option<TlsIdentity>, TlsError> {
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    let (ca_pem, ca_key) = match (read(&cert_path)?, read(&key_path)?) {
        (Some(cert), Some(key)) => (
            cert,
            KeyPair::from_pem(&key).map_err(|_| TlsError::Invalid(key_path.clone()))?,
        ),
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(TlsError::Invalid(key_path)),
        (None, Some(_)) => return Err(TlsError::Invalid(cert_path)),
    };
    let ca_der = ca_der(&cert_path, &ca_pem)?;
    let issuer = Issuer::new(ca_params()?, ca_key);

    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Latch control plane");
    let mut sans = vec![
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress(
            "::1"
                .parse::<IpAddr>()
                .map_err(|_| rcgen::Error::InvalidIpAddressOctetLength(0))?,
        ),
    ];
    for name in names {
        sans.push(match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.clone().try_into()?),
        });
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = params.signed_by(&server_key, &issuer)?;

    let chain = vec![server_cert.der().clone(), ca_der.clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsIdentity {
        server_config: Arc::new(config),
        ca_fingerprint: fingerprint(&ca_der),
        ca_pem,
    }))
}

/// Uses the operator's certificate chain (PEM: server certificate first, issuing CA last) and
/// key. Agents pin the last certificate of the chain — the CA that issued the server's.
pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<TlsIdentity, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|_| TlsError::Invalid(cert_path.to_owned()))?
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Invalid(cert_path.to_owned()))?;
    let (Some(ca), true) = (chain.last().cloned(), chain.len() >= 2) else {
        return Err(TlsError::Invalid(cert_path.to_owned()));
    };
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|_| TlsError::Invalid(key_path.to_owned()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let ca_pem = read(cert_path)?
        .and_then(|text| {
            text.rfind("-----BEGIN CERTIFICATE-----")
                .map(|at| text[at..].to_owned())
        })
        .ok_or_else(|| TlsError::Invalid(cert_path.to_owned()))?;
    Ok(TlsIdentity {
        server_config: Arc::new(config),
        ca_fingerprint: fingerprint(&ca),
        ca_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_persists_and_its_fingerprint_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), &[]).unwrap().is_none());
        create_ca(dir.path()).unwrap();
        assert!(
            create_ca(dir.path()).is_err(),
            "an existing CA is never replaced"
        );
        let first = load(
            dir.path(),
            &["latch.example.com".into(), "192.0.2.201".into()],
        )
        .unwrap()
        .unwrap();
        let again = load(dir.path(), &[]).unwrap().unwrap();
        assert_eq!(
            ca_fingerprint(dir.path()).unwrap().as_deref(),
            Some(first.ca_fingerprint.as_str())
        );
        assert_eq!(first.ca_fingerprint, again.ca_fingerprint);
        assert!(
            first.ca_fingerprint.starts_with("sha256:") && first.ca_fingerprint.len() == 7 + 64
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(dir.path().join(CA_KEY_FILE))
                .unwrap()
                .mode()
                & 0o777,
            0o600
        );
        // The generated pair also works as operator-supplied files (server certificate + CA).
        let ca = std::fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap();
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(dir.path().join(CA_KEY_FILE)).unwrap())
                .unwrap();
        let issuer = Issuer::new(ca_params().unwrap(), ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["latch.example.com".to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let (chain_path, key_path) = (dir.path().join("chain.pem"), dir.path().join("server.key"));
        std::fs::write(&chain_path, format!("{}{ca}", server.pem())).unwrap();
        std::fs::write(&key_path, server_key.serialize_pem()).unwrap();
        let supplied = from_files(&chain_path, &key_path).unwrap();
        assert_eq!(
            supplied.ca_fingerprint, first.ca_fingerprint,
            "agents pin the issuing CA"
        );
        std::fs::write(&chain_path, server.pem()).unwrap();
        assert!(
            from_files(&chain_path, &key_path).is_err(),
            "a chain without its CA cannot be pinned"
        );
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        assert!(matches!(load(dir.path(), &[]), Err(TlsError::Invalid(_))));
    }
}
