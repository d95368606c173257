//! Console sessions. A sign-in (local password, or the identity provider's code flow with
//! PKCE — the same provider and the same session records as `latchctl login`) sets the session
//! token in the `__Host-latch_session` cookie: `HttpOnly` (no script reads it), `Secure`,
//! `SameSite=Strict`, `Path=/`. The session's own expiry, revocation and the user being
//! disabled end it, as for the API.
//!
//! Every form carries a CSRF token: an HMAC of the session token under the control plane's
//! credential key, so it needs no storage, differs per session and cannot be computed from the
//! database. A POST without the right token, or sent from another site (`Origin`,
//! `Sec-Fetch-Site`), is refused with `403 csrf_refused` and changes nothing.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::header::{COOKIE, HOST, LOCATION, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::Utc;
use latch_common::authz::Permission;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::ServedAt;
use super::layout::{Failure, bare, notice};
use crate::Control;
use crate::api::limits::{AuthAttempt, ClientAddress};
use crate::people::Authority;
use crate::store::people::PrincipalKind;

/// The session cookie.
const SESSION_COOKIE: &str = "__Host-latch_session";
/// The sign-in form's own CSRF cookie (double submit, before there is a session).
const LOGIN_COOKIE: &str = "__Host-latch_login";
/// The begun single sign-on's `state`, bound to the browser that began it. `SameSite=Lax`:
/// the identity provider's redirect back is a cross-site navigation.
const SSO_COOKIE: &str = "__Host-latch_sso";
/// The form field holding the CSRF token.
pub const CSRF_FIELD: &str = "_csrf";

/// The signed-in user of a console request, with the CSRF token of their session.
pub struct Viewer {
    /// Who, with the roles that apply now.
    pub by: Authority,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// The session token (from the cookie), to check the session again in long streams.
    token: String,
}

impl Viewer {
    /// Whether the viewer has `permission` anywhere (the library narrows it per object).
    pub fn can(&self, permission: Permission) -> bool {
        self.by.scope(permission).is_some()
    }

    /// Whether the viewer has `permission` everywhere (not only within label selectors).
    pub fn can_everywhere(&self, permission: Permission) -> bool {
        self.by.require_everywhere(permission).is_ok()
    }

    /// Looks at the session again, for long streams: `false` when it no longer holds (signed
    /// out, expired, the user disabled); otherwise the viewer's roles become those that apply
    /// now, so a role taken away while a stream is open stops applying to it.
    pub async fn refresh(&mut self, control: &Control) -> bool {
        match control.authenticate(&self.token).await {
            Ok(by) => {
                let address = self.by.address.take();
                self.by = by.from_address(address);
                true
            }
            Err(_) => false,
        }
    }

    /// The hidden CSRF field of a form.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name=(CSRF_FIELD) value=(self.csrf); }
    }
}

