//! `GET /v1/{c}/state`: the whole collection merged into one Yjs update, with its cursor.

use actix_web::web::{Data, Json};

use crate::error::ApiError;
use crate::routes::{AppState, Collection};
use crate::wire::{encode, StateAnswer};

pub async fn state(state: Data<AppState>, c: Collection) -> Result<Json<StateAnswer>, ApiError> {
    let at = state.replicate.state(&c).await?;
    Ok(Json(StateAnswer {
        crdt_bytes: encode(&at.update),
        cursor: at.cursor,
    }))
}
