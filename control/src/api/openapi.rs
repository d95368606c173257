//! The API's OpenAPI document, served at `GET /v1/openapi.json` (no authentication).
//!
//! It is generated from the code: each handler's `#[utoipa::path(...)]` (method, path,
//! parameters, request body, success answers) and the wire types' `ToSchema` derives (their doc
//! comments become the descriptions). [`Conventions`] then adds what every operation shares, so
//! no handler repeats it: the bearer scheme, the error answers (an [`ApiErrorBody`] with a code
//! of [`super::error`]), the rate-limit headers of [`super::limits`] on every answer, and the
//! `Link` header on every paged list.
//!
//! **Adding a route**: annotate its handler with `#[utoipa::path(...)]` (see the handlers of
//! `people.rs` for each kind: `params(PageParams)` for a list, `security(())` for an endpoint
//! without a bearer token) and name the handler in `paths(...)` of [`ApiDoc`] below. The test
//! `the_openapi_document_names_every_route` (control/tests/api.rs) fails while a route of
//! `mod.rs` is missing here.

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use latch_common::api::ApiErrorBody;
use utoipa::Modify;
use utoipa::OpenApi as _;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};

use super::{access, audit, handlers, metrics, people, vault, webhooks};

/// The document's paths and the schemas they name.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Latch control plane",
        description = "Just-in-time privileged access for Linux fleets. Lists are `{\"list\": [...]}`, paged with `count` and `offset` and `Link` headers (`rel=\"next\"`, `rel=\"prev\"`); errors are `{\"code\", \"message\"}`; every answer carries the `X-RateLimit-*` headers. The README's \"The HTTP API\" section says who may call what.",
    ),
    paths(
        openapi_json,
        handlers::health,
        metrics::healthz,
        metrics::readyz,
        metrics::metrics,
        handlers::enroll,
        handlers::service_token,
        handlers::login_start,
        handlers::login_finish,
        handlers::login_device,
        handlers::login_device_poll,
        handlers::logout,
        handlers::whoami,
        people::list_sessions,
        people::end_session,
        people::end_other_sessions,
        handlers::poll_jobs,
        handlers::report_job,
        handlers::report_revocation,
        handlers::rotate_credential,
        handlers::agent_self,
        handlers::create_enroll_token,
        handlers::list_hosts,
        handlers::show_host,
        handlers::remove_host,
        handlers::create_job,
        handlers::list_jobs,
        handlers::show_job,
        handlers::list_grants,
        handlers::rotate_signing_key,
        handlers::promote_signing_key,
        audit::list_audit,
        audit::verify_audit,
        audit::verify_audit_with,
        audit::audit_checkpoint,
        people::login_local,
        people::list_users,
        people::create_user,
        people::show_user,
        people::disable_user,
        people::enable_user,
        people::set_user_password,
        people::list_groups,
        people::create_group,
        people::show_group,
        people::delete_group,
        people::add_member,
        people::remove_member,
        people::list_roles,
        people::list_role_bindings,
        people::bind_role,
        people::unbind_role,
        people::list_service_users,
        people::create_service_user,
        people::show_service_user,
        people::disable_service_user,
        people::enable_service_user,
        people::list_api_keys,
        people::create_api_key,
        people::revoke_api_key,
        people::enroll_totp,
        people::verify_totp,
        people::set_host_labels,
        vault::list_vaults,
        vault::create_vault,
        vault::show_vault,
        vault::update_vault,
        vault::delete_vault,
        vault::list_vault_grants,
        vault::grant_vault_access,
        vault::revoke_vault_access,
        vault::list_identities,
        vault::create_identity,
        vault::show_identity,
        vault::update_identity,
        vault::delete_identity,
        vault::reveal_identity,
        vault::checkout_identity,
        vault::break_glass,
        vault::list_checkouts,
        vault::checkin,
        vault::rotate_identity,
        vault::list_rotations,
        vault::show_rotation,
        vault::enroll_account,
        access::list_policies,
        access::create_policy,
        access::show_policy,
        access::replace_policy,
        access::delete_policy,
        access::list_requests,
        access::create_request,
        access::show_request,
        access::approve_request,
        access::deny_request,
        access::cancel_request,
        access::revoke_request,
        access::confirm_request,
        vault::list_organizations,
        vault::create_organization,
        vault::update_organization,
        vault::list_support_access,
        vault::enable_support_access,
        vault::emergency_disable_support_access,
        vault::disable_support_access,
        webhooks::list_webhooks,
        webhooks::create_webhook,
        webhooks::delete_webhook,
        webhooks::list_deliveries,
    ),
    components(schemas(ApiErrorBody)),
    modifiers(&Conventions),
    security(("bearer" = [])),
    tags(
        (name = "service", description = "Liveness, this document, the job-signing key"),
        (name = "sessions", description = "Signing in and out, MFA step-up"),
        (name = "agent", description = "Enrollment and the agent's endpoints (a host credential)"),
        (name = "hosts", description = "Hosts, their labels, enrollment tokens"),
        (name = "jobs", description = "Jobs and the grants they made"),
        (name = "audit", description = "The audit trail"),
        (name = "people", description = "Users, groups, roles, service users and API keys"),
        (name = "vault", description = "The credential vault, organizations, support access"),
        (name = "access", description = "Just-in-time access policies"),
        (name = "webhooks", description = "Signed webhooks"),
    )
)]
pub struct ApiDoc;

