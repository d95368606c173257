//! Reading secrets and codes from the person at the terminal: a password at a prompt that does
//! not echo, or the first line of standard input for scripts (`--password-stdin`). Secrets are
//! never taken from the command line, where other users could read them (`ps`, shell history).

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};
use nix::sys::termios::{LocalFlags, SetArg, Termios, tcgetattr, tcsetattr};

/// Whether standard input is a terminal (a person can be asked).
pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// Reads the first line of standard input, without its line ending.
pub fn first_line(what: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("cannot read the {what} from standard input"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Asks on standard error and reads one line from the terminal (shown as typed).
pub fn ask(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    std::io::stderr()
        .flush()
        .context("cannot write the prompt")?;
    first_line("answer")
}

/// Puts the terminal's echo back when dropped, however the read ended.
struct EchoOff {
    original: Termios,
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // Nothing better can be done if the terminal went away meanwhile.
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.original);
    }
}

/// Asks on standard error and reads one line from the terminal without echoing it. Ctrl-C
/// puts the echo back before the program ends (status 130).
pub async fn ask_hidden(prompt: &str) -> anyhow::Result<String> {
    if !interactive() {
        bail!(
            "standard input is not a terminal, so the password cannot be asked for: pipe it in and add --password-stdin"
        );
    }
    let original = tcgetattr(std::io::stdin())
        .context("cannot read the terminal's settings to turn its echo off")?;
    let mut quiet = original.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    // The newline the person types still moves the cursor on.
    quiet.local_flags.insert(LocalFlags::ECHONL);
    eprint!("{prompt}");
    std::io::stderr()
        .flush()
        .context("cannot write the prompt")?;
    let guard = EchoOff { original };
    tcsetattr(std::io::stdin(), SetArg::TCSANOW, &quiet)
        .context("cannot turn the terminal's echo off")?;
    let read = tokio::task::spawn_blocking(|| first_line("password"));
    let line = tokio::select! {
        line = read => line.context("the password prompt failed"),
        _ = tokio::signal::ctrl_c() => {
            drop(guard);
            eprintln!();
            std::process::exit(130);
        }
    };
    drop(guard);
    line?
}

/// A password: the first line of standard input with `from_stdin`, else asked at a no-echo
/// prompt (twice when `confirm`, which must match). Empty is refused.
pub async fn password(from_stdin: bool, prompt: &str, confirm: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        first_line("password")?
    } else {
        let first = ask_hidden(prompt).await?;
        if confirm && !first.is_empty() {
            let again = ask_hidden("Again, to confirm: ").await?;
            if again != first {
                bail!("the two passwords differ; run the command again");
            }
        }
        first
    };
    if password.is_empty() {
        if from_stdin {
            bail!("--password-stdin: standard input held no password (give it on the first line)");
        }
        bail!("no password given; type one at the prompt, or pipe it in with --password-stdin");
    }
    Ok(password)
}
