//! [`ServerSettings`]: everything the HTTP front needs that the actors' [`replicate_actors::Config`]
//! does not hold. A plain struct: only the binary reads flags and environment.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Settings of the HTTP front. `ServerSettings::default()` gives the defaults listed per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Address [`crate::spawn_in_thread`] binds (default `127.0.0.1:0`: a free port). The binary
    /// and [`crate::run`] take an already bound listener instead.
    pub bind: SocketAddr,
    /// Largest accepted request body in bytes (default 16 MiB). Larger bodies are answered 413
    /// before they are parsed. Base64 makes bytes 4/3 larger, so keep this above
    /// `Config::max_update_bytes * 4 / 3` plus a little JSON, or big valid updates get 413.
    pub body_limit: usize,
    /// Origins allowed by CORS, e.g. `https://app.example.com`. Empty (the default) or `*`
    /// allows any origin.
    pub cors_origins: Vec<String>,
    /// HTTP worker threads (default 2). The actors run on their own arbiters regardless.
    pub workers: usize,
    /// On shutdown, how long in-flight requests may take to finish before connections are
    /// closed, and how long the actors get to drain and flush (default 10 s).
    pub shutdown_grace: Duration,
    /// How long an idle Server-Sent Events stream waits between keep-alive comments (default
    /// 15 s). Each comment also lets the server notice a client that went away.
    pub sse_heartbeat: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            body_limit: 16 * 1024 * 1024,
            cors_origins: Vec::new(),
            workers: 2,
            shutdown_grace: Duration::from_secs(10),
            sse_heartbeat: Duration::from_secs(15),
        }
    }
}

impl ServerSettings {
    /// Whether CORS admits every origin.
    pub fn cors_any_origin(&self) -> bool {
        self.cors_origins.is_empty() || self.cors_origins.iter().any(|o| o.trim() == "*")
    }

    /// Checks what can be checked before starting.
    ///
    /// # Errors
    /// A message naming the bad setting: a CORS origin that is not `scheme://host[:port]`, a zero
    /// body limit, worker count or heartbeat.
    pub fn validate(&self) -> Result<(), String> {
        if self.body_limit == 0 {
            return Err("body limit must be at least 1 byte".into());
        }
        if self.workers == 0 {
            return Err("workers must be at least 1".into());
        }
        if self.sse_heartbeat.is_zero() {
            return Err("SSE heartbeat must be longer than 0".into());
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
}
