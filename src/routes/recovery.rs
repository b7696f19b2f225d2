//! `POST /v1/{c}/recovery`: the diff a peer with a given state vector needs (for one document,
//! or the whole collection), and the cursor it corresponds to.

use actix_web::web::{Data, Json};

use crate::auth::extract::{Authorized, Read};
use crate::error::ApiError;
use crate::routes::AppState;
use crate::wire::{decode, encode, RecoveryAnswer, RecoveryBody};

/// The decoded state vector and the optional document.
///
/// # Errors
/// 400 `invalid_base64` for a `stateVector` that is not standard padded base64.
pub fn parse(body: &RecoveryBody) -> Result<(Vec<u8>, Option<&str>), ApiError> {
    Ok((
        decode("stateVector", &body.state_vector)?,
        body.document_id.as_deref(),
    ))
}

pub async fn recovery(
    auth: Authorized<Read>,
    state: Data<AppState>,
    body: Json<RecoveryBody>,
) -> Result<Json<RecoveryAnswer>, ApiError> {
    let (state_vector, document_id) = parse(&body)?;
    let at = state
        .replicate
        .recovery(auth.collection(), &state_vector, document_id)
        .await?;
    Ok(Json(RecoveryAnswer {
        diff: encode(&at.update),
        cursor: at.cursor,
    }))
}
