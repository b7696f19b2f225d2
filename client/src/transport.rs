//! How the sync loop reaches the server: the [`Transport`] trait (one method per route it
//! uses) and [`HttpTransport`], its implementation over blocking HTTP/1.1 (`ureq`).
//!
//! The trait exists so the push and pull logic can be tested against a fake (and a test can
//! drop an answer the server did send), and so an app can bring its own HTTP stack.

use std::sync::RwLock;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::PendingWrite;
use crate::wire::{self, BatchResult, Page};

/// The routes the client uses. Errors: [`Error::Network`] when the server was not reached or
/// the answer was lost, [`Error::Server`] with the status and code it answered.
pub trait Transport: Send + Sync {
    /// `POST /v1/{c}/batch`: one result per write, in order.
    ///
    /// # Errors
    /// A whole-request failure (nothing stored).
    fn batch(&self, collection: &str, writes: &[PendingWrite]) -> Result<Vec<BatchResult>>;

    /// `POST /v1/{c}/{op}`: one write (the fallback when the batch route is missing).
    ///
    /// # Errors
    /// The write's error.
    fn write(&self, collection: &str, write: &PendingWrite) -> Result<wire::Accepted>;

    /// `GET /v1/{c}/stream?cursor=&limit=&waitMs=`.
    ///
    /// # Errors
    /// `cursor_ahead` (422) when the server holds fewer seqs than `cursor`.
    fn stream(&self, collection: &str, cursor: u64, limit: u32, wait_ms: u64) -> Result<Page>;

    /// `POST /v1/{c}/ack`; answers the peer's `lastSyncedSeq`.
    ///
    /// # Errors
    /// The route's errors (`ack_ahead`, `forbidden`).
    fn ack(&self, collection: &str, peer_id: &str, synced_seq: u64) -> Result<u64>;

    /// `POST /v1/{c}/compact` for one document (the server's hint).
    ///
    /// # Errors
    /// The route's errors.
    fn compact(&self, collection: &str, document_id: &str) -> Result<()>;

    /// `POST /v1/{c}/recovery` for one document: what a holder of `state_vector` misses, and
    /// the head it was computed at.
    ///
    /// # Errors
    /// The route's errors.
    fn recovery(
        &self,
        collection: &str,
        document_id: &str,
        state_vector: &[u8],
    ) -> Result<(Vec<u8>, u64)>;
}

/// Time to set up a connection before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time any request may take beyond its long-poll wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle pooled connection may be reused.
const IDLE_CONNECTION_AGE: Duration = Duration::from_secs(4);
/// Largest answer read (a stream page is at most ~16 MiB of bytes, in base64).
const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// [`Transport`] over HTTP with a bearer token.
pub struct HttpTransport {
    agent: ureq::Agent,
    base: String,
    token: RwLock<Option<String>>,
}

/// Percent-encodes a path segment (the collection name may hold `/`, spaces, anything).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl HttpTransport {
    /// A transport to `base_url` (`http://host:port`, with or without a trailing `/`).
    pub fn new(base_url: &str, token: Option<String>) -> HttpTransport {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            // Below the server's default keep-alive (5 s), so a pooled connection is not
            // reused just as the server closes it (a POST on it would fail as "offline").
            .max_idle_age(IDLE_CONNECTION_AGE)
            .build();
        HttpTransport {
            agent: ureq::Agent::new_with_config(config),
            base: base_url.trim_end_matches('/').to_string(),
            token: RwLock::new(token),
        }
    }

    /// Replaces the bearer token (tokens expire; the app refreshes them).
    pub fn set_token(&self, token: Option<String>) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = token;
    }

    fn url(&self, collection: &str, route: &str) -> String {
        format!("{}/v1/{}/{route}", self.base, encode_segment(collection))
    }

    fn bearer(&self) -> Option<String> {
        self.token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|t| format!("Bearer {t}"))
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, url: &str, body: &B) -> Result<T> {
        let body = serde_json::to_vec(body).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut req = self
            .agent
            .post(url)
            .config()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .content_type("application/json");
        if let Some(b) = self.bearer() {
            req = req.header("Authorization", b);
        }
        answer(req.send(&body[..]))
    }

    fn get<T: DeserializeOwned>(&self, url: &str, timeout: Duration) -> Result<T> {
        let mut req = self
            .agent
            .get(url)
            .config()
            .timeout_global(Some(timeout))
            .build();
        if let Some(b) = self.bearer() {
            req = req.header("Authorization", b);
        }
        answer(req.call())
    }
}

