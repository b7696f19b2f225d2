//! [`ServerSettings`]: everything the HTTP front needs that the actors' [`replicate_actors::Config`]
//! does not hold. A plain struct: only the binary reads flags and environment.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::auth::AuthSettings;
use crate::ws::WsSettings;

/// Settings of the HTTP front. `ServerSettings::default()` gives the defaults listed per field.
///
/// actix-web's own timers (`client_request_timeout`, `client_disconnect_timeout`,
/// `keep_alive`) count from a clock it refreshes every 500 ms, so they fire up to 0.5 s early;
/// `body_timeout` is exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Address [`crate::spawn_in_thread`] binds (default `127.0.0.1:0`: a free port). The binary
    /// and [`crate::run`] take an already bound listener instead.
    pub bind: SocketAddr,
    /// Largest accepted request body in bytes (default 16 MiB). Larger bodies are answered 413
    /// before they are parsed. Base64 makes bytes 4/3 larger, so keep this above
    /// `Config::max_update_bytes * 4 / 3` plus a little JSON, or big valid updates get 413.
    pub body_limit: usize,
    /// Origins allowed by CORS, e.g. `https://app.example.com`. `*` allows any origin; so does
    /// empty (the default), except on an anonymous server on a non-loopback address, which
    /// then allows no cross-origin request (see [`crate::auth::cors_any_origin_by_default`]).
    pub cors_origins: Vec<String>,
    /// HTTP worker threads (default 2). The actors run on their own arbiters regardless.
    pub workers: usize,
    /// Open connections per worker (default 25,000, actix-web's own default). Past it the
    /// server stops accepting: new connections wait in the listen backlog until one closes.
    /// With the timeouts below this bounds what slow clients can hold: about `workers ×
    /// max_connections` connections, each pinning at most `body_limit` for `body_timeout`.
    pub max_connections: usize,
    /// On shutdown, how long in-flight requests may take to finish before connections are
    /// closed, and how long the actors get to drain and flush (default 10 s).
    pub shutdown_grace: Duration,
    /// How long an idle Server-Sent Events stream waits between keep-alive comments (default
    /// 15 s). Each comment also lets the server notice a client that went away.
    pub sse_heartbeat: Duration,
    /// How long a new connection may take to send its first request head (request line and
    /// headers; default 5 s). Past it the server answers 408 (no body) and closes. actix-web's
    /// `client_request_timeout`; it covers the first request of a connection, later ones are
    /// covered by [`Self::keep_alive`] until their first byte.
    pub client_request_timeout: Duration,
    /// How long the server waits for a client to close a connection the server is done with
    /// (after a 408, or a response to a request whose body was not read) before dropping it
    /// (default 1 s). Zero drops it at once. actix-web's `client_disconnect_timeout`.
    pub client_disconnect_timeout: Duration,
    /// How long an idle keep-alive connection stays open waiting for the next request (default
    /// 5 s). Zero turns keep-alive off: every connection closes after its answer.
    pub keep_alive: Duration,
    /// How long a request body may take to arrive, from the end of its headers (default 60 s).
    /// Past it the request is answered 408 `request_timeout`, what was read is dropped and the
    /// connection closes. A client trickling a large body slowly can hold memory only this long.
    pub body_timeout: Duration,
    /// How long an answer may sit unsent because the client stopped reading it (default 30 s):
    /// once the client's receive window stays closed this long, the connection is reset and the
    /// answer's memory is freed. Enforced by the kernel (`TCP_USER_TIMEOUT`, Linux only; it
    /// also bounds how long unacknowledged data is retransmitted to a vanished client). The
    /// kernel checks at its window-probe times, which back off exponentially, so a stuck
    /// connection is reset between one and about two times this value.
    pub write_timeout: Duration,
    /// Keys and anonymous mode (default: no key, so anonymous, which serves only on a
    /// loopback address unless `allow_anonymous`).
    pub auth: AuthSettings,
    /// Limits of the websocket endpoint (see [`WsSettings`]).
    pub ws: WsSettings,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            body_limit: 16 * 1024 * 1024,
            cors_origins: Vec::new(),
            workers: 2,
            max_connections: 25_000,
            shutdown_grace: Duration::from_secs(10),
            sse_heartbeat: Duration::from_secs(15),
            client_request_timeout: Duration::from_secs(5),
            client_disconnect_timeout: Duration::from_secs(1),
            keep_alive: Duration::from_secs(5),
            body_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            auth: AuthSettings::default(),
            ws: WsSettings::default(),
        }
    }
}

