//! Where and how the agent logs. Under systemd the log goes to the journal with structured
//! fields (`LATCH_JOB_ID`, `LATCH_HOST_ID`, `LATCH_KIND`, `LATCH_OUTCOME`, …: every field of an
//! event, upper-cased, prefixed with `LATCH_`), so `journalctl -u latch-agent
//! LATCH_JOB_ID=…` finds one job; `--log-format json` writes one JSON object per line to stderr
//! for log shippers; otherwise plain text to stderr. The filter is `RUST_LOG` when set, else
//! the configuration's `log_level`. Secrets are never logged (no event carries one).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The log's format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// The journal when systemd connected stderr to it (`JOURNAL_STREAM` is set), else text.
    Auto,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr (fields at the top level).
    Json,
    /// Native journald entries with structured fields.
    Journald,
}

impl LogFormat {
    /// Reads `auto`, `text`, `json` or `journald` (any case). Anything else is `auto` with the
    /// note to log: a mistyped log format must never keep the agent — the thing that revokes —
    /// from starting.
    pub fn parse_or_auto(text: &str) -> (LogFormat, Option<String>) {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => (LogFormat::Auto, None),
            "text" => (LogFormat::Text, None),
            "json" => (LogFormat::Json, None),
            "journald" => (LogFormat::Journald, None),
            _ => (
                LogFormat::Auto,
                Some(format!(
                    "unknown log format {:?} (use auto, text, json or journald); using auto",
                    text.chars().take(32).collect::<String>()
                )),
            ),
        }
    }
}

/// Prefix of the agent's own journal fields.
const JOURNAL_FIELD_PREFIX: &str = "LATCH";

/// The filter: `RUST_LOG` when set, not empty and valid, else `log_level`, else `info`.
fn filter(log_level: &str) -> EnvFilter {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|directive| !directive.trim().is_empty())
        .and_then(|directive| EnvFilter::try_new(directive).ok())
        .or_else(|| EnvFilter::try_new(log_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// Installs the global subscriber. `host_id` (when enrolled) is added to every journal entry
/// as `LATCH_HOST_ID`. Returns a note to log once logging works when the journal was asked
/// for but cannot be reached (the log then goes to stderr as text).
pub fn init(format: LogFormat, log_level: &str, host_id: Option<&str>) -> Option<String> {
    let wants_journal = match format {
        LogFormat::Journald => true,
        LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
        LogFormat::Text | LogFormat::Json => false,
    };
    let mut note = None;
    if wants_journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(Some(JOURNAL_FIELD_PREFIX.to_owned()))
                    .with_syslog_identifier("latch-agent".to_owned())
                    .with_custom_fields(
                        host_id
                            .map(|id| (format!("{JOURNAL_FIELD_PREFIX}_HOST_ID"), id.to_owned())),
                    );
                tracing_subscriber::registry()
                    .with(filter(log_level))
                    .with(layer)
                    .init();
                return None;
            }
            Err(error) => {
                note = Some(format!(
                    "cannot write to the journal ({error}); logging to stderr instead"
                ));
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(log_level))
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_log_format_text_starts_the_agent() {
        assert_eq!(LogFormat::parse_or_auto("JSON"), (LogFormat::Json, None));
        assert_eq!(
            LogFormat::parse_or_auto(" journald "),
            (LogFormat::Journald, None)
        );
        assert_eq!(LogFormat::parse_or_auto("text").0, LogFormat::Text);
        let (format, note) = LogFormat::parse_or_auto("jsno");
        assert_eq!(format, LogFormat::Auto);
        assert!(note.is_some_and(|n| n.contains("\"jsno\"")));
    }
}
