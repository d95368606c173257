//! Job decoding and validation: whatever bytes arrive as a delivered job, an admin request or a
//! signed payload, decoding, signature checking and validation must return an error, never
//! panic, and a spec that validates must hold no name or key that could forge an account record.
#![no_main]

use latch_common::api::{AgentJob, CreateJobRequest, GrantLimits};
use latch_common::job::JobSpec;
use latch_common::signing::{SignedJob, check_deadline, verify};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [7; 32];

fn assert_safe(spec: &JobSpec) {
    let user = spec.user();
    assert!(!user.is_empty() && !user.starts_with('-'));
    assert!(
        !user.contains([':', '\n', '\r', '\0', '/', ',']),
        "validated name {user:?}"
    );
    if let Some(group) = spec.group() {
        assert!(!group.contains([':', '\n', '\0', ',']) && !group.starts_with('-'));
    }
    if let JobSpec::CreateAccount { ssh_keys, .. } = spec {
        for key in ssh_keys {
            assert!(!key.contains(['\n', '\r', '\0']));
        }
    }
    if let JobSpec::SetPassword { password_hash, .. } = spec {
        assert!(!password_hash.contains([':', '\n', '\0']));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(job) = serde_json::from_slice::<AgentJob>(data)
        && let Ok(signed) = verify(&job, &KEY, "host")
    {
        let _ = check_deadline(&signed, chrono::Utc::now());
    }
    if let Ok(signed) = serde_json::from_slice::<SignedJob>(data)
        && signed.spec.validate().is_ok()
    {
        assert_safe(&signed.spec);
    }
    if let Ok(spec) = serde_json::from_slice::<JobSpec>(data)
        && spec.validate().is_ok()
    {
        assert_safe(&spec);
        let _ = spec.redacted();
    }
    let limits = GrantLimits {
        max: chrono::Duration::hours(24),
        default: chrono::Duration::hours(1),
    };
    let now = chrono::Utc::now();
    if let Ok(request) = serde_json::from_slice::<CreateJobRequest>(data)
        && let Ok((spec, _window)) =
            request.into_spec(now, &limits, |_| Ok("$6$salt$hash".to_owned()))
    {
        assert_safe(&spec);
        // A grant window is always bounded unless explicitly permanent.
        if let Some(end) = spec.expires_at() {
            assert!(end > now && end <= now + limits.max + chrono::Duration::seconds(60));
        }
    }
});
