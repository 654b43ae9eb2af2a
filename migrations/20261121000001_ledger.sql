-- ferry's ledger. Postgres-only features used here are listed in README ("Portability").

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    key_hash    bytea NOT NULL UNIQUE,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE accounts (
    id              text PRIMARY KEY,
    currency        char(3) NOT NULL,
    balance         numeric NOT NULL DEFAULT 0,
    allow_overdraft boolean NOT NULL DEFAULT false,
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Invariant 6, enforced by the database as well as by the posting engine.
    CONSTRAINT accounts_no_overdraft CHECK (allow_overdraft OR balance >= 0)
);

CREATE TABLE transfers (
    id                  uuid PRIMARY KEY,
    api_key_id          uuid NOT NULL REFERENCES api_keys (id),
    idempotency_key     text NOT NULL,
    request_fingerprint bytea NOT NULL,
    -- Not foreign keys: an unknown account is a business outcome (account_not_found) decided
    -- by the posting engine, not a reason to refuse the request at intake.
    from_account        text NOT NULL,
    to_account          text NOT NULL,
    amount              numeric NOT NULL CHECK (amount > 0),
    currency            char(3) NOT NULL,
    reference           text,
    metadata            jsonb NOT NULL DEFAULT '{}',
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'posted', 'failed')),
    failure_code        text,
    attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    posted_at           timestamptz,
    failed_at           timestamptz,
    -- Invariant 1: one key per API key creates at most one transfer, ever.
    CONSTRAINT transfers_idempotency UNIQUE (api_key_id, idempotency_key),
    CONSTRAINT transfers_distinct_accounts CHECK (from_account <> to_account),
    CONSTRAINT transfers_failed_has_code CHECK ((status = 'failed') = (failure_code IS NOT NULL)),
    CONSTRAINT transfers_posted_has_time CHECK ((status = 'posted') = (posted_at IS NOT NULL))
);

-- Reconciliation and operators look for transfers still pending.
CREATE INDEX transfers_pending_by_age ON transfers (created_at) WHERE status = 'pending';
CREATE INDEX transfers_by_created_at ON transfers (created_at);

-- Invariant 3: a terminal transfer never changes state again.
CREATE FUNCTION transfers_terminal_is_final() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'pending' AND NEW.status IS DISTINCT FROM OLD.status THEN
        RAISE EXCEPTION 'transfer % is % and cannot become %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER transfers_terminal_is_final
    BEFORE UPDATE OF status ON transfers
    FOR EACH ROW EXECUTE FUNCTION transfers_terminal_is_final();

CREATE TABLE entries (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transfer_id uuid NOT NULL REFERENCES transfers (id),
    account_id  text NOT NULL REFERENCES accounts (id),
    side        text NOT NULL CHECK (side IN ('debit', 'credit')),
    -- Signed: debits are negative, credits positive, so a balance is sum(amount).
    amount      numeric NOT NULL,
    currency    char(3) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT entries_sign_matches_side
        CHECK ((side = 'debit' AND amount < 0) OR (side = 'credit' AND amount > 0)),
    -- Invariant 4 (exactly-once posting): at most one debit and one credit per transfer.
    CONSTRAINT entries_one_per_side UNIQUE (transfer_id, side)
);

CREATE INDEX entries_by_account ON entries (account_id, id);

-- Posting transactions take this table's lock before their snapshot (LOCK TABLE is the one
-- statement PostgreSQL runs in a SERIALIZABLE transaction without fixing the snapshot first).
-- Posters therefore queue instead of failing each other with 40001; see ledger/posting.rs.
CREATE TABLE ledger_posting_gate ();
