//! `replicate-server`: the replicate sync backend as a service. The only place that reads
//! flags, environment and signals; everything else takes plain settings.
//!
//! `replicate-server` serves; `replicate-server token …` mints an HS256 token and exits.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use replicate::auth::jwt::{self, JwtVerifier, MintRequest};
use replicate::auth::{AuthSettings, Choice, KeyFiles, Right};
use replicate::malloc::MallocTuning;
use replicate::ws::WsSettings;
use replicate::ServerSettings;
use replicate_actors::{Clock, Config, Replicate, SystemClock};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A durable, ordered, compacting sync log for Yjs documents, over HTTP.
#[derive(Debug, Parser)]
#[command(
    name = "replicate-server",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// HS256 shared secret for tokens: the file's bytes, trailing newline trimmed.
    #[arg(long, env = "REPLICATE_AUTH_SECRET_FILE")]
    auth_secret_file: Option<PathBuf>,
    /// A JWKS file (RS256, ES256, EdDSA keys; the token's `kid` picks one); re-read on SIGHUP.
    #[arg(long, env = "REPLICATE_AUTH_JWKS_FILE")]
    auth_jwks_file: Option<PathBuf>,
    /// Tokens must carry this `iss`.
    #[arg(long, env = "REPLICATE_AUTH_ISSUER")]
    auth_issuer: Option<String>,
    /// Tokens must carry this `aud`.
    #[arg(long, env = "REPLICATE_AUTH_AUDIENCE")]
    auth_audience: Option<String>,
    /// Without keys, serve everyone as admin even on a non-loopback --bind (refused otherwise).
    #[arg(long, env = "REPLICATE_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,
    /// Address to listen on (HOST:PORT; port 0 picks a free one).
    #[arg(long, env = "REPLICATE_BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// The sled data directory (created if missing); unused with `--store`.
    #[arg(long, env = "REPLICATE_DATA", default_value = "./data")]
    data: PathBuf,
    /// Store everything in PostgreSQL instead of sled: `postgres://user:password@host/db`.
    /// The schema is created and migrated on start.
    #[arg(long, env = "REPLICATE_STORE")]
    store: Option<String>,
    /// PostgreSQL schema for the tables (every node serving the same data names the same one).
    #[arg(long, env = "REPLICATE_STORE_SCHEMA", default_value = "replicate")]
    store_schema: String,
    /// PostgreSQL connections in the pool.
    #[arg(long, env = "REPLICATE_STORE_POOL", default_value_t = 8)]
    store_pool: usize,
    /// Retained delta bytes of a document above which `stream` names it in `compact` (and,
    /// with --auto-compact, compacts it).
    #[arg(long, env = "REPLICATE_SIZE_THRESHOLD", default_value_t = 5_000_000)]
    size_threshold: u64,
    /// A peer not seen for this many milliseconds no longer holds back compaction.
    #[arg(long, env = "REPLICATE_PEER_TIMEOUT_MS", default_value_t = 600_000)]
    peer_timeout_ms: u64,
    /// Compact documents automatically once they pass --size-threshold.
    #[arg(long, env = "REPLICATE_AUTO_COMPACT")]
    auto_compact: bool,
    /// Largest request body in bytes; larger bodies get 413.
    #[arg(long, env = "REPLICATE_BODY_LIMIT", default_value_t = 16 * 1024 * 1024)]
    body_limit: usize,
    /// Largest Yjs update (or client snapshot) in bytes, after base64 decoding; larger get 413.
    #[arg(long, env = "REPLICATE_MAX_UPDATE_BYTES", default_value_t = 8 * 1024 * 1024)]
    max_update_bytes: usize,
    /// An origin allowed by CORS (repeatable, or comma-separated in the environment). None or
    /// `*` allows any origin.
    #[arg(
        long = "cors-origin",
        env = "REPLICATE_CORS_ORIGINS",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,
    /// HTTP worker threads.
    #[arg(long, env = "REPLICATE_WORKERS", default_value_t = 2)]
    workers: usize,
    /// Open connections per HTTP worker; past it new connections wait in the listen backlog.
    #[arg(long, env = "REPLICATE_MAX_CONNECTIONS", default_value_t = defaults().max_connections)]
    max_connections: usize,
    /// Milliseconds a new connection has to send its first request line and headers; past it,
    /// 408 and the connection closes.
    #[arg(
        long,
        env = "REPLICATE_CLIENT_REQUEST_TIMEOUT_MS",
        default_value_t = millis(defaults().client_request_timeout)
    )]
    client_request_timeout_ms: u64,
    /// Milliseconds the server waits for a client to close a connection it is done with (after
    /// a 408 or an unread body) before dropping it; 0 drops it at once.
    #[arg(
        long,
        env = "REPLICATE_CLIENT_DISCONNECT_TIMEOUT_MS",
        default_value_t = millis(defaults().client_disconnect_timeout)
    )]
    client_disconnect_timeout_ms: u64,
    /// Milliseconds an idle keep-alive connection waits for its next request; 0 turns
    /// keep-alive off.
    #[arg(long, env = "REPLICATE_KEEP_ALIVE_MS", default_value_t = millis(defaults().keep_alive))]
    keep_alive_ms: u64,
    /// Milliseconds a request body may take to arrive after its headers; past it, 408
    /// `request_timeout` and the connection closes.
    #[arg(
        long,
        env = "REPLICATE_BODY_TIMEOUT_MS",
        default_value_t = millis(defaults().body_timeout)
    )]
    body_timeout_ms: u64,
    /// Milliseconds an answer may wait on a client that stopped reading it before the
    /// connection is reset (TCP_USER_TIMEOUT; the kernel acts within about twice this).
    #[arg(
        long,
        env = "REPLICATE_WRITE_TIMEOUT_MS",
        default_value_t = millis(defaults().write_timeout)
    )]
    write_timeout_ms: u64,
    /// Deepest nesting of Yjs shared types in one document (roots are 1); deeper writes get
    /// 422 `yjs_limit`.
    #[arg(long, env = "REPLICATE_MAX_TYPE_DEPTH", default_value_t = actor_defaults().yjs.shape.max_depth)]
    max_type_depth: u32,
    /// Milliseconds of CPU one write may spend integrating into its document; past it, 422.
    #[arg(long, env = "REPLICATE_WRITE_CPU_MS", default_value_t = millis(actor_defaults().yjs.write_budget))]
    write_cpu_ms: u64,
    /// Milliseconds of CPU one document may cost to rebuild; past it, writes to it get 422.
    #[arg(long, env = "REPLICATE_DOC_CPU_MS", default_value_t = millis(actor_defaults().yjs.doc_budget))]
    doc_cpu_ms: u64,
    /// Estimated heap bytes of the documents kept built in memory to check writes against
    /// (least recently used go).
    #[arg(long, env = "REPLICATE_DOC_CACHE_BYTES", default_value_t = actor_defaults().doc_cache_bytes)]
    doc_cache_bytes: u64,
    /// Bound of sled's page cache in bytes (unused with --store).
    #[arg(long, env = "REPLICATE_CACHE_BYTES", default_value_t = actor_defaults().cache_bytes)]
    cache_bytes: u64,
    /// Bytes of merged whole-collection states kept for repeated `state` and recovery calls.
    #[arg(long, env = "REPLICATE_STATE_CACHE_BYTES", default_value_t = actor_defaults().state_cache_bytes)]
    state_cache_bytes: usize,
    /// Seconds an opId is remembered for retries.
    #[arg(long, env = "REPLICATE_OP_ID_TTL_SECS", default_value_t = actor_defaults().op_id_ttl.as_secs())]
    op_id_ttl_secs: u64,
    /// Long-poll and SSE waiters per collection; more get 503 `overloaded`.
    #[arg(long, env = "REPLICATE_MAX_WAITERS_PER_COLLECTION", default_value_t = actor_defaults().max_waiters_per_collection)]
    max_waiters_per_collection: usize,
    /// Long-poll and SSE waiters in total; more get 503 `overloaded`.
    #[arg(long, env = "REPLICATE_MAX_WAITERS", default_value_t = actor_defaults().max_waiters)]
    max_waiters: usize,
    /// Longest long poll (`stream?waitMs=`) in milliseconds; larger waits are cut to it.
    #[arg(long, env = "REPLICATE_MAX_WAIT_MS", default_value_t = millis(actor_defaults().max_wait))]
    max_wait_ms: u64,
    /// Collection actors kept live; past it the least recently used quiet one stops.
    #[arg(long, env = "REPLICATE_MAX_LIVE_COLLECTIONS", default_value_t = actor_defaults().max_live_collections)]
    max_live_collections: usize,
    /// Peers tracked per collection; acks of new peers past it get 503 `overloaded`.
    #[arg(long, env = "REPLICATE_MAX_PEERS_PER_COLLECTION", default_value_t = actor_defaults().max_peers_per_collection)]
    max_peers_per_collection: usize,
    /// Open websocket connections (`/v1/{c}/ws/{documentId}`); more get 503 `overloaded`.
    #[arg(long, env = "REPLICATE_WS_MAX_CONNECTIONS", default_value_t = ws_defaults().max_connections)]
    ws_max_connections: usize,
    /// Documents with websocket connections at once; more get 503 `overloaded`.
    #[arg(long, env = "REPLICATE_WS_MAX_ROOMS", default_value_t = ws_defaults().max_rooms)]
    ws_max_rooms: usize,
    /// Largest websocket message a client may send; past it the connection closes (4413).
    #[arg(long, env = "REPLICATE_WS_MAX_MESSAGE_BYTES", default_value_t = ws_defaults().max_message_bytes)]
    ws_max_message_bytes: usize,
    /// Messages queued for one websocket connection; a client that lets it fill is closed (1013).
    #[arg(long, env = "REPLICATE_WS_SEND_QUEUE", default_value_t = ws_defaults().send_queue)]
    ws_send_queue: usize,
    /// Bytes waiting to be written to one websocket connection before it is closed as too slow
    /// (a single larger message is still sent).
    #[arg(long, env = "REPLICATE_WS_SEND_QUEUE_BYTES", default_value_t = ws_defaults().send_queue_bytes)]
    ws_send_queue_bytes: usize,
    /// Milliseconds between websocket pings; silent for two of them, a connection closes.
    #[arg(long, env = "REPLICATE_WS_PING_MS", default_value_t = millis(ws_defaults().ping_interval))]
    ws_ping_ms: u64,
    /// Most glibc malloc arenas (0: glibc's default, 8 per core); fewer keep freed memory
    /// reusable across threads. `MALLOC_ARENA_MAX`, when set, wins.
    #[arg(long, env = "REPLICATE_MALLOC_ARENAS", default_value_t = MallocTuning::default().arenas)]
    malloc_arenas: usize,
    /// Milliseconds between hand-backs of freed memory to the kernel (`malloc_trim`; 0: never).
    #[arg(long, env = "REPLICATE_MALLOC_TRIM_MS", default_value_t = millis(MallocTuning::default().trim_every))]
    malloc_trim_ms: u64,
    /// Milliseconds in-flight requests get to finish on shutdown.
    #[arg(long, env = "REPLICATE_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    shutdown_grace_ms: u64,
    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "REPLICATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

