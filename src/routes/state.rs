//! `GET /v1/{c}/state`: the whole collection merged into one Yjs update, with its cursor.

use actix_web::web::{Data, Json};

use crate::auth::extract::{Authorized, Read};
use crate::error::{ApiError, ErrorBody};
use crate::routes::AppState;
use crate::wire::{encode, CollectionPath, StateAnswer};

#[utoipa::path(
    get,
    path = "/v1/{c}/state",
    tag = "read",
    operation_id = "state",
    summary = "The whole collection merged into one update",
    description = "Each document's state, merged into one update. Needs `read`.",
    params(CollectionPath),
    responses(
        (status = 200, description = "The state and its cursor", body = StateAnswer,
            example = json!({"crdtBytes": "AQEBAAQBB2NvbnRlbnQCaGkA", "cursor": 3})),
        (status = 409, description = "`conflict`: two documents were written by the same Yjs \
            client id, so no one update can hold both; recover each document by its \
            `documentId`, or stream from cursor 0", body = ErrorBody),
    )
)]
pub async fn state(
    auth: Authorized<Read>,
    state: Data<AppState>,
) -> Result<Json<StateAnswer>, ApiError> {
    let at = state.replicate.state(auth.collection()).await?;
    Ok(Json(StateAnswer {
        crdt_bytes: encode(&at.update),
        cursor: at.cursor,
    }))
}
