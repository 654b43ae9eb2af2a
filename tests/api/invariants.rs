//! The ledger invariants (README, "Invariants and the tests that prove them"), checked from the database after a test's traffic has settled.

use sqlx::PgPool;

async fn violations(pool: &PgPool, what: &str, sql: &'static str) {
    let rows: Vec<String> = sqlx::query_scalar(sql)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(rows.is_empty(), "{what}: {rows:?}");
}

/// Asserts invariants 3–6 over every ledger, each on its own: an account id is unique only
/// within its ledger, so every join matches the ledger too, and money never crosses ledgers.
pub async fn assert_ledger_invariants(pool: &PgPool) {
    // Every change a producer cares about has exactly its event (README, "Events and
    // webhooks").
    crate::events::assert_events_match_transfers(pool).await;
    violations(
        pool,
        "invariant 3: every acknowledged transfer is terminal (or an open hold, unclaimed)",
        "SELECT id::text FROM transfers WHERE status = 'pending' \
           OR (status = 'held' AND hold_action IS NOT NULL)",
    )
    .await;
    violations(
        pool,
        "invariant 4: a posted transfer has one debit and one credit of its amount, in its ledger",
        "SELECT t.id::text FROM transfers t \
         LEFT JOIN ledger_entries d ON d.transfer_id = t.id AND d.side = 'debit' \
         LEFT JOIN ledger_entries c ON c.transfer_id = t.id AND c.side = 'credit' \
         WHERE t.status = 'posted' AND (d.id IS NULL OR c.id IS NULL \
           OR d.ledger IS DISTINCT FROM t.ledger OR c.ledger IS DISTINCT FROM t.ledger \
           OR d.account_id IS DISTINCT FROM t.from_account \
           OR c.account_id IS DISTINCT FROM t.to_account \
           OR d.amount <> -coalesce(t.captured_amount, t.amount) \
           OR c.amount <> coalesce(t.captured_amount, t.amount) \
           OR d.currency <> t.currency OR c.currency <> t.currency)",
    )
    .await;
    violations(
        pool,
        "invariant 4: exactly two entries per posted transfer, none for others",
        "SELECT t.id::text FROM transfers t LEFT JOIN entries e ON e.transfer_id = t.id \
         GROUP BY t.id, t.status \
         HAVING count(e.id) <> CASE WHEN t.status = 'posted' THEN 2 ELSE 0 END",
    )
    .await;
    violations(
        pool,
        "money stays in its ledger: no entry in another ledger than its transfer's",
        "SELECT e.id::text FROM ledger_entries e JOIN transfers t ON t.id = e.transfer_id \
         WHERE e.ledger IS DISTINCT FROM t.ledger",
    )
    .await;
    violations(
        pool,
        "every entry's account exists",
        "SELECT e.account_no::text FROM entries e LEFT JOIN accounts a ON a.no = e.account_no \
         WHERE a.no IS NULL",
    )
    .await;
    violations(
        pool,
        "invariant 5: balance = sum of entries",
        "SELECT a.ledger || '/' || a.id FROM accounts a \
         LEFT JOIN entries e ON e.account_no = a.no \
         GROUP BY a.ledger, a.id, a.balance HAVING a.balance <> coalesce(sum(e.amount), 0)",
    )
    .await;
    violations(
        pool,
        "balance = what its own ledger's posted transfers imply (no other ledger touched it)",
        "SELECT a.ledger || '/' || a.id FROM accounts a WHERE a.balance <> \
           coalesce((SELECT sum(coalesce(captured_amount, amount)) FROM transfers \
                     WHERE status = 'posted' AND ledger = a.ledger AND to_account = a.id), 0) - \
           coalesce((SELECT sum(coalesce(captured_amount, amount)) FROM transfers \
                     WHERE status = 'posted' AND ledger = a.ledger AND from_account = a.id), 0)",
    )
    .await;
    violations(
        pool,
        "invariant 5: per ledger and currency, entries sum to zero",
        "SELECT ledger || ' ' || currency FROM ledger_entries GROUP BY ledger, currency \
         HAVING sum(amount) <> 0",
    )
    .await;
    violations(
        pool,
        "invariant 5: per ledger and currency, balances sum to zero",
        "SELECT ledger || ' ' || currency FROM accounts GROUP BY ledger, currency \
         HAVING sum(balance) <> 0",
    )
    .await;
    violations(
        pool,
        "invariant 6: no account without overdraft below zero, holds counted (available)",
        "SELECT ledger || '/' || id FROM accounts \
         WHERE NOT allow_overdraft AND balance - pending_debits < 0",
    )
    .await;
    violations(
        pool,
        "holds: each account's pending sums are its open holds",
        "SELECT a.ledger || '/' || a.id FROM accounts a WHERE a.pending_debits <> \
           coalesce((SELECT sum(amount) FROM transfers WHERE status = 'held' \
                     AND ledger = a.ledger AND from_account = a.id), 0) \
           OR a.pending_credits <> \
           coalesce((SELECT sum(amount) FROM transfers WHERE status = 'held' \
                     AND ledger = a.ledger AND to_account = a.id), 0)",
    )
    .await;
    violations(
        pool,
        "reversals never exceed their original, and reversed_amount is their sum",
        "SELECT t.id::text FROM transfers t \
         JOIN (SELECT reverses, sum(amount) FILTER (WHERE status <> 'failed') AS total \
               FROM transfers WHERE reverses IS NOT NULL GROUP BY reverses) r \
           ON r.reverses = t.id \
         WHERE coalesce(r.total, 0) > coalesce(t.captured_amount, t.amount) \
            OR coalesce(r.total, 0) <> t.reversed_amount",
    )
    .await;
    violations(
        pool,
        "balance history: each entry carries its account's running balance",
        "SELECT id::text FROM (SELECT id, balance_after, \
           sum(amount) OVER (PARTITION BY account_no ORDER BY id) AS running FROM entries) e \
         WHERE balance_after <> running",
    )
    .await;
    violations(
        pool,
        "balance history: within an account, time never runs backwards",
        "SELECT id::text FROM (SELECT id, created_at, \
           lag(created_at) OVER (PARTITION BY account_no ORDER BY id) AS before FROM entries) e \
         WHERE created_at < before",
    )
    .await;
}
