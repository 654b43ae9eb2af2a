-- Ledgers and authorization (README, "Ledgers and authorization"): every account belongs to
-- one ledger, account ids are unique within it, and API keys other than admin keys are bound
-- to one ledger. Data from before ledgers moves into `default`.

CREATE TABLE ledgers (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9_-]{1,64}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ledgers (name) VALUES ('default');

CREATE TRIGGER ledgers_are_permanent
    BEFORE DELETE ON ledgers
    FOR EACH ROW EXECUTE FUNCTION ledger_rows_are_permanent();
CREATE TRIGGER ledgers_keep_their_name
    BEFORE UPDATE OF name ON ledgers
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name)
    EXECUTE FUNCTION ledger_rows_are_permanent();

-- Admin keys are global (ledger NULL); every other key is bound to exactly one ledger.
ALTER TABLE api_keys
    ADD COLUMN ledger       text REFERENCES ledgers (name),
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN last_used_at timestamptz;
UPDATE api_keys SET ledger = 'default' WHERE NOT ('admin' = ANY (scopes));
ALTER TABLE api_keys
    ADD CONSTRAINT api_keys_bound_unless_admin CHECK ((ledger IS NULL) = ('admin' = ANY (scopes)));

-- Accounts: keyed by (ledger, id). The defaults only carry existing rows over; the next
-- migration drops them so nothing lands in `default` by omission.
ALTER TABLE accounts
    ADD COLUMN ledger text NOT NULL DEFAULT 'default' REFERENCES ledgers (name),
    ADD COLUMN status text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'frozen', 'closed')),
    ADD COLUMN status_changed_at timestamptz;
ALTER TABLE accounts DROP CONSTRAINT accounts_pkey;
ALTER TABLE accounts ADD PRIMARY KEY (ledger, id);

DROP TRIGGER accounts_keep_their_id ON accounts;
CREATE TRIGGER accounts_keep_their_id
    BEFORE UPDATE OF id, ledger ON accounts
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD.ledger IS DISTINCT FROM NEW.ledger)
    EXECUTE FUNCTION ledger_rows_are_permanent();

-- A transfer moves money within one ledger: its key's. Not a foreign key: the ledger comes
-- from the (checked) key, and intake inserts thousands of transfers a second.
ALTER TABLE transfers ADD COLUMN ledger text NOT NULL DEFAULT 'default';

ALTER TABLE entries ADD COLUMN ledger text NOT NULL DEFAULT 'default';
DROP INDEX entries_by_account;
CREATE INDEX entries_by_account ON entries (ledger, account_id, id);

-- The statement-level reference check now also proves that money never crosses ledgers: an
-- entry's account is looked up in the entry's ledger, which must be its transfer's ledger.
CREATE OR REPLACE FUNCTION entries_reference_existing_rows() RETURNS trigger
LANGUAGE plpgsql
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    dangling record;
BEGIN
    SELECT e.transfer_id, e.ledger, e.account_id INTO dangling
    FROM inserted_entries e
    LEFT JOIN transfers t ON t.id = e.transfer_id
    LEFT JOIN accounts a ON a.ledger = e.ledger AND a.id = e.account_id
    WHERE t.id IS NULL OR a.id IS NULL OR t.ledger <> e.ledger
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'entry of transfer % on account %/% refers to a row that does not exist in its ledger',
            dangling.transfer_id, dangling.ledger, dangling.account_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

-- Every administrative act, append-only like the ledger itself.
CREATE TABLE audit_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    -- The API key that acted; NULL when an operator acted through the CLI on the host.
    actor_key_id  uuid,
    action        text NOT NULL,
    ledger        text,
    -- What was acted on, e.g. 'api_key:<uuid>', 'account:<id>', 'ledger:<name>'.
    target        text NOT NULL,
    request_id    text,
    detail        jsonb NOT NULL DEFAULT '{}'
);

CREATE FUNCTION audit_events_are_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_are_append_only();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_are_append_only();