/// The rate-limit headers of [`super::limits`]: on every answer, errors included.
const RATE_LIMIT_HEADERS: [(&str, &str); 4] = [
    (
        "X-RateLimit-Limit",
        "Requests allowed per one-minute window for this principal",
    ),
    (
        "X-RateLimit-Remaining",
        "Requests left in the current window",
    ),
    ("X-RateLimit-Reset", "Seconds until the window ends"),
    ("X-RateLimit-Retry-At", "When the window ends (RFC 3339)"),
];

/// The error answers every operation may give: `(status, component name, what it means)`.
/// The codes are those of [`super::error`] and the README's "Error codes".
const ERRORS: [(&str, &str, &str); 10] = [
    (
        "400",
        "invalid_request",
        "`invalid_request`: a malformed body, query or path, or a value out of range",
    ),
    (
        "401",
        "unauthenticated",
        "`authentication_error` (no, or an unknown or expired credential), `server_authorization_revoked` (revoked or disabled) or `authorization_error` (MFA step-up needed)",
    ),
    (
        "403",
        "forbidden",
        "`forbidden_error`: the caller lacks the permission",
    ),
    (
        "404",
        "not_found",
        "`resource_does_not_exist` (also for what the caller may not see)",
    ),
    (
        "409",
        "conflict",
        "`resource_already_exists`: it exists, or conflicts with the current state",
    ),
    (
        "413",
        "too_large",
        "`invalid_request`: the body is larger than 64 KiB",
    ),
    (
        "415",
        "unsupported_content_type",
        "`unsupported_content_type`: the body is not `application/json`",
    ),
    (
        "429",
        "too_many_requests",
        "`too_many_requests`: over the rate limit or the budget of refused credentials; see `Retry-After`",
    ),
    (
        "500",
        "unknown_error",
        "`unknown_error`: the control plane failed; its log has the cause",
    ),
    (
        "503",
        "service_offline",
        "`service_offline`: the request took too long and was stopped",
    ),
];

/// Errors only operations with a request body can give.
const BODY_ERRORS: [&str; 2] = ["413", "415"];

/// Adds what every operation shares (see the module's documentation).
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.description = Some(
            "A session token (`/v1/login/*`), a service user's token (`/v1/service_token`), or — on `/v1/agent/*` — a host credential".to_owned(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        for (name, description) in RATE_LIMIT_HEADERS {
            let schema = if name.ends_with("Retry-At") {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            } else {
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
            };
            components.headers.insert(
                name.to_owned(),
                RefOr::T(
                    HeaderBuilder::new()
                        .schema(Some(schema))
                        .description(Some(description))
                        .build(),
                ),
            );
        }
        components.headers.insert(
            "Link".to_owned(),
            RefOr::T(
                HeaderBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .description(Some(
                        "The next and previous pages: `<PATH?count=N&offset=M>; rel=\"next\"`, `…; rel=\"prev\"` (absent on a single page)",
                    ))
                    .build(),
            ),
        );
        components.headers.insert(
            "Retry-After".to_owned(),
            RefOr::T(
                HeaderBuilder::new()
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(1)),
                    ))
                    .description(Some("Seconds to wait before trying again"))
                    .build(),
            ),
        );
        for (status, name, description) in ERRORS {
            let mut response = with_rate_limit_headers(ResponseBuilder::new())
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ApiErrorBody")))
                        .build(),
                );
            if status == "429" {
                response = response.header_ref("Retry-After", header_ref("Retry-After"));
            }
            components
                .responses
                .insert(name.to_owned(), RefOr::T(response.build()));
        }
        for item in doc.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                add_conventions(operation);
            }
        }
    }
}

