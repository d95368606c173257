//! The one door to external programs: absolute paths, argv as separate items (never a shell),
//! a cleared environment, secrets on stdin only, exit status and stderr captured in a typed error.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Directories searched for system tools, in order.
const TOOL_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// Why a command failed.
#[derive(Debug, Error)]
pub enum CmdError {
    /// The tool is not installed.
    #[error("{tool} is not installed (looked in {}); install the distribution's shadow-utils (Debian: passwd)", TOOL_DIRS.join(", "))]
    NotFound {
        /// Tool name.
        tool: String,
    },
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// Program path.
        program: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The program exited with a failure status.
    #[error("{program} exited with status {status}: {stderr}")]
    Failed {
        /// Program path.
        program: PathBuf,
        /// Exit status (-1 when killed by a signal).
        status: i32,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// The program kept the account files locked for longer than allowed.
    #[error("{program} could not lock the account files for {waited:?}: {stderr}")]
    Locked {
        /// Program path.
        program: PathBuf,
        /// How long we retried.
        waited: Duration,
        /// Last stderr.
        stderr: String,
    },
}

/// Finds a system tool by name in the standard system directories.
pub fn tool(name: &str) -> Result<PathBuf, CmdError> {
    TOOL_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| CmdError::NotFound {
            tool: name.to_owned(),
        })
}

/// Runs `program` with `args`, feeding `stdin` (the only channel for secrets). Returns stdout.
pub fn run(program: &Path, args: &[&OsStr], stdin: Option<&[u8]>) -> Result<Vec<u8>, CmdError> {
    let spawn_error = |source| CmdError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(CmdError::Failed {
            program: program.to_owned(),
            status: output.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&output.stderr)
                .trim()
                .chars()
                .take(1000)
                .collect(),
        })
    }
}

/// Whether a shadow-utils failure means "the files are locked by someone else, try again".
pub fn is_lock_contention(error: &CmdError) -> bool {
    match error {
        CmdError::Failed { stderr, .. } => {
            let stderr = stderr.to_ascii_lowercase();
            stderr.contains("cannot lock") || stderr.contains("try again later")
        }
        _ => false,
    }
}

/// Runs a shadow-utils tool, retrying with exponential backoff while the account files are
/// locked by another program, for at most `max_wait`.
pub fn run_shadow_tool(
    program: &Path,
    args: &[&OsStr],
    stdin: Option<&[u8]>,
    max_wait: Duration,
) -> Result<Vec<u8>, CmdError> {
    let started = Instant::now();
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        match run(program, args, stdin) {
            Err(error) if is_lock_contention(&error) => {
                let waited = started.elapsed();
                if waited >= max_wait {
                    let stderr = match error {
                        CmdError::Failed { stderr, .. } => stderr,
                        other => other.to_string(),
                    };
                    return Err(CmdError::Locked {
                        program: program.to_owned(),
                        waited,
                        stderr,
                    });
                }
                let delay = backoff.delay();
                tracing::warn!(program = %program.display(), ?delay, "account files are locked; retrying");
                std::thread::sleep(delay.min(max_wait.saturating_sub(waited)));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_without_a_shell_and_with_a_clean_environment() {
        let out = run(&tool("env").unwrap(), &[], None).unwrap();
        let env = String::from_utf8(out).unwrap();
        assert!(env.contains("LC_ALL=C"));
        assert!(!env.contains("HOME="), "{env}");
        // A shell metacharacter is just an argument.
        let out = run(Path::new("/bin/echo"), &[OsStr::new("a;id")], None).unwrap();
        assert_eq!(out, b"a;id\n");
    }

    #[test]
    fn stdin_reaches_the_program_and_failures_are_typed() {
        let out = run(Path::new("/bin/cat"), &[], Some(b"secret\n")).unwrap();
        assert_eq!(out, b"secret\n");
        let err = run(
            Path::new("/bin/sh"),
            &[
                OsStr::new("-c"),
                OsStr::new("echo cannot lock /etc/passwd >&2; exit 1"),
            ],
            None,
        )
        .unwrap_err();
        assert!(is_lock_contention(&err), "{err}");
        assert!(matches!(
            tool("no-such-tool-latch"),
            Err(CmdError::NotFound { .. })
        ));
    }

    #[test]
    fn lock_contention_is_retried_then_reported() {
        let started = Instant::now();
        let err = run_shadow_tool(
            Path::new("/bin/sh"),
            &[
                OsStr::new("-c"),
                OsStr::new("echo 'useradd: cannot lock /etc/passwd; try again later.' >&2; exit 1"),
            ],
            None,
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(err, CmdError::Locked { .. }), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
