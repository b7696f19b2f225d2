//! `POST /v1/{c}/compact`: merge a document's deltas (and an optional client snapshot) into
//! its snapshot and delete the deltas every active peer has acknowledged.

use std::time::Duration;

use actix_web::web::{Data, Json};
use replicate_actors::CompactRequest;

use crate::auth::extract::{Authorized, Write};
use crate::auth::Right;
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::metrics;
use crate::routes::AppState;
use crate::wire::{decode, json_u64, CollectionPath, CompactAnswer, CompactBody};

/// # Errors
/// 400 `invalid_base64` for `snapshotBytes` / `stateVector`; 400 `invalid_argument` for a
/// `peerTimeout` (milliseconds) that is negative, fractional or too large.
pub fn parse(body: CompactBody) -> Result<CompactRequest, ApiError> {
    Ok(CompactRequest {
        snapshot: body
            .snapshot_bytes
            .as_deref()
            .map(|s| decode("snapshotBytes", s))
            .transpose()?,
        state_vector: body
            .state_vector
            .as_deref()
            .map(|s| decode("stateVector", s))
            .transpose()?,
        peer_timeout: body
            .peer_timeout
            .as_ref()
            .map(|n| json_u64("peerTimeout", n).map(Duration::from_millis))
            .transpose()?,
        document_id: body.document_id,
    })
}

#[utoipa::path(
    post,
    path = "/v1/{c}/compact",
    tag = "write",
    operation_id = "compact",
    summary = "Compact one document",
    description = "Merges the document's deltas (and an optional client snapshot) into its \
                   snapshot and deletes the deltas every active peer has acknowledged. Needs \
                   `write`; `peerTimeout` or `snapshotBytes` need `admin`.",
    params(CollectionPath),
    request_body(content = CompactBody, example = json!({"documentId": "doc-1", "peerTimeout": 600000})),
    responses(
        (status = 200, description = "Compacted", body = CompactAnswer,
            example = json!({"success": true, "removed": 3, "retained": 0, "snapshotSeq": 3})),
        (status = 409, description = "`conflict`: a compaction kept racing another on the same document; retry", body = ErrorBody),
        (status = 422, description = "`invalid_yjs` or `yjs_limit`: the snapshot or state vector is not usable", body = ErrorBody),
    )
)]
/// `write` compacts as the server's peer timeout allows; choosing the peer timeout (which can
/// delete deltas active peers still need) or offering a snapshot takes `admin`.
pub async fn compact(
    auth: Authorized<Write>,
    state: Data<AppState>,
    body: Json<CompactBody>,
) -> Result<Json<CompactAnswer>, ApiError> {
    if body.peer_timeout.is_some() || body.snapshot_bytes.is_some() {
        auth.require(Right::Admin, "compact with peerTimeout or snapshotBytes")?;
    }
    let req = parse(body.into_inner())?;
    let done = state.replicate.compact(auth.collection(), req).await?;
    ::metrics::counter!(metrics::COMPACTIONS).increment(1);
    ::metrics::counter!(metrics::DELTAS_REMOVED).increment(done.removed);
    Ok(Json(CompactAnswer {
        success: true,
        removed: done.removed,
        retained: done.retained,
        snapshot_seq: done.snapshot_seq,
    }))
}
