//! `GET /v1/{c}/stream?cursor=&limit=&sizeThreshold=&waitMs=`: one page of changes after the
//! cursor; with `waitMs` > 0 and nothing new, a long poll until a commit or the time ends.
//! JSON by default; the binary form of [`crate::wire_binary`] when `Accept` asks for it.

use std::time::Duration;

use actix_web::web::{Data, Query};
use actix_web::{HttpRequest, HttpResponse};
use replicate_actors::{StreamRequest, DEFAULT_STREAM_LIMIT, MAX_STREAM_LIMIT};

use crate::auth::extract::{Authorized, Read};
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::metrics::{self, GaugeGuard};
use crate::routes::AppState;
use crate::wire::{query_param, query_u64, CollectionPath, StreamAnswer, StreamQuery};
use crate::wire_binary;
use crate::wire_binary::BinaryChanges;

/// A query number, or `None` when absent or empty (`?cursor=` means the default).
fn number(pairs: &[(String, String)], name: &str) -> Result<Option<u64>, ApiError> {
    match query_param(pairs, name)? {
        None | Some("") => Ok(None),
        Some(v) => query_u64(name, v).map(Some),
    }
}

/// Parses the query into a [`StreamRequest`]. Unknown parameters are ignored.
///
/// # Errors
/// 400 `invalid_argument` for a number that is negative, not a number, too large, or (for
/// `limit`) outside 1..=1000; 400 `invalid_query` for a repeated parameter.
pub fn parse(pairs: &[(String, String)]) -> Result<StreamRequest, ApiError> {
    let cursor = number(pairs, "cursor")?.unwrap_or(0);
    let limit = match number(pairs, "limit")? {
        None => DEFAULT_STREAM_LIMIT,
        Some(n) if (1..=MAX_STREAM_LIMIT as u64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid_argument(
                "limit",
                format!("must be between 1 and {MAX_STREAM_LIMIT}, got {n}"),
            ))
        }
    };
    let size_threshold = number(pairs, "sizeThreshold")?;
    let wait = Duration::from_millis(number(pairs, "waitMs")?.unwrap_or(0));
    Ok(StreamRequest {
        cursor,
        limit,
        size_threshold,
        wait,
    })
}

#[utoipa::path(
    get,
    path = "/v1/{c}/stream",
    tag = "read",
    operation_id = "stream",
    summary = "One page of changes after a cursor (optionally a long poll)",
    description = "Snapshots of documents whose deltas were compacted since `cursor`, then deltas \
                   in seq order. Apply every change, then record `cursor`. JSON by default; with \
                   `Accept: application/vnd.replicate.changes` the binary page of README.md \
                   (`preamble PAGE CHANGE×count`). Needs `read`.",
    params(CollectionPath, StreamQuery),
    responses(
        (status = 200, description = "A page of changes",
            headers(("Vary" = String, description = "`Accept`: the form follows it")),
            content(
                (StreamAnswer = "application/json", example = json!({
                    "changes": [{"documentId": "doc-1", "seq": 1, "crdtBytes": "AQEBAAQBB2NvbnRlbnQCaGkA", "operationType": "insert"}],
                    "cursor": 1, "hasMore": false, "compact": null})),
                (BinaryChanges = "application/vnd.replicate.changes")
            )),
        (status = 422, description = "`cursor_ahead`: `cursor` is above the collection's head", body = ErrorBody),
    )
)]
/// A long poll waits at most until the token expires: it then answers what there is, and the
/// client's next request meets the expiry.
pub async fn stream(
    auth: Authorized<Read>,
    state: Data<AppState>,
    http: HttpRequest,
    query: Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let mut req = parse(&query)?;
    if let Some(left) = state.auth.remaining(&auth.principal) {
        req.wait = req.wait.min(left);
    }
    let c = auth.collection();
    let _waiting = (!req.wait.is_zero()).then(|| GaugeGuard::new(metrics::WAITERS));
    let page = match state
        .until_shutdown(state.replicate.stream(c, req.clone()))
        .await
    {
        Some(page) => page?,
        // Shutting down: answer what is there now rather than hold the connection open.
        None => {
            state
                .replicate
                .stream(
                    c,
                    StreamRequest {
                        wait: Duration::ZERO,
                        ..req
                    },
                )
                .await?
        }
    };
    ::metrics::counter!(metrics::STREAM_REQUESTS).increment(1);
    ::metrics::counter!(metrics::STREAM_CHANGES).increment(page.changes.len() as u64);
    // The answer varies by `Accept`: caches must not hand one form to a client of the other.
    let mut answer = HttpResponse::Ok();
    answer.insert_header((actix_web::http::header::VARY, "Accept"));
    if wire_binary::wants_binary(http.headers()) {
        let body = wire_binary::encode_page(&page)?;
        return Ok(answer.content_type(wire_binary::MEDIA_TYPE).body(body));
    }
    Ok(answer.json(StreamAnswer::from(&page)))
}
