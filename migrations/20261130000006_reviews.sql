-- Reviews (README, "Anomaly detection": the `review` action). A transfer held by a rule set
-- to `review` waits in status `in_review` — not posted, nothing reserved — until a reviewer
-- approves it (back to `pending`, posted as usual) or rejects it (`failed`,
-- `rejected_in_review`).

ALTER TABLE transfers DROP CONSTRAINT transfers_status_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_status_check
    CHECK (status IN ('pending', 'in_review', 'posted', 'failed'));

ALTER TABLE transfers
    -- The reviewer's decision, once made; NULL for a transfer never decided on.
    ADD COLUMN review      text CHECK (review IN ('approved', 'rejected')),
    ADD COLUMN reviewed_at timestamptz,
    -- The API key that decided (NULL: an operator through the CLI).
    ADD COLUMN reviewed_by uuid REFERENCES api_keys (id),
    ADD CONSTRAINT transfers_review_has_time CHECK ((review IS NULL) = (reviewed_at IS NULL)),
    ADD CONSTRAINT transfers_rejected_is_failed CHECK (
        review IS DISTINCT FROM 'rejected'
        OR (status = 'failed' AND failure_code = 'rejected_in_review'));

-- Which status may follow which: pending → in_review, posted or failed; in_review → pending
-- (approved) or failed (rejected); posted and failed are terminal (invariant 3). The usual
-- pending → posted / failed update is decided by the WHEN clause alone, without a plpgsql call
-- per row (see 20261121000004_posting_speed.sql).
CREATE FUNCTION transfers_status_moves_forward() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (OLD.status = 'pending' AND NEW.status IN ('in_review', 'posted', 'failed'))
       AND NOT (OLD.status = 'in_review' AND NEW.status IN ('pending', 'failed')) THEN
        RAISE EXCEPTION 'transfer % is % and cannot become %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER transfers_terminal_is_final ON transfers;
DROP FUNCTION transfers_terminal_is_final();
CREATE TRIGGER transfers_status_moves_forward
    BEFORE UPDATE OF status ON transfers
    FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status
          AND NOT (OLD.status = 'pending' AND NEW.status IN ('posted', 'failed')))
    EXECUTE FUNCTION transfers_status_moves_forward();

-- Reconciliation lists reviews waiting longer than a day (`stale_review`); few transfers are
-- ever in review, so the index stays small.
CREATE INDEX transfers_in_review_by_age ON transfers (updated_at, id) WHERE status = 'in_review';

-- A hit either let its transfer proceed (`flag`) or held it for review (`review`).
ALTER TABLE anomalies
    ADD COLUMN action text NOT NULL DEFAULT 'flag' CHECK (action IN ('flag', 'review'));
