//! Trusting exactly one CA: the control plane's, pinned by its SHA-256 fingerprint at
//! enrollment. The TLS verifier the agent's HTTP client uses ([`pinned_tls_config`]).

use crate::client::ClientError;

/// Checks a `sha256:<64 hex>` fingerprint; returns it in lowercase.
pub fn check_fingerprint(fingerprint: &str) -> Result<String, ClientError> {
    let bad = |reason| ClientError::BadFingerprint {
        fingerprint: fingerprint.to_owned(),
        reason,
    };
    let trimmed = fingerprint.trim();
    let Some(hex) = trimmed.strip_prefix("sha256:") else {
        return Err(bad("does not start with sha256:"));
    };
    if hex.contains('…') || hex.contains("...") {
        return Err(bad(
            "is the placeholder from the documentation, not a fingerprint",
        ));
    }
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
    } else {
        Err(bad("is not sha256: followed by 64 hex digits"))
    }
}

/// Accepts the server only if its chain holds the CA with the pinned fingerprint and the
/// server's certificate verifies against that CA (signature, validity, name) like any WebPKI
/// certificate — directly or through the intermediate CAs the server sent along. No other trust
/// anchor is consulted: the pinned CA is the only root.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
}

fn fingerprint_of(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex = hex::encode(digest.as_ref());
    format!("sha256:{hex}")
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let (pinned, others): (Vec<_>, Vec<_>) = intermediates
            .iter()
            .partition(|cert| fingerprint_of(cert) == self.fingerprint);
        let ca = pinned.first().copied().ok_or_else(|| {
            rustls::Error::General(format!(
                "the server's CA does not match the pinned fingerprint {}; refusing the connection (wrong server, or a man in the middle)",
                self.fingerprint
            ))
        })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        // The rest of the chain may hold intermediates between the server and the pinned CA;
        // they gain no trust of their own: a path must still end at the pinned CA.
        let others: Vec<_> = others.into_iter().cloned().collect();
        verifier.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client configuration that trusts only the CA with `fingerprint`.
pub fn pinned_tls_config(fingerprint: &str) -> Result<rustls::ClientConfig, ClientError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Transport(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(PinnedCa {
            fingerprint: fingerprint.to_owned(),
            provider,
        }))
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_placeholder_fingerprint_is_named_as_such_with_where_to_get_the_real_one() {
        for placeholder in ["sha256:…", "sha256:...", "sha256:<fingerprint>", "AB:CD"] {
            let error = check_fingerprint(placeholder).unwrap_err();
            assert!(
                matches!(error, ClientError::BadFingerprint { .. }),
                "{error:?}"
            );
            let message = error.to_string();
            assert!(
                message.contains(placeholder)
                    && message.contains("CA fingerprint")
                    && message.contains("latchctl enroll-token create")
                    && !message.contains("URL"),
                "{message}"
            );
        }
        assert!(
            check_fingerprint("sha256:…")
                .unwrap_err()
                .to_string()
                .contains("placeholder")
        );
    }

    /// A CA (root or intermediate) or a server certificate for `localhost`, signed by `issuer`
    /// (self-signed without).
    fn cert(
        name: &str,
        ca: bool,
        issuer: Option<&(rcgen::CertificateParams, rcgen::KeyPair)>,
    ) -> (
        rcgen::CertificateParams,
        rcgen::KeyPair,
        rustls::pki_types::CertificateDer<'static>,
    ) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = if ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params
        } else {
            let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            params
        };
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = match issuer {
            None => params.self_signed(&key).unwrap(),
            Some((issuer_params, issuer_key)) => params
                .signed_by(&key, &rcgen::Issuer::from_params(issuer_params, issuer_key))
                .unwrap(),
        };
        let der = cert.der().clone();
        (params, key, der)
    }

    fn verify(
        pinned: &rustls::pki_types::CertificateDer<'_>,
        leaf: &rustls::pki_types::CertificateDer<'_>,
        chain: &[&rustls::pki_types::CertificateDer<'static>],
    ) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier as _;
        let verifier = PinnedCa {
            fingerprint: fingerprint_of(pinned),
            provider: std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        };
        let chain: Vec<_> = chain.iter().map(|c| (*c).clone()).collect();
        verifier
            .verify_server_cert(
                leaf,
                &chain,
                &rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .map(drop)
    }

    #[test]
    fn finding_19_a_leaf_issued_through_an_intermediate_verifies_against_the_pinned_root() {
        let (root_params, root_key, root) = cert("Example root CA", true, None);
        let root_issuer = (root_params, root_key);
        let (inter_params, inter_key, intermediate) =
            cert("Example issuing CA", true, Some(&root_issuer));
        let inter_issuer = (inter_params, inter_key);
        let (_, _, leaf) = cert("latch.example", false, Some(&inter_issuer));

        // leaf → intermediate → pinned root, in either order after the leaf.
        verify(&root, &leaf, &[&intermediate, &root]).unwrap();
        verify(&root, &leaf, &[&root, &intermediate]).unwrap();
        // Pinning the intermediate itself works too: it is then the only trust anchor.
        verify(&intermediate, &leaf, &[&intermediate, &root]).unwrap();
        // Without the intermediate there is no path to the pinned root.
        assert!(verify(&root, &leaf, &[&root]).is_err());
        // Without the pinned root in the chain: refused, whatever else is there.
        let (_, _, other_root) = cert("Some other CA", true, None);
        let error = verify(&other_root, &leaf, &[&intermediate, &root]).unwrap_err();
        assert!(error.to_string().contains("pinned fingerprint"), "{error}");
    }

    #[test]
    fn finding_19_a_leaf_from_a_different_intermediate_is_refused_although_the_pinned_ca_is_present()
     {
        let (root_params, root_key, root) = cert("Example root CA", true, None);
        let root_issuer = (root_params, root_key);
        let (_, _, intermediate) = cert("Example issuing CA", true, Some(&root_issuer));
        // An attacker's CA with the very same name as the real intermediate, under another root,
        // and a server certificate for the same name.
        let (evil_root_params, evil_root_key, _) = cert("Example root CA", true, None);
        let evil_root_issuer = (evil_root_params, evil_root_key);
        let (evil_params, evil_key, evil_intermediate) =
            cert("Example issuing CA", true, Some(&evil_root_issuer));
        let evil_issuer = (evil_params, evil_key);
        let (_, _, evil_leaf) = cert("latch.example", false, Some(&evil_issuer));

        for chain in [
            vec![&intermediate, &root],
            vec![&evil_intermediate, &intermediate, &root],
            vec![&intermediate, &evil_intermediate, &root],
        ] {
            assert!(
                verify(&root, &evil_leaf, &chain).is_err(),
                "a leaf that does not chain to the pinned CA was accepted"
            );
        }
        // A self-signed leaf that merely carries the pinned CA along is refused as well.
        let (_, _, self_signed) = cert("latch.example", false, None);
        assert!(verify(&root, &self_signed, &[&root]).is_err());
    }
}
