//! [`ApiError`], the front's single `ResponseError`: every failure a client can see, the
//! status it maps to, and the `{"error":{"code","message"}}` body. actix's own extractor
//! errors (JSON, query, path) are routed here too, so no answer has another shape.
//!
//! | status | codes |
//! | --- | --- |
//! | 400 | `invalid_json`, `invalid_base64`, `invalid_argument`, `invalid_name`, `invalid_query`, `invalid_body` |
//! | 401 | `unauthenticated` (no token, or one that does not verify; with `WWW-Authenticate: Bearer`) |
//! | 403 | `forbidden` (the token's grants lack the right the route needs, or an ack as another peer) |
//! | 404 / 405 | `not_found`, `method_not_allowed` |
//! | 408 | `request_timeout` (the body did not arrive within `body_timeout`) |
//! | 409 | `conflict` (a compaction kept losing races, or an op id reused for other bytes) |
//! | 413 | `too_large` (body over the limit, or an update over `max_update_bytes`) |
//! | 422 | `invalid_yjs`, `yjs_limit`, `ack_ahead`, `cursor_ahead` |
//! | 503 | `overloaded`, `shutting_down`, `unavailable`, `storage_failed` (until restart) |
//! | 507 | `storage_full` (the disk is full; until space is freed and the server restarted) |
//! | 504 | `timeout` |
//! | 500 | `storage`, `internal` |

use std::fmt;

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use replicate_actors::durability::{StorageFailure, StorageFailureKind};
use replicate_actors::Error;
use serde::Serialize;

/// The body of every error answer. Only a schema: answers are written by [`ApiError`].
#[derive(utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "invalid_argument", "message": "invalid limit: must be between 1 and 1000, got 0"}}))]
#[allow(dead_code)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable `code` to act on and a message for a person.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// Says what to fix.
    pub message: String,
}

/// Every `code` an error answer can carry (the table in README.md). Only a schema.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ErrorCode {
    InvalidJson,
    InvalidBase64,
    InvalidArgument,
    InvalidName,
    InvalidQuery,
    InvalidBody,
    NotWebsocket,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    Conflict,
    TooLarge,
    InvalidYjs,
    YjsLimit,
    AckAhead,
    CursorAhead,
    Overloaded,
    ShuttingDown,
    Unavailable,
    StorageFailed,
    StorageFull,
    Timeout,
    Storage,
    Internal,
}

/// An error answer: status, stable code, and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 400 `invalid_argument` for a field with a bad value.
    pub fn invalid_argument(field: &str, reason: impl fmt::Display) -> Self {
        Self::bad_request("invalid_argument", format!("invalid {field}: {reason}"))
    }

    /// 413 for a request body over the configured limit.
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 408 `request_timeout` for a request body that did not arrive within `after`.
    pub fn request_timeout(after: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms; send it faster, or split the \
                 work into smaller requests",
                after.as_millis()
            ),
        )
    }

    /// Whether this answers a storage failure (`storage_full`, `storage_failed`): group commit
    /// stopped taking writes until restart.
    pub fn is_storage_failure(&self) -> bool {
        matches!(self.code, "storage_full" | "storage_failed")
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {path}; see the API in README.md"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// The status for each actor error. Exhaustive on purpose: a new variant must be placed here.
pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidName { .. } | Error::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
        Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::InvalidYjs { .. }
        | Error::YjsLimit { .. }
        | Error::AckAhead { .. }
        | Error::CursorAhead { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::Overloaded { .. }
        | Error::ShuttingDown
        | Error::Relocated
        | Error::Unreachable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        Error::Storage(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        // Sticky until restart (see `replicate_actors::durability`): 507 names the cause a
        // client or operator can act on, 503 says the service cannot take writes right now.
        Error::StorageFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
        Error::StorageFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
        // Only this write failed; the next commit tries again (a store several nodes share).
        Error::CommitFailed { .. } | Error::CommitUnknown { .. } => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<Error> for ApiError {
    /// Maps by [`status_of`], with one refinement: a [`Error::Storage`] whose message is a
    /// full disk (ENOSPC, a quota) answers as [`Error::StorageFull`]. Once sled hits an I/O
    /// error it answers that error to every later call, so after a full disk stopped group
    /// commit, starting another collection or reading fails with it too, outside group commit;
    /// a client should get the same 507 and advice there, not a generic 500.
    fn from(e: Error) -> Self {
        let e = match e {
            Error::Storage(reason)
                if StorageFailure::classify(reason.as_str()).kind == StorageFailureKind::Full =>
            {
                Error::StorageFull { reason }
            }
            e => e,
        };
        ApiError {
            status: status_of(&e),
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        } else {
            tracing::debug!(code = self.code, message = %self.message, "request rejected");
        }
        metrics::counter!(crate::metrics::ERRORS, "code" => self.code).increment(1);
        let mut res = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"replicate\""));
        }
        // A storage failure lasts until an operator acts and restarts the server: retrying in
        // a second would only add load, so it gets no `Retry-After`.
        if self.status == StatusCode::SERVICE_UNAVAILABLE && !self.is_storage_failure() {
            res.insert_header((header::RETRY_AFTER, "1"));
        }
        res.json(Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        })
    }
}

