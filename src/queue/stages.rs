//! Where a transfer's time goes: `ferry_transfer_stage_seconds{stage}`, the seconds from the
//! commit that wrote a posting job (intake's, so the transfer's acceptance; a retry's for a
//! retried transfer) to each later stage of its transfers (README, "Metrics").
//!
//! The start is read from the job's id: apalis makes it a ULID from the database's
//! `clock_timestamp()` inside the writing transaction, so it costs nothing to carry. Stages are
//! compared with this process's clock: on another host than PostgreSQL, clock skew adds to
//! every figure alike. Each stage is recorded once per job, weighted by its transfers, so the
//! percentiles are of transfers. Which stages, in order:
//!
//! | stage | when |
//! |---|---|
//! | `fetched` | a worker fetched the job and its handler started |
//! | `posting_started` | the process's poster began the transaction that posts it |
//! | `posting_committed` | that transaction committed: transfers posted or failed, events written |
//! | `handled` | the handler returned (anomaly screening done); apalis acks the job next |

use std::time::{SystemTime, UNIX_EPOCH};

use apalis::prelude::TaskId;

/// A stage of a posting job's transfers (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Fetched,
    PostingStarted,
    PostingCommitted,
    Handled,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Fetched,
        Stage::PostingStarted,
        Stage::PostingCommitted,
        Stage::Handled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fetched => "fetched",
            Self::PostingStarted => "posting_started",
            Self::PostingCommitted => "posting_committed",
            Self::Handled => "handled",
        }
    }
}

/// When one posting job was written, and how many transfers it carries.
#[derive(Debug, Clone, Copy)]
pub struct JobClock {
    /// `None` for an id that is not a ULID (not written by apalis-postgres): nothing is
    /// recorded for such a job.
    written_at_ms: Option<u64>,
    transfers: usize,
}

impl JobClock {
    /// The clock of the job `id` carrying `transfers`.
    pub fn of(id: &TaskId, transfers: usize) -> Self {
        let written_at_ms = match id {
            TaskId::Ulid(ulid) => Some(ulid.timestamp_ms()),
            _ => None,
        };
        Self {
            written_at_ms,
            transfers,
        }
    }

    /// Records that the job's transfers reached `stage` now.
    pub fn record(self, stage: Stage) {
        let Some(written_at_ms) = self.written_at_ms else {
            return;
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis());
        let elapsed_ms = now_ms.saturating_sub(u128::from(written_at_ms));
        // Milliseconds are what the ULID carries; f64 holds them exactly.
        let seconds = elapsed_ms as f64 / 1000.0;
        metrics::histogram!("ferry_transfer_stage_seconds", "stage" => stage.as_str())
            .record_many(seconds, self.transfers);
    }
}
