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
use crate::feed::{ChangeFeed, SseFeed};
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

    /// `GET /v1/{c}/events?cursor=`: the live feed of changes from `cursor` (Server-Sent
    /// Events). `idle_timeout` bounds each wait for the next bytes, so a connection that died
    /// without a word is noticed (the server sends a keepalive every 15 s).
    ///
    /// The default answers [`Error::Unsupported`], so a transport without streaming (an app's
    /// own, a test fake) is pulled by long polls.
    ///
    /// # Errors
    /// As [`Transport::stream`], before the stream starts; [`Error::Unsupported`] when the
    /// server has no such route or does not answer an event stream.
    fn events(
        &self,
        collection: &str,
        cursor: u64,
        idle_timeout: Duration,
    ) -> Result<Box<dyn ChangeFeed>> {
        let _ = (collection, cursor, idle_timeout);
        Err(Error::Unsupported(
            "this transport has no event stream".into(),
        ))
    }

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
/// How long `events` may wait for its answer head: the server answers once it read the
/// first page, so a longer wait means something in between holds the stream back.
const EVENTS_ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
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
    let body = read_body(&mut resp)?;
    if status == 200 {
        return serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("answer is not the expected JSON: {e}")));
    }
    Err(refusal(status, &body))
}

/// A whole (bounded) answer body.
fn read_body(resp: &mut ureq::http::Response<ureq::Body>) -> Result<Vec<u8>> {
    resp.body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_vec()
        .map_err(|e| Error::Network(format!("reading the answer: {e}")))
}

/// The error a non-200 answer stands for.
fn refusal(status: u16, body: &[u8]) -> Error {
    match serde_json::from_slice::<wire::ErrorEnvelope>(body) {
        Ok(env) => Error::Server {
            status,
            code: env.error.code,
            message: env.error.message,
        },
        Err(_) => Error::Server {
            status,
            code: format!("http_{status}"),
            message: String::from_utf8_lossy(body).chars().take(200).collect(),
        },
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

    fn events(
        &self,
        collection: &str,
        cursor: u64,
        idle_timeout: Duration,
    ) -> Result<Box<dyn ChangeFeed>> {
        let url = format!("{}?cursor={cursor}", self.url(collection, "events"));
        let mut req = self
            .agent
            .get(&url)
            .config()
            // The body never ends: no overall timeout, only one per read.
            .timeout_global(None)
            .timeout_recv_response(Some(idle_timeout.min(EVENTS_ANSWER_TIMEOUT)))
            .timeout_per_read(Some(idle_timeout))
            .build()
            .header("Accept", "text/event-stream");
        if let Some(b) = self.bearer() {
            req = req.header("Authorization", b);
        }
        let mut resp = match req.call() {
            Ok(resp) => resp,
            // Connected, yet no answer head although the server answers at once: something
            // in between holds the stream back (a proxy buffering it whole).
            Err(ureq::Error::Timeout(ureq::Timeout::RecvResponse | ureq::Timeout::PerRead)) => {
                return Err(Error::Unsupported(
                    "GET events got no answer head in time (a proxy buffering the stream?)".into(),
                ))
            }
            Err(e) => return Err(Error::Network(e.to_string())),
        };
        let status = resp.status().as_u16();
        if matches!(status, 404 | 405 | 406 | 501) {
            // An older server, or something in between that does not route it.
            return Err(Error::Unsupported(format!("GET events answered {status}")));
        }
        if status != 200 {
            let body = read_body(&mut resp)?;
            return Err(refusal(status, &body));
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with("text/event-stream") {
            return Err(Error::Unsupported(format!(
                "GET events answered {content_type:?}, not an event stream"
            )));
        }
        let body = resp.into_body().into_reader();
        Ok(Box::new(SseFeed::new(body, cursor)))
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
    use crate::feed::FeedItem;

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

    /// A one-connection server on loopback that reads a request head, writes `answer` and
    /// keeps the connection open (silent) until the test ends.
    fn answer_once(answer: &'static str) -> String {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        std::thread::spawn(move || {
            let Ok((conn, _)) = listener.accept() else {
                return;
            };
            let mut reader = std::io::BufReader::new(&conn);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = (&conn).write_all(answer.as_bytes());
            std::thread::sleep(Duration::from_secs(10));
        });
        format!("http://{addr}")
    }

    #[test]
    fn events_route_missing_or_not_an_event_stream_is_unsupported() {
        for answer in [
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi",
        ] {
            let t = HttpTransport::new(&answer_once(answer), None);
            let e = t.events("c", 0, Duration::from_secs(5)).err();
            assert!(matches!(e, Some(Error::Unsupported(_))), "{answer}: {e:?}");
        }
        let t = HttpTransport::new(
            &answer_once(
                "HTTP/1.1 422 Unprocessable Entity\r\nContent-Type: application/json\r\nContent-Length: 47\r\n\r\n{\"error\":{\"code\":\"cursor_ahead\",\"message\":\"x\"}}",
            ),
            None,
        );
        let e = t.events("c", 9, Duration::from_secs(5)).err();
        assert_eq!(
            e.as_ref().and_then(Error::code),
            Some("cursor_ahead"),
            "{e:?}"
        );
        // connected, but no answer head (a proxy that buffers the whole body)
        let t = HttpTransport::new(&answer_once(""), None);
        let e = t.events("c", 0, Duration::from_millis(300)).err();
        assert!(matches!(e, Some(Error::Unsupported(_))), "{e:?}");
        // nothing listening is being offline, not a missing route
        let t = HttpTransport::new("http://127.0.0.1:9", None);
        let e = t.events("c", 0, Duration::from_millis(300)).err();
        assert!(matches!(e, Some(Error::Network(_))), "{e:?}");
    }

    #[test]
    fn a_silent_event_stream_times_out() {
        let url = answer_once(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
             d\r\n: keepalive\n\n\r\n",
        );
        let t = HttpTransport::new(&url, None);
        let mut feed = t
            .events("c", 0, Duration::from_millis(300))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(feed.next_item(), Ok(Some(FeedItem::Heartbeat))));
        let started = std::time::Instant::now();
        let e = feed.next_item().err();
        assert!(matches!(e, Some(Error::Network(_))), "{e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
