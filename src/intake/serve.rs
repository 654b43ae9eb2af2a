//! Serving the router over HTTP/1.1 with the limits `axum::serve` does not expose: a
//! header-read timeout and a bound on open connections (README, Configuration).
//!
//! `axum::serve` builds hyper's connection without a timer, so hyper's header-read timeout
//! never runs and a client that sends half a request head holds its connection (and task) for
//! as long as it likes. This is the same accept loop — one task per connection, graceful
//! shutdown through two watch channels, as axum 0.8's `serve` does it — with hyper's HTTP/1
//! builder configured by hand.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, error};

/// Pause after an accept error other than a connection reset (out of descriptors, say), so
/// the loop does not spin while the process is starved — hyper 0.14's and axum's choice.
const ACCEPT_ERROR_PAUSE_MS: u64 = 1_000;

/// `[http]`: where intake listens and the limits on its connections (README, "Configuration").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Listen address (`FERRY_HTTP_ADDR`); port 0 picks a free one, as tests do.
    pub addr: SocketAddr,
    /// Longest a client may take to send a request head; also how long an idle keep-alive
    /// connection is kept, since hyper runs the same timer while it waits for the next request.
    #[serde(
        rename = "header_read_timeout_ms",
        with = "crate::serde_duration::millis"
    )]
    pub header_read_timeout: Duration,
    /// Longest a whole request may take, body included (`408 request_timeout` past it).
    #[serde(rename = "request_timeout_ms", with = "crate::serde_duration::millis")]
    pub request_timeout: Duration,
    /// Open HTTP connections at most; further clients wait in the listen backlog.
    pub connections_max: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            // Loopback: exposing the API is a deliberate choice (docker-compose sets 0.0.0.0).
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            header_read_timeout: Duration::from_secs(10),
            // Longer than intake's database timeout, so a request waiting on the database
            // gets its `503` before this turns it into a `408` (a rule in config.rs).
            request_timeout: Duration::from_secs(15),
            connections_max: 1_024,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets each
/// connection finish its in-flight request, and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: HttpSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // Connection tasks watch `stop` to begin a graceful shutdown; the loop waits until every
    // task has dropped its `done` receiver.
    let (stop, _) = watch::channel(());
    let (done, done_rx) = watch::channel(());
    let permits = Arc::new(Semaphore::new(settings.connections_max));
    let mut shutdown = pin!(shutdown);
    loop {
        // At the limit, stop accepting: the kernel queues new clients, nothing is dropped.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed; leave rather than spin
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = Connection {
            router: router.clone(),
            settings,
            stop: stop.subscribe(),
            done: done_rx.clone(),
        };
        tokio::spawn(async move {
            metrics::gauge!("ferry_http_connections_open").increment(1.0);
            connection.run(stream).await;
            metrics::gauge!("ferry_http_connections_open").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    // Dropping the only sender wakes every connection's `stop.changed()`.
    drop(stop);
    drop(done_rx);
    done.closed().await;
}

struct Connection {
    router: Router,
    settings: HttpSettings,
    stop: watch::Receiver<()>,
    done: watch::Receiver<()>,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        let service = TowerToHyperService::new(self.router);
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_read_timeout);
        let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
        let mut stopping = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    // Header-read timeouts, resets and malformed heads end up here: the
                    // client's trouble, not the server's.
                    if let Err(e) = result {
                        debug!(error = %e, "HTTP connection ended with an error");
                    }
                    break;
                }
                _ = self.stop.changed(), if !stopping => {
                    // Finish the request in flight, then close; idle connections close now.
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
        drop(self.done);
    }
}

async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    error!(error = %e, "accepting an HTTP connection failed");
    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
}
