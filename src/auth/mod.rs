//! Authentication and authorization of the HTTP front (issue 8). The actors know nothing of
//! identities: every check happens here, before a request reaches them.
//!
//! # Layout
//! - this module: [`Authenticate`] (request head → [`Principal`] or [`Rejection`]), the
//!   [`Anonymous`] authenticator, [`bearer_token`] (where a token travels), [`AuthSettings`]
//!   and [`choose`] (which authenticator a server runs with), and [`Auth`], the handle
//!   handlers share.
//! - [`grants`]: [`Right`] and [`Grants`], the pure authorization rule.
//! - [`jwt`]: [`JwtVerifier`], the default authenticator (HS256 secret, JWKS), and minting.
//! - [`extract`]: the per-route extractors ([`extract::Authorized`], [`extract::Operator`],
//!   [`extract::Public`]) and the guard that makes a route that forgot them fail.
//!
//! # Invariants
//! - A route answers only after its extractor checked the right it declares (see
//!   [`extract::guard`]); a principal does only what its grants allow.
//! - With authentication on, a peer acknowledges only as itself ([`Principal::may_act_as`]).
//! - Anonymous mode (no key) serves only on a loopback address unless the operator allows
//!   it explicitly ([`choose`]).
//! - A 401 never says why a signature failed; a 403 names the right that was missing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::RequestHead;
use actix_web::http::{header, StatusCode};
use replicate_actors::{Clock, SystemClock};

use crate::error::ApiError;

pub mod extract;
pub mod grants;
pub mod jwt;

pub use grants::{Grants, Right};
pub use jwt::{JwtVerifier, KeyFiles};

/// Who sent a request, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`; `None` for anonymous mode, where peers are not tied to anyone.
    pub subject: Option<String>,
    pub grants: Grants,
    /// When the credential stops being valid (epoch milliseconds): event streams end and long
    /// polls answer then. `None`: it does not expire.
    pub expires_at_millis: Option<u64>,
}

impl Principal {
    /// Anonymous mode's principal: `admin` on `*`, any peer id.
    pub fn anonymous() -> Principal {
        Principal {
            subject: None,
            grants: Grants::admin_everywhere(),
            expires_at_millis: None,
        }
    }

    /// Whether this principal may acknowledge as `peer_id`: its own subject, or one of its
    /// devices (`alice:phone` for `alice`). `alicex` is not `alice`.
    pub fn may_act_as(&self, peer_id: &str) -> bool {
        match &self.subject {
            None => true,
            Some(sub) => match peer_id.strip_prefix(sub.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with(':'),
                None => false,
            },
        }
    }
}

/// Why a request is not authenticated. Each maps to 401 `unauthenticated`; the message never
/// says why a signature failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No token in the request.
    Missing,
    /// A token over [`jwt::MAX_TOKEN_BYTES`].
    TooLong,
    /// A token both in `Authorization` and `?token=`, or `?token=` twice.
    Ambiguous,
    /// An `Authorization` header that is not `Bearer <token>`.
    NotBearer,
    /// The token's `exp` has passed.
    Expired,
    /// `nbf` or `iat` lies further ahead than the leeway.
    NotYetValid,
    /// Anything else: malformed, wrong key or algorithm, unknown `kid`, bad signature,
    /// missing `sub` or `exp`, wrong `iss` or `aud`.
    Invalid,
    /// A verified token whose `replicate.grants` claim is malformed.
    BadGrants(String),
}

impl Rejection {
    /// What the client is told.
    pub fn message(&self) -> String {
        match self {
            Rejection::Missing => "no token: send `Authorization: Bearer <token>`, or `?token=<token>` where headers cannot be set".into(),
            Rejection::TooLong => format!("the token is longer than {} bytes", jwt::MAX_TOKEN_BYTES),
            Rejection::Ambiguous => "send one token: in the Authorization header or in ?token=, once".into(),
            Rejection::NotBearer => "the Authorization header must be `Bearer <token>`".into(),
            Rejection::Expired => "the token has expired; get a new one".into(),
            Rejection::NotYetValid => "the token is not valid yet (nbf or iat lies ahead; check the clocks)".into(),
            Rejection::Invalid => "the token is not valid".into(),
            Rejection::BadGrants(why) => format!("the token's replicate.grants claim is malformed: {why}"),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", r.message())
    }
}

/// Turns a request head into a principal. The JWT verifier is the default; an application
/// that embeds the front can supply its own (session cookies, an API-key table: see
/// `examples/api_keys.rs`). Called on every request but `/healthz`, on a worker thread: it
/// must be quick and must not block.
pub trait Authenticate: Send + Sync + 'static {
    /// # Errors
    /// A [`Rejection`] when the request carries no acceptable credential.
    fn authenticate(&self, head: &RequestHead) -> Result<Principal, Rejection>;

