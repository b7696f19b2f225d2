//! Issue 8: authentication and authorization, end to end.
//!
//! - [`every_route_answers_what_its_access_allows`]: the one table — every route of the route
//!   table × {no token, expired, wrong key, `alg: none`, unknown `kid`, read, write, admin,
//!   admin of one collection, other collection, prefix grant} → the status the contract gives.
//! - [`peers_ack_only_as_themselves`]: `mallory`, `alicex` refused; `alice`, `alice:phone` not.
//! - [`jwks_keys_verify_and_algorithms_stay_with_their_keys`]: RS256, ES256 and EdDSA from
//!   keys generated here; tokens that borrow a key for another algorithm are refused.
//! - [`sighup_rotates_the_jwks`]: the real binary picks up a new JWKS on SIGHUP, keeps the old
//!   keys when the new file is broken.
//! - [`anonymous_mode_needs_loopback_or_allow_anonymous`]: the real binary on 0.0.0.0.
//! - [`cors_with_authentication_on`]: any origin by default, restricted by `--cors-origin`.
//! - [`sse_and_long_polls_end_at_token_expiry`].
//! - [`the_token_subcommand_mints_what_the_server_accepts`].

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{b64, Peer, IO_TIMEOUT};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use replicate::auth::extract::Access;
use replicate::auth::{AuthSettings, KeyFiles, Right};
use replicate::{RunningServer, ServerSettings};
use replicate_actors::Config;
use serde_json::{json, Value};

const SECRET: &[u8] = b"replicate-test-secret-0123456789abcdef";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Signing keys made for this run: RSA (2048 bits), P-256 and Ed25519, as PKCS#1 / PKCS#8 DER.
struct Keys {
    rsa: Vec<u8>,
    ec: Vec<u8>,
    ed: Vec<u8>,
    /// The Ed25519 public key (jsonwebtoken cannot derive it from the PKCS#8 that
    /// ed25519-dalek writes).
    ed_public: [u8; 32],
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        let mut rng = getrandom::SysRng;
        let rsa = rsa::PrivateKey::new(&mut rng, 2048).expect("RSA key");
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("random bytes");
        let ec = p256::SecretKey::from_slice(&seed).expect("P-256 key");
        getrandom::fill(&mut seed).expect("random bytes");
        let ed = ed25519_dalek::SigningKey::from_bytes(&seed);
        Keys {
            rsa: rsa.to_pkcs1_der().expect("PKCS#1").as_bytes().to_vec(),
            ec: p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&ec)
                .expect("PKCS#8")
                .as_bytes()
                .to_vec(),
            ed: ed.to_pkcs8_der().expect("PKCS#8").as_bytes().to_vec(),
            ed_public: ed.verifying_key().to_bytes(),
        }
    })
}

/// A signer: algorithm and private key.
#[derive(Clone, Copy)]
enum Signer {
    Hs(&'static [u8]),
    Rsa,
    Ec,
    Ed,
}

impl Signer {
    fn alg(self) -> Algorithm {
        match self {
            Signer::Hs(_) => Algorithm::HS256,
            Signer::Rsa => Algorithm::RS256,
            Signer::Ec => Algorithm::ES256,
            Signer::Ed => Algorithm::EdDSA,
        }
    }

    fn key(self) -> EncodingKey {
        let k = keys();
        match self {
            Signer::Hs(secret) => EncodingKey::from_secret(secret).expect("HMAC key"),
            Signer::Rsa => EncodingKey::from_rsa_der(&k.rsa),
            Signer::Ec => EncodingKey::from_ec_der(&k.ec),
            Signer::Ed => EncodingKey::from_ed_der(&k.ed),
        }
    }

    /// Its public key as a JWK with `kid`.
    fn jwk(self, kid: &str) -> Jwk {
        let mut jwk = match self {
            Signer::Ed => {
                use base64::engine::general_purpose::URL_SAFE_NO_PAD;
                use base64::Engine as _;
                let x = URL_SAFE_NO_PAD.encode(keys().ed_public);
                serde_json::from_value(json!({ "kty": "OKP", "crv": "Ed25519", "x": x }))
                    .expect("Ed25519 JWK")
            }
            _ => Jwk::from_encoding_key(&self.key(), self.alg()).expect("JWK"),
        };
        jwk.common.key_id = Some(kid.to_string());
        jwk
    }
}

fn sign(signer: Signer, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(signer.alg());
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, &signer.key()).expect("token encodes")
}

