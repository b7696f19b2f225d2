//! `POST /v1/{c}/ack`: record that a peer has synced through a seq.

use actix_web::web::{Data, Json};

use crate::error::ApiError;
use crate::metrics;
use crate::routes::{AppState, Collection};
use crate::wire::{json_u64, AckAnswer, AckBody};

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

pub async fn ack(
    state: Data<AppState>,
    c: Collection,
    body: Json<AckBody>,
) -> Result<Json<AckAnswer>, ApiError> {
    let (peer_id, synced_seq) = parse(&body)?;
    let last_synced_seq = state.replicate.ack(&c, peer_id, synced_seq).await?;
    ::metrics::counter!(metrics::ACKS).increment(1);
    Ok(Json(AckAnswer { last_synced_seq }))
}
