//! The test OpenID Connect provider (`tests/oidc/provider.mjs`, panva's oidc-provider) for the
//! end-to-end tests of the web console: started on a free loopback port with the console's
//! callback registered for Latch's client, killed when dropped (it also exits when its standard
//! input closes). `control/tests/support/oidc.rs` is the library tests' async twin.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use crate::npm;

/// A running provider.
pub struct OidcProvider {
    child: Child,
    /// The issuer URL, `http://127.0.0.1:PORT`.
    pub issuer: String,
    /// The Latch client's secret (client id `latch`).
    pub secret: String,
}

impl OidcProvider {
    /// Starts a provider whose client `latch` redirects to the web console's `callback`
    /// (`https://127.0.0.1:PORT/login/callback`); or says why it cannot (node or npm missing).
    pub fn start_for_console(callback: &str) -> Result<OidcProvider, String> {
        let dir = npm::install("oidc")?;
        let mut bytes = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| "no randomness for the client secret".to_owned())?;
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("OIDC_CLIENT_SECRET", &secret)
            .env("CONSOLE_REDIRECT_URI", callback)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run node provider.mjs: {e}"))?;
        let stdout = child.stdout.take().ok_or("the provider has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let issuer = match lines.next() {
            Some(Ok(line)) => line
                .strip_prefix("listening ")
                .map(str::to_owned)
                .ok_or_else(|| format!("the provider printed {line:?}, not its address"))?,
            _ => return Err("the provider exited before listening".to_owned()),
        };
        // Keep reading: a closed pipe would end the provider at its next notice.
        std::thread::spawn(move || for _ in lines {});
        Ok(OidcProvider {
            child,
            issuer,
            secret,
        })
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