/// Valid claims for `sub` with `grants`, expiring in an hour.
fn claims(sub: &str, grants: Value) -> Value {
    json!({ "sub": sub, "exp": now_secs() + 3600, "iat": now_secs(), "replicate": { "grants": grants } })
}

fn hs(sub: &str, grants: Value) -> String {
    sign(Signer::Hs(SECRET), None, &claims(sub, grants))
}

/// `alg: none` with the given claims and an empty signature.
fn alg_none(claims: &Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn write_jwks(path: &Path, jwks: &[Jwk]) {
    let set = JwkSet {
        keys: jwks.to_vec(),
    };
    std::fs::write(path, serde_json::to_vec(&set).expect("JWKS")).expect("write JWKS");
}

/// Key files in a temporary directory: the shared secret and a JWKS.
struct KeyDir {
    dir: tempfile::TempDir,
}

impl KeyDir {
    fn new(jwks: &[Jwk]) -> KeyDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("secret"), [SECRET, b"\n"].concat()).expect("secret");
        write_jwks(&dir.path().join("jwks.json"), jwks);
        KeyDir { dir }
    }

    fn secret(&self) -> PathBuf {
        self.dir.path().join("secret")
    }

    fn jwks(&self) -> PathBuf {
        self.dir.path().join("jwks.json")
    }
}

/// An in-process server with these auth settings.
fn serve(auth: AuthSettings, cors: &[&str]) -> (RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = ServerSettings {
        auth,
        cors_origins: cors.iter().map(|s| s.to_string()).collect(),
        ..ServerSettings::default()
    };
    let server = replicate::spawn_in_thread(Config::new(dir.path().join("data")), settings)
        .expect("server starts");
    (server, dir)
}

fn with_keys(k: &KeyDir, secret: bool, jwks: bool) -> AuthSettings {
    AuthSettings {
        keys: KeyFiles {
            secret_file: secret.then(|| k.secret()),
            jwks_file: jwks.then(|| k.jwks()),
            ..KeyFiles::default()
        },
        allow_anonymous: false,
    }
}

/// An answer: status, headers, and the body unless it is an event stream (left unread).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on its own connection, with an optional bearer token.
fn send(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Answer {
    send_with(addr, method, path, token, &[], body)
}

fn send_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    (&stream).write_all(head.as_bytes()).expect("send head");
    (&stream).write_all(body).expect("send body");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    let sse = answer
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/event-stream"));
    if let (false, Some(n)) = (
        sse,
        answer
            .header("content-length")
            .and_then(|n| n.parse::<usize>().ok()),
    ) {
        answer.body.resize(n, 0);
        reader.read_exact(&mut answer.body).expect("body");
    }
    answer
}

/// Checks the shape of a 401 or 403 answer.
fn assert_refusal(a: &Answer, what: &str) {
    let v = a.json();
    let message = v["error"]["message"].as_str().unwrap_or_default();
    match a.status {
        401 => {
            assert_eq!(v["error"]["code"], "unauthenticated", "{what}: {v}");
            assert!(
                a.header("www-authenticate")
                    .is_some_and(|h| h.starts_with("Bearer")),
                "{what}: 401 without WWW-Authenticate: Bearer"
            );
            assert!(
                !message.to_lowercase().contains("signature"),
                "{what}: a 401 must not say why a signature failed: {message}"
            );
        }
        403 => {
            assert_eq!(v["error"]["code"], "forbidden", "{what}: {v}");
            assert!(
                ["read grant", "write grant", "admin grant", "peerId"]
                    .iter()
                    .any(|g| message.contains(g)),
                "{what}: a 403 names the missing grant: {message}"
            );
        }
        _ => {}
    }
}

/// A column of the table: a way of presenting (or not) a token.
struct Caller {
    name: &'static str,
    sub: &'static str,
    token: Option<String>,
    /// `None`: not authenticated (401 everywhere but the open routes); otherwise its grants as
    /// (collection right on `team-a`, right on `*`).
    rights: Option<(Option<Right>, Option<Right>)>,
}

