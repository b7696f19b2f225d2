//! `POST /v1/{c}/insert`, `/update`, `/delete`: store one Yjs update, answer its seq once it
//! is on disk.

use actix_web::web::{Data, Json};
use replicate_actors::{OperationType, Write};

use crate::auth::extract::{Authorized, Write as NeedWrite};
use crate::error::ApiError;
use crate::metrics;
use crate::routes::AppState;
use crate::wire::{decode, WriteAnswer, WriteBody};

/// Turns the wire body into a [`Write`]; names and bytes are then checked by the actors
/// (naming rule, size cap, Yjs decoding) before anything is stored.
///
/// # Errors
/// 400 `invalid_base64` for `crdtBytes` that is not standard padded base64.
pub fn parse(body: WriteBody) -> Result<Write, ApiError> {
    Ok(Write {
        bytes: decode("crdtBytes", &body.crdt_bytes)?,
        document_id: body.document_id,
        op_id: body.op_id,
    })
}

async fn write(
    auth: Authorized<NeedWrite>,
    state: Data<AppState>,
    body: Json<WriteBody>,
    op: OperationType,
) -> Result<Json<WriteAnswer>, ApiError> {
    let write = parse(body.into_inner())?;
    let size = write.bytes.len() as u64;
    let written = state.replicate.write(auth.collection(), op, write).await?;
    if written.duplicate {
        ::metrics::counter!(metrics::DUPLICATE_WRITES).increment(1);
    } else {
        ::metrics::counter!(metrics::APPENDS, "operation" => op.as_str()).increment(1);
        ::metrics::counter!(metrics::APPENDED_BYTES).increment(size);
    }
    Ok(Json(WriteAnswer {
        success: true,
        seq: written.seq,
        duplicate: written.duplicate,
    }))
}

pub async fn insert(
    auth: Authorized<NeedWrite>,
    state: Data<AppState>,
    body: Json<WriteBody>,
) -> Result<Json<WriteAnswer>, ApiError> {
    write(auth, state, body, OperationType::Insert).await
}

pub async fn update(
    auth: Authorized<NeedWrite>,
    state: Data<AppState>,
    body: Json<WriteBody>,
) -> Result<Json<WriteAnswer>, ApiError> {
    write(auth, state, body, OperationType::Update).await
}

pub async fn delete(
    auth: Authorized<NeedWrite>,
    state: Data<AppState>,
    body: Json<WriteBody>,
) -> Result<Json<WriteAnswer>, ApiError> {
    write(auth, state, body, OperationType::Delete).await
}