/// A reference to the header component `name`.
fn header_ref(name: &str) -> Ref {
    Ref::new(format!("#/components/headers/{name}"))
}

fn with_rate_limit_headers(mut response: ResponseBuilder) -> ResponseBuilder {
    for (name, _) in RATE_LIMIT_HEADERS {
        response = response.header_ref(name, header_ref(name));
    }
    response
}

/// The rate-limit headers on each of `operation`'s answers, `Link` on a paged list's, and the
/// error answers it does not declare itself.
fn add_conventions(operation: &mut Operation) {
    let paged =
        operation.parameters.iter().flatten().any(
            |parameter| matches!(parameter, RefOr::T(parameter) if parameter.name == "offset"),
        );
    for (status, response) in &mut operation.responses.responses {
        if let RefOr::T(response) = response {
            for (name, _) in RATE_LIMIT_HEADERS {
                response
                    .headers
                    .insert(name.to_owned(), RefOr::Ref(header_ref(name)));
            }
            if paged && status.starts_with('2') {
                response
                    .headers
                    .insert("Link".to_owned(), RefOr::Ref(header_ref("Link")));
            }
        }
    }
    let has_body = operation.request_body.is_some();
    for (status, name, _) in ERRORS {
        if BODY_ERRORS.contains(&status) && !has_body {
            continue;
        }
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
    }
}

/// The document, as served.
pub fn document() -> serde_json::Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    // utoipa's header object has no `required`; the rate-limit headers are on every answer.
    if let Some(headers) = document
        .pointer_mut("/components/headers")
        .and_then(serde_json::Value::as_object_mut)
    {
        for (name, _) in RATE_LIMIT_HEADERS {
            if let Some(header) = headers.get_mut(name).and_then(|h| h.as_object_mut()) {
                header.insert("required".to_owned(), serde_json::Value::Bool(true));
            }
        }
    }
    open_flattened_schemas(&mut document);
    document
}

/// A struct that flattens another (`#[serde(flatten)]`, as `HostView` does `HostFacts`) is an
/// `allOf` of the two; when the flattened one refuses unknown fields (`deny_unknown_fields`, so
/// `additionalProperties: false`) that `allOf` would refuse every field of the outer struct. In
/// every such `allOf` (in a component, or inlined as in a generic `ListResponse`), the flattened
/// schema is put inline without `additionalProperties`.
fn open_flattened_schemas(document: &mut serde_json::Value) {
    let Some(schemas) = document
        .pointer("/components/schemas")
        .and_then(serde_json::Value::as_object)
        .cloned()
    else {
        return;
    };
    open_all_of(document, &schemas);
}

fn open_all_of(
    value: &mut serde_json::Value,
    schemas: &serde_json::Map<String, serde_json::Value>,
) {
    match value {
        serde_json::Value::Object(object) => {
            if let Some(serde_json::Value::Array(members)) = object.get_mut("allOf") {
                for member in members {
                    let referenced = member
                        .get("$ref")
                        .and_then(serde_json::Value::as_str)
                        .and_then(|r| r.strip_prefix("#/components/schemas/"))
                        .and_then(|name| schemas.get(name));
                    if let Some(serde_json::Value::Object(referenced)) = referenced
                        && referenced.get("additionalProperties")
                            == Some(&serde_json::Value::Bool(false))
                    {
                        let mut open = referenced.clone();
                        open.remove("additionalProperties");
                        *member = serde_json::Value::Object(open);
                    }
                }
            }
            for nested in object.values_mut() {
                open_all_of(nested, schemas);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                open_all_of(item, schemas);
            }
        }
        _ => {}
    }
}

/// The OpenAPI document of this API (OpenAPI 3.1), generated from the code.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "service",
    security(()),
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
    ),
)]
pub async fn openapi_json() -> Response {
    static DOCUMENT: OnceLock<Vec<u8>> = OnceLock::new();
    let body = DOCUMENT.get_or_init(|| serde_json::to_vec(&document()).unwrap_or_default());
    ([(CONTENT_TYPE, "application/json")], body.clone()).into_response()
}