/// What `caller` gets from a route needing `access` on collection `team-a`.
fn expected(access: Access, caller: &Caller) -> u16 {
    let Some((on_team_a, on_all)) = caller.rights else {
        return if access == Access::Open { 200 } else { 401 };
    };
    let allowed = match access {
        Access::Open => true,
        Access::Collection(need) => on_team_a.is_some_and(|has| has >= need),
        Access::Service(need) => on_all.is_some_and(|has| has >= need),
    };
    if allowed {
        200
    } else {
        403
    }
}

/// The access issue 8 gives each route: the test's own copy of the contract, so a route
/// table that drifts from it fails here.
fn contract(method: &str, path: &str) -> Access {
    use Right::*;
    match (method, path) {
        ("GET", "/healthz" | "/openapi.json") => Access::Open,
        ("GET", "/metrics" | "/stats") => Access::Service(Admin),
        ("GET", "/v1/{c}/stream" | "/v1/{c}/events" | "/v1/{c}/state") => Access::Collection(Read),
        ("POST", "/v1/{c}/ack" | "/v1/{c}/recovery") => Access::Collection(Read),
        (
            "POST",
            "/v1/{c}/insert" | "/v1/{c}/update" | "/v1/{c}/delete" | "/v1/{c}/batch"
            | "/v1/{c}/compact",
        ) => Access::Collection(Write),
        ("GET", "/v1/{c}/stats") => Access::Collection(Admin),
        ("GET", "/v1/{c}/ws/{documentId}") => Access::Collection(Read),
        _ => panic!("{method} {path} is not in the contract: add it (and a sample) here"),
    }
}

/// What an allowed plain GET of the websocket route gets: past the access check, 400
/// `not_websocket` for lacking the upgrade (the upgrade itself is `http_ws` and `js_interop`).
const WS_ALLOWED: u16 = 400;

/// The request that exercises route `path` on collection `team-a` (200 when allowed).
fn sample(method: &str, path: &str, sub: &str, n: u64) -> (String, Vec<u8>) {
    let c = "/v1/team-a";
    let update = Peer::new(1000 + n).append("content", "x");
    let write = json!({ "documentId": format!("doc-{n}"), "crdtBytes": b64(&update) });
    let (path, body) = match (method, path) {
        ("GET", "/healthz" | "/openapi.json" | "/metrics" | "/stats") => {
            (path.to_string(), Value::Null)
        }
        ("POST", "/v1/{c}/insert") => (format!("{c}/insert"), write),
        ("POST", "/v1/{c}/update") => (format!("{c}/update"), write),
        ("POST", "/v1/{c}/batch") => (
            format!("{c}/batch"),
            json!({ "writes": [{ "op": "update", "documentId": "doc-b", "crdtBytes": "AAA=" }] }),
        ),
        ("POST", "/v1/{c}/delete") => (
            format!("{c}/delete"),
            json!({ "documentId": "doc-0", "crdtBytes": "AAA=" }),
        ),
        ("GET", "/v1/{c}/stream") => (format!("{c}/stream?cursor=0"), Value::Null),
        ("POST", "/v1/{c}/ack") => (format!("{c}/ack"), json!({ "peerId": sub, "syncedSeq": 0 })),
        ("POST", "/v1/{c}/compact") => (format!("{c}/compact"), json!({ "documentId": "doc-0" })),
        ("POST", "/v1/{c}/recovery") => (format!("{c}/recovery"), json!({ "stateVector": "AA==" })),
        ("GET", "/v1/{c}/state") => (format!("{c}/state"), Value::Null),
        ("GET", "/v1/{c}/events") => (format!("{c}/events?cursor=0"), Value::Null),
        ("GET", "/v1/{c}/stats") => (format!("{c}/stats"), Value::Null),
        // A plain GET: allowed, it gets past the check to the upgrade (see `WS_ALLOWED`).
        ("GET", "/v1/{c}/ws/{documentId}") => (format!("{c}/ws/doc-0"), Value::Null),
        _ => panic!("no sample request for {method} {path}: add one to this table"),
    };
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    (path, body)
}

