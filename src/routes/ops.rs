//! Operator routes: `GET /healthz`, `GET /metrics` (Prometheus text), `GET /stats` (every live
//! collection actor's counters) and `GET /v1/{c}/stats` (one collection's).

use actix_web::http::StatusCode;
use actix_web::web::{Data, Json};
use actix_web::HttpResponse;
use replicate_actors::{CollectionStats, ServiceStats};
use serde_json::json;

use crate::auth::extract::{Admin, Authorized, Operator, Public};
use crate::error::ApiError;
use crate::routes::AppState;

/// 200 while serving (the store is open: the actors exist only once it opened); 503 once
/// shutdown started, so a load balancer stops sending traffic; 503 `storage_full` or
/// `storage_failed` once a commit has failed (writes are refused until restart), with what
/// the operator must do.
pub async fn healthz(_: Public, state: Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.shutting_down() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "replicate is shutting down",
        ));
    }
    if let Some(failed) = state.storage_failure() {
        return Err(failed);
    }
    Ok(HttpResponse::Ok().json(json!({ "status": "ok" })))
}

pub async fn metrics(_: Operator, state: Data<AppState>) -> HttpResponse {
    let text = match &state.metrics {
        Some(handle) => crate::metrics::render(
            handle,
            &state.replicate.stats().await,
            state.storage_failure().is_some(),
        ),
        None => "# another metrics recorder was installed in this process; replicate's metrics go there\n".to_string(),
    };
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}

pub async fn stats(_: Operator, state: Data<AppState>) -> Json<ServiceStats> {
    Json(state.replicate.stats().await)
}

pub async fn collection_stats(
    auth: Authorized<Admin>,
    state: Data<AppState>,
) -> Result<Json<CollectionStats>, ApiError> {
    Ok(Json(
        state.replicate.collection_stats(auth.collection()).await?,
    ))
}
