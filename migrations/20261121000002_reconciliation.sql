-- Reconciliation: runs, findings, and the incremental sums that keep the balance check cheap.

CREATE TABLE reconciliation_runs (
    id              uuid PRIMARY KEY,
    trigger         text NOT NULL CHECK (trigger IN ('schedule', 'api', 'cli')),
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'completed', 'failed')),
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL CHECK (window_end > window_start),
    full_scan       boolean NOT NULL DEFAULT false,
    transfers_checked bigint NOT NULL DEFAULT 0,
    accounts_checked  bigint NOT NULL DEFAULT 0,
    findings_open     integer NOT NULL DEFAULT 0,
    findings_opened   integer NOT NULL DEFAULT 0,
    findings_resolved integer NOT NULL DEFAULT 0,
    transfers_redriven integer NOT NULL DEFAULT 0,
    jobs_purged       bigint NOT NULL DEFAULT 0,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);

-- Every replica's scheduler fires; the first to insert its window's run does the work.
CREATE UNIQUE INDEX reconciliation_runs_one_per_window
    ON reconciliation_runs (window_start) WHERE trigger = 'schedule';
CREATE INDEX reconciliation_runs_newest ON reconciliation_runs (created_at DESC);

CREATE TABLE reconciliation_findings (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL,
    severity        text NOT NULL CHECK (severity IN ('info', 'medium', 'critical')),
    -- What the finding is about, e.g. 'transfer:<uuid>', 'account:<id>', 'currency:USD'.
    subject         text NOT NULL,
    transfer_id     uuid,
    account_id      text,
    detail          text NOT NULL,
    first_seen_run  uuid NOT NULL REFERENCES reconciliation_runs (id),
    last_seen_run   uuid NOT NULL REFERENCES reconciliation_runs (id),
    resolved_run    uuid REFERENCES reconciliation_runs (id),
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz
);

-- A problem still present is one open finding, however many runs see it.
CREATE UNIQUE INDEX reconciliation_findings_one_open
    ON reconciliation_findings (kind, subject) WHERE resolved_at IS NULL;
CREATE INDEX reconciliation_findings_by_first_run ON reconciliation_findings (first_seen_run);
CREATE INDEX reconciliation_findings_by_resolved_run ON reconciliation_findings (resolved_run);

-- Σ entries per account up to an entry id, so each run adds only new entries instead of
-- rescanning the ledger. Rebuilt from scratch by a full run.
CREATE TABLE reconciliation_checkpoints (
    account_id      text PRIMARY KEY,
    entries_sum     numeric NOT NULL
);

CREATE TABLE reconciliation_state (
    singleton           boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- Entries with id <= this are folded into reconciliation_checkpoints.
    entries_through_id  bigint NOT NULL DEFAULT 0,
    last_full_scan_at   timestamptz
);
INSERT INTO reconciliation_state DEFAULT VALUES;

-- Windowed checks find transfers by their last state change.
CREATE INDEX transfers_by_updated_at ON transfers (updated_at);

-- Which findings each run saw, for GET /v1/reconciliations/{id}.
CREATE TABLE reconciliation_run_findings (
    run_id      uuid NOT NULL REFERENCES reconciliation_runs (id),
    finding_id  uuid NOT NULL REFERENCES reconciliation_findings (id),
    PRIMARY KEY (run_id, finding_id)
);

-- The ledger is append-only: corrections are new transfers, never edits. This also keeps the
-- incremental balance sums of reconciliation exact.
CREATE FUNCTION entries_are_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER entries_append_only
    BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION entries_are_append_only();
CREATE TRIGGER entries_no_truncate
    BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION entries_are_append_only();