/// The CSRF token that belongs to the session `token`.
fn csrf_token(control: &Control, token: &str) -> String {
    control
        .store
        .audit_key()
        .credential_hash(&format!("console-csrf\0{token}"))
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value: always `Path=/; Secure; HttpOnly` (the `__Host-` prefix needs them).
fn set_cookie(name: &str, value: &str, same_site: &str, max_age: i64) -> HeaderValue {
    let text = format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite={same_site}; Max-Age={max_age}"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Sets the session cookie on `response`, living as long as the session.
fn set_session(response: &mut Response, token: &str, expires_at: chrono::DateTime<Utc>) {
    let max_age = (expires_at - Utc::now()).num_seconds().max(0);
    response.headers_mut().append(
        SET_COOKIE,
        set_cookie(SESSION_COOKIE, token, "Strict", max_age),
    );
}

fn client_address(parts_extensions: &axum::http::Extensions) -> Option<String> {
    parts_extensions
        .get::<ClientAddress>()
        .map(|client| client.0.to_string())
}

/// Where to go back after signing in: a path of this console only (never another site).
fn safe_next(next: Option<&str>) -> String {
    let ok = |path: &str| {
        path.starts_with('/')
            && !path.starts_with("//")
            && path.len() <= 256
            && !path.starts_with("/login")
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_-.?=&%".contains(c))
    };
    match next {
        Some(path) if ok(path) => path.to_owned(),
        _ => "/jobs".to_owned(),
    }
}

fn redirect_to_login(parts: &Parts, why: Option<&str>) -> Response {
    let here = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut target = url::form_urlencoded::Serializer::new(String::new());
    target.append_pair("next", &safe_next(Some(here)));
    if let Some(why) = why {
        target.append_pair("why", why);
    }
    see_other(&format!("/login?{}", target.finish()))
}

/// A `303 See Other` to a path of this console.
pub fn see_other(path: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(path) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

impl FromRequestParts<Arc<Control>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        control: &Arc<Control>,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE).map(str::to_owned) else {
            return Err(if parts.method == Method::GET {
                redirect_to_login(parts, None)
            } else {
                Failure::new(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "you are not signed in (or your session ended); sign in and try again",
                )
                .into_response()
            });
        };
        // The session token is a credential like a bearer token: its refusals count against it
        // and the client's address in the rate limiter, also when the answer is a redirect.
        let attempt = parts.extensions.get::<AuthAttempt>().cloned();
        if let Some(attempt) = &attempt
            && attempt.present(&token).is_err()
        {
            return Err(Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "too many refused attempts with this session; sign in again in a minute",
            )
            .into_response());
        }
        let by = match control.authenticate(&token).await {
            Ok(by) => by,
            Err(error) => {
                let failure = Failure::from(error);
                if let Some(attempt) = &attempt
                    && failure.0.status == StatusCode::UNAUTHORIZED
                {
                    attempt.refused();
                }
                return Err(if parts.method == Method::GET {
                    redirect_to_login(parts, Some("ended"))
                } else {
                    failure.into_response()
                });
            }
        };
        if by.principal.kind != PrincipalKind::User {
            return Err(Failure::new(
                StatusCode::FORBIDDEN,
                "forbidden_error",
                "the console is for people; service users use the API",
            )
            .into_response());
        }
        crate::api::limits::credential_accepted(&parts.extensions);
        let csrf = csrf_token(control, &token);
        parts.extensions.insert(ExpectedCsrf {
            token: csrf.clone(),
            origin: public_origin(control),
        });
        let address = client_address(&parts.extensions);
        Ok(Viewer {
            by: by.from_address(address),
            csrf,
            token,
        })
    }
}

/// What a form of the request's session must carry and where it must come from (set by the
/// [`Viewer`] extractor).
#[derive(Clone)]
struct ExpectedCsrf {
    token: String,
    origin: Option<String>,
}

/// The console's configured origin (`https://host[:port]`), when `public_url` is set: behind a
/// reverse proxy that rewrites `Host`, forms are checked against it instead.
fn public_origin(control: &Control) -> Option<String> {
    control
        .config()
        .public_url
        .as_ref()
        .map(|url| url.origin().ascii_serialization())
}

/// Refuses a state-changing request that another site sent: the browser marks it cross-site,
/// or its `Origin` is not the console's — `public` when configured, else the request's `Host`.
fn check_same_site(headers: &HeaderMap, public: Option<&str>) -> Result<(), Failure> {
    let refuse = || {
        Failure::new(
            StatusCode::FORBIDDEN,
            "csrf_refused",
            "the form was sent from another site; open the console and submit it from there",
        )
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(refuse());
    }
    if let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) {
        if let Some(public) = public {
            let given = url::Url::parse(origin)
                .ok()
                .map(|url| url.origin().ascii_serialization());
            return if given.as_deref() == Some(public) {
                Ok(())
            } else {
                Err(refuse())
            };
        }
        let host = headers.get(HOST).and_then(|v| v.to_str().ok());
        let origin_host = url::Url::parse(origin).ok().and_then(|url| {
            url.host_str().map(|h| match url.port() {
                Some(port) => format!("{h}:{port}"),
                None => h.to_owned(),
            })
        });
        if origin_host.is_none() || origin_host.as_deref() != host {
            return Err(refuse());
        }
    }
    Ok(())
}