#[test]
fn every_route_answers_what_its_access_allows() {
    let k = KeyDir::new(&[Signer::Rsa.jwk("rsa-1")]);
    let (server, _data) = serve(with_keys(&k, true, true), &[]);
    let addr = server.addr;
    let admin = hs("root", json!({ "*": "admin" }));
    // doc-0 exists, so compact and delete have something to work on.
    let seed = sample("POST", "/v1/{c}/insert", "root", 0);
    let r = send(addr, "POST", "/v1/team-a/insert", Some(&admin), &seed.1);
    assert_eq!(r.status, 200, "seed write: {}", r.text());

    let all = json!({ "*": "admin" });
    let expired = sign(
        Signer::Hs(SECRET),
        None,
        &json!({ "sub": "late", "exp": now_secs() - 5, "replicate": { "grants": all } }),
    );
    use Right::*;
    let callers = vec![
        Caller {
            name: "no token",
            sub: "anon",
            token: None,
            rights: None,
        },
        Caller {
            name: "expired",
            sub: "late",
            token: Some(expired),
            rights: None,
        },
        Caller {
            name: "wrong key",
            sub: "forger",
            token: Some(sign(
                Signer::Hs(b"another secret of 32 bytes or more"),
                None,
                &claims("forger", all.clone()),
            )),
            rights: None,
        },
        Caller {
            name: "alg none",
            sub: "forger",
            token: Some(alg_none(&claims("forger", all.clone()))),
            rights: None,
        },
        Caller {
            name: "unknown kid",
            sub: "forger",
            token: Some(sign(
                Signer::Rsa,
                Some("rsa-2"),
                &claims("forger", all.clone()),
            )),
            rights: None,
        },
        Caller {
            name: "read",
            sub: "reader",
            token: Some(hs("reader", json!({ "team-a": "read" }))),
            rights: Some((Some(Read), None)),
        },
        Caller {
            name: "write",
            sub: "writer",
            token: Some(hs("writer", json!({ "team-a": "write" }))),
            rights: Some((Some(Write), None)),
        },
        Caller {
            name: "admin",
            sub: "root",
            token: Some(sign(
                Signer::Rsa,
                Some("rsa-1"),
                &claims("root", all.clone()),
            )),
            rights: Some((Some(Admin), Some(Admin))),
        },
        Caller {
            name: "admin of team-a only",
            sub: "owner",
            token: Some(hs("owner", json!({ "team-a": "admin", "*": "read" }))),
            rights: Some((Some(Admin), Some(Read))),
        },
        Caller {
            name: "other collection",
            sub: "stranger",
            token: Some(hs(
                "stranger",
                json!({ "team-b": "admin", "team-a/*": "admin" }),
            )),
            rights: Some((None, None)),
        },
        Caller {
            name: "prefix grant",
            sub: "teammate",
            token: Some(hs("teammate", json!({ "team-*": "write" }))),
            rights: Some((Some(Write), None)),
        },
    ];

    // Every route of the table the server mounts (each declaring the contract's access),
    // plus compact with the fields that need admin.
    let mut rows: Vec<(String, &'static str, &'static str, Access, Option<&str>)> = Vec::new();
    for r in replicate::routes::routes() {
        assert_eq!(
            r.access,
            contract(r.method, r.path),
            "{} {} declares other access than the contract",
            r.method,
            r.path
        );
        rows.push((
            format!("{} {}", r.method, r.path),
            r.method,
            r.path,
            r.access,
            None,
        ));
    }
    assert_eq!(
        rows.len(),
        16,
        "the route table lists every route: {rows:?}"
    );
    rows.push((
        "POST /v1/{c}/compact with peerTimeout".into(),
        "POST",
        "/v1/{c}/compact",
        Access::Collection(Admin),
        Some(r#"{"documentId":"doc-0","peerTimeout":600000}"#),
    ));
    rows.push((
        "POST /v1/{c}/compact with snapshotBytes".into(),
        "POST",
        "/v1/{c}/compact",
        Access::Collection(Admin),
        Some(r#"{"documentId":"doc-0","snapshotBytes":"AAA="}"#),
    ));

    let mut failures = Vec::new();
    let mut n = 1;
    for (row, method, path, access, body_override) in &rows {
        for caller in &callers {
            n += 1;
            let (mut url, mut body) = sample(method, path, caller.sub, n);
            if let Some(b) = body_override {
                body = b.as_bytes().to_vec();
            }
            // Event streams carry the token in the query, as a browser's EventSource must.
            let mut token = caller.token.as_deref();
            if *path == "/v1/{c}/events" {
                if let Some(t) = token.take() {
                    url.push_str(&format!("&token={t}"));
                }
            }
            let a = send(addr, method, &url, token, &body);
            let mut want = expected(*access, caller);
            if *path == "/v1/{c}/ws/{documentId}" && want == 200 {
                want = WS_ALLOWED;
            }
            let what = format!("{row} as {}", caller.name);
            if a.status != want {
                failures.push(format!(
                    "{what}: got {} want {want}: {}",
                    a.status,
                    a.text()
                ));
                continue;
            }
            assert_refusal(&a, &what);
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    server.stop();
}

#[test]
fn peers_ack_only_as_themselves() {
    let k = KeyDir::new(&[Signer::Ec.jwk("ec-1")]);
    let (server, _data) = serve(with_keys(&k, true, false), &[]);
    let alice = hs("alice", json!({ "todos": "read" }));
    for (peer, status) in [
        ("alice", 200),
        ("alice:phone", 200),
        ("mallory", 403),
        ("alicex", 403),
        ("alic", 403),
    ] {
        let body = json!({ "peerId": peer, "syncedSeq": 0 }).to_string();
        let a = send(
            server.addr,
            "POST",
            "/v1/todos/ack",
            Some(&alice),
            body.as_bytes(),
        );
        assert_eq!(a.status, status, "ack as {peer}: {}", a.text());
        assert_refusal(&a, peer);
    }
    // The refused acks registered no peer: only alice's two devices hold compaction back.
    let admin = hs("root", json!({ "*": "admin" }));
    let stats = send(server.addr, "GET", "/v1/todos/stats", Some(&admin), b"").json();
    assert_eq!(
        (&stats["acks"], &stats["peers"]),
        (&json!(2), &json!(2)),
        "{stats}"
    );
    server.stop();
}

#[test]
fn jwks_keys_verify_and_algorithms_stay_with_their_keys() {
    let k = KeyDir::new(&[
        Signer::Rsa.jwk("rsa-1"),
        Signer::Ec.jwk("ec-1"),
        Signer::Ed.jwk("ed-1"),
    ]);
    let (server, _data) = serve(with_keys(&k, false, true), &[]);
    let read = || claims("alice", json!({ "todos": "read" }));
    let state = |token: &str| send(server.addr, "GET", "/v1/todos/state", Some(token), b"");
    for (signer, kid) in [
        (Signer::Rsa, "rsa-1"),
        (Signer::Ec, "ec-1"),
        (Signer::Ed, "ed-1"),
    ] {
        let a = state(&sign(signer, Some(kid), &read()));
        assert_eq!(a.status, 200, "{kid}: {}", a.text());
    }
    // The RSA public key as an HS256 secret (the classic algorithm confusion), a key used for
    // an algorithm it is not for, a signature by another key, no kid, an HS256 token with no
    // secret configured: all 401.
    let rsa_jwk = serde_json::to_vec(&Signer::Rsa.jwk("rsa-1")).expect("jwk");
    let confusion = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let key = EncodingKey::from_secret(&rsa_jwk).expect("key");
        jsonwebtoken::encode(&header, &read(), &key).expect("encode")
    };
    let cases = [
        ("HS256 with the RSA key as secret", confusion),
        (
            "ES256 token under the RSA kid",
            sign(Signer::Ec, Some("rsa-1"), &read()),
        ),
        (
            "EdDSA token under the EC kid",
            sign(Signer::Ed, Some("ec-1"), &read()),
        ),
        ("no kid", sign(Signer::Rsa, None, &read())),
        (
            "HS256 without a secret",
            hs("alice", json!({ "todos": "read" })),
        ),
    ];
    for (what, token) in cases {
        let a = state(&token);
        assert_eq!(a.status, 401, "{what}: {}", a.text());
        assert_refusal(&a, what);
    }
    server.stop();
}

/// The `replicate-server` binary, killed on drop.
struct Binary {
    child: Child,
    addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    /// Starts the binary with `args`; answers it once it listens, or its exit status and log.
    fn start(args: &[&str], data: &Path) -> Result<Binary, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_replicate-server"))
            .args(args)
            .arg("--data")
            .arg(data)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("replicate-server starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr: String = rest
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\u{1b}')
                            .collect();
                        let mut addr: SocketAddr = addr.parse().expect("address parses");
                        if addr.ip().is_unspecified() {
                            addr.set_ip([127, 0, 0, 1].into());
                        }
                        seen.push(line);
                        let (tx2, log) = mpsc::channel();
                        for l in seen {
                            let _ = tx2.send(l);
                        }
                        std::thread::spawn(move || {
                            while let Ok(l) = rx.recv() {
                                if tx2.send(l).is_err() {
                                    break;
                                }
                            }
                        });
                        return Ok(Binary { child, addr, log });
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = child.try_wait().expect("try_wait") {
                        // Let the reader thread hand over the last lines.
                        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                            seen.push(line);
                        }
                        return Err(format!("exited {status}: {}", seen.join("\n")));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().expect("wait");
                    return Err(format!("exited {status}: {}", seen.join("\n")));
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("replicate-server did not start: {}", seen.join("\n"));
    }

    fn log_so_far(&self) -> String {
        self.log.try_iter().collect::<Vec<_>>().join("\n")
    }
}

#[test]
fn sighup_rotates_the_jwks() {
    let k = KeyDir::new(&[Signer::Rsa.jwk("old")]);
    let data = tempfile::tempdir().expect("temp dir");
    let jwks = k.jwks();
    let server = Binary::start(
        &[
            "--bind",
            "127.0.0.1:0",
            "--auth-jwks-file",
            jwks.to_str().expect("utf-8"),
        ],
        data.path(),
    )
    .expect("starts with a JWKS");
    let grants = || claims("alice", json!({ "todos": "read" }));
    let old = sign(Signer::Rsa, Some("old"), &grants());
    let new = sign(Signer::Ec, Some("new"), &grants());
    let status = |t: &str| send(server.addr, "GET", "/v1/todos/state", Some(t), b"").status;
    assert_eq!((status(&old), status(&new)), (200, 401), "before rotation");

    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success(), "kill -HUP");
    };
    let until = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "{what}: {}", server.log_so_far());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    write_jwks(&jwks, &[Signer::Ec.jwk("new")]);
    hup();
    until("the new key verifies after SIGHUP", &|| status(&new) == 200);
    assert_eq!(status(&old), 401, "the removed key no longer verifies");

    // A broken file on the next SIGHUP leaves the keys as they were.
    std::fs::write(&jwks, b"{ not json").expect("write");
    hup();
    until("the failed reload is logged", &|| {
        server.log_so_far().contains("JWKS not reloaded")
    });
    assert_eq!(status(&new), 200, "keys kept after a bad reload");
}

