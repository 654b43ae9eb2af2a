-- Holds, reversals and balance history (README, "Holds, reversals and balance history").
--
-- A hold (`mode = 'hold'`) is posted like a transfer but writes no entries: it reserves its
-- amount on the source account (`pending_debits`) and announces it on the destination
-- (`pending_credits`), status `held`. A capture or void is first *claimed* on the row
-- (`hold_action`, by the request or by expiry: whichever claims first wins, exactly once), then
-- carried out by the posting engine like any pending transfer: a capture writes the two
-- entries for the captured amount and releases the reservation (`posted`); a void only
-- releases it (`voided`, terminal).

ALTER TABLE transfers
    ADD COLUMN mode text NOT NULL DEFAULT 'transfer' CHECK (mode IN ('transfer', 'hold')),
    -- Asked for at intake; the hold expires this long after it is placed.
    ADD COLUMN hold_expires_in_secs integer CHECK (hold_expires_in_secs BETWEEN 1 AND 2592000),
    ADD COLUMN held_at timestamptz,
    ADD COLUMN hold_expires_at timestamptz,
    -- The settlement claimed on a held transfer: by a capture or void request, or by expiry.
    ADD COLUMN hold_action text CHECK (hold_action IN ('capture', 'void', 'expire')),
    -- The amount a capture asked for (NULL: all of it); at most the held amount.
    ADD COLUMN capture_amount numeric CHECK (capture_amount > 0 AND capture_amount <= amount),
    -- What a capture moved: the amount of the transfer's two entries.
    ADD COLUMN captured_amount numeric CHECK (captured_amount > 0 AND captured_amount <= amount),
    ADD COLUMN voided_at timestamptz,
    -- A reversal names the transfer it reverses; the original counts what its reversals (not
    -- failed) take back, and may never give back more than it moved.
    ADD COLUMN reverses uuid REFERENCES transfers (id),
    ADD COLUMN reversed_amount numeric NOT NULL DEFAULT 0,
    ADD CONSTRAINT transfers_hold_has_expiry
        CHECK ((mode = 'hold') = (hold_expires_in_secs IS NOT NULL)),
    ADD CONSTRAINT transfers_only_holds_settle
        CHECK (mode = 'hold' OR (held_at IS NULL AND hold_action IS NULL
                                 AND capture_amount IS NULL AND captured_amount IS NULL)),
    ADD CONSTRAINT transfers_held_has_times
        CHECK (status <> 'held' OR (held_at IS NOT NULL AND hold_expires_at IS NOT NULL)),
    ADD CONSTRAINT transfers_voided_has_time CHECK ((status = 'voided') = (voided_at IS NOT NULL)),
    ADD CONSTRAINT transfers_reversals_within_amount
        CHECK (reversed_amount >= 0 AND reversed_amount <= coalesce(captured_amount, amount)),
    ADD CONSTRAINT transfers_reversal_is_a_transfer CHECK (reverses IS NULL OR mode = 'transfer');

ALTER TABLE transfers DROP CONSTRAINT transfers_status_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_status_check
    CHECK (status IN ('pending', 'in_review', 'held', 'posted', 'failed', 'voided'));

-- Which status may follow which: pending → in_review, held, posted or failed; in_review →
-- pending or failed; held → posted (captured), voided, or failed (a capture refused because an
-- account was frozen or closed meanwhile; the reservation is released). posted, failed and
-- voided are terminal (invariant 3). Posting's moves (all of the allowed ones but review's)
-- are decided by the WHEN clause alone, without a plpgsql call per row.
CREATE OR REPLACE FUNCTION transfers_status_moves_forward() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (OLD.status = 'pending' AND NEW.status IN ('in_review', 'held', 'posted', 'failed'))
       AND NOT (OLD.status = 'in_review' AND NEW.status IN ('pending', 'failed'))
       AND NOT (OLD.status = 'held' AND NEW.status IN ('posted', 'voided', 'failed')) THEN
        RAISE EXCEPTION 'transfer % is % and cannot become %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER transfers_status_moves_forward ON transfers;
CREATE TRIGGER transfers_status_moves_forward
    BEFORE UPDATE OF status ON transfers
    FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status
          AND NOT (OLD.status = 'pending' AND NEW.status IN ('held', 'posted', 'failed'))
          AND NOT (OLD.status = 'held' AND NEW.status IN ('posted', 'voided', 'failed')))
    EXECUTE FUNCTION transfers_status_moves_forward();

-- Expiry claims holds past `hold_expires_at`; reconciliation lists those still held 5 minutes
-- later (`expired_hold`).
CREATE INDEX transfers_held_by_expiry ON transfers (hold_expires_at, id) WHERE status = 'held';
-- Reconciliation sums each original's reversals (`over_reversed`).
CREATE INDEX transfers_by_reverses ON transfers (reverses) WHERE reverses IS NOT NULL;

