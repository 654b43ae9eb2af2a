-- Anomaly detection (README, "Anomaly detection"): every rule hit, one row per (transfer,
-- rule), kept like the audit trail: append-only.
CREATE TABLE anomalies (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transfer_id  uuid NOT NULL,
    ledger       text NOT NULL,
    -- The transfer's source account, in `ledger`.
    account_id   text NOT NULL,
    rule         text NOT NULL
        CHECK (rule IN ('velocity', 'large_amount', 'failed_streak', 'duplicate_amount')),
    severity     text NOT NULL CHECK (severity IN ('medium', 'high')),
    -- The numbers that tripped the rule.
    detail       jsonb NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    -- A redelivered posting job judges its transfers again: the same hit is stored once.
    UNIQUE (transfer_id, rule)
);
CREATE INDEX anomalies_by_ledger ON anomalies (ledger, id);
CREATE INDEX anomalies_by_account ON anomalies (ledger, account_id, id);

CREATE FUNCTION rows_are_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER anomalies_append_only
    BEFORE UPDATE OR DELETE ON anomalies
    FOR EACH ROW EXECUTE FUNCTION rows_are_append_only();
