//! The routes, one file per route (or per family of identical routes), and [`configure`],
//! which mounts them with the extractor configuration that makes every error a JSON answer.
//!
//! Each handler parses and validates its input once (a `parse` function next to it), then
//! makes one call on [`replicate_actors::Replicate`] and shapes the answer.

use std::future::Future;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::web::{self, Data, JsonConfig, PathConfig, QueryConfig, ServiceConfig};
use actix_web::{FromRequest, HttpRequest, HttpResponse, Route};
use futures::future::{ready, Ready};
use metrics_exporter_prometheus::PrometheusHandle;
use replicate_actors::Replicate;
use tokio::sync::watch;

use crate::error::{self, ApiError};
use crate::health::StorageHealth;
use crate::settings::ServerSettings;
use crate::wire::path_segment;

pub mod ack;
pub mod compact;
pub mod events;
pub mod ops;
pub mod recovery;
pub mod state;
pub mod stream;
pub mod write;

/// What every handler can reach: the actors, the settings, the shutdown signal and metrics.
#[derive(Clone)]
pub struct AppState {
    pub replicate: Replicate,
    pub settings: Arc<ServerSettings>,
    /// Becomes `true` when the server starts shutting down: long polls answer at once and SSE
    /// streams end, so graceful shutdown does not wait for them.
    pub shutdown: watch::Receiver<bool>,
    /// `None` if another metrics recorder was installed in this process first.
    pub metrics: Option<PrometheusHandle>,
    /// Whether storage has failed (for `/healthz` and `/metrics`); shared by every worker.
    pub storage: Arc<StorageHealth>,
}

impl AppState {
    /// Wraps the actors; installs the process's metrics recorder if nothing did yet.
    pub fn new(
        replicate: Replicate,
        settings: ServerSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        AppState {
            replicate,
            settings: Arc::new(settings),
            shutdown,
            metrics: crate::metrics::install(),
            storage: Arc::new(StorageHealth::default()),
        }
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// What `/healthz` answers while storage has failed, or `None` (see [`crate::health`]).
    pub fn storage_failure(&self) -> Option<ApiError> {
        self.storage.failure(&self.replicate)
    }

    /// Runs `fut` unless shutdown starts first (then `None`).
    pub async fn until_shutdown<F: Future>(&self, fut: F) -> Option<F::Output> {
        until_shutdown(self.shutdown.clone(), fut).await
    }
}

/// Runs `fut` unless `shutdown` turns (or is) `true` first.
pub async fn until_shutdown<F: Future>(
    mut shutdown: watch::Receiver<bool>,
    fut: F,
) -> Option<F::Output> {
    tokio::select! {
        out = fut => Some(out),
        _ = shutdown.wait_for(|stop| *stop) => None,
    }
}

/// The collection named in the path, decoded strictly (see [`crate::wire::path_segment`]);
/// the naming rule itself is checked by the actors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection(pub String);

impl std::ops::Deref for Collection {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl FromRequest for Collection {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        // The raw path is `/v1/{c}/{route}`: the routes only match that shape.
        let raw = req
            .uri()
            .path()
            .strip_prefix("/v1/")
            .and_then(|rest| rest.rsplit_once('/'))
            .map(|(c, _)| c);
        ready(match raw {
            Some(raw) => path_segment("collection", raw).map(Collection),
            None => Err(ApiError::not_found(req.path())),
        })
    }
}

/// The collection segment: `[^/]*` rather than actix's default `[^/]+`, so an empty
/// collection name reaches the naming rule and gets its 400 instead of a 404.
const C: &str = "{c:[^/]*}";

/// Mounts every route and the extractor configuration on `cfg`.
pub fn configure(cfg: &mut ServiceConfig, state: &AppState) {
    let limit = state.settings.body_limit;
    cfg.app_data(Data::new(state.clone()))
        .app_data(
            JsonConfig::default()
                .limit(limit)
                .content_type_required(false)
                .error_handler(error::json_error),
        )
        .app_data(QueryConfig::default().error_handler(error::query_error))
        .app_data(PathConfig::default().error_handler(error::path_error))
        .service(resource("/healthz", web::get().to(ops::healthz)))
        .service(resource("/metrics", web::get().to(ops::metrics)))
        .service(resource("/stats", web::get().to(ops::stats)))
        .service(resource(
            &format!("/v1/{C}/insert"),
            web::post().to(write::insert),
        ))
        .service(resource(
            &format!("/v1/{C}/update"),
            web::post().to(write::update),
        ))
        .service(resource(
            &format!("/v1/{C}/delete"),
            web::post().to(write::delete),
        ))
        .service(resource(
            &format!("/v1/{C}/stream"),
            web::get().to(stream::stream),
        ))
        .service(resource(&format!("/v1/{C}/ack"), web::post().to(ack::ack)))
        .service(resource(
            &format!("/v1/{C}/compact"),
            web::post().to(compact::compact),
        ))
        .service(resource(
            &format!("/v1/{C}/recovery"),
            web::post().to(recovery::recovery),
        ))
        .service(resource(
            &format!("/v1/{C}/state"),
            web::get().to(state::state),
        ))
        .service(resource(
            &format!("/v1/{C}/events"),
            web::get().to(events::events),
        ))
        .service(resource(
            &format!("/v1/{C}/stats"),
            web::get().to(ops::collection_stats),
        ))
        .default_service(web::to(not_found));
}

/// One path with one method; any other method is a JSON 405.
fn resource(path: &str, route: Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(req.path()))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::method_not_allowed(
        req.method().as_str(),
        req.path(),
    ))
}