impl Args {
    fn config(&self) -> Config {
        let mut config = Config::new(&self.data);
        config.postgres = self.store.clone();
        config.postgres_options.schema = self.store_schema.clone();
        config.postgres_options.pool_size = self.store_pool;
        config.size_threshold = self.size_threshold;
        config.peer_timeout = Duration::from_millis(self.peer_timeout_ms);
        config.auto_compact = self.auto_compact;
        config.max_update_bytes = self.max_update_bytes;
        config.yjs.shape.max_depth = self.max_type_depth;
        config.yjs.write_budget = Duration::from_millis(self.write_cpu_ms);
        config.yjs.doc_budget = Duration::from_millis(self.doc_cpu_ms);
        config.doc_cache_bytes = self.doc_cache_bytes;
        config.cache_bytes = self.cache_bytes;
        config.state_cache_bytes = self.state_cache_bytes;
        config.op_id_ttl = Duration::from_secs(self.op_id_ttl_secs);
        config.max_waiters_per_collection = self.max_waiters_per_collection;
        config.max_waiters = self.max_waiters;
        config.max_live_collections = self.max_live_collections;
        config.max_wait = Duration::from_millis(self.max_wait_ms);
        config.max_peers_per_collection = self.max_peers_per_collection;
        config
    }

    fn settings(&self) -> ServerSettings {
        ServerSettings {
            bind: self.bind,
            body_limit: self.body_limit,
            cors_origins: self
                .cors_origins
                .iter()
                .map(|o| o.trim().to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            workers: self.workers,
            max_connections: self.max_connections,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            client_request_timeout: Duration::from_millis(self.client_request_timeout_ms),
            client_disconnect_timeout: Duration::from_millis(self.client_disconnect_timeout_ms),
            keep_alive: Duration::from_millis(self.keep_alive_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            auth: AuthSettings {
                keys: KeyFiles {
                    secret_file: self.auth_secret_file.clone(),
                    jwks_file: self.auth_jwks_file.clone(),
                    issuer: self.auth_issuer.clone(),
                    audience: self.auth_audience.clone(),
                },
                allow_anonymous: self.allow_anonymous,
            },
            ws: WsSettings {
                max_connections: self.ws_max_connections,
                max_rooms: self.ws_max_rooms,
                max_message_bytes: self.ws_max_message_bytes,
                send_queue: self.ws_send_queue.max(1),
                send_queue_bytes: self.ws_send_queue_bytes.max(1),
                ping_interval: Duration::from_millis(self.ws_ping_ms.max(1)),
            },
            ..ServerSettings::default()
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mint an HS256 token with the server's secret and print it (for operators and tests).
    Token(TokenArgs),
    /// Print the OpenAPI 3.1 document of the HTTP API (what `/openapi.json` serves):
    /// `replicate-server openapi > docs/openapi.json`.
    Openapi,
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The HS256 secret file the server verifies with.
    #[arg(long, env = "REPLICATE_AUTH_SECRET_FILE")]
    secret_file: PathBuf,
    /// The principal (`sub`); it acks as itself or as `SUB:device`.
    #[arg(long)]
    sub: String,
    /// A grant PATTERN=RIGHT (repeatable): PATTERN is a collection or a prefix ending in `*`,
    /// RIGHT is read, write or admin.
    #[arg(long = "grant", value_parser = parse_grant)]
    grants: Vec<(String, Right)>,
    /// How long the token is valid: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
    /// `iss` to put in the token (for a server started with --auth-issuer).
    #[arg(long)]
    issuer: Option<String>,
    /// `aud` to put in the token (for a server started with --auth-audience).
    #[arg(long)]
    audience: Option<String>,
}

/// `PATTERN=RIGHT`; split at the last `=`, since a collection name may hold one.
fn parse_grant(s: &str) -> Result<(String, Right), String> {
    let (pattern, right) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?} is not PATTERN=RIGHT (e.g. todos=write)"))?;
    if pattern.is_empty() {
        return Err(format!("{s:?} has an empty pattern"));
    }
    Ok((pattern.to_string(), Right::parse(right)?))
}

/// `90`, `90s`, `15m`, `1h`, `7d`.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 3600, 90s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    };
    match secs {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "{s:?} is not a positive duration like 3600, 90s, 15m, 1h or 7d"
        )),
    }
}