-- A reversal reserves its amount on the original as it is inserted, under the original's row
-- lock: concurrent reversals queue there, and the CHECK above refuses the one that would take
-- back more than the original moved. It must reverse a posted transfer of its ledger, the
-- other way, in its currency. AFTER INSERT, so an insert that conflicts on its idempotency key
-- (a replay) reserves nothing.
CREATE FUNCTION transfers_reserve_reversal() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE transfers SET reversed_amount = reversed_amount + NEW.amount
    WHERE id = NEW.reverses AND status = 'posted' AND ledger = NEW.ledger
      AND currency = NEW.currency
      AND from_account = NEW.to_account AND to_account = NEW.from_account;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'transfer % cannot be reversed by %', NEW.reverses, NEW.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'transfers_reversal_of_posted';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER transfers_reserve_reversal
    AFTER INSERT ON transfers
    FOR EACH ROW WHEN (NEW.reverses IS NOT NULL)
    EXECUTE FUNCTION transfers_reserve_reversal();

-- A reversal that fails (its source, the original's destination, no longer has the money)
-- gives its share back.
CREATE FUNCTION transfers_release_reversal() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE transfers SET reversed_amount = reversed_amount - NEW.amount WHERE id = NEW.reverses;
    RETURN NULL;
END
$$;

CREATE TRIGGER transfers_release_reversal
    AFTER UPDATE OF status ON transfers
    FOR EACH ROW WHEN (NEW.reverses IS NOT NULL AND NEW.status = 'failed'
                       AND OLD.status <> 'failed')
    EXECUTE FUNCTION transfers_release_reversal();

-- Capture and void requests, for their idempotency: an `Idempotency-Key` names one capture
-- or void per API key (a namespace apart from the transfers' keys). A row is kept only for a
-- request that claimed its hold, so its transfer exists; no foreign key, because the row is
-- written before the claim (a request for an unknown id is refused, not an error).
CREATE TABLE settlement_requests (
    api_key_id          uuid NOT NULL REFERENCES api_keys (id),
    idempotency_key     text NOT NULL,
    request_fingerprint bytea NOT NULL,
    transfer_id         uuid NOT NULL,
    action              text NOT NULL CHECK (action IN ('capture', 'void')),
    amount              numeric CHECK (amount > 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, idempotency_key)
);

-- Reservations. `available = balance − pending_debits` may not go below zero unless the account
-- allows overdraft (invariant 6, now counting holds).
ALTER TABLE accounts
    ADD COLUMN pending_debits numeric NOT NULL DEFAULT 0 CHECK (pending_debits >= 0),
    ADD COLUMN pending_credits numeric NOT NULL DEFAULT 0 CHECK (pending_credits >= 0),
    DROP CONSTRAINT accounts_no_overdraft,
    ADD CONSTRAINT accounts_no_overdraft CHECK (allow_overdraft OR balance - pending_debits >= 0);

-- Balance history: each entry carries its account's balance after it, so the balance at an
-- instant is one index probe (the last entry at or before it), not a sum over the history.
-- Entries are written under the posting gate with `statement_timestamp()`, so within an
-- account `created_at` never decreases as `id` grows. Existing entries are filled in once,
-- here, with the append-only trigger lifted for this transaction only.
ALTER TABLE entries ADD COLUMN balance_after numeric;
ALTER TABLE entries DISABLE TRIGGER entries_append_only;
UPDATE entries e SET balance_after = r.balance_after
FROM (SELECT id, sum(amount) OVER (PARTITION BY account_no ORDER BY id) AS balance_after
      FROM entries) r
WHERE r.id = e.id;
ALTER TABLE entries ENABLE TRIGGER entries_append_only;
ALTER TABLE entries ALTER COLUMN balance_after SET NOT NULL;
CREATE INDEX entries_by_account_time ON entries (account_no, created_at, id);

-- Reservation history, the same way: one line on the source account each time a hold is
-- placed or released, with its `pending_debits` after it (what `available` at an instant
-- needs; the destination's `pending_credits` keeps no history).
CREATE TABLE hold_lines (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Not foreign keys: a per-row check cost posting a fifth of its time (measured; as for
    -- entries, BENCHMARKS.md). Posting writes lines only for transfers and accounts it has
    -- locked, and neither is ever deleted.
    transfer_id           uuid NOT NULL,
    account_no            bigint NOT NULL,
    kind                  text NOT NULL CHECK (kind IN ('reserve', 'release')),
    pending_debits_after  numeric NOT NULL CHECK (pending_debits_after >= 0),
    created_at            timestamptz NOT NULL
);
CREATE INDEX hold_lines_by_account_time ON hold_lines (account_no, created_at, id);
CREATE TRIGGER hold_lines_append_only
    BEFORE UPDATE OR DELETE ON hold_lines
    FOR EACH ROW EXECUTE FUNCTION rows_are_append_only();

ALTER TABLE events DROP CONSTRAINT events_type_check;
ALTER TABLE events ADD CONSTRAINT events_type_check CHECK (type IN (
    'transfer.posted', 'transfer.failed', 'transfer.in_review', 'transfer.held',
    'transfer.voided', 'transfer.reversed', 'anomaly.flagged', 'account.frozen',
    'account.closed'));
