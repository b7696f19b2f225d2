//! [`ApiError`], the front's single `ResponseError`: every failure a client can see, the
//! status it maps to, and the `{"error":{"code","message"}}` body. actix's own extractor
//! errors (JSON, query, path) are routed here too, so no answer has another shape.
//!
//! | status | codes |
//! | --- | --- |
//! | 400 | `invalid_json`, `invalid_base64`, `invalid_argument`, `invalid_name`, `invalid_query`, `invalid_body` |
//! | 404 / 405 | `not_found`, `method_not_allowed` |
//! | 409 | `conflict` (a compaction kept losing races; retry) |
//! | 413 | `too_large` (body over the limit, or an update over `max_update_bytes`) |
//! | 422 | `invalid_yjs`, `ack_ahead`, `cursor_ahead` |
//! | 503 | `overloaded`, `shutting_down`, `unavailable` |
//! | 504 | `timeout` |
//! | 500 | `storage`, `internal` |

use std::fmt;

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use replicate_actors::Error;
use serde::Serialize;

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
        Error::InvalidYjs { .. } | Error::AckAhead { .. } | Error::CursorAhead { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        Error::Overloaded { .. } | Error::ShuttingDown | Error::Relocated => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        Error::Storage(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
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
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
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
            if matches!(e, actix_web::error::PayloadError::Overflow) {
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
            (Error::Internal("bug".into()), 500),
        ];
        for (e, status) in cases {
            let api = ApiError::from(e.clone());
            assert_eq!(api.status.as_u16(), *status, "{e:?}");
            assert_eq!(api.code, e.code());
        }
    }
}
