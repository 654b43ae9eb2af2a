-- Anomalies become incidents (README, "Anomaly detection"). Every transfer out of a busy
-- account (a treasury, a payout pool) trips `velocity`: one row and one `anomaly.flagged`
-- event per transfer made an operator's feed 22,000 copies of one fact. Now an `anomalies`
-- row is one incident of one rule on one account: hits of that (account, rule) join it while
-- its last hit is younger than the rule's window, counted in `transfers`; each transfer that
-- tripped it keeps its own row in `anomaly_hits` (its flag, its numbers). Only the opening
-- hit writes an event and raises an alert.

CREATE TABLE anomaly_hits (
    -- Increasing; the cursor of `GET /v1/anomalies/{id}/transfers`.
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    anomaly_id   bigint NOT NULL REFERENCES anomalies (id),
    transfer_id  uuid NOT NULL,
    rule         text NOT NULL
        CHECK (rule IN ('velocity', 'large_amount', 'failed_streak', 'duplicate_amount')),
    -- `review`: the hit held its transfer for review; `flag`: the transfer proceeded.
    action       text NOT NULL CHECK (action IN ('flag', 'review')),
    -- The numbers that tripped the rule for this transfer.
    detail       jsonb NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    -- A redelivered posting job judges its transfers again: the same hit is stored once.
    UNIQUE (transfer_id, rule)
);
CREATE INDEX anomaly_hits_by_anomaly ON anomaly_hits (anomaly_id, id);

CREATE TRIGGER anomaly_hits_append_only
    BEFORE UPDATE OR DELETE ON anomaly_hits
    FOR EACH ROW EXECUTE FUNCTION rows_are_append_only();

-- Every hit so far was its own anomaly: it stays one, with one transfer.
INSERT INTO anomaly_hits (anomaly_id, transfer_id, rule, action, detail, at)
SELECT id, transfer_id, rule, action, detail, at FROM anomalies ORDER BY id;

DROP TRIGGER anomalies_append_only ON anomalies;
ALTER TABLE anomalies
    ADD COLUMN transfers bigint NOT NULL DEFAULT 1 CHECK (transfers >= 1),
    ADD COLUMN last_hit_at timestamptz;
UPDATE anomalies SET last_hit_at = at;
ALTER TABLE anomalies
    ALTER COLUMN last_hit_at SET NOT NULL,
    ALTER COLUMN last_hit_at SET DEFAULT now();

-- An incident only grows: more transfers, a later last hit. Everything else it says (which
-- transfer opened it, with what numbers, when) stays as written, and no row goes away.
CREATE FUNCTION anomalies_only_grow() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND (NEW.id, NEW.transfer_id, NEW.ledger, NEW.account_id, NEW.rule, NEW.severity,
            NEW.detail, NEW.at, NEW.action)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.transfer_id, OLD.ledger, OLD.account_id, OLD.rule, OLD.severity,
            OLD.detail, OLD.at, OLD.action)
       AND NEW.transfers >= OLD.transfers AND NEW.last_hit_at >= OLD.last_hit_at THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'anomalies rows only grow (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER anomalies_only_grow
    BEFORE UPDATE OR DELETE ON anomalies
    FOR EACH ROW EXECUTE FUNCTION anomalies_only_grow();

-- The open incident of an (account, rule) is its newest.
CREATE INDEX anomalies_by_account_rule ON anomalies (ledger, account_id, rule, id);
