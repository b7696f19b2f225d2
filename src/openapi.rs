//! The OpenAPI 3.1 document of every route: derived with `utoipa` from the wire types
//! ([`crate::wire`], [`crate::error::ErrorBody`]) and the `#[utoipa::path]` annotation on each
//! handler, so it changes with them. Served at `GET /openapi.json`; `replicate-server openapi`
//! prints it, and `docs/openapi.json` is that output, checked by `tests/openapi.rs`.
//!
//! What the annotations do not repeat on every route, [`Contract`] adds: the security
//! schemes and requirements, and the error answers every route shares.

use std::sync::OnceLock;

use serde_json::json;
use utoipa::openapi::link::{Link, LinkBuilder};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, Ref, RefOr, ResponseBuilder, SecurityRequirement,
};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorCode, ErrorDetail};
use crate::routes::{self, ack, batch, compact, events, ops, recovery, state, stream, write, ws};
use crate::wire::{
    AckAnswer, AckBody, Base64, BatchAnswer, BatchBody, BatchError, BatchResult, BatchWrite,
    CompactAnswer, CompactBody, Name, OperationType, RecoveryAnswer, RecoveryBody, StateAnswer,
    StreamAnswer, WireChange, WriteAnswer, WriteBody, WriteOp,
};
use crate::wire_binary::BinaryChanges;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "replicate",
        description = "A durable, ordered, compacting sync log for Yjs documents over HTTP \
            (README.md, \"The HTTP service\"). Bytes are standard padded base64 of Yjs v1 \
            encoding. Every error is `{\"error\":{\"code\",\"message\"}}`; a rejected request \
            stores nothing.\n\n\
            Authentication: with a key configured (`--auth-secret-file`, `--auth-jwks-file`), \
            every route but `/healthz` and `/openapi.json` needs a JWT: `Authorization: Bearer` \
            or `?token=`. Without one, a loopback server serves everyone as `admin`.\n\n\
            Limits: request bodies up to `--body-limit` (default 16 MiB) and Yjs updates up to \
            `--max-update-bytes` once decoded (default 8 MiB), else 413 `too_large`; a body must \
            arrive within `--body-timeout-ms` (408); names are 1 to 256 bytes of UTF-8."
    ),
    paths(
        ops::healthz,
        ops::openapi,
        ops::metrics,
        ops::stats,
        write::insert,
        write::update,
        write::delete,
        batch::batch,
        stream::stream,
        ack::ack,
        compact::compact,
        recovery::recovery,
        state::state,
        events::events,
        ops::collection_stats,
        ws::ws,
    ),
    components(schemas(
        Name,
        Base64,
        OperationType,
        WireChange,
        ErrorBody,
        ErrorDetail,
        ErrorCode,
        WriteBody,
        WriteAnswer,
        WriteOp,
        BatchWrite,
        BatchBody,
        BatchError,
        BatchResult,
        BatchAnswer,
        AckBody,
        AckAnswer,
        CompactBody,
        CompactAnswer,
        RecoveryBody,
        RecoveryAnswer,
        StateAnswer,
        StreamAnswer,
        BinaryChanges,
    )),
    modifiers(&Contract),
    tags(
        (name = "write", description = "Store Yjs updates; compact"),
        (name = "read", description = "Changes, state and recovery; acknowledgements"),
        (name = "websocket", description = "The y-websocket endpoint"),
        (name = "operations", description = "Health, metrics, counters, this document"),
    )
)]
struct ApiDoc;

/// The security schemes, each operation's security requirement, and the shared error answers.
struct Contract;

/// The shared error answers: (status, description). Which apply to an operation depends on
/// how it is reached (below).
const OPEN_ERRORS: &[(&str, &str)] = &[
    ("404", "`not_found`: no such route (also a path that URL normalization changed, like a collection `..`)"),
    ("405", "`method_not_allowed`: another method is served on this path"),
];
const GUARDED_ERRORS: &[(&str, &str)] = &[
    ("401", "`unauthenticated`: no token, or one that does not verify (with `WWW-Authenticate: Bearer`)"),
    ("403", "`forbidden`: the token's grants lack the right this route needs (the message names it)"),
];
const COLLECTION_ERRORS: &[(&str, &str)] = &[
    ("400", "`invalid_name`, `invalid_argument`, `invalid_query`, `invalid_base64`, `invalid_json` or `invalid_body`: the request is malformed; the message says what to fix"),
    ("500", "`storage` or `internal`: the store failed, or a bug"),
    ("503", "`overloaded`, `unavailable`, `shutting_down` (retry; `Retry-After: 1`) or `storage_failed` (until restart)"),
    ("504", "`timeout`: an actor did not answer in time"),
    ("507", "`storage_full`: the disk is full"),
];
const BODY_ERRORS: &[(&str, &str)] = &[
    (
        "408",
        "`request_timeout`: the body did not arrive within `--body-timeout-ms`",
    ),
    (
        "413",
        "`too_large`: body over `--body-limit`, or an update over `--max-update-bytes`",
    ),
];

