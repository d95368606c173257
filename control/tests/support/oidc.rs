//! A real OpenID Connect provider for the single sign-on tests: panva's `oidc-provider`
//! (tests/oidc/provider.mjs) started on a free loopback port per test and killed with it
//! (it also exits when its standard input closes). Its dependencies are installed
//! with `npm ci` on first use. Without node or npm the test is skipped with a message, or fails
//! with `LATCH_E2E=required` (CI).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../tests/src/npm.rs"]
mod npm;

fn skip_or_fail(why: &str) -> Option<Provider> {
    let required = std::env::var("LATCH_E2E").is_ok_and(|v| v == "required");
    assert!(!required, "{why} (LATCH_E2E=required)");
    eprintln!("SKIPPED {why}; LATCH_E2E=required makes this a failure");
    None
}

/// A running provider.
pub struct Provider {
    /// The running `node provider.mjs`, killed when dropped.
    _script: npm::NodeScript,
    /// The issuer URL, `http://127.0.0.1:PORT`.
    pub issuer: String,
    /// The Latch client's secret.
    pub secret: String,
    /// A client for the provider's test controls.
    pub browser: reqwest::Client,
}

impl Provider {
    /// Starts a provider, or skips (`None`) when node/npm are missing and not required.
    pub async fn start() -> Option<Provider> {
        Self::start_with(None).await
    }

    /// Starts a provider whose Latch client is a web client redirecting to the web console's
    /// `callback` (`http://127.0.0.1:PORT/login/callback`) instead of `latchctl login`.
    pub async fn start_for_console(callback: &str) -> Option<Provider> {
        Self::start_with(Some(callback)).await
    }

    async fn start_with(console_callback: Option<&str>) -> Option<Provider> {
        let dir = match tokio::task::spawn_blocking(|| npm::install("oidc"))
            .await
            .unwrap()
        {
            Ok(dir) => dir,
            Err(why) => return skip_or_fail(&format!("the SSO tests need oidc-provider: {why}")),
        };
        // `:`, `%`, `+`, `/`: HTTP Basic must carry them form-encoded (RFC 6749 §2.3.1).
        let secret = format!("s3cr:t%+/-{:016x}", fastrand::u64(..));
        let script = tokio::task::spawn_blocking({
            let secret = secret.clone();
            let console_callback = console_callback.unwrap_or("").to_owned();
            move || {
                npm::start_script(
                    &dir,
                    "provider.mjs",
                    &[
                        ("OIDC_CLIENT_SECRET", &secret),
                        ("CONSOLE_REDIRECT_URI", &console_callback),
                    ],
                )
            }
        })
        .await
        .unwrap()
        .expect("start the OpenID Connect provider");
        let issuer = script
            .first_line
            .strip_prefix("listening ")
            .expect("first line names the issuer")
            .to_owned();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let browser = reqwest::Client::new();
        Some(Provider {
            _script: script,
            issuer,
            secret,
            browser,
        })
    }

    /// Chooses the account the next sign-in logs in, and misbehaviours (see provider.mjs).
    pub async fn next(&self, query: &[(&str, &str)]) {
        let response = self
            .browser
            .post(format!("{}/test/next", self.issuer))
            .query(query)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }

    /// Acts as the browser: opens `url` and follows redirects until one leaves for
    /// `redirect_prefix`; returns that URL's `code` and `state`.
    pub async fn authorize(&self, url: &str, redirect_prefix: &str) -> (String, String) {
        let redirect = self.redirect(url, redirect_prefix).await;
        let pairs: std::collections::HashMap<_, _> = redirect.query_pairs().into_owned().collect();
        (pairs["code"].clone(), pairs["state"].clone())
    }

    /// Acts as the browser until the provider redirects to `redirect_prefix`; that URL.
    pub async fn redirect(&self, url: &str, redirect_prefix: &str) -> reqwest::Url {
        // A fresh cookie jar: every sign-in is a new browser (no provider session carried over).
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut url = url.to_owned();
        for _ in 0..20 {
            let response = browser.get(&url).send().await.unwrap();
            assert!(
                response.status().is_redirection(),
                "{url}: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
            let location = response.headers()["location"].to_str().unwrap().to_owned();
            let next = reqwest::Url::parse(&url).unwrap().join(&location).unwrap();
            if next.as_str().starts_with(redirect_prefix) {
                return next;
            }
            url = next.to_string();
        }
        panic!("more than 20 redirects from {url}");
    }
}

impl Provider {
    /// Acts as the person at the provider's device page: enters `user_code`, confirms, and is
    /// signed in (as the account chosen with [`Provider::next`]).
    pub async fn enter_device_code(&self, verification_uri: &str, user_code: &str) {
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let xsrf = |html: &str| -> String {
            const FIELD: &str = "name=\"xsrf\" value=\"";
            let start = html.find(FIELD).expect("a form with xsrf") + FIELD.len();
            html[start..].split('"').next().unwrap().to_owned()
        };
        let post = |fields: Vec<(&str, String)>| {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(fields)
                .finish();
            browser
                .post(verification_uri)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
        };
        let page = browser
            .get(verification_uri)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let confirm = post(vec![
            ("xsrf", xsrf(&page)),
            ("user_code", user_code.to_owned()),
        ])
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        let mut response = post(vec![
            ("xsrf", xsrf(&confirm)),
            ("user_code", user_code.to_owned()),
            ("confirm", "yes".to_owned()),
        ])
        .await
        .unwrap();
        let mut url = reqwest::Url::parse(verification_uri).unwrap();
        for _ in 0..20 {
            if !response.status().is_redirection() {
                let status = response.status();
                let text = response.text().await.unwrap();
                assert!(status.is_success(), "{url} {status}: {text}");
                return;
            }
            let location = response.headers()["location"].to_str().unwrap().to_owned();
            url = url.join(&location).unwrap();
            response = browser.get(url.clone()).send().await.unwrap();
        }
        panic!("more than 20 redirects at the device page");
    }
}
