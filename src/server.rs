//! Starting and stopping the server: [`run`] (listener and shutdown future passed in, as the
//! binary and tests use it) and [`spawn_in_thread`] (a whole server on its own thread, for
//! tests and the load-test tool).
//!
//! # Shutdown
//! When the shutdown future resolves: long polls answer at once and SSE streams end; the
//! listener stops accepting; in-flight requests get up to `shutdown_grace` to finish; then
//! [`Replicate::close`] refuses new work, waits for admitted requests, flushes the store and
//! stops the collection actors, so the data directory is released (the sled lock goes with the
//! store's last background thread, a moment later).

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use actix_cors::Cors;
use actix_web::http::KeepAlive;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer};
use replicate_actors::{Clock, Config, Replicate, Store};
use tokio::sync::{oneshot, watch};

use crate::auth::{self, Auth, Authenticate};
use crate::routes::{configure, AppState};
use crate::settings::ServerSettings;

/// How often histogram buffers are folded in between scrapes.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// CORS: the origins `--cors-origin` lists; `*` or none given allows any origin, except (none
/// given) when `default_any` is false (see [`auth::cors_any_origin_by_default`]): then no
/// cross-origin request is allowed.
fn cors(settings: &ServerSettings, default_any: bool) -> Cors {
    let cors = Cors::default()
        .allowed_methods(["GET", "POST", "OPTIONS"])
        .allow_any_header()
        .expose_any_header()
        .max_age(3600);
    if settings.cors_any_origin() && (default_any || !settings.cors_origins.is_empty()) {
        cors.allow_any_origin()
    } else {
        settings
            .cors_origins
            .iter()
            .fold(cors, |cors, origin| cors.allowed_origin(origin.trim()))
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then shuts down gracefully (see the
/// module docs). Call it inside an actix `System`, where `replicate` was started. Who may do
/// what follows `settings.auth` (see [`auth::choose`]).
///
/// # Errors
/// `InvalidInput` for settings that fail [`ServerSettings::validate`], keys that do not load,
/// or no key on a non-loopback listener without `allow_anonymous`; any I/O error of the
/// listener; a final store flush that failed.
pub async fn run(
    listener: TcpListener,
    replicate: Replicate,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let choice = auth::choose(&settings.auth, listener.local_addr()?).map_err(invalid_input)?;
    run_with_auth(
        listener,
        replicate,
        settings,
        choice.authenticator(),
        shutdown,
    )
    .await
}

/// [`run`] with the authenticator given rather than chosen from `settings.auth`: the binary
/// passes the JWT verifier it reloads on SIGHUP, an embedding application its own.
///
/// # Errors
/// As [`run`].
pub async fn run_with_auth(
    listener: TcpListener,
    replicate: Replicate,
    settings: ServerSettings,
    authenticator: Arc<dyn Authenticate>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    settings.validate().map_err(invalid_input)?;
    let default_any =
        auth::cors_any_origin_by_default(authenticator.is_anonymous(), listener.local_addr()?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let grace = settings.shutdown_grace;
    let state = AppState::new(
        replicate.clone(),
        settings.clone(),
        stop_rx,
        Auth::new(authenticator),
    );
    let cors_settings = Arc::new(settings.clone());
    let body_timeout = settings.body_timeout;
    let write_timeout = settings.write_timeout;
    let keep_alive = if settings.keep_alive.is_zero() {
        KeepAlive::Disabled
    } else {
        KeepAlive::Timeout(settings.keep_alive)
    };
    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(move |req, next| {
                crate::limits::body_deadline(body_timeout, req, next)
            }))
            .wrap(from_fn(crate::health::note_storage_failures))
            .wrap(cors(&cors_settings, default_any))
            .wrap(from_fn(crate::metrics::observe))
            .configure(|cfg| configure(cfg, &state))
    })
    .workers(settings.workers)
    .max_connections(settings.max_connections)
    .keep_alive(keep_alive)
    .client_request_timeout(settings.client_request_timeout)
    .client_disconnect_timeout(settings.client_disconnect_timeout)
    // Before `listen`: the callback is captured when the listener is added.
    .on_connect(move |conn, _| crate::limits::set_write_timeout(conn, write_timeout))
    .disable_signals()
    .shutdown_timeout(grace.as_secs().max(1))
    .listen(listener)?
    .run();
    let handle = server.handle();
    let metrics = crate::metrics::install();
    let upkeep = actix_web::rt::spawn(async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP_EVERY);
        loop {
            every.tick().await;
            if let Some(m) = &metrics {
                m.run_upkeep();
            }
        }
    });
    actix_web::rt::spawn(async move {
        shutdown.await;
        tracing::info!(
            "shutting down: ending long polls and event streams, finishing in-flight requests"
        );
        let _ = stop_tx.send(true);
        handle.stop(true).await;
    });
    let served = server.await;
    upkeep.abort();
    // Every other handle (the workers' app state, SSE streams) is gone with the server, so
    // closing this last one releases the store.
    let flushed = replicate.close(grace).await.map_err(io::Error::other);
    tracing::info!("stopped");
    served.and(flushed)
}