/// `JsonConfig` error handler: malformed or mistyped JSON is 400, an oversized body 413.
pub fn json_error(err: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::OverflowKnownLength { limit, .. }
        | JsonPayloadError::Overflow { limit } => ApiError::body_too_large(*limit),
        JsonPayloadError::Deserialize(e) => ApiError::bad_request("invalid_json", json_message(e)),
        JsonPayloadError::ContentType => ApiError::bad_request(
            "invalid_json",
            "the body must be JSON (Content-Type: application/json)",
        ),
        JsonPayloadError::Payload(e) => {
            if let Some(timed_out) = crate::limits::is_body_timeout(e) {
                ApiError::request_timeout(timed_out.after)
            } else if matches!(e, actix_web::error::PayloadError::Overflow) {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "request body is larger than the limit",
                )
            } else {
                ApiError::bad_request(
                    "invalid_body",
                    format!("could not read the request body: {e}"),
                )
            }
        }
        other => ApiError::bad_request("invalid_json", other.to_string()),
    };
    api.into()
}

fn json_message(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof if e.line() == 1 && e.column() == 0 => {
            "the body is empty; expected a JSON object".to_string()
        }
        Category::Syntax | Category::Eof => format!("malformed JSON: {e}"),
        Category::Data => format!("the JSON does not match the request: {e}"),
        Category::Io => format!("could not read the JSON body: {e}"),
    }
}

/// `QueryConfig` error handler: a query string that does not parse is 400.
pub fn query_error(err: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request("invalid_query", format!("malformed query string: {err}")).into()
}

/// `PathConfig` error handler: a path segment that does not parse is 400.
pub fn path_error(err: PathError, _: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request("invalid_name", format!("malformed path: {err}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        let cases: &[(Error, u16)] = &[
            (
                Error::InvalidName {
                    field: "collection",
                    reason: "empty".into(),
                },
                400,
            ),
            (
                Error::InvalidArgument {
                    field: "limit",
                    reason: "0".into(),
                },
                400,
            ),
            (
                Error::TooLarge {
                    field: "crdtBytes",
                    size: 2,
                    max: 1,
                },
                413,
            ),
            (
                Error::InvalidYjs {
                    field: "crdtBytes",
                    kind: "update",
                    reason: "x".into(),
                },
                422,
            ),
            (Error::AckAhead { synced: 2, head: 1 }, 422),
            (Error::CursorAhead { cursor: 2, head: 1 }, 422),
            (
                Error::Overloaded {
                    collection: "c".into(),
                    in_flight: 1,
                },
                503,
            ),
            (Error::ShuttingDown, 503),
            (Error::Relocated, 503),
            (
                Error::Timeout {
                    what: "actor",
                    millis: 1,
                },
                504,
            ),
            (Error::Storage("disk".into()), 500),
            (
                Error::Storage("IO error: Input/output error (os error 5)".into()),
                500,
            ),
            (Error::Internal("bug".into()), 500),
            (
                Error::StorageFull {
                    reason: "No space left on device (os error 28)".into(),
                },
                507,
            ),
            (
                Error::StorageFailed {
                    reason: "Input/output error (os error 5)".into(),
                },
                503,
            ),
        ];
        for (e, status) in cases {
            let api = ApiError::from(e.clone());
            assert_eq!(api.status.as_u16(), *status, "{e:?}");
            assert_eq!(api.code, e.code());
        }
    }

    #[test]
    fn a_full_disk_outside_group_commit_is_storage_full_too() {
        let api = ApiError::from(Error::Storage(
            "IO error: No space left on device (os error 28)".into(),
        ));
        assert_eq!(api.status.as_u16(), 507);
        assert_eq!(api.code, "storage_full");
        assert!(api.message.contains("free disk space"), "{}", api.message);
        let other = ApiError::from(Error::Storage("corrupt record: x".into()));
        assert_eq!((other.status.as_u16(), other.code), (500, "storage"));
    }

    #[test]
    fn storage_failures_say_what_to_do_and_get_no_retry_after() {
        let full = ApiError::from(Error::StorageFull {
            reason: "IO error: No space left on device (os error 28)".into(),
        });
        assert_eq!(full.code, "storage_full");
        assert!(full.message.contains("free disk space"), "{}", full.message);
        assert!(
            full.message.contains("restart replicate"),
            "{}",
            full.message
        );
        let failed = ApiError::from(Error::StorageFailed {
            reason: "IO error: Input/output error (os error 5)".into(),
        });
        assert_eq!(failed.code, "storage_failed");
        assert!(
            failed.message.contains("data directory"),
            "{}",
            failed.message
        );
        for api in [&full, &failed] {
            assert!(api.is_storage_failure());
            let res = api.error_response();
            assert!(res.headers().get(header::RETRY_AFTER).is_none(), "{api}");
        }
        let overloaded = ApiError::from(Error::Overloaded {
            collection: "c".into(),
            in_flight: 1,
        });
        assert!(!overloaded.is_storage_failure());
        assert!(overloaded
            .error_response()
            .headers()
            .get(header::RETRY_AFTER)
            .is_some());
    }

    #[test]
    fn a_timed_out_body_is_408() {
        use actix_web::error::PayloadError;
        let timed_out = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            crate::limits::BodyTimedOut {
                after: std::time::Duration::from_millis(1500),
            },
        );
        let req = actix_web::test::TestRequest::default().to_http_request();
        let err = json_error(JsonPayloadError::Payload(PayloadError::Io(timed_out)), &req);
        let api = err.as_error::<ApiError>().expect("an ApiError");
        assert_eq!(api.status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(api.code, "request_timeout");
        assert!(api.message.contains("1500 ms"), "{}", api.message);
    }
}
