//! Signed jobs. The control plane signs a [`SignedJob`] with its Ed25519 key when the job is
//! created; the agent verifies it with the public key it pinned at enrollment, before it looks at
//! anything else, and refuses a job that is unsigned, signed by another key, for another host,
//! past its deadline, or whose delivery id does not match the payload.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::api::AgentJob;
use crate::job::{JobError, JobErrorCode, JobSpec};

/// Version of the payload format.
pub const PAYLOAD_VERSION: u32 = 1;

/// What the signature covers: the host, the job, its place in the host's queue, its deadline and
/// every parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedJob {
    /// Payload format version.
    pub v: u32,
    /// The only host that may apply it.
    pub host_id: String,
    /// Job id.
    pub job_id: String,
    /// Per-host sequence number.
    pub seq: i64,
    /// After this, the job must not be applied (grants only; revocations never expire).
    pub not_after: Option<DateTime<Utc>>,
    /// What to do.
    pub spec: JobSpec,
}

fn refuse(code: JobErrorCode, message: impl Into<String>) -> JobError {
    JobError::new(code, message)
}

pub use crate::names::decode_public_key;

/// Verifies a delivered job for `host_id` with the pinned `public_key`: signed, by that key, for
/// this job id and this host. Returns the payload it may act on (see also [`check_deadline`]).
pub fn verify(job: &AgentJob, public_key: &[u8], host_id: &str) -> Result<SignedJob, JobError> {
    if job.signature.is_empty() {
        return Err(refuse(
            JobErrorCode::UnsignedJob,
            "the job carries no signature; only jobs signed by the control plane's key are applied",
        ));
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(&job.signature)
        .map_err(|_| {
            refuse(
                JobErrorCode::BadSignature,
                "the job's signature is not valid base64",
            )
        })?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(job.payload.as_bytes(), &signature)
        .map_err(|_| {
            refuse(
                JobErrorCode::BadSignature,
                "the job's signature does not verify with the control plane key pinned at enrollment (forged or tampered)",
            )
        })?;
    let signed: SignedJob = serde_json::from_str(&job.payload).map_err(|e| {
        refuse(
            JobErrorCode::InvalidJob,
            format!("the signed payload does not decode: {e}"),
        )
    })?;
    if signed.v != PAYLOAD_VERSION {
        return Err(refuse(
            JobErrorCode::InvalidJob,
            format!("unknown payload version {}", signed.v),
        ));
    }
    if signed.job_id != job.id {
        return Err(refuse(
            JobErrorCode::BadSignature,
            "the delivery's job id is not the signed one",
        ));
    }
    if signed.host_id != host_id {
        return Err(refuse(
            JobErrorCode::WrongHost,
            format!(
                "the job is signed for host {}, not this host ({host_id})",
                signed.host_id
            ),
        ));
    }
    Ok(signed)
}

/// Refuses a verified job past its `not_after` deadline (checked after replay detection, so a
/// replayed old job is reported as a replay).
pub fn check_deadline(signed: &SignedJob, now: DateTime<Utc>) -> Result<(), JobError> {
    match signed.not_after {
        Some(deadline) if now > deadline => Err(refuse(
            JobErrorCode::JobExpired,
            format!(
                "the job arrived after its deadline ({}); queue it again",
                deadline.to_rfc3339()
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn job(key: &Ed25519KeyPair, payload: &SignedJob) -> AgentJob {
        let payload = serde_json::to_string(payload).unwrap();
        let signature =
            base64::engine::general_purpose::STANDARD.encode(key.sign(payload.as_bytes()).as_ref());
        AgentJob {
            id: "j1".into(),
            lease: "l".into(),
            attempt: 1,
            payload,
            signature,
        }
    }

    fn payload() -> SignedJob {
        SignedJob {
            v: 1,
            host_id: "h1".into(),
            job_id: "j1".into(),
            seq: 3,
            not_after: None,
            spec: JobSpec::DeleteAccount {
                user: "alice".into(),
            },
        }
    }

    fn code(result: Result<SignedJob, JobError>) -> JobErrorCode {
        result.unwrap_err().code
    }

    #[test]
    fn accepts_a_job_signed_for_this_host() {
        let key = key();
        let signed = verify(&job(&key, &payload()), key.public_key().as_ref(), "h1").unwrap();
        assert_eq!(signed, payload());
    }

    #[test]
    fn refuses_forgeries() {
        let key = key();
        let public = key.public_key().as_ref().to_vec();
        let now = Utc::now();
        let mut unsigned = job(&key, &payload());
        unsigned.signature.clear();
        assert_eq!(
            code(verify(&unsigned, &public, "h1")),
            JobErrorCode::UnsignedJob
        );
        let other_key = self::key();
        assert_eq!(
            code(verify(&job(&other_key, &payload()), &public, "h1")),
            JobErrorCode::BadSignature
        );
        let mut tampered = job(&key, &payload());
        tampered.payload = tampered.payload.replace("alice", "bob");
        assert_eq!(
            code(verify(&tampered, &public, "h1")),
            JobErrorCode::BadSignature
        );
        let mut renamed = job(&key, &payload());
        renamed.id = "j2".into();
        assert_eq!(
            code(verify(&renamed, &public, "h1")),
            JobErrorCode::BadSignature
        );
        assert_eq!(
            code(verify(&job(&key, &payload()), &public, "h2")),
            JobErrorCode::WrongHost
        );
        let late = SignedJob {
            not_after: Some(now - chrono::Duration::seconds(1)),
            ..payload()
        };
        assert_eq!(
            check_deadline(&late, now).unwrap_err().code,
            JobErrorCode::JobExpired
        );
        assert_eq!(check_deadline(&payload(), now), Ok(()));
    }
}
