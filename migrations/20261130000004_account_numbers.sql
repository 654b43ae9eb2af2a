-- Account numbers (BENCHMARKS.md, "What ledgers cost"): every account gets an internal 8-byte
-- number, and entries and the reconciliation sums refer to accounts by it instead of by the
-- two-text-column key (ledger, id). Posting writes two entries per transfer and each is checked
-- against its account by the reference trigger: probing a bigint index instead of a
-- (text, text) one made that step about a third cheaper (measured in BENCHMARKS.md). The
-- number never leaves the database: the API names accounts by (ledger, id) as before.

ALTER TABLE accounts ADD COLUMN no bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE accounts ADD CONSTRAINT accounts_no_key UNIQUE (no);

-- An account's number is as permanent as its id: entries refer to it.
DROP TRIGGER accounts_keep_their_id ON accounts;
CREATE TRIGGER accounts_keep_their_id
    BEFORE UPDATE OF id, ledger, no ON accounts
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD.ledger IS DISTINCT FROM NEW.ledger
                       OR OLD.no IS DISTINCT FROM NEW.no)
    EXECUTE FUNCTION ledger_rows_are_permanent();

-- Entries name their account by number; the ledger is the account's. Existing entries are
-- rewritten once, here, with the append-only trigger lifted for this transaction only. An
-- entry whose account does not exist (only possible if the reference trigger was bypassed)
-- makes SET NOT NULL fail, and the migration with it: repair that by hand first.
ALTER TABLE entries ADD COLUMN account_no bigint;
ALTER TABLE entries DISABLE TRIGGER entries_append_only;
UPDATE entries e SET account_no = a.no
FROM accounts a WHERE a.ledger = e.ledger AND a.id = e.account_id;
ALTER TABLE entries ENABLE TRIGGER entries_append_only;
ALTER TABLE entries ALTER COLUMN account_no SET NOT NULL;

-- The reference check: each entry's transfer exists, its account exists, and both are in the
-- same ledger — so money never crosses ledgers, whoever writes the entries.
CREATE OR REPLACE FUNCTION entries_reference_existing_rows() RETURNS trigger
LANGUAGE plpgsql
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    dangling record;
BEGIN
    SELECT e.transfer_id, e.account_no INTO dangling
    FROM inserted_entries e
    LEFT JOIN transfers t ON t.id = e.transfer_id
    LEFT JOIN accounts a ON a.no = e.account_no
    WHERE t.id IS NULL OR a.no IS NULL OR t.ledger <> a.ledger
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'entry of transfer % on account number % refers to a row that does not exist in its ledger',
            dangling.transfer_id, dangling.account_no
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

DROP INDEX entries_by_account;
ALTER TABLE entries DROP COLUMN ledger, DROP COLUMN account_id;
CREATE INDEX entries_by_account ON entries (account_no, id);

-- Entries as people read them, with their account's ledger and id (NULL for an entry whose
-- account does not exist, which reconciliation reports). For reading and tests; ferry's hot
-- paths use `entries` and `accounts.no` directly.
CREATE VIEW ledger_entries AS
SELECT e.id, e.transfer_id, a.ledger, a.id AS account_id, e.account_no, e.side, e.amount,
       e.currency, e.created_at
FROM entries e LEFT JOIN accounts a ON a.no = e.account_no;

-- Σ entries per account number. The sums are rebuilt on the next run (watermark back to 0)
-- rather than converted: that run reads every entry once, as a full run does.
DROP TABLE reconciliation_checkpoints;
CREATE TABLE reconciliation_checkpoints (
    account_no   bigint PRIMARY KEY,
    entries_sum  numeric NOT NULL
);
UPDATE reconciliation_state SET entries_through_id = 0;
