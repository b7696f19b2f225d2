//! Transport limits of the front, so that no client holds memory for long by sending or
//! reading slowly:
//!
//! - [`body_deadline`]: middleware giving every request body a deadline; a body still
//!   arriving when it passes fails with [`BodyTimedOut`], which the JSON extractor's error
//!   handler answers 408 `request_timeout` (see [`crate::error::json_error`]). Dropping the
//!   extractor drops what was buffered, and actix closes the connection, since the rest of
//!   the body is unread.
//! - [`set_write_timeout`]: on each new connection, `TCP_USER_TIMEOUT`, so a connection whose
//!   client stopped reading its answer is reset by the kernel and the answer freed.
//!
//! Head, keep-alive and linger timeouts are actix-web's own (set in [`crate::server::run`]).
//! Together with `body_limit` they bound what one connection can pin: at most `body_limit`
//! bytes for at most `body_timeout` while a request arrives, and at most one answer for about
//! `write_timeout` (up to twice that, see [`crate::ServerSettings::write_timeout`]) while it
//! leaves.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::HttpMessage as _;
use futures::Stream;
use tokio::time::Sleep;

/// The error a request body fails with once its deadline passed. It travels as the inner
/// error of an `io::Error` of kind `TimedOut` inside [`PayloadError::Io`], the only shape a
/// payload stream can fail with; [`is_body_timeout`] recognises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTimedOut {
    pub after: Duration,
}

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} ms",
            self.after.as_millis()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// The [`BodyTimedOut`] inside `e`, if `e` is a body deadline that passed.
pub fn is_body_timeout(e: &PayloadError) -> Option<BodyTimedOut> {
    match e {
        PayloadError::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<BodyTimedOut>())
            .copied(),
        _ => None,
    }
}

/// A payload stream that fails once `deadline` passes, however fast its pieces come.
struct Deadline {
    inner: Payload,
    deadline: Pin<Box<Sleep>>,
    after: Duration,
    expired: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(None);
        }
        // The deadline first: a client trickling a byte at a time always has a piece ready,
        // so checking it only when the body is pending would never fire.
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired = true;
            let err = io::Error::new(io::ErrorKind::TimedOut, BodyTimedOut { after: this.after });
            return Poll::Ready(Some(Err(PayloadError::Io(err))));
        }
        Pin::new(&mut this.inner).poll_next(cx)
    }
}

/// Middleware: the request body must arrive within `timeout` of the end of its headers.
/// Requests without a body, and WebSocket upgrades, pass untouched (no timer).
pub async fn body_deadline(
    timeout: Duration,
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let payload = req.take_payload();
    // A WebSocket's payload is the socket itself, open for as long as the connection lives;
    // `crate::ws` bounds it instead (message size, pings, queues).
    if matches!(payload, Payload::None) || is_websocket_upgrade(&req) {
        req.set_payload(payload);
    } else {
        let stream = Deadline {
            inner: payload,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            after: timeout,
            expired: false,
        };
        req.set_payload(Payload::Stream {
            payload: Box::pin(stream),
        });
    }
    next.call(req).await
}

/// Whether `req` asks to become a WebSocket (`Upgrade: websocket`).
fn is_websocket_upgrade(req: &ServiceRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// `HttpServer::on_connect` callback: sets `TCP_USER_TIMEOUT` on a plain TCP connection, so
/// the kernel resets it once sent data stays unacknowledged, or unsent behind a closed receive
/// window, for `timeout`. Other connection types (TLS, Unix sockets) and other platforms are
/// left alone; a failure is logged, not fatal (the connection still works, unbounded).
pub fn set_write_timeout(conn: &dyn Any, timeout: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            return;
        };
        if let Err(e) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(timeout)) {
            tracing::warn!(
                error = %e,
                "cannot set TCP_USER_TIMEOUT; a client that stops reading keeps its answer"
            );
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (conn, timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[actix_rt::test]
    async fn deadline_fails_a_body_that_keeps_coming() {
        // A body that always has a piece ready: the deadline must still fire.
        let endless =
            futures::stream::repeat_with(|| Ok::<_, PayloadError>(Bytes::from_static(b"x"))).then(
                |piece| async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    piece
                },
            );
        let after = Duration::from_millis(50);
        let mut stream = Deadline {
            inner: Payload::Stream {
                payload: Box::pin(endless),
            },
            deadline: Box::pin(tokio::time::sleep(after)),
            after,
            expired: false,
        };
        let mut pieces = 0;
        let err = loop {
            match stream.next().await {
                Some(Ok(_)) => pieces += 1,
                Some(Err(e)) => break e,
                None => panic!("the stream ended without the deadline error"),
            }
        };
        assert!(pieces > 0, "pieces before the deadline are delivered");
        assert_eq!(is_body_timeout(&err), Some(BodyTimedOut { after }));
        assert!(stream.next().await.is_none(), "nothing after the error");
    }

    #[actix_rt::test]
    async fn deadline_passes_a_body_that_ends_in_time() {
        let body = futures::stream::iter([
            Ok::<_, PayloadError>(Bytes::from_static(b"ab")),
            Ok(Bytes::from_static(b"c")),
        ]);
        let after = Duration::from_secs(60);
        let stream = Deadline {
            inner: Payload::Stream {
                payload: Box::pin(body),
            },
            deadline: Box::pin(tokio::time::sleep(after)),
            after,
            expired: false,
        };
        let pieces: Vec<_> = stream.collect().await;
        assert_eq!(pieces.len(), 2);
        assert!(pieces.iter().all(Result::is_ok));
    }

    #[test]
    fn other_payload_errors_are_not_timeouts() {
        assert_eq!(is_body_timeout(&PayloadError::Overflow), None);
        let plain = PayloadError::Io(io::Error::new(io::ErrorKind::TimedOut, "elsewhere"));
        assert_eq!(is_body_timeout(&plain), None);
    }
}