#[test]
fn anonymous_mode_needs_loopback_or_allow_anonymous() {
    let data = tempfile::tempdir().expect("temp dir");
    let refused = Binary::start(&["--bind", "0.0.0.0:0"], data.path())
        .err()
        .expect("no keys on 0.0.0.0 refuses to start");
    assert!(refused.contains("--allow-anonymous"), "{refused}");
    assert_eq!(
        std::fs::read_dir(data.path()).expect("dir").count(),
        0,
        "refused before opening the store"
    );
    let server = Binary::start(&["--bind", "0.0.0.0:0", "--allow-anonymous"], data.path())
        .expect("--allow-anonymous starts");
    assert!(
        server.log_so_far().contains("ANONYMOUSLY"),
        "a warning at start"
    );
    let a = send(server.addr, "GET", "/v1/todos/state", None, b"");
    assert_eq!(a.status, 200, "anonymous is admin: {}", a.text());
    // Reachable by others and anonymous: CORS allows no foreign page by default.
    let a = send_with(
        server.addr,
        "GET",
        "/v1/todos/state",
        None,
        &[("Origin", "https://evil.example")],
        b"",
    );
    assert_eq!(
        a.header("access-control-allow-origin"),
        None,
        "{:?}",
        a.headers
    );

    // The library refuses too.
    let lan = ServerSettings {
        bind: "0.0.0.0:0".parse().expect("addr"),
        ..ServerSettings::default()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let err = replicate::spawn_in_thread(Config::new(dir.path().join("data")), lan)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("--allow-anonymous"), "{err}");
}