fn mint(args: &TokenArgs) -> anyhow::Result<()> {
    let secret = jwt::secret_from_file(&args.secret_file).map_err(anyhow::Error::msg)?;
    let token = jwt::mint(
        &secret,
        &MintRequest {
            subject: &args.sub,
            grants: &args.grants,
            ttl: args.ttl,
            issuer: args.issuer.as_deref(),
            audience: args.audience.as_deref(),
        },
        SystemClock.now_millis(),
    )
    .map_err(anyhow::Error::msg)?;
    println!("{token}");
    Ok(())
}

/// The actors' defaults, for the flags' defaults.
fn actor_defaults() -> Config {
    Config::new("")
}

/// The front's defaults, for the flags' defaults.
fn defaults() -> ServerSettings {
    ServerSettings::default()
}

fn ws_defaults() -> WsSettings {
    WsSettings::default()
}

/// A default duration as a flag's millisecond default.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use actix_web::rt::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        _ => {
            tracing::error!("cannot listen for SIGTERM/SIGINT; stop the server with SIGKILL");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Re-reads the JWKS on every SIGHUP; a file that does not load leaves the keys as they were.
async fn reload_on_sighup(verifier: Arc<JwtVerifier>) {
    use actix_web::rt::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP; keys will not reload without a restart");
        return;
    };
    while hup.recv().await.is_some() {
        match verifier.reload() {
            Ok(n) => tracing::info!(keys = n, "SIGHUP: JWKS reloaded"),
            Err(e) => tracing::error!(error = %e, "SIGHUP: JWKS not reloaded; the old keys stay"),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.command {
        Some(Command::Token(token)) => return mint(token),
        Some(Command::Openapi) => {
            print!("{}", replicate::openapi::json());
            return Ok(());
        }
        None => {}
    }
    replicate::malloc::tune(MallocTuning {
        arenas: args.malloc_arenas,
        trim_every: Duration::from_millis(args.malloc_trim_ms),
    });
    init_logging(args.log_format);
    let settings = args.settings();
    settings
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid settings")?;
    let config = args.config();
    let listener =
        TcpListener::bind(args.bind).with_context(|| format!("cannot listen on {}", args.bind))?;
    let addr = listener.local_addr().context("listener has no address")?;
    let choice = replicate::auth::choose(&settings.auth, addr)
        .map_err(anyhow::Error::msg)
        .context("authentication")?;
    let authenticator = choice.authenticator();
    actix::System::new().block_on(async move {
        let replicate = Replicate::open(config)
            .with_context(|| format!("cannot open the store in {}", args.data.display()))?;
        match choice {
            Choice::Jwt(verifier) => {
                actix_web::rt::spawn(reload_on_sighup(verifier));
                tracing::info!("authentication on: requests need a token");
            }
            Choice::Anonymous => tracing::info!("anonymous mode: no key, everyone is admin"),
        }
        tracing::info!(data = %args.data.display(), "listening on http://{addr}");
        replicate::run_with_auth(
            listener,
            replicate,
            settings,
            authenticator,
            shutdown_signal(),
        )
        .await
        .context("server failed")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_flags_reach_the_settings() {
        let defaults = Args::try_parse_from(["replicate-server"])
            .expect("no flags parse")
            .settings();
        let d = ServerSettings::default();
        assert_eq!(
            (
                defaults.max_connections,
                defaults.client_request_timeout,
                defaults.client_disconnect_timeout,
                defaults.keep_alive,
                defaults.body_timeout,
                defaults.write_timeout,
            ),
            (
                d.max_connections,
                d.client_request_timeout,
                d.client_disconnect_timeout,
                d.keep_alive,
                d.body_timeout,
                d.write_timeout,
            )
        );
        let set = Args::try_parse_from([
            "replicate-server",
            "--max-connections",
            "3",
            "--client-request-timeout-ms",
            "700",
            "--client-disconnect-timeout-ms",
            "0",
            "--keep-alive-ms",
            "0",
            "--body-timeout-ms",
            "1500",
            "--write-timeout-ms",
            "2500",
        ])
        .expect("flags parse")
        .settings();
        assert_eq!(set.max_connections, 3);
        assert_eq!(set.client_request_timeout, Duration::from_millis(700));
        assert_eq!(set.client_disconnect_timeout, Duration::ZERO);
        assert_eq!(set.keep_alive, Duration::ZERO);
        assert_eq!(set.body_timeout, Duration::from_millis(1500));
        assert_eq!(set.write_timeout, Duration::from_millis(2500));
        assert!(set.validate().is_ok());
        let zero = Args::try_parse_from(["replicate-server", "--body-timeout-ms", "0"])
            .expect("flags parse")
            .settings();
        assert!(
            zero.validate().is_err(),
            "a zero body timeout is refused at start"
        );
    }

    #[test]
    fn token_flags_parse() {
        for (ttl, secs) in [
            ("90", 90),
            ("90s", 90),
            ("15m", 900),
            ("1h", 3600),
            ("7d", 604_800),
        ] {
            assert_eq!(parse_ttl(ttl), Ok(Duration::from_secs(secs)), "{ttl}");
        }
        for bad in [
            "",
            "0",
            "0h",
            "h",
            "1w",
            "-1",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_grant("team-a/*=read"),
            Ok(("team-a/*".to_string(), Right::Read))
        );
        assert_eq!(
            parse_grant("a=b=write"),
            Ok(("a=b".to_string(), Right::Write))
        );
        assert!(parse_grant("todos").is_err());
        assert!(parse_grant("=read").is_err());
        assert!(parse_grant("todos=owner").is_err());
        let args = Args::try_parse_from([
            "replicate-server",
            "token",
            "--secret-file",
            "s",
            "--sub",
            "alice",
            "--grant",
            "todos=write",
            "--grant",
            "team-a/*=read",
            "--ttl",
            "1h",
        ])
        .expect("token flags parse");
        match args.command {
            Some(Command::Token(t)) => {
                assert_eq!(t.sub, "alice");
                assert_eq!(t.grants.len(), 2);
                assert_eq!(t.ttl, Duration::from_secs(3600));
            }
            _ => panic!("the token subcommand parses"),
        }
        let serve = Args::try_parse_from(["replicate-server", "--bind", "127.0.0.1:0"])
            .expect("serving flags parse");
        assert!(serve.command.is_none());
        assert!(!serve.settings().auth.keys.any());
    }
}