/// A server started by [`spawn_in_thread`]. Dropping it stops it too.
pub struct RunningServer {
    /// The bound address (with the real port when bound to port 0).
    pub addr: SocketAddr,
    /// The server's own actors (a handle on the same runtime the HTTP front calls), for an
    /// embedder or a benchmark that wants the same data without HTTP.
    replicate: Replicate,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl RunningServer {
    /// `http://ADDR`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A handle on the server's actors: calls on it reach the same collections as HTTP
    /// requests do, without the front (the load tool times its in-process floor with it).
    pub fn replicate(&self) -> Replicate {
        self.replicate.clone()
    }

    /// Stops gracefully (see [`run`]) and waits for the server thread; errors are logged.
    pub fn stop(self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "server stopped with an error");
        }
    }

    /// Like [`Self::stop`], answering the server's result.
    ///
    /// # Errors
    /// What [`run`] answered, or an error if the server thread panicked.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| io::Error::other("server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Opens the store `config` names (sled or PostgreSQL), starts the actors and serves on `settings.bind`, all
/// in a new actix `System` on its own thread. Answers once the listener is bound.
///
/// # Errors
/// Bad settings, a bind failure, or a store that does not open.
pub fn spawn_in_thread(config: Config, settings: ServerSettings) -> io::Result<RunningServer> {
    spawn_with(move || Replicate::open(config), settings)
}

/// [`spawn_in_thread`] with an injected clock (tests pass a [`replicate_actors::ManualClock`]
/// to move peers past their timeout without sleeping).
///
/// # Errors
/// As [`spawn_in_thread`].
pub fn spawn_in_thread_with_clock(
    config: Config,
    settings: ServerSettings,
    clock: Arc<dyn Clock>,
) -> io::Result<RunningServer> {
    spawn_with(
        move || {
            let store = Store::for_config(&config)?;
            Replicate::start(config, store, clock)
        },
        settings,
    )
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn spawn_with<F>(open: F, settings: ServerSettings) -> io::Result<RunningServer>
where
    F: FnOnce() -> replicate_actors::Result<Replicate> + Send + 'static,
{
    settings.validate().map_err(invalid_input)?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<(SocketAddr, Replicate)>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("replicate-server".into())
        .spawn(move || {
            actix::System::new().block_on(async move {
                // Keys are checked before the store opens, so a refusal leaves it untouched.
                let opened = TcpListener::bind(settings.bind)
                    .and_then(|l| Ok((l.local_addr()?, l)))
                    .and_then(|(addr, l)| {
                        let choice = auth::choose(&settings.auth, addr).map_err(invalid_input)?;
                        Ok((addr, l, choice))
                    })
                    .and_then(|(addr, l, choice)| {
                        Ok((addr, l, choice, open().map_err(io::Error::other)?))
                    });
                let (addr, listener, choice, replicate) = match opened {
                    Ok(opened) => opened,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok((addr, replicate.clone())));
                let stop = async move {
                    let _ = stop_rx.await;
                };
                let result =
                    run_with_auth(listener, replicate, settings, choice.authenticator(), stop)
                        .await;
                actix::System::current().stop();
                result
            })
        })?;
    match ready_rx.recv() {
        Ok(Ok((addr, replicate))) => Ok(RunningServer {
            addr,
            replicate,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(io::Error::other("server thread ended before it was ready")),
    }
}
