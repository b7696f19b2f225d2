//! `replicate-server`: the replicate sync backend as a service. The only place that reads
//! flags and environment; everything else takes plain settings.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use replicate::ServerSettings;
use replicate_actors::{Config, Replicate};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A durable, ordered, compacting sync log for Yjs documents, over HTTP.
#[derive(Debug, Parser)]
#[command(name = "replicate-server", version, about)]
struct Args {
    /// Address to listen on (HOST:PORT; port 0 picks a free one).
    #[arg(long, env = "REPLICATE_BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// The sled data directory (created if missing).
    #[arg(long, env = "REPLICATE_DATA", default_value = "./data")]
    data: PathBuf,
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
    /// Bytes of updates kept built in memory to check writes against (least recently used go).
    #[arg(long, env = "REPLICATE_DOC_CACHE_BYTES", default_value_t = actor_defaults().doc_cache_bytes)]
    doc_cache_bytes: u64,
    /// Seconds an opId is remembered for retries.
    #[arg(long, env = "REPLICATE_OP_ID_TTL_SECS", default_value_t = actor_defaults().op_id_ttl.as_secs())]
    op_id_ttl_secs: u64,
    /// Long-poll and SSE waiters per collection; more get 503 `overloaded`.
    #[arg(long, env = "REPLICATE_MAX_WAITERS_PER_COLLECTION", default_value_t = actor_defaults().max_waiters_per_collection)]
    max_waiters_per_collection: usize,
    /// Long-poll and SSE waiters in total; more get 503 `overloaded`.
    #[arg(long, env = "REPLICATE_MAX_WAITERS", default_value_t = actor_defaults().max_waiters)]
    max_waiters: usize,
    /// Collection actors kept live; past it the least recently used quiet one stops.
    #[arg(long, env = "REPLICATE_MAX_LIVE_COLLECTIONS", default_value_t = actor_defaults().max_live_collections)]
    max_live_collections: usize,
    /// Peers tracked per collection; acks of new peers past it get 503 `overloaded`.
    #[arg(long, env = "REPLICATE_MAX_PEERS_PER_COLLECTION", default_value_t = actor_defaults().max_peers_per_collection)]
    max_peers_per_collection: usize,
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
        config.size_threshold = self.size_threshold;
        config.peer_timeout = Duration::from_millis(self.peer_timeout_ms);
        config.auto_compact = self.auto_compact;
        config.max_update_bytes = self.max_update_bytes;
        config.yjs.shape.max_depth = self.max_type_depth;
        config.yjs.write_budget = Duration::from_millis(self.write_cpu_ms);
        config.yjs.doc_budget = Duration::from_millis(self.doc_cpu_ms);
        config.doc_cache_bytes = self.doc_cache_bytes;
        config.op_id_ttl = Duration::from_secs(self.op_id_ttl_secs);
        config.max_waiters_per_collection = self.max_waiters_per_collection;
        config.max_waiters = self.max_waiters;
        config.max_live_collections = self.max_live_collections;
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
            ..ServerSettings::default()
        }
    }
}

/// The actors' defaults, for the flags' defaults.
fn actor_defaults() -> Config {
    Config::new("")
}

/// The front's defaults, for the flags' defaults.
fn defaults() -> ServerSettings {
    ServerSettings::default()
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    actix::System::new().block_on(async move {
        let replicate = Replicate::open(config)
            .with_context(|| format!("cannot open the store in {}", args.data.display()))?;
        tracing::info!(data = %args.data.display(), "listening on http://{addr}");
        replicate::run(listener, replicate, settings, shutdown_signal())
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
}