fn csrf_matches(given: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// A posted form (`application/x-www-form-urlencoded`) whose CSRF token matched the session's
/// and which came from this console. Put it last in a handler, after [`Viewer`].
pub struct Posted<T>(pub T);

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(rename = "_csrf", default)]
    csrf: String,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Posted<T> {
    type Rejection = Failure;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (expected, origin) = request
            .extensions()
            .get::<ExpectedCsrf>()
            .map(|e| (e.token.clone(), e.origin.clone()))
            .unwrap_or_default();
        check_same_site(request.headers(), origin.as_deref())?;
        let body = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|_| Failure::invalid("the form could not be read; send it again"))?;
        let given: CsrfOnly = serde_urlencoded::from_bytes(&body)
            .map_err(|_| Failure::invalid("the form is not valid"))?;
        if !csrf_matches(&given.csrf, &expected) {
            return Err(Failure::new(
                StatusCode::FORBIDDEN,
                "csrf_refused",
                "the form's security token is missing or out of date; reload the page and submit it again",
            ));
        }
        serde_urlencoded::from_bytes(&body)
            .map(Posted)
            .map_err(|e| Failure::invalid(format!("the form is not valid: {e}")))
    }
}

/// `GET /login?next=&why=`.
#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    why: Option<String>,
}

/// The sign-in page: the identity provider (when configured and the console knows its own
/// address) and a local user's name and password.
pub async fn login_page(
    State(control): State<Arc<Control>>,
    Query(query): Query<LoginQuery>,
) -> Response {
    let why = match query.why.as_deref() {
        Some("ended") => Some(("info", "Your session ended. Sign in again.")),
        Some("signed_out") => Some(("info", "You are signed out.")),
        _ => None,
    };
    login_form(&control, StatusCode::OK, query.next.as_deref(), why)
}

fn login_form(
    control: &Control,
    status: StatusCode,
    next: Option<&str>,
    message: Option<(&str, &str)>,
) -> Response {
    let Ok(bytes) = crate::secret::random_bytes::<16>() else {
        return Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unknown_error",
            "the control plane could not make a random token; its log has the cause",
        )
        .into_response();
    };
    let token = crate::secret::hex(&bytes);
    let next = safe_next(next);
    let sso = control.sso.is_some();
    let body = html! {
        @if let Some((kind, text)) = message { (notice(kind, text)) }
        @if sso {
            p {
                a.button href=(format!("/login/sso?next={}", url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>())) {
                    "Sign in with your identity provider"
                }
            }
            p.muted { "Or with a local account:" }
        }
        form.stack method="post" action="/login" {
            input type="hidden" name=(CSRF_FIELD) value=(token);
            input type="hidden" name="next" value=(next);
            label for="name" { "User name" }
            input #name name="name" type="text" autocomplete="username" required maxlength="64";
            label for="password" { "Password" }
            input #password name="password" type="password" autocomplete="current-password" required maxlength="1024";
            button type="submit" { "Sign in" }
        }
    };
    let mut response = bare(status, "Sign in", body);
    response
        .headers_mut()
        .append(SET_COOKIE, set_cookie(LOGIN_COOKIE, &token, "Strict", 600));
    response
}

/// The local sign-in form.
#[derive(Deserialize)]
pub struct LocalLogin {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    #[serde(default)]
    next: Option<String>,
    name: String,
    password: String,
}

