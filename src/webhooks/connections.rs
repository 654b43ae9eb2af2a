//! How many connections ferry opens at once to each endpoint (README, "Events and webhooks").
//!
//! A receiver that closes the connection after each answer (HTTP/1.0 without keep-alive, or
//! `Connection: close`) costs a new connection per delivery. Opened 16 at a time they
//! overflow a small accept queue — Python's `http.server` listens with a backlog of 5 — the
//! kernel drops the handshakes that do not fit, and each waits for its SYN to be sent again,
//! 1 s later: such receivers got about 14 deliveries/s (BENCHMARKS.md, "Receivers that close
//! connections"). So an endpoint is sent at most [`OPENING_MAX`] attempts at once until one
//! of its answers shows that it keeps connections alive; then it gets the full parallelism,
//! on connections the client pool reuses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// Attempts in flight at once, per process, to an endpoint whose receiver closes connections
/// (or has not answered yet): below Python's listen backlog of 5, the smallest in common use,
/// so their handshakes always fit in its accept queue. 4 attempts of about 2 ms each are
/// still about 1,400 deliveries/s on loopback (BENCHMARKS.md).
pub const OPENING_MAX: usize = 4;

/// Endpoints remembered; past this the memory is forgotten and each endpoint learns again
/// from its next answer (a few attempts at [`OPENING_MAX`]).
const ENDPOINTS_REMEMBERED_MAX: usize = 10_000;

/// What an answer says about its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// The receiver keeps the connection open for the next request.
    KeptAlive,
    /// The receiver closes it after this answer: the next request opens a new one.
    Closed,
}

/// Per endpoint: whether its receiver keeps connections alive, learnt from its answers.
#[derive(Default)]
pub struct Connections {
    endpoints: Mutex<HashMap<Uuid, Arc<Endpoint>>>,
}

struct Endpoint {
    /// False until an answer shows keep-alive: a receiver not yet heard from is treated as one
    /// that closes, so even the first burst does not overflow its accept queue.
    keeps_alive: AtomicBool,
    opening: Arc<Semaphore>,
}

/// Leave to attempt one delivery; hold it until the answer (or error) is in.
pub struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Connections {
    /// Waits until an attempt to `endpoint` may start.
    pub async fn admit(&self, endpoint: Uuid) -> Admission {
        let endpoint = self.endpoint(endpoint);
        if endpoint.keeps_alive.load(Ordering::Relaxed) {
            return Admission { _permit: None };
        }
        // The semaphore is never closed; without a permit the attempt goes ahead unpaced.
        let permit = endpoint.opening.clone().acquire_owned().await.ok();
        Admission { _permit: permit }
    }

    /// Notes what an answer said; `None` (no answer: a transport error) changes nothing.
    pub fn learn(&self, endpoint: Uuid, reuse: Option<Reuse>) {
        let Some(reuse) = reuse else {
            return;
        };
        self.endpoint(endpoint)
            .keeps_alive
            .store(reuse == Reuse::KeptAlive, Ordering::Relaxed);
    }

    fn endpoint(&self, endpoint: Uuid) -> Arc<Endpoint> {
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still usable.
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if endpoints.len() >= ENDPOINTS_REMEMBERED_MAX && !endpoints.contains_key(&endpoint) {
            endpoints.clear();
        }
        endpoints
            .entry(endpoint)
            .or_insert_with(|| {
                Arc::new(Endpoint {
                    keeps_alive: AtomicBool::new(false),
                    opening: Arc::new(Semaphore::new(OPENING_MAX)),
                })
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn admitted_at_once(connections: &Connections, endpoint: Uuid) -> usize {
        let mut held = Vec::new();
        loop {
            let admit = connections.admit(endpoint);
            match tokio::time::timeout(Duration::from_millis(20), admit).await {
                Ok(admission) if held.len() < 100 => held.push(admission),
                _ => return held.len(),
            }
        }
    }

    #[tokio::test]
    async fn an_endpoint_not_heard_from_gets_opening_max_attempts_at_once() {
        let connections = Connections::default();
        assert_eq!(
            admitted_at_once(&connections, Uuid::new_v4()).await,
            OPENING_MAX
        );
    }

    #[tokio::test]
    async fn keep_alive_lifts_the_cap_and_a_closed_answer_brings_it_back() {
        let connections = Connections::default();
        let endpoint = Uuid::new_v4();
        connections.learn(endpoint, Some(Reuse::KeptAlive));
        assert_eq!(admitted_at_once(&connections, endpoint).await, 100);
        connections.learn(endpoint, None);
        assert_eq!(admitted_at_once(&connections, endpoint).await, 100);
        connections.learn(endpoint, Some(Reuse::Closed));
        assert_eq!(admitted_at_once(&connections, endpoint).await, OPENING_MAX);
    }

    #[tokio::test]
    async fn endpoints_are_paced_apart() {
        let connections = Connections::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let _held_by_a: Vec<Admission> =
            futures::future::join_all((0..OPENING_MAX).map(|_| connections.admit(a))).await;
        assert_eq!(admitted_at_once(&connections, b).await, OPENING_MAX);
    }
}
