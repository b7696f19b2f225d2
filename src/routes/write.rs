//! `POST /v1/{c}/insert`, `/update`, `/delete`: store one Yjs update, answer its seq once it
//! is on disk.

use actix_web::web::{Data, Json};
use replicate_actors::{OperationType, Write};

use crate::auth::extract::{Authorized, Write as NeedWrite};
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::metrics;
use crate::routes::AppState;
use crate::wire::{decode, CollectionPath, WriteAnswer, WriteBody};

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

#[utoipa::path(
    post,
    path = "/v1/{c}/insert",
    tag = "write",
    operation_id = "insert",
    summary = "Insert a document change",
    description = "Stores one Yjs v1 update as an `insert` change of the document and answers its \
                   seq once it is on disk. Needs `write`. A rejected request stores nothing.",
    params(CollectionPath),
    request_body(
        content = WriteBody,
        example = json!({"documentId": "doc-1", "crdtBytes": "AQEBAAQBB2NvbnRlbnQCaGkA", "opId": "client-1:op-1"})
    ),
    responses(
        (status = 200, description = "Stored (or a repeated `opId`: `duplicate: true`, nothing stored)",
            body = WriteAnswer, example = json!({"success": true, "seq": 1, "duplicate": false})),
        (status = 409, description = "`conflict`: the `opId` was used for other bytes", body = ErrorBody),
        (status = 422, description = "`invalid_yjs` (not a Yjs v1 update) or `yjs_limit` (too deep, too costly)", body = ErrorBody),
    )
)]
pub async fn insert(
    auth: Authorized<NeedWrite>,
    state: Data<AppState>,
    body: Json<WriteBody>,
) -> Result<Json<WriteAnswer>, ApiError> {
    write(auth, state, body, OperationType::Insert).await
}

#[utoipa::path(
    post,
    path = "/v1/{c}/update",
    tag = "write",
    operation_id = "update",
    summary = "Update a document",
    description = "Stores one Yjs v1 update as an `update` change of the document and answers its \
                   seq once it is on disk. Needs `write`. A rejected request stores nothing.",
    params(CollectionPath),
    request_body(
        content = WriteBody,
        example = json!({"documentId": "doc-1", "crdtBytes": "AQEBAAQBB2NvbnRlbnQCaGkA", "opId": "client-1:op-1"})
    ),
    responses(
        (status = 200, description = "Stored (or a repeated `opId`: `duplicate: true`, nothing stored)",
            body = WriteAnswer, example = json!({"success": true, "seq": 1, "duplicate": false})),
        (status = 409, description = "`conflict`: the `opId` was used for other bytes", body = ErrorBody),
        (status = 422, description = "`invalid_yjs` (not a Yjs v1 update) or `yjs_limit` (too deep, too costly)", body = ErrorBody),
    )
)]
pub async fn update(
    auth: Authorized<NeedWrite>,
    state: Data<AppState>,
    body: Json<WriteBody>,
) -> Result<Json<WriteAnswer>, ApiError> {
    write(auth, state, body, OperationType::Update).await
}

#[utoipa::path(
    post,
    path = "/v1/{c}/delete",
    tag = "write",
    operation_id = "delete",
    summary = "Delete a document (a Yjs update that deletes)",
    description = "Stores one Yjs v1 update as an `delete` change of the document and answers its \
                   seq once it is on disk. Needs `write`. A rejected request stores nothing.",
    params(CollectionPath),
    request_body(
        content = WriteBody,
        example = json!({"documentId": "doc-1", "crdtBytes": "AQEBAAQBB2NvbnRlbnQCaGkA", "opId": "client-1:op-1"})
    ),
    responses(
        (status = 200, description = "Stored (or a repeated `opId`: `duplicate: true`, nothing stored)",
            body = WriteAnswer, example = json!({"success": true, "seq": 1, "duplicate": false})),
        (status = 409, description = "`conflict`: the `opId` was used for other bytes", body = ErrorBody),
        (status = 422, description = "`invalid_yjs` (not a Yjs v1 update) or `yjs_limit` (too deep, too costly)", body = ErrorBody),
    )
)]
pub async fn delete(
    auth: Authorized<NeedWrite>,
    state: Data<AppState>,
    body: Json<WriteBody>,
) -> Result<Json<WriteAnswer>, ApiError> {
    write(auth, state, body, OperationType::Delete).await
}
