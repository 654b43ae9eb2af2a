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
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, error};

/// Longest a client may take to send a request head; also how long an idle keep-alive
/// connection is kept, since hyper runs the same timer while it waits for the next request.
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Longest a whole request may take, body included (`408 request_timeout` past it).
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 15_000;
/// Open HTTP connections at most; further clients wait in the listen backlog.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1_024;
/// Pause after an accept error other than a connection reset (out of descriptors, say), so
/// the loop does not spin while the process is starved — hyper 0.14's and axum's choice.
const ACCEPT_ERROR_PAUSE_MS: u64 = 1_000;

/// HTTP limits; see the consts above for what each bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    pub header_read_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub connections_max: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: HEADER_READ_TIMEOUT_MS_DEFAULT,
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
        }
    }
}

impl HttpSettings {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
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
            .header_read_timeout(self.settings.header_read_timeout());
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
