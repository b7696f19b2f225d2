//! Why a websocket connection closes, as a close code and a reason the client can read.
//!
//! Codes 4400–4499 mirror the HTTP 4xx answer the same mistake gets over HTTP (`4400` bad
//! message, `4401` token expired, `4403` the grant does not allow it, `4413` too large, `4422`
//! refused update): y-websocket does not reconnect on them, since sending the same thing again
//! cannot help. Overload and slowness use 1013 (try again later) and shutdown 1001 (going
//! away), on which providers reconnect and resync.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_ws::{CloseCode, CloseReason};
use tokio::sync::watch;

use crate::error::ApiError;

/// The longest reason a close frame can carry (RFC 6455: 125 bytes of payload, 2 of them the
/// code).
pub const MAX_REASON_BYTES: usize = 123;

/// A close code and its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
}

impl Close {
    pub fn new(code: u16, reason: impl Into<String>) -> Close {
        Close {
            code,
            reason: truncate(reason.into()),
        }
    }

    /// A message that is not a y-protocols message this server takes.
    pub fn bad_message(why: impl std::fmt::Display) -> Close {
        Close::new(4400, format!("bad message: {why}"))
    }

    /// A message over [`super::WsSettings::max_message_bytes`].
    pub fn too_large(max: usize) -> Close {
        Close::new(4413, format!("message over {max} bytes"))
    }

    /// An update from a connection whose token grants only `read`.
    pub fn read_only(collection: &str) -> Close {
        Close::new(
            4403,
            format!("forbidden: writing needs the write grant on collection {collection:?}"),
        )
    }

    /// The outbound queue was full: the client reads slower than the document changes.
    pub fn slow_consumer() -> Close {
        Close::new(1013, "too slow: outbound queue full; reconnect to resync")
    }

    /// Nothing (not even a pong) arrived for two ping intervals.
    pub fn unresponsive() -> Close {
        Close::new(1001, "no pong within two ping intervals")
    }

    pub fn shutting_down() -> Close {
        Close::new(1001, "server shutting down")
    }

    pub fn expired() -> Close {
        Close::new(
            4401,
            "unauthenticated: the token has expired; get a new one",
        )
    }

    /// The close frame for actix-ws.
    pub fn frame(&self) -> CloseReason {
        CloseReason {
            code: CloseCode::from(self.code),
            description: Some(self.reason.clone()),
        }
    }
}

impl From<ApiError> for Close {
    /// A client mistake keeps its HTTP status in the 44xx range; overload and timeouts ask to
    /// come back later; anything else is an internal error (1011).
    fn from(e: ApiError) -> Close {
        let code = match e.status {
            s if s.is_client_error() => 4000 + s.as_u16(),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => 1013,
            _ => 1011,
        };
        Close::new(code, format!("{}: {}", e.code, e.message))
    }
}

/// The signal that closes one connection: the first reason set wins, and both of the
/// connection's tasks (and the room, for a slow consumer) can set it.
#[derive(Clone)]
pub struct Closer(Arc<watch::Sender<Option<Close>>>);

impl Default for Closer {
    fn default() -> Self {
        Closer(Arc::new(watch::channel(None).0))
    }
}

impl Closer {
    /// Closes with `close` unless a reason was set already.
    pub fn close(&self, close: Close) {
        self.0.send_if_modified(|current| {
            let first = current.is_none();
            if first {
                *current = Some(close);
            }
            first
        });
    }

    /// The reason, once set.
    pub fn reason(&self) -> Option<Close> {
        self.0.borrow().clone()
    }

    /// Resolves once a reason is set (at once if it already is).
    pub async fn closed(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }
}

/// Cuts `reason` to [`MAX_REASON_BYTES`] on a character boundary.
fn truncate(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_close_codes() {
        let cases = [
            (StatusCode::BAD_REQUEST, 4400),
            (StatusCode::FORBIDDEN, 4403),
            (StatusCode::PAYLOAD_TOO_LARGE, 4413),
            (StatusCode::UNPROCESSABLE_ENTITY, 4422),
            (StatusCode::SERVICE_UNAVAILABLE, 1013),
            (StatusCode::GATEWAY_TIMEOUT, 1013),
            (StatusCode::INTERNAL_SERVER_ERROR, 1011),
            (StatusCode::INSUFFICIENT_STORAGE, 1011),
        ];
        for (status, code) in cases {
            let close = Close::from(ApiError::new(status, "x", "y"));
            assert_eq!(close.code, code, "{status}");
        }
    }

    #[test]
    fn reasons_fit_a_close_frame() {
        let long = Close::bad_message("é".repeat(200));
        assert!(long.reason.len() <= MAX_REASON_BYTES);
        assert!(long.reason.starts_with("bad message: é"));
    }
}
