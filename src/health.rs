//! Storage health as the front reports it: `/healthz` answers 503 and `/metrics` sets
//! `replicate_storage_failed` to 1 once a commit has failed, with the reason (disk full, or
//! another failure) and what the operator must do.
//!
//! Group commit (`replicate_actors::durability`) owns the truth: a failed commit stops every
//! later write until restart. [`StorageHealth`] also remembers the first storage-failure
//! answer the front gave (a write answered 507 `storage_full` or 503 `storage_failed`, seen
//! by [`note_storage_failures`]), so the failure is reported even by a handle that cannot
//! ask group commit directly.

use std::sync::OnceLock;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::web::Data;
use replicate_actors::durability::StorageFailure;
use replicate_actors::Replicate;

use crate::error::ApiError;
use crate::routes::AppState;

/// The storage failure this server knows of; sticky, like the failure itself.
#[derive(Debug, Default)]
pub struct StorageHealth {
    /// The first storage-failure answer given, as `/healthz` reports it.
    seen: OnceLock<ApiError>,
}

impl StorageHealth {
    /// Remembers `answer` if it reports a storage failure (the first one wins: the failure is
    /// sticky, later answers repeat it).
    pub fn note(&self, answer: &ApiError) {
        if answer.is_storage_failure() {
            let _ = self.seen.set(unhealthy(answer.clone()));
        }
    }

    /// What `/healthz` answers while storage has failed (503, `storage_full` or
    /// `storage_failed`, what to do), or `None` while it has not.
    ///
    /// Asks group commit first, so a failed commit whose writers all went away before their
    /// answer is reported too; then what this front has answered (a read that hit the failure).
    /// On a store whose failures are not sticky (PostgreSQL: a failed commit changed nothing
    /// and the next one tries again), only group commit's latest round counts.
    pub fn failure(&self, replicate: &Replicate) -> Option<ApiError> {
        let current = replicate.storage_failure().map(|f| unhealthy_from(&f));
        if !replicate.storage_failures_are_sticky() {
            return current;
        }
        current.or_else(|| self.seen.get().cloned())
    }
}

/// A storage failure as `/healthz` answers it: 503 with the failure's code and message.
pub fn unhealthy(answer: ApiError) -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        ..answer
    }
}

/// [`unhealthy`] for a failure group commit reports.
pub fn unhealthy_from(failure: &StorageFailure) -> ApiError {
    unhealthy(ApiError::from(failure.error()))
}

/// Middleware: remembers storage-failure answers in [`StorageHealth`].
pub async fn note_storage_failures(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let res = next.call(req).await?;
    if let Some(api) = res
        .response()
        .error()
        .and_then(|e| e.as_error::<ApiError>())
        .filter(|api| api.is_storage_failure())
    {
        if let Some(state) = res.request().app_data::<Data<AppState>>() {
            state.storage.note(api);
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use replicate_actors::Error;

    #[test]
    fn notes_only_storage_failures_and_keeps_the_first() {
        let health = StorageHealth::default();
        health.note(&ApiError::from(Error::Overloaded {
            collection: "c".into(),
            in_flight: 1,
        }));
        assert!(health.seen.get().is_none());
        let full = ApiError::from(Error::StorageFull {
            reason: "No space left on device (os error 28)".into(),
        });
        assert_eq!(full.status.as_u16(), 507);
        health.note(&full);
        health.note(&ApiError::from(Error::StorageFailed {
            reason: "later".into(),
        }));
        let seen = health.seen.get().expect("noted");
        assert_eq!(seen.status.as_u16(), 503, "healthz says 503, writers 507");
        assert_eq!(seen.code, "storage_full");
        assert_eq!(seen.message, full.message);
    }

    #[test]
    fn group_commit_failures_read_the_same() {
        let failure = StorageFailure::classify("IO error: Input/output error (os error 5)");
        let answer = unhealthy_from(&failure);
        assert_eq!(answer.status.as_u16(), 503);
        assert_eq!(answer.code, "storage_failed");
        assert!(
            answer.message.contains("data directory"),
            "{}",
            answer.message
        );
    }
}
