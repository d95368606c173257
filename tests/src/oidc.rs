//! The test OpenID Connect provider (`tests/oidc/provider.mjs`, panva's oidc-provider) for the
//! end-to-end tests of the web console: started on a free loopback port with the console's
//! callback registered for Latch's client, killed when dropped (it also exits when its standard
//! input closes). `control/tests/support/oidc.rs` is the library tests' async twin.

use crate::npm;

/// A running provider.
pub struct OidcProvider {
    /// The running `node provider.mjs`, killed when dropped.
    _script: npm::NodeScript,
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
        let script = npm::start_script(
            &dir,
            "provider.mjs",
            &[
                ("OIDC_CLIENT_SECRET", &secret),
                ("CONSOLE_REDIRECT_URI", callback),
            ],
        )?;
        let issuer = script
            .first_line
            .strip_prefix("listening ")
            .map(str::to_owned)
            .ok_or_else(|| {
                format!(
                    "the provider printed {:?}, not its address",
                    script.first_line
                )
            })?;
        Ok(OidcProvider {
            _script: script,
            issuer,
            secret,
        })
    }
}
