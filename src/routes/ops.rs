//! Operator routes: `GET /healthz`, `GET /metrics` (Prometheus text), `GET /stats` (every live
//! collection actor's counters) and `GET /v1/{c}/stats` (one collection's).

use actix_web::http::StatusCode;
use actix_web::web::{Data, Json};
use actix_web::HttpResponse;
use replicate_actors::{CollectionStats, ServiceStats};
use serde_json::json;

use crate::auth::extract::{Admin, Authorized, Operator, Public};
use crate::error::{ApiError, ErrorBody};
use crate::routes::AppState;
use crate::wire::CollectionPath;

/// 200 while serving (the store is open: the actors exist only once it opened); 503 once
/// shutdown started, so a load balancer stops sending traffic; 503 `storage_full` or
/// `storage_failed` once a commit has failed (writes are refused until restart), with what
/// the operator must do.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    summary = "Health: 200 while serving",
    description = "Open to everyone. 503 `shutting_down` once shutdown started; 503 \
                   `storage_failed` or 507 `storage_full` once a commit failed (until restart).",
    security(()),
    responses(
        (status = 200, description = "Serving", body = Health, example = json!({"status": "ok"})),
        (status = 503, description = "`shutting_down` or `storage_failed`", body = ErrorBody),
        (status = 507, description = "`storage_full`", body = ErrorBody),
    )
)]
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

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    summary = "Prometheus metrics (text exposition format 0.0.4)",
    description = "Needs `admin` on `*`.",
    responses(
        (status = 200, description = "Prometheus text", content_type = "text/plain", body = String),
    )
)]
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

#[utoipa::path(
    get,
    path = "/stats",
    tag = "operations",
    operation_id = "serviceStats",
    summary = "Counters of every live collection actor",
    description = "Needs `admin` on `*`. The counters are diagnostics, not a stable contract.",
    responses(
        (status = 200, description = "Counters", body = Counters),
    )
)]
pub async fn stats(_: Operator, state: Data<AppState>) -> Json<ServiceStats> {
    Json(state.replicate.stats().await)
}

#[utoipa::path(
    get,
    path = "/v1/{c}/stats",
    tag = "operations",
    operation_id = "collectionStats",
    summary = "The collection actor's counters",
    description = "Needs `admin`. The counters are diagnostics, not a stable contract.",
    params(CollectionPath),
    responses(
        (status = 200, description = "Counters", body = Counters),
    )
)]
pub async fn collection_stats(
    auth: Authorized<Admin>,
    state: Data<AppState>,
) -> Result<Json<CollectionStats>, ApiError> {
    Ok(Json(
        state.replicate.collection_stats(auth.collection()).await?,
    ))
}

/// The answer of `/healthz`. Only a schema.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Health {
    /// `ok`.
    #[schema(example = "ok")]
    pub status: String,
}

/// Actor counters (`/stats`, `/v1/{c}/stats`): a JSON object whose fields are diagnostics, not
/// a stable contract. Only a schema.
#[derive(utoipa::ToSchema)]
#[schema(value_type = Object)]
#[allow(dead_code)]
pub struct Counters(serde_json::Map<String, serde_json::Value>);

/// `GET /openapi.json`: the OpenAPI 3.1 document of this server (see [`crate::openapi`]).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    summary = "This document",
    description = "Open to everyone.",
    security(()),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object),
    )
)]
pub async fn openapi(_: Public) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(crate::openapi::json())
}