#[test]
fn cors_with_authentication_on() {
    let k = KeyDir::new(&[Signer::Ec.jwk("ec-1")]);
    let token = hs("alice", json!({ "todos": "read" }));
    let origin = |server: &RunningServer, origin: &str| {
        let a = send_with(
            server.addr,
            "GET",
            "/v1/todos/state",
            Some(&token),
            &[("Origin", origin)],
            b"",
        );
        a.header("access-control-allow-origin").map(String::from)
    };
    // No --cors-origin: tokens are not cookies, so any origin may call.
    let (open, _d1) = serve(with_keys(&k, true, false), &[]);
    let got = origin(&open, "https://any.example");
    assert!(
        matches!(got.as_deref(), Some("*" | "https://any.example")),
        "{got:?}"
    );
    open.stop();
    // --cors-origin restricts.
    let (strict, _d2) = serve(with_keys(&k, true, false), &["https://app.example"]);
    assert_eq!(
        origin(&strict, "https://app.example").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(origin(&strict, "https://evil.example"), None);
    strict.stop();
}

/// Reads SSE lines until an `event: error`; answers its data.
fn read_until_error(stream: TcpStream) -> Value {
    let mut reader = BufReader::new(stream);
    let mut event = None;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("SSE read");
        assert!(n > 0, "the stream closed without an error event");
        let l = line.trim_end();
        if l == "event: error" {
            event = Some(());
        } else if let (Some(()), Some(data)) = (event, l.strip_prefix("data: ")) {
            return serde_json::from_str(data).expect("error JSON");
        }
    }
}