/// `POST /login`: a local user's name and password.
pub async fn login_local(
    State(control): State<Arc<Control>>,
    attempt: AuthAttempt,
    request: Request,
) -> Result<Response, Failure> {
    check_same_site(request.headers(), public_origin(&control).as_deref())?;
    let expected = cookie(request.headers(), LOGIN_COOKIE)
        .unwrap_or_default()
        .to_owned();
    let address = client_address(request.extensions());
    let axum::Form(form) = axum::Form::<LocalLogin>::from_request(request, &())
        .await
        .map_err(|_| Failure::invalid("the sign-in form is not valid; reload the page"))?;
    if !csrf_matches(&form.csrf, &expected) {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "csrf_refused",
            "the sign-in form is out of date; reload the page and sign in again",
        ));
    }
    attempt.present(&form.name)?;
    match control
        .sign_in_local(&form.name, &form.password, address)
        .await
    {
        Ok(issued) => {
            attempt.accepted();
            let mut response = see_other(&safe_next(form.next.as_deref()));
            set_session(&mut response, &issued.token, issued.expires_at);
            response
                .headers_mut()
                .append(SET_COOKIE, set_cookie(LOGIN_COOKIE, "", "Strict", 0));
            Ok(response)
        }
        Err(error) => {
            let failure = Failure::from(error);
            Ok(login_form(
                &control,
                failure.0.status,
                form.next.as_deref(),
                Some(("error", &failure.0.message)),
            ))
        }
    }
}

/// `GET /login/sso?next=`: begins the code flow with PKCE; the provider sends the browser back
/// to `/login/callback`.
pub async fn login_sso(
    State(control): State<Arc<Control>>,
    served: Option<axum::Extension<ServedAt>>,
    Query(query): Query<LoginQuery>,
) -> Result<Response, Failure> {
    let origin = super::origin(&control, served.as_ref().map(|e| &e.0)).ok_or_else(|| {
        Failure::new(
            StatusCode::NOT_IMPLEMENTED,
            "sso_not_configured",
            "the console does not know its own address, so the identity provider cannot send you back: set public_url (--public-url) on the control plane, or sign in with a local account",
        )
    })?;
    let callback = origin
        .join("/login/callback")
        .map_err(|e| Failure::invalid(format!("public_url: {e}")))?;
    let started = control.sso_start_console(&callback).await?;
    let next = safe_next(query.next.as_deref());
    let mut response = see_other(&started.authorization_url);
    // The state and where to go afterwards, bound to this browser for the sign-in's lifetime.
    let value = format!("{}.{}", started.state, hex_encode(next.as_bytes()));
    response
        .headers_mut()
        .append(SET_COOKIE, set_cookie(SSO_COOKIE, &value, "Lax", 600));
    Ok(response)
}

fn hex_encode(bytes: &[u8]) -> String {
    crate::secret::hex(bytes)
}

/// `GET /login/callback?state=&code=` (or `error=`) from the identity provider.
#[derive(Deserialize)]
pub struct Callback {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Finishes the code flow: the `state` must be the one this browser began.
pub async fn login_callback(
    State(control): State<Arc<Control>>,
    attempt: AuthAttempt,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Query(callback): Query<Callback>,
) -> Result<Response, Failure> {
    let bound = cookie(&headers, SSO_COOKIE).unwrap_or_default();
    let (bound_state, next_hex) = bound.split_once('.').unwrap_or((bound, ""));
    let began_here = |state: &str| csrf_matches(state, bound_state);
    if let Some(error) = &callback.error {
        // The provider's words only for the sign-in this browser began: anyone can write a
        // link to this page, and its text would read as the console's own.
        let message = match &callback.state {
            Some(state) if began_here(state) => format!(
                "the identity provider refused the sign-in ({}: {}); try again or ask its admin",
                truncate(error, 64),
                truncate(
                    callback
                        .error_description
                        .as_deref()
                        .unwrap_or("no description"),
                    200
                )
            ),
            _ => "the identity provider refused the sign-in; start it again from the sign-in page"
                .to_owned(),
        };
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "sso_refused",
            message,
        ));
    }
    let (Some(state), Some(code)) = (&callback.state, &callback.code) else {
        return Err(Failure::invalid(
            "the identity provider's answer has no state or code; start the sign-in again",
        ));
    };
    if !began_here(state) {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "csrf_refused",
            "this sign-in was not started in this browser (or took longer than 10 minutes); start it again from the sign-in page",
        ));
    }
    attempt.present(state)?;
    let session = control
        .sso_finish(state, code, client_address(&extensions))
        .await?;
    attempt.accepted();
    let next = hex::decode(next_hex)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let next = safe_next(next.as_deref());
    // A page, not a redirect: the provider's redirect was a cross-site navigation, and a
    // SameSite=Strict cookie is only sent on the next same-site one.
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(format!("0;url={next}"));
                title { "Signed in · Latch" }
            }
            body { main { p { "Signed in. " a href=(next) { "Continue" } } } }
        }
    };
    let mut response = Html(markup.into_string()).into_response();
    set_session(&mut response, &session.token, session.expires_at);
    response
        .headers_mut()
        .append(SET_COOKIE, set_cookie(SSO_COOKIE, "", "Lax", 0));
    Ok(response)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// `POST /logout`: ends the session (for the API too) and clears the cookie.
