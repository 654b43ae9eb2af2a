-- Reconciliation per ledger (README, "Reconciliation"; ARCHITECTURE.md, `src/reconcile/`):
-- findings name their ledger, runs check one ledger or all, and the incremental balance sums
-- are kept per (ledger, account), since an account id is unique only within its ledger.

-- A run checks one ledger, or every ledger (NULL). Scheduled runs always check every ledger,
-- so the one-scheduled-run-per-window index keeps its meaning.
ALTER TABLE reconciliation_runs
    ADD COLUMN ledger text REFERENCES ledgers (name),
    ADD CONSTRAINT reconciliation_runs_scheduled_check_all
        CHECK (trigger <> 'schedule' OR ledger IS NULL);

-- The ledger a finding is about; NULL only for findings about no one ledger (`job_dead`: a
-- posting job may carry transfers of several ledgers). Findings from before ledgers existed
-- were about `default`.
ALTER TABLE reconciliation_findings ADD COLUMN ledger text;
UPDATE reconciliation_findings SET ledger = 'default' WHERE kind <> 'job_dead';

-- One open finding per problem: `account:cash` drifting in two ledgers is two findings.
-- NULLS NOT DISTINCT (PostgreSQL 15): ledger-less findings stay one per (kind, subject).
DROP INDEX reconciliation_findings_one_open;
CREATE UNIQUE INDEX reconciliation_findings_one_open
    ON reconciliation_findings (kind, ledger, subject) NULLS NOT DISTINCT
    WHERE resolved_at IS NULL;

-- Σ entries per (ledger, account) up to `reconciliation_state.entries_through_id`.
ALTER TABLE reconciliation_checkpoints ADD COLUMN ledger text NOT NULL DEFAULT 'default';
ALTER TABLE reconciliation_checkpoints ALTER COLUMN ledger DROP DEFAULT;
ALTER TABLE reconciliation_checkpoints DROP CONSTRAINT reconciliation_checkpoints_pkey;
ALTER TABLE reconciliation_checkpoints ADD PRIMARY KEY (ledger, account_id);