impl ServerSettings {
    /// Whether no CORS restriction was given (none, or `*`).
    pub fn cors_any_origin(&self) -> bool {
        self.cors_origins.is_empty() || self.cors_origins.iter().any(|o| o.trim() == "*")
    }

    /// Checks what can be checked before starting.
    ///
    /// # Errors
    /// A message naming the bad setting: a CORS origin that is not `scheme://host[:port]`; a
    /// zero body limit, worker count, connection limit, heartbeat, request-head, body or write
    /// timeout (zero would turn the limit off); a write timeout over `u32::MAX` milliseconds
    /// (what the socket option holds).
    pub fn validate(&self) -> Result<(), String> {
        if self.body_limit == 0 {
            return Err("body limit must be at least 1 byte".into());
        }
        if self.workers == 0 {
            return Err("workers must be at least 1".into());
        }
        if self.max_connections == 0 {
            return Err("max connections must be at least 1".into());
        }
        if self.sse_heartbeat.is_zero() {
            return Err("SSE heartbeat must be longer than 0".into());
        }
        for (name, value) in [
            ("client request timeout", self.client_request_timeout),
            ("body timeout", self.body_timeout),
            ("write timeout", self.write_timeout),
        ] {
            if value < Duration::from_millis(1) {
                return Err(format!("{name} must be at least 1 ms"));
            }
        }
        if self.write_timeout.as_millis() > u128::from(u32::MAX) {
            return Err(format!("write timeout must be at most {} ms", u32::MAX));
        }
        if !self.cors_any_origin() {
            for origin in &self.cors_origins {
                valid_origin(origin)?;
            }
        }
        Ok(())
    }
}

/// An origin is `scheme://host[:port]`, nothing more (what browsers send in `Origin`).
fn valid_origin(origin: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "CORS origin {origin:?} {why}; expected scheme://host[:port]"
        ))
    };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return bad("has no scheme");
    };
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return bad("has an invalid scheme");
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) || rest.chars().any(char::is_control)
    {
        return bad("has no host, or a path");
    }
    match origin.parse::<actix_web::http::Uri>() {
        Ok(uri) if uri.host().is_some() => Ok(()),
        _ => bad("does not parse"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_table() {
        let cases: &[(&str, bool)] = &[
            ("https://app.example.com", true),
            ("http://localhost:3000", true),
            ("capacitor://localhost", true),
            ("app.example.com", false),
            ("https://", false),
            ("https://a.com/path", false),
            ("://a.com", false),
        ];
        for (origin, ok) in cases {
            let s = ServerSettings {
                cors_origins: vec![origin.to_string()],
                ..Default::default()
            };
            assert_eq!(s.validate().is_ok(), *ok, "{origin}");
        }
        assert!(ServerSettings {
            cors_origins: vec!["*".into()],
            ..Default::default()
        }
        .cors_any_origin());
    }

    #[test]
    fn timeouts_must_be_set() {
        type Tweak = fn(&mut ServerSettings);
        let cases: &[(&str, Tweak, bool)] = &[
            ("defaults", |_| {}, true),
            (
                "request head 1 ms",
                |s| s.client_request_timeout = Duration::from_millis(1),
                true,
            ),
            (
                "request head 0",
                |s| s.client_request_timeout = Duration::from_millis(0),
                false,
            ),
            (
                "body 1 ms",
                |s| s.body_timeout = Duration::from_millis(1),
                true,
            ),
            (
                "body 0",
                |s| s.body_timeout = Duration::from_millis(0),
                false,
            ),
            (
                "body 0.5 ms",
                |s| s.body_timeout = Duration::from_micros(500),
                false,
            ),
            (
                "write 1 ms",
                |s| s.write_timeout = Duration::from_millis(1),
                true,
            ),
            (
                "write 0",
                |s| s.write_timeout = Duration::from_millis(0),
                false,
            ),
            (
                "write u32::MAX ms",
                |s| s.write_timeout = Duration::from_millis(u32::MAX.into()),
                true,
            ),
            (
                "write over u32::MAX ms",
                |s| s.write_timeout = Duration::from_millis(u64::from(u32::MAX) + 1),
                false,
            ),
            ("1 connection", |s| s.max_connections = 1, true),
            ("0 connections", |s| s.max_connections = 0, false),
            (
                "keep-alive off",
                |s| s.keep_alive = Duration::from_millis(0),
                true,
            ),
            (
                "no linger",
                |s| s.client_disconnect_timeout = Duration::from_millis(0),
                true,
            ),
        ];
        for (what, tweak, ok) in cases {
            let mut s = ServerSettings::default();
            tweak(&mut s);
            assert_eq!(s.validate().is_ok(), *ok, "{what}: {:?}", s.validate());
        }
    }
}
