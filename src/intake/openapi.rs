//! The OpenAPI 3.1 contract of the HTTP API (README, HTTP API), generated from the handlers'
//! `#[utoipa::path]` annotations and the types they read and return. Routes are registered
//! with their annotation (`utoipa_axum::routes!` in [`super::api`]), so a route cannot be
//! served without being documented. Served at `GET /openapi.json` (no auth) and checked in as
//! `docs/openapi.json`; `tests/api/openapi.rs` fails when the two differ
//! (`FERRY_WRITE_OPENAPI=1 cargo test --test api openapi` rewrites the file).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ArrayBuilder, Components, ObjectBuilder, OpenApi, Ref, RefOr, Required, Schema, Type,
    schema::SchemaType,
};

use super::error::{ErrorCode, Problem};
use super::transfers::BATCH_LEN_MAX;
use crate::domain::Scope;

/// The name of the Bearer API-key security scheme; operations list the scope they need as
/// its scope (OpenAPI 3.1 allows role names for non-OAuth schemes).
pub const API_KEY_SCHEME: &str = "api_key";
const PROBLEM_JSON: &str = "application/problem+json";
/// The name of the shared `X-Request-Id` parameter and response header components.
const REQUEST_ID: &str = "RequestId";
const REQUEST_ID_HEADER: &str = "X-Request-Id";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "ferry",
        description = "Moves money between ledger accounts as durable background jobs. \
            Every `/v1` route needs `Authorization: Bearer <API key>` and the scope named in its \
            description and security requirement; `admin` grants every scope. Money amounts \
            are JSON strings (`\"12.30\"`), never numbers. Errors are RFC 9457 \
            `application/problem+json` with a stable `code`. Every answer carries an \
            `X-Request-Id` header: the request's own (1-200 visible ASCII characters) or a \
            new UUIDv7; audit events record it."
    ),
    tags(
        (name = "transfers", description = "Idempotent intake of transfers and their state."),
        (name = "accounts", description = "Accounts, balances and ledger entries."),
        (name = "reconciliations", description = "Reconciliation runs and findings (`admin`)."),
        (name = "alerts", description = "Alerts and their deliveries (`admin`)."),
        (name = "ledgers", description = "Ledgers, the unit of isolation (`admin`)."),
        (name = "api-keys", description = "API keys: create, list, revoke (`admin`)."),
        (name = "audit", description = "The append-only audit trail (`admin`)."),
        (name = "anomalies", description = "Hits of the anomaly rules on transfers."),
        (name = "events", description = "Changes producers care about, numbered per ledger."),
        (name = "webhooks", description = "Endpoints that receive events, signed and retried."),
        (name = "jobs", description = "Dead jobs: list, retry, discard (`admin`)."),
        (name = "operations", description = "Health, readiness, metrics and this document."),
    ),
    components(schemas(Problem, ErrorCode)),
)]
pub struct ApiDoc;

/// The contract: the routes' annotations plus what every route shares (security scheme,
/// problem responses), completed by [`complete`].
pub fn document() -> OpenApi {
    let (_, mut doc) = super::api().split_for_parts();
    complete(&mut doc);
    doc
}

/// [`document`] as served and checked in: pretty JSON with a final newline.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| match document().to_pretty_json() {
        Ok(json) => json + "\n",
        // Serializing a tree of strings and maps cannot fail; say so rather than panic.
        Err(e) => format!("{{\"error\":\"the OpenAPI document did not serialize: {e}\"}}\n"),
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses((status = 200, description = "This OpenAPI 3.1 document.", body = Object)),
)]
pub async fn serve() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
}

/// The schema of `BatchRequest.transfers` (`schema_with`): 1 to [`BATCH_LEN_MAX`] items.
pub fn batch_items() -> impl Into<RefOr<Schema>> {
    ArrayBuilder::new()
        .items(Ref::from_schema_name("BatchTransferItem"))
        .min_items(Some(1))
        .max_items(Some(BATCH_LEN_MAX))
        .build()
}

/// A shared problem response: its description, and whether it carries `Retry-After`.
struct Shared {
    status: &'static str,
    name: &'static str,
    description: &'static str,
    retry_after: bool,
}

const SHARED: &[Shared] = &[
    Shared {
        status: "400",
        name: "BadRequest",
        description: "The request is invalid; nothing was stored. `code`: `invalid_body` \
            (malformed JSON, unknown or missing fields, wrong types, NUL characters, a bad \
            query), or for transfers `invalid_amount`, `invalid_currency`, `invalid_account`, \
            `same_account`, `idempotency_key_missing`, `idempotency_key_invalid`; for accounts \
            `invalid_currency`, `invalid_account`; for ledgers `invalid_ledger`; for API keys \
            `invalid_key_name`, `invalid_scope`, `invalid_ledger`, `invalid_expiry`, \
            `admin_key_with_ledger`.",
        retry_after: false,
    },
    Shared {
        status: "401",
        name: "Unauthorized",
        description: "`unauthorized`: the `Authorization` header is missing, malformed, \
            duplicated or names an unknown key.",
        retry_after: false,
    },
    Shared {
        status: "403",
        name: "Forbidden",
        description: "`forbidden`: the API key lacks the operation's scope.",
        retry_after: false,
    },
    Shared {
        status: "408",
        name: "RequestTimeout",
        description: "`request_timeout`: the request, body included, took longer than \
            `FERRY_HTTP_REQUEST_TIMEOUT_MS`; the connection is closed.",
        retry_after: false,
    },
    Shared {
        status: "413",
        name: "PayloadTooLarge",
        description: "`payload_too_large`: the body is over 1 MiB.",
        retry_after: false,
    },
    Shared {
        status: "415",
        name: "UnsupportedMediaType",
        description: "`unsupported_media_type`: the body's `Content-Type` is missing or not \
            `application/json` (or `application/*+json`, charset UTF-8).",
        retry_after: false,
    },
    Shared {
        status: "429",
        name: "TooManyRequests",
        description: "`rate_limited`: the API key is over its rate limit.",
        retry_after: true,
    },
    Shared {
        status: "500",
        name: "InternalError",
        description: "`internal`: a bug or an unexpected database error; logged.",
        retry_after: false,
    },
    Shared {
        status: "503",
        name: "Unavailable",
        description: "`unavailable`: PostgreSQL is unreachable or no connection was free in \
            time. For a transfer this means \"outcome unknown\": retry with the same \
            `Idempotency-Key`.",
        retry_after: true,
    },
];

