//! `POST /v1/{c}/batch`: many writes of one collection in one request. Each write is checked
//! on its own and gets its own result; the accepted ones are stored in one commit with
//! consecutive seqs in request order, answered once on disk. An app coming back online sends
//! its queued edits in a few requests instead of one round trip each.

use actix_web::web::{Data, Json};
use replicate_actors::{OperationType, Written, MAX_BATCH_WRITES};

use crate::auth::extract::{Authorized, Write as NeedWrite};
use crate::error::{ApiError, ErrorBody};
use crate::metrics;
use crate::routes::write::parse;
use crate::routes::AppState;
use crate::wire::{BatchAnswer, BatchBody, BatchError, BatchResult, CollectionPath, WriteOp};

fn operation(op: WriteOp) -> OperationType {
    match op {
        WriteOp::Insert => OperationType::Insert,
        WriteOp::Update => OperationType::Update,
        WriteOp::Delete => OperationType::Delete,
    }
}

fn refused(e: ApiError) -> BatchResult {
    BatchResult::Refused {
        error: BatchError {
            code: e.code.to_string(),
            message: e.message,
        },
    }
}

#[utoipa::path(
    post,
    path = "/v1/{c}/batch",
    tag = "write",
    operation_id = "batch",
    summary = "Store many writes in one commit",
    description = "Stores 1 to 1,000 writes (each what `insert`, `update` or `delete` takes, with \
                   `op` naming which) in one commit. Each write is checked on its own: its \
                   result is `{seq, duplicate}` or the `{error: {code, message}}` the \
                   single-write route would answer, in request order. The accepted writes get \
                   consecutive seqs in request order. A repeated `opId` (also within the batch) \
                   answers the first write's seq with `duplicate: true`. The answer comes once \
                   everything is on disk; when the commit fails, the request fails as a whole \
                   (503 `storage_failed`) and nothing of it is stored. Needs `write`.",
    params(CollectionPath),
    request_body(content = BatchBody),
    responses(
        (status = 200, description = "One result per write, in order", body = BatchAnswer),
        (status = 413, description = "`too_large`: the body is over `--body-limit`", body = ErrorBody),
    )
)]
pub async fn batch(
    auth: Authorized<NeedWrite>,
    state: Data<AppState>,
    body: Json<BatchBody>,
) -> Result<Json<BatchAnswer>, ApiError> {
    let body = body.into_inner();
    let count = body.writes.len();
    if count == 0 || count > MAX_BATCH_WRITES {
        return Err(ApiError::invalid_argument(
            "writes",
            format!("must hold 1 to {MAX_BATCH_WRITES} writes, got {count}"),
        ));
    }
    let mut results: Vec<Option<BatchResult>> = Vec::with_capacity(count);
    let mut writes = Vec::with_capacity(count);
    let mut sizes = Vec::with_capacity(count);
    for w in body.writes {
        match parse(w.write) {
            Ok(write) => {
                results.push(None);
                sizes.push((operation(w.op), write.bytes.len() as u64));
                writes.push((operation(w.op), write));
            }
            Err(e) => results.push(Some(refused(e))),
        }
    }
    let answers = if writes.is_empty() {
        Vec::new()
    } else {
        state
            .replicate
            .write_batch(auth.collection(), writes)
            .await?
    };
    let mut answers = answers.into_iter().zip(sizes);
    let results = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| match answers.next() {
                Some((answer, size)) => counted(answer, size),
                None => refused(ApiError::from(replicate_actors::Error::Internal(
                    "a batch answer is missing".into(),
                ))),
            })
        })
        .collect();
    Ok(Json(BatchAnswer { results }))
}

/// One write's result, counted in the metrics as the single-write route counts it.
fn counted(
    answer: replicate_actors::Result<Written>,
    (op, size): (OperationType, u64),
) -> BatchResult {
    match answer {
        Ok(w) if w.duplicate => {
            ::metrics::counter!(metrics::DUPLICATE_WRITES).increment(1);
            BatchResult::Stored {
                seq: w.seq,
                duplicate: true,
            }
        }
        Ok(w) => {
            ::metrics::counter!(metrics::APPENDS, "operation" => op.as_str()).increment(1);
            ::metrics::counter!(metrics::APPENDED_BYTES).increment(size);
            BatchResult::Stored {
                seq: w.seq,
                duplicate: false,
            }
        }
        Err(e) => refused(ApiError::from(e)),
    }
}