impl Modify for Contract {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT (HS256 with `--auth-secret-file`, or RS256/ES256/EdDSA from \
                         `--auth-jwks-file`) with `sub`, `exp` and grants in the `replicate` \
                         claim: `{\"grants\":{\"todos\":\"write\",\"team-a/*\":\"read\"}}`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same JWT as a query parameter, for clients that cannot set headers \
                 (EventSource, WebSocket).",
            ))),
        );
        let secured = vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("token", Vec::<String>::new()),
        ];
        let error = |description: &str, extra_header: Option<&str>| {
            let mut response = ResponseBuilder::new().description(description).content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))))
                    .build(),
            );
            if let Some(name) = extra_header {
                response = response.header(name, HeaderBuilder::new().build());
            }
            response.build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            let operations: [Option<&mut Operation>; 2] = [item.get.as_mut(), item.post.as_mut()];
            for (method, op) in ["GET", "POST"].iter().zip(operations) {
                let Some(op) = op else { continue };
                let spec = routes::routes()
                    .into_iter()
                    .find(|r| r.path == path && r.method == *method);
                let open = matches!(
                    spec.map(|r| r.access),
                    Some(crate::auth::extract::Access::Open)
                );
                let mut shared: Vec<(&str, &str)> = OPEN_ERRORS.to_vec();
                if !open {
                    op.security = Some(secured.clone());
                    shared.extend_from_slice(GUARDED_ERRORS);
                }
                if path.starts_with("/v1/") {
                    shared.extend_from_slice(COLLECTION_ERRORS);
                }
                if *method == "POST" {
                    shared.extend_from_slice(BODY_ERRORS);
                }
                add_links(op);
                for (status, description) in shared {
                    if op.responses.responses.contains_key(status) {
                        continue;
                    }
                    let header = match status {
                        "401" => Some("WWW-Authenticate"),
                        "503" => Some("Retry-After"),
                        "405" => Some("Allow"),
                        _ => None,
                    };
                    op.responses
                        .responses
                        .insert(status.to_string(), RefOr::T(error(description, header)));
                }
            }
        }
    }
}

/// Links between operations where one's answer (or request) feeds the next, so a reader, and
/// schemathesis's stateful phase, can follow a sync session: a write, then `stream` of that
/// collection and `compact` of that document; a page, then `ack` of its cursor.
fn add_links(op: &mut Operation) {
    let same_collection = |to: &str| {
        LinkBuilder::new()
            .operation_id(to)
            .parameter("c", "$request.path.c")
    };
    let links: Vec<(&str, Link)> = match op.operation_id.as_deref() {
        Some("insert" | "update" | "delete") => vec![
            (
                "StreamTheCollection",
                same_collection("stream")
                    .description("The changes of the collection the write went to.")
                    .build(),
            ),
            (
                "CompactTheDocument",
                same_collection("compact")
                    .request_body(Some(json!({ "documentId": "$request.body#/documentId" })))
                    .description("Compact the document the write went to.")
                    .build(),
            ),
        ],
        Some("batch") => vec![(
            "StreamTheCollection",
            same_collection("stream")
                .description("The changes of the collection the writes went to.")
                .build(),
        )],
        Some("stream") => vec![(
            "AckTheCursor",
            same_collection("ack")
                .request_body(Some(
                    json!({ "peerId": "fuzz", "syncedSeq": "$response.body#/cursor" }),
                ))
                .description("Acknowledge the page's cursor (`peerId` must be the token's `sub`).")
                .build(),
        )],
        _ => return,
    };
    if let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200") {
        for (name, link) in links {
            ok.links.insert(name.to_string(), RefOr::T(link));
        }
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as pretty-printed JSON with a final newline (what `/openapi.json` serves and
/// `docs/openapi.json` holds), built once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut text = document()
            .to_pretty_json()
            .expect("the OpenAPI document serializes");
        text.push('\n');
        text
    })
}
