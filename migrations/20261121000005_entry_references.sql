-- Posting speed, part 2: an entry's references are checked once per statement, not per row.
--
-- The foreign keys entries → transfers and entries → accounts each ran a row-level RI trigger
-- (a look-up plus a FOR KEY SHARE lock on the referenced row): measured with EXPLAIN ANALYZE,
-- 40 of the 57 ms that inserting one 1,600-transfer batch's 3,200 entries took (BENCHMARKS.md).
-- One statement-level trigger over the inserted rows checks the same thing with one join.
-- What the foreign keys also did — stop a referenced transfer or account from being deleted or
-- re-keyed — is now done by refusing those changes outright: ferry never deletes or renames
-- either, so no row an entry points at can go away. (A Postgres-only feature: transition
-- tables. On an engine without them, restore the foreign keys.)

ALTER TABLE entries
    DROP CONSTRAINT entries_transfer_id_fkey,
    DROP CONSTRAINT entries_account_id_fkey;

-- Written as anti-joins with hash and merge joins off: one index probe per new entry, so the
-- check costs O(batch), never a scan of the whole ledger (which the planner otherwise picks for
-- batches of a few thousand rows against tables of a few hundred thousand).
CREATE FUNCTION entries_reference_existing_rows() RETURNS trigger
LANGUAGE plpgsql
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    dangling record;
BEGIN
    SELECT e.transfer_id, e.account_id INTO dangling
    FROM inserted_entries e
    LEFT JOIN transfers t ON t.id = e.transfer_id
    LEFT JOIN accounts a ON a.id = e.account_id
    WHERE t.id IS NULL OR a.id IS NULL
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'entry of transfer % on account % refers to a row that does not exist',
            dangling.transfer_id, dangling.account_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER entries_reference_existing_rows
    AFTER INSERT ON entries
    REFERENCING NEW TABLE AS inserted_entries
    FOR EACH STATEMENT EXECUTE FUNCTION entries_reference_existing_rows();

CREATE FUNCTION ledger_rows_are_permanent() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are permanent: entries refer to them (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER transfers_are_permanent
    BEFORE DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_rows_are_permanent();
CREATE TRIGGER transfers_keep_their_id
    BEFORE UPDATE OF id ON transfers
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION ledger_rows_are_permanent();
CREATE TRIGGER transfers_no_truncate
    BEFORE TRUNCATE ON transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_rows_are_permanent();

CREATE TRIGGER accounts_are_permanent
    BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_rows_are_permanent();
CREATE TRIGGER accounts_keep_their_id
    BEFORE UPDATE OF id ON accounts
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION ledger_rows_are_permanent();
CREATE TRIGGER accounts_no_truncate
    BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_rows_are_permanent();