/// Turns an HTTP outcome into the JSON answer or an [`Error`].
fn answer<T: DeserializeOwned>(
    outcome: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T> {
    let mut resp = outcome.map_err(|e| Error::Network(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_vec()
        .map_err(|e| Error::Network(format!("reading the answer: {e}")))?;
    if status == 200 {
        return serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("answer is not the expected JSON: {e}")));
    }
    match serde_json::from_slice::<wire::ErrorEnvelope>(&body) {
        Ok(env) => Err(Error::Server {
            status,
            code: env.error.code,
            message: env.error.message,
        }),
        Err(_) => Err(Error::Server {
            status,
            code: format!("http_{status}"),
            message: String::from_utf8_lossy(&body).chars().take(200).collect(),
        }),
    }
}

impl Transport for HttpTransport {
    fn batch(&self, collection: &str, writes: &[PendingWrite]) -> Result<Vec<BatchResult>> {
        let body = wire::BatchBody {
            writes: writes
                .iter()
                .map(|w| wire::WriteBody {
                    op: Some(&w.op),
                    document_id: &w.document_id,
                    crdt_bytes: wire::b64(&w.bytes),
                    op_id: &w.op_id,
                })
                .collect(),
        };
        let a: wire::BatchAnswer = self.post(&self.url(collection, "batch"), &body)?;
        Ok(a.results)
    }

    fn write(&self, collection: &str, w: &PendingWrite) -> Result<wire::Accepted> {
        let body = wire::WriteBody {
            op: None,
            document_id: &w.document_id,
            crdt_bytes: wire::b64(&w.bytes),
            op_id: &w.op_id,
        };
        let a: wire::WriteAnswer = self.post(&self.url(collection, &w.op), &body)?;
        Ok(wire::Accepted {
            seq: a.seq,
            duplicate: a.duplicate,
        })
    }

    fn stream(&self, collection: &str, cursor: u64, limit: u32, wait_ms: u64) -> Result<Page> {
        let url = format!(
            "{}?cursor={cursor}&limit={limit}&waitMs={wait_ms}",
            self.url(collection, "stream")
        );
        let page: wire::PageJson =
            self.get(&url, REQUEST_TIMEOUT + Duration::from_millis(wait_ms))?;
        Page::try_from(page)
    }

    fn ack(&self, collection: &str, peer_id: &str, synced_seq: u64) -> Result<u64> {
        let a: wire::AckAnswer = self.post(
            &self.url(collection, "ack"),
            &wire::AckBody {
                peer_id,
                synced_seq,
            },
        )?;
        Ok(a.last_synced_seq)
    }

    fn compact(&self, collection: &str, document_id: &str) -> Result<()> {
        let _: serde_json::Value = self.post(
            &self.url(collection, "compact"),
            &wire::CompactBody { document_id },
        )?;
        Ok(())
    }

    fn recovery(
        &self,
        collection: &str,
        document_id: &str,
        state_vector: &[u8],
    ) -> Result<(Vec<u8>, u64)> {
        let a: wire::RecoveryAnswer = self.post(
            &self.url(collection, "recovery"),
            &wire::RecoveryBody {
                state_vector: wire::b64(state_vector),
                document_id,
            },
        )?;
        Ok((wire::unb64("diff", &a.diff)?, a.cursor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("todos"), "todos");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn unreachable_server_is_a_network_error() {
        // Port 9 on loopback: nothing listens there in the test environment.
        let t = HttpTransport::new("http://127.0.0.1:9", None);
        let e = t.stream("c", 0, 10, 0).err();
        assert!(matches!(e, Some(Error::Network(_))), "{e:?}");
        assert!(e.is_some_and(|e| e.is_transient()));
    }
}