#[test]
fn sse_and_long_polls_end_at_token_expiry() {
    let k = KeyDir::new(&[Signer::Ec.jwk("ec-1")]);
    let (server, _data) = serve(with_keys(&k, true, false), &[]);
    let short = |secs: u64| {
        sign(
            Signer::Hs(SECRET),
            None,
            &json!({ "sub": "alice", "exp": now_secs() + secs, "replicate": { "grants": { "todos": "read" } } }),
        )
    };
    // SSE with ?token=: an `unauthenticated` error event at expiry, long before a heartbeat
    // (15 s) would have come.
    let exp_secs = now_secs() + 3;
    let token = short(3);
    let stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let head = format!(
        "GET /v1/todos/events?cursor=0&token={token} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    );
    (&stream).write_all(head.as_bytes()).expect("send");
    let error = read_until_error(stream);
    assert_eq!(error["error"]["code"], "unauthenticated", "{error}");
    let expiry = UNIX_EPOCH + Duration::from_secs(exp_secs);
    let now = SystemTime::now();
    let late = now.duration_since(expiry).unwrap_or_default();
    let early = expiry.duration_since(now).unwrap_or_default();
    assert!(early.is_zero(), "the stream ended {early:?} before expiry");
    assert!(
        late < Duration::from_millis(1500),
        "the stream ended {late:?} after expiry"
    );

    // A long poll asking for 20 s answers at expiry instead.
    let started = Instant::now();
    let a = send(
        server.addr,
        "GET",
        "/v1/todos/stream?cursor=0&waitMs=20000",
        Some(&short(2)),
        b"",
    );
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    server.stop();
}

#[test]
fn the_token_subcommand_mints_what_the_server_accepts() {
    let k = KeyDir::new(&[Signer::Ec.jwk("ec-1")]);
    let out = Command::new(env!("CARGO_BIN_EXE_replicate-server"))
        .args(["token", "--secret-file"])
        .arg(k.secret())
        .args([
            "--sub",
            "alice",
            "--grant",
            "todos=write",
            "--grant",
            "team-a/*=read",
            "--ttl",
            "1h",
        ])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf-8");
    let token = token.trim();
    let (server, _data) = serve(with_keys(&k, true, false), &[]);
    let body =
        json!({ "documentId": "d", "crdtBytes": b64(&Peer::new(7).append("content", "hi")) });
    let status = |path: &str, body: &[u8]| {
        let method = if body.is_empty() { "GET" } else { "POST" };
        send(server.addr, method, path, Some(token), body).status
    };
    assert_eq!(status("/v1/todos/insert", body.to_string().as_bytes()), 200);
    assert_eq!(
        status("/v1/team-a/x/state", b""),
        404,
        "a slash is a path segment"
    );
    assert_eq!(status("/v1/team-a%2Fx/state", b""), 200);
    assert_eq!(
        status("/v1/team-a%2Fx/insert", body.to_string().as_bytes()),
        403
    );
    assert_eq!(status("/v1/other/state", b""), 403);
    server.stop();
}