    /// Whether this serves everyone without credentials. Decides CORS's default.
    fn is_anonymous(&self) -> bool {
        false
    }
}

/// Anonymous mode: everyone is `admin` on `*`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anonymous;

impl Authenticate for Anonymous {
    fn authenticate(&self, _: &RequestHead) -> Result<Principal, Rejection> {
        Ok(Principal::anonymous())
    }

    fn is_anonymous(&self) -> bool {
        true
    }
}

/// The bearer token of a request: `Authorization: Bearer <token>`, or the `token` query
/// parameter (browsers cannot set headers on `EventSource` or WebSocket). `None` when there
/// is neither.
///
/// # Errors
/// [`Rejection::NotBearer`] for another `Authorization` scheme; [`Rejection::Ambiguous`]
/// for a token in both places or twice; [`Rejection::TooLong`] past the cap.
pub fn bearer_token(head: &RequestHead) -> Result<Option<String>, Rejection> {
    let mut headers = head.headers().get_all(header::AUTHORIZATION);
    let from_header = match (headers.next(), headers.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => return Err(Rejection::Ambiguous),
        (Some(value), None) => {
            if value.len() > jwt::MAX_TOKEN_BYTES + 16 {
                return Err(Rejection::TooLong);
            }
            let text = value.to_str().map_err(|_| Rejection::NotBearer)?;
            match text.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                    Some(token.trim().to_string())
                }
                _ => return Err(Rejection::NotBearer),
            }
        }
    };
    let mut from_query = head
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.strip_prefix("token="));
    let query = match (from_query.next(), from_query.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => return Err(Rejection::Ambiguous),
        (Some(raw), None) => {
            if raw.len() > jwt::MAX_TOKEN_BYTES * 3 {
                return Err(Rejection::TooLong);
            }
            Some(crate::wire::path_segment("token", raw).map_err(|_| Rejection::Invalid)?)
        }
    };
    match (from_header, query) {
        (Some(_), Some(_)) => Err(Rejection::Ambiguous),
        (Some(t), None) | (None, Some(t)) if t.len() > jwt::MAX_TOKEN_BYTES => {
            Err(Rejection::TooLong)
        }
        (t, None) | (None, t) => Ok(t),
    }
}

/// How the front authenticates, as the binary's flags say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthSettings {
    pub keys: KeyFiles,
    /// Serve anonymously (everyone `admin` on `*`) on a non-loopback address when no key is
    /// configured. Off by default: such a server refuses to start.
    pub allow_anonymous: bool,
}

/// Which authenticator a server runs with.
pub enum Choice {
    /// Keys configured. The binary keeps this handle to reload the JWKS on SIGHUP.
    Jwt(Arc<JwtVerifier>),
    /// No key: anonymous mode.
    Anonymous,
}

impl Choice {
    pub fn authenticator(&self) -> Arc<dyn Authenticate> {
        match self {
            Choice::Jwt(v) => v.clone(),
            Choice::Anonymous => Arc::new(Anonymous),
        }
    }
}

/// Chooses the authenticator for a server listening on `local`: the JWT verifier when a key
/// is configured; otherwise anonymous mode, which needs a loopback address or
/// `allow_anonymous` (then a warning is logged, on every start).
///
/// # Errors
/// Keys that do not load; no key on a non-loopback address without `allow_anonymous`.
pub fn choose(settings: &AuthSettings, local: SocketAddr) -> Result<Choice, String> {
    if settings.keys.any() {
        if settings.allow_anonymous {
            tracing::warn!(
                "--allow-anonymous is ignored: keys are configured, tokens are required"
            );
        }
        return JwtVerifier::new(&settings.keys, Arc::new(SystemClock))
            .map(|v| Choice::Jwt(Arc::new(v)));
    }
    if local.ip().is_loopback() {
        return Ok(Choice::Anonymous);
    }
    if settings.allow_anonymous {
        tracing::warn!(
            %local,
            "serving ANONYMOUSLY on a non-loopback address (--allow-anonymous): anyone who can \
             reach it can read, write and compact every collection"
        );
        return Ok(Choice::Anonymous);
    }
    Err(format!(
        "refusing to serve without authentication on {local}, which is not a loopback address: \
         give --auth-secret-file or --auth-jwks-file, bind to 127.0.0.1, or pass \
         --allow-anonymous"
    ))
}

