//! The extractors through which every route declares the right it needs, and the guard that
//! holds routes to it.
//!
//! - [`Authorized<N>`]: a collection route needing right `N` ([`Read`], [`Write`], [`Admin`])
//!   on the collection named in the path; it also yields that collection, so a handler cannot
//!   reach a collection without passing the check.
//! - [`Operator`]: a service-wide route (`/stats`, `/metrics`) needing `admin` on `*`.
//! - [`Public`]: a route open to everyone (`/healthz`), said out loud.
//!
//! Each records the [`Access`] it checked in the request's extensions. [`guard`] wraps every
//! resource (see `routes::configure`) and answers 500 instead of a success when a route
//! checked nothing or something other than what its entry in the route table declares, so a
//! new route that forgets its extractor fails the first test that calls it.

use std::marker::PhantomData;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::web::Data;
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError};
use futures::future::{ready, Ready};

use super::{Principal, Right};
use crate::error::ApiError;
use crate::routes::{AppState, Collection};

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token.
    Open,
    /// This right (or a higher one) on the collection in the path.
    Collection(Right),
    /// This right on `*`: the whole service.
    Service(Right),
}

impl Access {
    /// The status a principal gets on a route needing this access.
    pub fn allows(self, principal: &Principal, collection: Option<&str>) -> bool {
        match self {
            Access::Open => true,
            Access::Collection(need) => collection
                .and_then(|c| principal.grants.right_on(c))
                .is_some_and(|has| has >= need),
            Access::Service(need) => principal
                .grants
                .right_on_everything()
                .is_some_and(|has| has >= need),
        }
    }
}

/// The access a route's extractor checked, kept in the request's extensions for [`guard`].
#[derive(Debug, Clone, Copy)]
struct Checked(Access);

/// A right on a collection, as a type.
pub trait Need: 'static {
    const RIGHT: Right;
}

/// Needs `read`: `stream`, `events`, `state`, `recovery`, `ack`.
pub struct Read;
/// Needs `write`: `insert`, `update`, `delete`, `compact` (see [`Authorized::require`]).
pub struct Write;
/// Needs `admin`: `/v1/{c}/stats`.
pub struct Admin;

impl Need for Read {
    const RIGHT: Right = Right::Read;
}
impl Need for Write {
    const RIGHT: Right = Right::Write;
}
impl Need for Admin {
    const RIGHT: Right = Right::Admin;
}

fn state(req: &HttpRequest) -> Result<&Data<AppState>, ApiError> {
    req.app_data::<Data<AppState>>().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "no app state",
        )
    })
}

/// Authenticates `req` and records that `access` was checked.
fn principal(req: &HttpRequest, access: Access) -> Result<Principal, ApiError> {
    req.extensions_mut().insert(Checked(access));
    Ok(state(req)?.auth.authenticate(req.head())?)
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// A request allowed right `N` on the collection in its path.
pub struct Authorized<N: Need> {
    pub principal: Principal,
    collection: Collection,
    _need: PhantomData<N>,
}

impl<N: Need> Authorized<N> {
    /// The collection the right was checked on.
    pub fn collection(&self) -> &Collection {
        &self.collection
    }

    /// Checks a further right this particular request needs (`compact` with `peerTimeout`
    /// needs `admin`).
    ///
    /// # Errors
    /// 403 `forbidden` naming `right` and `why`.
    pub fn require(&self, right: Right, why: &str) -> Result<(), ApiError> {
        if Access::Collection(right).allows(&self.principal, Some(&self.collection)) {
            Ok(())
        } else {
            Err(forbidden(format!(
                "{why} needs the {right} grant on collection {:?}",
                self.collection.0
            )))
        }
    }

    /// Checks that the principal may act as `peer_id` (see [`Principal::may_act_as`]).
    ///
    /// # Errors
    /// 403 `forbidden` naming the peer ids allowed.
    pub fn require_peer(&self, peer_id: &str) -> Result<(), ApiError> {
        if self.principal.may_act_as(peer_id) {
            return Ok(());
        }
        let sub = self.principal.subject.as_deref().unwrap_or_default();
        Err(forbidden(format!(
            "a peer acknowledges only as itself: peerId must be {sub:?} or start with \"{sub}:\""
        )))
    }
}

impl<N: Need> FromRequest for Authorized<N> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let access = Access::Collection(N::RIGHT);
        ready(principal(req, access).and_then(|principal| {
            let collection = Collection::from_request(req, payload).into_inner()?;
            if !access.allows(&principal, Some(&collection)) {
                return Err(forbidden(format!(
                    "this route needs the {} grant on collection {:?}",
                    N::RIGHT,
                    collection.0
                )));
            }
            Ok(Authorized {
                principal,
                collection,
                _need: PhantomData,
            })
        }))
    }
}

/// A request allowed `admin` on `*` (service-wide routes).
pub struct Operator(pub Principal);

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let access = Access::Service(Right::Admin);
        ready(principal(req, access).and_then(|p| {
            if access.allows(&p, None) {
                Ok(Operator(p))
            } else {
                Err(forbidden(
                    "this route needs the admin grant on \"*\" (every collection)".into(),
                ))
            }
        }))
    }
}

/// A route open to everyone: no token is looked at.
pub struct Public;

impl FromRequest for Public {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        req.extensions_mut().insert(Checked(Access::Open));
        ready(Ok(Public))
    }
}

/// Middleware around each resource declared with `declared`: a response from a handler that
/// checked other access than declared, or that succeeded without checking any, becomes a 500
/// (and an error in the log). Error answers from before the handler ran (405, a body that
/// does not parse) pass: they serve nothing. This is a tripwire for tests, not the check
/// itself: by the time it looks, such a handler has done its work.
pub async fn guard(
    declared: Access,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let res = next.call(req).await?;
    let checked = res.request().extensions().get::<Checked>().map(|c| c.0);
    let ok = match checked {
        Some(access) => access == declared,
        None => !res.status().is_success(),
    };
    if ok {
        return Ok(res.map_into_boxed_body());
    }
    tracing::error!(
        route = ?res.request().match_pattern(),
        ?declared,
        ?checked,
        "a route did not check the access it declares; refusing its answer"
    );
    let err = ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "this route does not check the access it declares (a bug); its answer is withheld",
    );
    let (req, _) = res.into_parts();
    Ok(ServiceResponse::new(req, err.error_response()))
}
