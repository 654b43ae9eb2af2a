//! Job payloads and their limits: the one place a job's shape is defined — the Rust type its
//! handler decodes, the SQL that intake builds it with in the same statement as the rows, and
//! the SQL that reconciliation reads it with. Everything that enqueues or inspects a job uses
//! these, so the shape cannot drift between writers and readers.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most transfers one posting job carries (also the batch endpoint's limit and the intake
/// group's): one posting transaction's worth.
pub const TRANSFERS_PER_JOB_MAX: usize = 1000;

/// `ferry.post_transfers`: ids of pending transfers to post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostTransfers {
    pub transfer_ids: Vec<Uuid>,
}

impl PostTransfers {
    /// The payload as a SQL expression over a row source with a uuid column `id` (one job
    /// for all of its rows; see `queue::insert_job_sql`).
    pub const SQL_FROM_ID_ROWS: &'static str = "json_build_object('transfer_ids', json_agg(id))";
    /// The payload's id list (a jsonb array of strings) of the apalis job row aliased `j`.
    pub const SQL_IDS_OF_JOB_J: &'static str =
        "convert_from(j.job, 'UTF8')::jsonb -> 'transfer_ids'";
}

/// `ferry.reconcile`: which run to execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconcile {
    pub run_id: Uuid,
}

/// `ferry.deliver_alert`: one delivery of one alert to one sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverAlert {
    pub delivery_id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_reads_and_writes_the_key_serde_writes() {
        let job = PostTransfers {
            transfer_ids: vec![Uuid::nil()],
        };
        let json = serde_json::to_value(&job).expect("encodes");
        let keys: Vec<&String> = json.as_object().expect("an object").keys().collect();
        assert_eq!(keys, ["transfer_ids"]);
        for sql in [
            PostTransfers::SQL_FROM_ID_ROWS,
            PostTransfers::SQL_IDS_OF_JOB_J,
        ] {
            assert!(sql.contains("'transfer_ids'"), "{sql}");
        }
    }
}
