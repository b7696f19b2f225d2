//! The routes, one file per route (or per family of identical routes), and [`configure`],
//! which mounts them with the extractor configuration that makes every error a JSON answer.
//!
//! Each handler parses and validates its input once (a `parse` function next to it), then
//! makes one call on [`replicate_actors::Replicate`] and shapes the answer.

use std::future::Future;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::middleware::from_fn;
use actix_web::web::{self, Data, JsonConfig, PathConfig, QueryConfig, ServiceConfig};
use actix_web::{FromRequest, Handler, HttpRequest, HttpResponse, Responder, Route};
use futures::future::{ready, Ready};
use metrics_exporter_prometheus::PrometheusHandle;
use replicate_actors::Replicate;
use tokio::sync::watch;

use crate::auth::extract::Access;
use crate::auth::{self, Auth, Right};
use crate::error::{self, ApiError};
use crate::health::StorageHealth;
use crate::settings::ServerSettings;
use crate::wire::path_segment;

pub mod ack;
pub mod batch;
pub mod compact;
pub mod events;
pub mod ops;
pub mod recovery;
pub mod state;
pub mod stream;
pub mod write;
pub mod ws;

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
    /// Who may do what: every route's extractor asks it (see [`crate::auth::extract`]).
    pub auth: Auth,
    /// The websocket rooms (`/v1/{c}/ws/{documentId}`), shared by every worker.
    pub ws: Arc<crate::ws::Hub>,
}

impl AppState {
    /// Wraps the actors; installs the process's metrics recorder if nothing did yet. `auth`
    /// is explicit so that an application mounting [`configure`] itself decides who may do
    /// what ([`Auth::anonymous`] serves everyone as admin).
    pub fn new(
        replicate: Replicate,
        settings: ServerSettings,
        shutdown: watch::Receiver<bool>,
        auth: Auth,
    ) -> Self {
        AppState {
            replicate,
            ws: Arc::new(crate::ws::Hub::new(settings.ws.clone())),
            settings: Arc::new(settings),
            shutdown,
            metrics: crate::metrics::install(),
            storage: Arc::new(StorageHealth::default()),
            auth,
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
        // The raw path is `/v1/{c}/{route}` (or `/v1/{c}/ws/{documentId}`): the routes only
        // match that shape, and a raw (still percent-encoded) `{c}` holds no `/`.
        let raw = req
            .uri()
            .path()
            .strip_prefix("/v1/")
            .and_then(|rest| rest.split_once('/'))
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

/// One route: method, path (`{c}` is the collection) and the access it declares. The route
/// table ([`routes`]) is the one list the server mounts, and the list tests walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

/// A table entry: `method` (its name, and actix's route for it) on `path`, needing `access`.
fn entry<F, Args>(
    method: (&'static str, Route),
    path: &'static str,
    access: Access,
    handler: F,
) -> (RouteSpec, Route)
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    let (name, route) = method;
    let spec = RouteSpec {
        method: name,
        path,
        access,
    };
    (spec, route.to(handler))
}

/// Every route with its handler. The access given here is what [`auth::extract::guard`]
/// holds the handler's extractor to.
fn table() -> Vec<(RouteSpec, Route)> {
    use Right::*;
    let c = Access::Collection;
    let get = || ("GET", web::get());
    let post = || ("POST", web::post());
    vec![
        entry(get(), "/healthz", Access::Open, ops::healthz),
        entry(get(), "/openapi.json", Access::Open, ops::openapi),
        entry(get(), "/metrics", Access::Service(Admin), ops::metrics),
        entry(get(), "/stats", Access::Service(Admin), ops::stats),
        entry(post(), "/v1/{c}/insert", c(Write), write::insert),
        entry(post(), "/v1/{c}/update", c(Write), write::update),
        entry(post(), "/v1/{c}/delete", c(Write), write::delete),
        entry(post(), "/v1/{c}/batch", c(Write), batch::batch),
        entry(get(), "/v1/{c}/stream", c(Read), stream::stream),
        entry(post(), "/v1/{c}/ack", c(Read), ack::ack),
        entry(post(), "/v1/{c}/compact", c(Write), compact::compact),
        entry(post(), "/v1/{c}/recovery", c(Read), recovery::recovery),
        entry(get(), "/v1/{c}/state", c(Read), state::state),
        entry(get(), "/v1/{c}/events", c(Read), events::events),
        entry(get(), "/v1/{c}/stats", c(Admin), ops::collection_stats),
        entry(get(), "/v1/{c}/ws/{documentId}", c(Read), ws::ws),
    ]
}

/// The route table: every route the front serves and the access it needs.
pub fn routes() -> Vec<RouteSpec> {
    table().into_iter().map(|(spec, _)| spec).collect()
}

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
        .app_data(PathConfig::default().error_handler(error::path_error));
    // One path with one method, guarded by its declared access; any other method is a
    // JSON 405.
    for (spec, route) in table() {
        let access = spec.access;
        cfg.service(
            web::resource(spec.path.replace("{c}", C))
                .route(route)
                .default_service(web::to(move |req: HttpRequest| {
                    method_not_allowed(req, spec.method)
                }))
                .wrap(from_fn(move |req, next| {
                    auth::extract::guard(access, req, next)
                })),
        );
    }
    cfg.default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(req.path()))
}

/// 405 with the `Allow` header naming the one method the path serves (RFC 9110 §15.5.6
/// requires it; schemathesis' `allow_header_conformance` found it missing).
async fn method_not_allowed(req: HttpRequest, allowed: &'static str) -> HttpResponse {
    use actix_web::ResponseError as _;
    let mut res = ApiError::method_not_allowed(req.method().as_str(), req.path()).error_response();
    res.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static(allowed),
    );
    res
}
