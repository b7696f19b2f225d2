//! `GET /v1/{c}/events?cursor=` (or `Last-Event-ID`): Server-Sent Events, one change per
//! event, same order and snapshot-on-gap guarantee as `stream`. See [`crate::sse`] for ids.
//! With `Accept: application/vnd.replicate.changes`, the same feed as binary records in a
//! streaming body instead (see [`crate::wire_binary`]).

use std::time::Duration;

use actix_web::http::header;
use actix_web::web::{Data, Query};
use actix_web::{HttpRequest, HttpResponse};
use replicate_actors::{StreamRequest, MAX_STREAM_LIMIT};

use crate::auth::extract::{Authorized, Read};
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::routes::AppState;
use crate::sse::{self, FeedFormat};
use crate::wire::{query_param, query_u64, CollectionPath, EventsQuery};
use crate::wire_binary;
use crate::wire_binary::BinaryChanges;

/// The starting cursor: `Last-Event-ID` when present (a reconnect), else `?cursor=`, else 0.
///
/// # Errors
/// 400 `invalid_argument` for a value that is not a non-negative integer.
pub fn parse(req: &HttpRequest, pairs: &[(String, String)]) -> Result<u64, ApiError> {
    if let Some(value) = req.headers().get("last-event-id") {
        let text = value
            .to_str()
            .map_err(|_| ApiError::invalid_argument("Last-Event-ID", "must be ASCII digits"))?;
        return query_u64("Last-Event-ID", text.trim());
    }
    match query_param(pairs, "cursor")? {
        None | Some("") => Ok(0),
        Some(v) => query_u64("cursor", v),
    }
}

#[utoipa::path(
    get,
    path = "/v1/{c}/events",
    tag = "read",
    operation_id = "events",
    summary = "Server-Sent Events from a cursor, one change per event",
    description = "The same changes as `stream`, pushed as they commit; the body does not end \
                   while the server runs. Each event's `data:` is a change object as in `stream` \
                   (`Change`), its `id:` a cursor to resume from (sent back as `Last-Event-ID`). \
                   `: keepalive` every 15 s; `event: error` with the error JSON ends the stream \
                   (e.g. `unauthenticated` when the token expires). With `Accept: \
                   application/vnd.replicate.changes`, a streaming body of binary records \
                   instead (README.md). Needs `read`.",
    params(
        CollectionPath,
        EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "A cursor (decimal digits) to resume from; takes precedence over `cursor`"),
    ),
    responses(
        (status = 200, description = "An endless event stream",
            headers(("Cache-Control" = String, description = "`no-cache`")),
            content(
                (String = "text/event-stream", example = json!("id: 1\ndata: {\"documentId\":\"doc-1\",\"seq\":1,\"crdtBytes\":\"AQEBAAQBB2NvbnRlbnQCaGkA\",\"operationType\":\"insert\"}\n\n")),
                (BinaryChanges = "application/vnd.replicate.changes")
            )),
        (status = 422, description = "`cursor_ahead`: the cursor is above the collection's head", body = ErrorBody),
    )
)]
/// The stream ends with an `unauthenticated` error event when the token expires.
pub async fn events(
    auth: Authorized<Read>,
    state: Data<AppState>,
    req: HttpRequest,
    query: Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let cursor = parse(&req, &query)?;
    let c = auth.collection().0.clone();
    let expires = state
        .auth
        .remaining(&auth.principal)
        .map(|left| tokio::time::Instant::now() + left);
    // The first page is read before answering, so a bad name or cursor gets its 4xx.
    let first_req = StreamRequest {
        cursor,
        limit: MAX_STREAM_LIMIT,
        size_threshold: None,
        wait: Duration::ZERO,
    };
    let first = state.replicate.stream(&c, first_req).await?;
    let (format, content_type) = if wire_binary::wants_binary(req.headers()) {
        (FeedFormat::Binary, wire_binary::MEDIA_TYPE)
    } else {
        (FeedFormat::Sse, "text/event-stream")
    };
    let body = sse::events(
        state.replicate.clone(),
        c,
        cursor,
        first,
        state.settings.sse_heartbeat,
        state.shutdown.clone(),
        expires,
        format,
    );
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::VARY, "Accept"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}
