//! `GET /v1/{c}/state`: the whole collection merged into one Yjs update, with its cursor.

use actix_web::web::{Data, Json};

use crate::auth::extract::{Authorized, Read};
use crate::error::ApiError;
use crate::routes::AppState;
use crate::wire::{encode, CollectionPath, StateAnswer};

#[utoipa::path(
    get,
    path = "/v1/{c}/state",
    tag = "read",
    operation_id = "state",
    summary = "The whole collection merged into one update",
    description = "Needs `read`.",
    params(CollectionPath),
    responses(
        (status = 200, description = "The state and its cursor", body = StateAnswer,
            example = json!({"crdtBytes": "AQEBAAQBB2NvbnRlbnQCaGkA", "cursor": 3})),
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
