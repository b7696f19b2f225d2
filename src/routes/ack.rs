//! `POST /v1/{c}/ack`: record that a peer has synced through a seq.

use actix_web::web::{Data, Json};

use crate::auth::extract::{Authorized, Read};
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::metrics;
use crate::routes::AppState;
use crate::wire::{json_u64, AckAnswer, AckBody, CollectionPath};

/// The peer and its synced seq.
///
/// # Errors
/// 400 `invalid_argument` for a `syncedSeq` that is negative, fractional, too large, or an
/// integer written as a float (`1.0`, `1e3`, `-0`).
pub fn parse(body: &AckBody) -> Result<(&str, u64), ApiError> {
    Ok((
        body.peer_id.as_str(),
        json_u64("syncedSeq", &body.synced_seq)?,
    ))
}

#[utoipa::path(
    post,
    path = "/v1/{c}/ack",
    tag = "read",
    operation_id = "ack",
    summary = "Record the highest seq a peer has applied",
    description = "Needs `read`; with authentication on, `peerId` must be the token's `sub` or \
                   start with `sub:` (else 403).",
    params(CollectionPath),
    request_body(content = AckBody, example = json!({"peerId": "alice:phone", "syncedSeq": 3})),
    responses(
        (status = 200, description = "Recorded", body = AckAnswer, example = json!({"lastSyncedSeq": 3})),
        (status = 422, description = "`ack_ahead`: `syncedSeq` is above the collection's head", body = ErrorBody),
    )
)]
/// The principal must be the peer (see [`crate::auth::Principal::may_act_as`]): otherwise it
/// could raise another peer's ack, or hold compaction back with made-up peers.
pub async fn ack(
    auth: Authorized<Read>,
    state: Data<AppState>,
    body: Json<AckBody>,
) -> Result<Json<AckAnswer>, ApiError> {
    let (peer_id, synced_seq) = parse(&body)?;
    auth.require_peer(peer_id)?;
    let last_synced_seq = state
        .replicate
        .ack(auth.collection(), peer_id, synced_seq)
        .await?;
    ::metrics::counter!(metrics::ACKS).increment(1);
    Ok(Json(AckAnswer { last_synced_seq }))
}
