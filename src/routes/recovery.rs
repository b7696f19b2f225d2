//! `POST /v1/{c}/recovery`: the diff a peer with a given state vector needs (for one document,
//! or the whole collection), and the cursor it corresponds to.

use actix_web::web::{Data, Json};

use crate::auth::extract::{Authorized, Read};
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::routes::AppState;
use crate::wire::{decode, encode, CollectionPath, RecoveryAnswer, RecoveryBody};

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

#[utoipa::path(
    post,
    path = "/v1/{c}/recovery",
    tag = "read",
    operation_id = "recovery",
    summary = "What a peer with this state vector misses",
    description = "For one document, or without `documentId` the whole collection, with the \
                   cursor the diff corresponds to. Needs `read`.",
    params(CollectionPath),
    request_body(content = RecoveryBody, example = json!({"stateVector": "AA==", "documentId": "doc-1"})),
    responses(
        (status = 200, description = "The diff", body = RecoveryAnswer,
            example = json!({"diff": "AQEBAAQBB2NvbnRlbnQCaGkA", "cursor": 3})),
        (status = 409, description = "`conflict` (whole collection only): two documents were \
            written by the same Yjs client id, so no one update can hold both; recover each \
            document by its `documentId`", body = ErrorBody),
        (status = 422, description = "`invalid_yjs`: not a Yjs v1 state vector", body = ErrorBody),
    )
)]
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