/// Adds what the annotations leave to one place: the security scheme, the shared problem
/// responses (referenced by every operation that can answer them), and the batch item schema.
fn complete(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    add_security_scheme(components);
    for shared in SHARED {
        components
            .responses
            .insert(shared.name.to_owned(), RefOr::T(shared_response(shared)));
    }
    add_batch_item_schema(components);
    add_request_id(components);
    for item in doc.paths.paths.values_mut() {
        for operation in [&mut item.get, &mut item.post, &mut item.delete]
            .into_iter()
            .filter_map(Option::as_mut)
        {
            add_shared_responses(operation);
            declare_request_id(operation);
        }
    }
}

/// `X-Request-Id`: an optional request header every operation takes, and a header every
/// answer carries (README, "Ledgers and authorization").
fn add_request_id(components: &mut Components) {
    let string = || ObjectBuilder::new().schema_type(SchemaType::Type(Type::String));
    components.parameters.insert(
        REQUEST_ID.to_owned(),
        RefOr::T(
            ParameterBuilder::new()
                .name(REQUEST_ID_HEADER)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                // Any value is taken (a bad one is replaced, never refused), so the schema
                // states no pattern: a pattern would promise a 4xx that never comes.
                .schema(Some(string()))
                .description(Some(
                    "Names the request in logs and audit events; echoed in the answer. One \
                     that is absent or not 1-200 visible ASCII characters is replaced by a new \
                     UUIDv7.",
                ))
                .build(),
        ),
    );
    components.headers.insert(
        REQUEST_ID.to_owned(),
        RefOr::T(
            HeaderBuilder::new()
                .schema(Some(string().pattern(Some("^[!-~]{1,200}$"))))
                .description(Some(
                    "The request's own `X-Request-Id`, or the UUIDv7 ferry gave it.",
                ))
                .build(),
        ),
    );
}

/// References the shared `X-Request-Id` parameter and answer header from one operation (the
/// shared problem responses carry the header themselves).
fn declare_request_id(operation: &mut Operation) {
    operation
        .parameters
        .get_or_insert_with(Vec::new)
        .push(RefOr::Ref(Ref::new(format!(
            "#/components/parameters/{REQUEST_ID}"
        ))));
    for response in operation.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            response.headers.insert(
                REQUEST_ID_HEADER.to_owned(),
                RefOr::Ref(request_id_header()),
            );
        }
    }
}

fn request_id_header() -> Ref {
    Ref::new(format!("#/components/headers/{REQUEST_ID}"))
}

/// The bearer API key scheme, listing the scopes a key can hold.
fn add_security_scheme(components: &mut Components) {
    let scopes = Scope::ALL.map(Scope::as_str).join("`, `");
    components.add_security_scheme(
        API_KEY_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("ferry API key")
                .description(Some(format!(
                    "An API key from `ferry api-key create --name NAME --scopes S1,S2`. \
                     Scopes: `{scopes}` (`admin` grants all). Each operation names the scope \
                     it needs in its security requirement."
                )))
                .build(),
        ),
    );
}

/// One shared problem response: a `Problem` body, and `Retry-After` where it applies.
fn shared_response(shared: &Shared) -> Response {
    let mut response = ResponseBuilder::new()
        .description(shared.description)
        .header_ref(REQUEST_ID_HEADER, request_id_header())
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        );
    if shared.retry_after {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(SchemaType::Type(Type::Integer))
                        .minimum(Some(1)),
                ))
                .description(Some("Seconds to wait before retrying."))
                .build(),
        );
    }
    response.build()
}

/// `BatchTransferItem`: the `TransferRequest` schema plus a required `idempotency_key`.
fn add_batch_item_schema(components: &mut Components) {
    let Some(RefOr::T(Schema::Object(request))) = components.schemas.get("TransferRequest") else {
        return;
    };
    let mut item = request.clone();
    item.description = Some(
        "One item of `POST /v1/transfers/batch`: a `TransferRequest` plus its \
         `idempotency_key`."
            .to_owned(),
    );
    item.properties.insert(
        "idempotency_key".to_owned(),
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .pattern(Some("^[!-~]{1,255}$"))
            .description(Some(
                "Names the transfer for this API key, as the `Idempotency-Key` header does.",
            ))
            .into(),
    );
    item.required.insert(0, "idempotency_key".to_owned());
    components
        .schemas
        .insert("BatchTransferItem".to_owned(), Schema::Object(item).into());
}

/// Every operation can time out; `/v1` operations (those with a security requirement) can
/// also be refused by auth, rate limit, validation and the database; those with a body by its
/// size and media type.
fn add_shared_responses(operation: &mut Operation) {
    let authenticated = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_body = operation.request_body.is_some();
    for shared in SHARED {
        let applies = match shared.status {
            "408" => true,
            "413" | "415" => has_body,
            _ => authenticated,
        };
        if applies {
            operation
                .responses
                .responses
                .entry(shared.status.to_owned())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name(shared.name)));
        }
    }
}