/// Whether CORS admits any origin when no `--cors-origin` is given: yes with authentication
/// on (tokens are not cookies, so a foreign page gains nothing) and in anonymous mode on a
/// loopback address; not for an anonymous server others can reach, where any web page a
/// user opens could otherwise use it.
pub fn cors_any_origin_by_default(anonymous: bool, local: SocketAddr) -> bool {
    !anonymous || local.ip().is_loopback()
}

/// What handlers share: the authenticator and the clock credentials expire by.
#[derive(Clone)]
pub struct Auth {
    authenticator: Arc<dyn Authenticate>,
    clock: Arc<dyn Clock>,
}

impl Auth {
    pub fn new(authenticator: Arc<dyn Authenticate>) -> Auth {
        Auth {
            authenticator,
            clock: Arc::new(SystemClock),
        }
    }

    pub fn anonymous() -> Auth {
        Auth::new(Arc::new(Anonymous))
    }

    /// # Errors
    /// What the authenticator refuses.
    pub fn authenticate(&self, head: &RequestHead) -> Result<Principal, Rejection> {
        self.authenticator.authenticate(head)
    }

    pub fn is_anonymous(&self) -> bool {
        self.authenticator.is_anonymous()
    }

    /// How long `principal`'s credential stays valid from now; `None` if it does not expire.
    pub fn remaining(&self, principal: &Principal) -> Option<Duration> {
        principal
            .expires_at_millis
            .map(|at| Duration::from_millis(at.saturating_sub(self.clock.now_millis())))
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn peers_are_their_subject_or_its_devices() {
        let alice = Principal {
            subject: Some("alice".into()),
            grants: Grants::none(),
            expires_at_millis: None,
        };
        for (peer, ok) in [
            ("alice", true),
            ("alice:phone", true),
            ("alice:", true),
            ("alicex", false),
            ("mallory", false),
            ("alic", false),
            ("", false),
            ("xalice", false),
        ] {
            assert_eq!(alice.may_act_as(peer), ok, "{peer}");
        }
        assert!(Principal::anonymous().may_act_as("anyone"));
    }

    /// (Authorization header, query, expected token)
    type Case<'a> = (Option<&'a str>, &'a str, Result<Option<&'a str>, Rejection>);

    #[test]
    fn token_transport_table() {
        let long = format!("token={}", "a".repeat(jwt::MAX_TOKEN_BYTES + 1));
        let cases: Vec<Case> = vec![
            (None, "", Ok(None)),
            (Some("Bearer abc"), "", Ok(Some("abc"))),
            (Some("bearer abc"), "", Ok(Some("abc"))),
            (Some("Basic abc"), "", Err(Rejection::NotBearer)),
            (Some("Bearer"), "", Err(Rejection::NotBearer)),
            (None, "token=abc", Ok(Some("abc"))),
            (None, "cursor=1&token=a%2Eb", Ok(Some("a.b"))),
            (None, "xtoken=abc", Ok(None)),
            (None, "token=a&token=b", Err(Rejection::Ambiguous)),
            (Some("Bearer a"), "token=a", Err(Rejection::Ambiguous)),
            (None, &long, Err(Rejection::TooLong)),
        ];
        for (auth, query, expected) in cases {
            let mut req = TestRequest::get().uri(&format!("/v1/c/stream?{query}"));
            if let Some(a) = auth {
                req = req.insert_header((header::AUTHORIZATION, a));
            }
            let req = req.to_http_request();
            assert_eq!(
                bearer_token(req.head()),
                expected.map(|t| t.map(String::from)),
                "{auth:?} {query}"
            );
        }
    }

    #[test]
    fn anonymous_only_on_loopback_unless_allowed() {
        let lan: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        let lo: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let lo6: SocketAddr = "[::1]:8080".parse().expect("addr");
        let none = AuthSettings::default();
        assert!(matches!(choose(&none, lo), Ok(Choice::Anonymous)));
        assert!(matches!(choose(&none, lo6), Ok(Choice::Anonymous)));
        let refused = choose(&none, lan).err().expect("refused");
        assert!(refused.contains("--allow-anonymous"), "{refused}");
        let allowed = AuthSettings {
            allow_anonymous: true,
            ..AuthSettings::default()
        };
        assert!(matches!(choose(&allowed, lan), Ok(Choice::Anonymous)));
        assert!(cors_any_origin_by_default(true, lo));
        assert!(!cors_any_origin_by_default(true, lan));
        assert!(cors_any_origin_by_default(false, lan));
    }
}