pub async fn logout(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Posted(_): Posted<serde::de::IgnoredAny>,
) -> Result<Response, Failure> {
    control.logout(&viewer.by).await?;
    let mut response = see_other("/login?why=signed_out");
    response
        .headers_mut()
        .append(SET_COOKIE, set_cookie(SESSION_COOKIE, "", "Strict", 0));
    Ok(response)
}

/// `POST /mfa`: a TOTP code for this session (step-up), then back to `next`.
#[derive(Deserialize)]
pub struct StepUp {
    code: String,
    #[serde(default)]
    next: Option<String>,
}

/// Marks the session as having shown a second factor now.
pub async fn verify_mfa(
    State(control): State<Arc<Control>>,
    viewer: Viewer,
    Posted(form): Posted<StepUp>,
) -> Result<Response, Failure> {
    control.verify_totp(&viewer.by, &form.code).await?;
    Ok(see_other(&safe_next(form.next.as_deref())))
}

/// The step-up field of a sensitive form: a TOTP code, checked before the action when the
/// session has not shown a second factor recently.
pub fn totp_field(id: &str) -> Markup {
    html! {
        label for=(id) { "Authenticator code" span.muted { " (if asked for a second factor)" } }
        input id=(id) name="totp" type="text" inputmode="numeric" autocomplete="one-time-code"
            pattern="[0-9]{6}" maxlength="6";
    }
}

/// Shows the step-up code, when the form carried one, before a sensitive action: the session
/// (and this request's view of it) has then shown a second factor now.
pub async fn step_up(control: &Control, viewer: &mut Viewer, code: &str) -> Result<(), Failure> {
    let code = code.trim();
    if code.is_empty() {
        return Ok(());
    }
    let at = control.verify_totp(&viewer.by, code).await?;
    viewer.by.session.mfa_at = Some(at);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_console() {
        assert_eq!(safe_next(Some("/hosts?x=1")), "/hosts?x=1");
        for hostile in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "/login?next=//x",
            "javascript:alert(1)",
            "/jobs\"><script>",
        ] {
            assert_eq!(safe_next(Some(hostile)), "/jobs", "{hostile}");
        }
        assert_eq!(safe_next(None), "/jobs");
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("x__Host-latch_session=no; __Host-latch_session=yes"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("yes"));
        assert_eq!(cookie(&headers, LOGIN_COOKIE), None);
    }

    #[test]
    fn forms_from_other_sites_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("127.0.0.1:8443"));
        headers.insert(ORIGIN, HeaderValue::from_static("https://127.0.0.1:8443"));
        assert!(check_same_site(&headers, None).is_ok());
        headers.insert(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(check_same_site(&headers, None).is_err());
        // Behind a proxy that rewrites Host: the configured public origin decides.
        let public = Some("https://latch.example.com");
        headers.insert(
            ORIGIN,
            HeaderValue::from_static("https://latch.example.com"),
        );
        assert!(check_same_site(&headers, public).is_ok());
        headers.insert(ORIGIN, HeaderValue::from_static("https://127.0.0.1:8443"));
        assert!(check_same_site(&headers, public).is_err());
        headers.insert(ORIGIN, HeaderValue::from_static("null"));
        assert!(check_same_site(&headers, public).is_err());
        headers.insert(ORIGIN, HeaderValue::from_static("https://127.0.0.1:8443"));
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(check_same_site(&headers, None).is_err());
        assert!(!csrf_matches("", ""));
        assert!(csrf_matches("abc", "abc"));
        assert!(!csrf_matches("abd", "abc"));
    }
}
