//! The agent protocol's version handshake (`latch-protocol` header on `/v1/enroll` and
//! `/v1/agent/*`, both directions) and what the control plane records of a host's agent.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Header in which the agent and the control plane tell each other the version of the
/// agent protocol they speak (`/v1/enroll` and `/v1/agent/*`): a decimal number. A peer that
/// sends none speaks protocol 1 (release 0.1 sent no header).
pub const PROTOCOL_HEADER: &str = "latch-protocol";

/// The agent protocol this build speaks. Raise it when the agent API changes in a way an older
/// peer cannot serve, and say in [`MIN_AGENT_PROTOCOL`] / [`MIN_CONTROL_PROTOCOL`] which older
/// peers still work.
pub const PROTOCOL_VERSION: u32 = 1;

/// The oldest agent protocol the control plane still serves. Agents below it are refused with
/// `426 agent_protocol_unsupported` and told to upgrade.
pub const MIN_AGENT_PROTOCOL: u32 = 1;

/// The oldest control-plane protocol the agent still works with. The agent applies no job from
/// an older control plane and says so in its log and in `latch-agent status`.
pub const MIN_CONTROL_PROTOCOL: u32 = 1;

/// Reads a peer's protocol header: `None` (no header) is protocol 1; anything but a decimal
/// number from 1 to 65535 is refused with what was received.
pub fn parse_protocol(header: Option<&[u8]>) -> Result<u32, String> {
    let Some(raw) = header else { return Ok(1) };
    std::str::from_utf8(raw)
        .ok()
        .map(str::trim)
        .filter(|text| {
            !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|text| text.parse::<u32>().ok())
        .filter(|version| (1..=65_535).contains(version))
        .ok_or_else(|| {
            format!(
                "the {PROTOCOL_HEADER} header {:?} is not a protocol version (a number from 1)",
                String::from_utf8_lossy(&raw[..raw.len().min(32)])
            )
        })
}

/// Which agent a host runs, as its last poll said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentInfo {
    /// The agent's version (`latch-agent/VERSION` in its User-Agent), or `unknown`.
    pub version: String,
    /// The agent protocol it speaks (its `latch-protocol` header; none is 1).
    pub protocol: u32,
}

impl AgentInfo {
    /// The agent named by a request's User-Agent and protocol: the version after
    /// `latch-agent/` when it is a plain version (at most 32 of `0-9A-Za-z.+~-`), else
    /// `unknown` (a host's requests never put arbitrary text in the database).
    pub fn from_request(user_agent: Option<&str>, protocol: u32) -> AgentInfo {
        let version = user_agent
            .and_then(|agent| agent.strip_prefix("latch-agent/"))
            .filter(|version| {
                !version.is_empty()
                    && version.len() <= 32
                    && version
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+.~-".contains(&b))
            })
            .unwrap_or("unknown");
        AgentInfo {
            version: version.to_owned(),
            protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_agent_version_is_kept() {
        let info = AgentInfo::from_request(Some("latch-agent/0.2.0"), 1);
        assert_eq!((info.version.as_str(), info.protocol), ("0.2.0", 1));
        assert_eq!(
            AgentInfo::from_request(Some("latch-agent/1.0.0-rc.1+deb12"), 2).version,
            "1.0.0-rc.1+deb12"
        );
        for odd in [
            None,
            Some("curl/8.0"),
            Some("latch-agent/"),
            Some("latch-agent/1.0 <script>"),
            Some("latch-agent/1.0\u{202e}"),
            Some("latch-agent/0123456789012345678901234567890123"),
        ] {
            assert_eq!(
                AgentInfo::from_request(odd, 1).version,
                "unknown",
                "{odd:?}"
            );
        }
    }

    #[test]
    fn protocol_headers_are_numbers_and_a_missing_one_is_protocol_1() {
        assert_eq!(parse_protocol(None), Ok(1));
        assert_eq!(parse_protocol(Some(b"1")), Ok(1));
        assert_eq!(parse_protocol(Some(b" 7 ")), Ok(7));
        for bad in [
            &b""[..],
            b"0",
            b"-1",
            b"1.0",
            b"v1",
            b"999999",
            b"\xff",
            b"+2",
        ] {
            let error = parse_protocol(Some(bad)).unwrap_err();
            assert!(error.contains("latch-protocol header"), "{error}");
        }
    }
}
