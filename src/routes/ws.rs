//! `GET /v1/{c}/ws/{documentId}`: the y-websocket endpoint (see [`crate::ws`]). Needs `read`
//! on the collection to connect; updates also need `write` (checked per update, so a reader
//! can still sync and share awareness).

use actix_web::web::{Data, Payload};
use actix_web::{HttpRequest, HttpResponse};

use crate::auth::extract::{Access, Authorized, Read};
use crate::auth::Right;
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::routes::AppState;
use crate::wire::{path_segment, DocumentPath};
use crate::ws::close::Closer;
use crate::ws::connection::{self, Connection};
use crate::ws::outbox::outbox;
use crate::ws::room::Link;

/// The document named in the path's last segment, decoded strictly (the naming rule itself
/// is checked by the actors when the room loads).
fn document_id(req: &HttpRequest) -> Result<String, ApiError> {
    let raw = req
        .uri()
        .path()
        .rsplit_once('/')
        .map(|(_, d)| d)
        .unwrap_or_default();
    path_segment("documentId", raw)
}

#[utoipa::path(
    get,
    path = "/v1/{c}/ws/{documentId}",
    tag = "websocket",
    operation_id = "websocket",
    summary = "y-websocket: sync and awareness of one document over a WebSocket",
    description = "A WebSocket upgrade (RFC 6455: `Connection: Upgrade`, `Upgrade: websocket`, \
                   `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Key`) speaking the y-protocols \
                   messages of the `y-websocket` provider (binary frames). Needs `read`; edits \
                   need `write`. Browsers pass the token as `?token=`. Close codes: 4400 not a \
                   y-protocols message, 4401 token expired, 4403 a reader's edit, 4413 too \
                   large, 4422 refused update, 1013 overloaded or too slow, 1001 shutdown.",
    params(DocumentPath),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open"),
        (status = 400, description = "`not_websocket`: not a WebSocket upgrade; or a bad name", body = ErrorBody),
    )
)]
pub async fn ws(
    auth: Authorized<Read>,
    state: Data<AppState>,
    req: HttpRequest,
    body: Payload,
) -> Result<HttpResponse, ApiError> {
    let document = document_id(&req)?;
    let collection = auth.collection().0.clone();
    let can_write = Access::Collection(Right::Write).allows(&auth.principal, Some(&collection));
    let (response, session, stream) = actix_ws::handle(&req, body).map_err(|e| {
        let status = e.error_response().status();
        ApiError::new(
            status,
            "not_websocket",
            format!("expected a WebSocket upgrade: {e}"),
        )
    })?;
    let hub = &state.ws;
    let settings = &hub.settings;
    let (tx, rx) = outbox(
        settings.send_queue,
        settings.send_queue_bytes,
        hub.stats.clone(),
    );
    let closer = Closer::default();
    let link = Link {
        tx: tx.clone(),
        closer: closer.clone(),
    };
    let member = hub
        .join(
            &state.replicate,
            &state.shutdown,
            &collection,
            &document,
            link,
        )
        .await?;
    let expires = state
        .auth
        .remaining(&auth.principal)
        .map(|left| tokio::time::Instant::now() + left);
    let conn = Connection {
        member,
        replicate: state.replicate.clone(),
        can_write,
        tx,
        closer,
        expires,
        shutdown: state.shutdown.clone(),
        stats: hub.stats.clone(),
        max_message_bytes: settings.max_message_bytes,
    };
    // The server speaks first: its step 1, then the awareness states already known.
    let sv = conn.member.room.state_vector().await?;
    let hello = conn.send(crate::ws::protocol::step1(sv));
    let states = conn.member.room.awareness_now();
    if let Some(close) = hello
        .err()
        .or_else(|| states.and_then(|s| conn.send(s).err()))
    {
        conn.closer.close(close);
    }
    let max = settings.max_message_bytes;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    connection::spawn(conn, rx, session, stream, settings.ping_interval);
    Ok(response)
}
