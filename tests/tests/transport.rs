//! The transport end to end: an operator's certificate chain with an intermediate CA, pinned by
//! its root (finding 19), the agent's error for a placeholder fingerprint, and plain-text logs
//! when they go to a file.

use latch_e2e::{ControlPlane, RealEtc, TestHost, e2e_enabled};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A CA certificate named `name`, signed by `issuer` (self-signed without).
fn ca(name: &str, issuer: Option<&Issuer<'_, KeyPair>>) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = match issuer {
        None => params.self_signed(&key),
        Some(issuer) => params.signed_by(&key, issuer),
    }
    .expect("CA certificate");
    (cert.pem(), Issuer::new(params, key))
}

/// A server certificate for 127.0.0.1 and localhost signed by `issuer`: (PEM, key PEM).
fn server_cert(issuer: &Issuer<'_, KeyPair>) -> (String, String) {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
        .distinguished_name
        .push(DnType::CommonName, "Latch control plane");
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("server certificate");
    (cert.pem(), key.serialize_pem())
}

/// Starts a control plane serving `chain` (PEM certificates, server first) with `key`.
fn serve_chain(dir: &std::path::Path, name: &str, chain: &[&str], key: &str) -> ControlPlane {
    let chain_file = dir.join(format!("{name}.chain.pem"));
    let key_file = dir.join(format!("{name}.key.pem"));
    std::fs::write(&chain_file, chain.concat()).expect("write chain");
    std::fs::write(&key_file, key).expect("write key");
    ControlPlane::start(&[
        "--tls-cert",
        chain_file.to_str().expect("path"),
        "--tls-key",
        key_file.to_str().expect("path"),
    ])
}

/// Finding 19: a server certificate issued by an intermediate CA, served as leaf →
/// intermediate → root, is accepted by an agent that pinned the root — enrollment and the job
/// traffic after it. A chain that carries the pinned root but whose server certificate comes
/// from another intermediate (of the same name) is refused.
#[test]
fn finding_19_an_operator_chain_with_an_intermediate_enrolls_and_a_foreign_leaf_is_refused() {
    if !e2e_enabled(
        "finding_19_an_operator_chain_with_an_intermediate_enrolls_and_a_foreign_leaf_is_refused",
    ) {
        return;
    }
    let real = RealEtc::snapshot();
    let dir = tempfile::tempdir().expect("tempdir");
    let (root_pem, root) = ca("Example Corp root CA", None);
    let (intermediate_pem, intermediate) = ca("Example Corp issuing CA", Some(&root));
    let (leaf_pem, leaf_key) = server_cert(&intermediate);
    // Someone else's CA with the same name as the real intermediate, and a certificate from it.
    let (_, other_root) = ca("Example Corp root CA", None);
    let (evil_intermediate_pem, evil_intermediate) =
        ca("Example Corp issuing CA", Some(&other_root));
    let (evil_leaf_pem, evil_key) = server_cert(&evil_intermediate);

    let host = TestHost::start("e2e-chain1");
    let evil = serve_chain(
        dir.path(),
        "evil",
        &[
            &evil_leaf_pem,
            &evil_intermediate_pem,
            &intermediate_pem,
            &root_pem,
        ],
        &evil_key,
    );
    let cp = serve_chain(
        dir.path(),
        "good",
        &[&leaf_pem, &intermediate_pem, &root_pem],
        &leaf_key,
    );
    // Both print the root as the fingerprint to pin.
    assert_eq!(evil.fingerprint, cp.fingerprint);
    // latchctl trusts the root too (the harness reads it from the data directory).
    std::fs::write(cp.ca_file(), &root_pem).expect("write the root for latchctl");

    let refused = host.enroll_via(&evil.url, &cp.fingerprint, "latch_enroll_unused");
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("invalid peer certificate")
            || refused.stderr.contains("UnknownIssuer")
            || refused.stderr.contains("BadSignature"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        host.exec(&["test", "-e", "/var/lib/latch/identity.json"])
            .code,
        1,
        "a refused enrollment wrote state"
    );

    let token = cp.enroll_token("10m", 1);
    host.enroll(&cp, &token)
        .ok("enroll through leaf → intermediate → pinned root");
    let _agent = host.start_agent();
    let id = cp.create_job(&[
        "--host",
        "e2e-chain1",
        "--kind",
        "create-account",
        "--user",
        "chain",
    ]);
    cp.expect_confirmed(&id);
    assert!(host.passwd_line("chain").is_some());

    real.assert_unchanged();
}

/// A fingerprint pasted from the README (`sha256:…`) is reported as a fingerprint problem, with
/// where to find the real one — not as a bad server URL.
#[test]
fn a_placeholder_fingerprint_says_where_to_find_the_real_one() {
    if !e2e_enabled("a_placeholder_fingerprint_says_where_to_find_the_real_one") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-fp1");
    let token = cp.enroll_token("10m", 1);
    let refused = host.enroll_via(&cp.url, "sha256:…", &token);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("sha256:…")
            && refused.stderr.contains("placeholder")
            && refused.stderr.contains("latchctl enroll-token create")
            && !refused.stderr.contains("server URL"),
        "{}",
        refused.stderr
    );
    host.enroll_via(&cp.url, &cp.fingerprint, &token)
        .ok("the real fingerprint works");
    real.assert_unchanged();
}

/// The server's and the agent's logs, written to files (not terminals), carry no ANSI colour
/// codes.
#[test]
fn logs_written_to_files_carry_no_colour_codes() {
    if !e2e_enabled("logs_written_to_files_carry_no_colour_codes") {
        return;
    }
    let real = RealEtc::snapshot();
    let cp = ControlPlane::start(&[]);
    let host = TestHost::start("e2e-log1");
    host.enroll_ok(&cp);
    let _agent = host.start_agent();
    let id = cp.create_job(&[
        "--host",
        "e2e-log1",
        "--kind",
        "create-account",
        "--user",
        "plain",
    ]);
    cp.expect_confirmed(&id);
    let server_log = cp.log();
    assert!(
        server_log.contains("INFO") || server_log.contains("DEBUG"),
        "{server_log}"
    );
    assert!(
        !server_log.contains('\u{1b}'),
        "ANSI escapes in the server log: {server_log:?}"
    );
    let agent_log = host.read("/var/log/latch-agent.log");
    assert!(!agent_log.is_empty());
    assert!(
        !agent_log.contains('\u{1b}'),
        "ANSI escapes in the agent log: {agent_log:?}"
    );
    real.assert_unchanged();
}
