-- Operator console (README, "Operator console").

-- `console:read` keys are viewers of the whole system: global like admin keys, and holding no
-- other scope, so no ledger-bound power can ride along on a global key.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_bound_unless_admin;
ALTER TABLE api_keys
    ADD CONSTRAINT api_keys_bound_unless_global
        CHECK ((ledger IS NULL) = (scopes && ARRAY['admin', 'console:read']::text[])),
    ADD CONSTRAINT api_keys_viewer_alone
        CHECK (NOT ('console:read' = ANY (scopes)) OR scopes = ARRAY['console:read']::text[]);

-- A signed-in browser: the cookie carries a random token, only its SHA-256 is stored. The
-- session lives no longer than its key: revoking or expiring the key ends it (checked on
-- every request).
CREATE TABLE console_sessions (
    token_hash  bytea PRIMARY KEY,
    api_key_id  uuid NOT NULL REFERENCES api_keys (id),
    -- Synchronizer token every action form carries (CSRF).
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    ended_at    timestamptz
);
CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);

-- One row per action form submitted: each rendered form carries a fresh nonce, so a double
-- click or a re-sent POST finds its nonce taken and acts once.
CREATE TABLE console_actions (
    nonce       text PRIMARY KEY,
    token_hash  bytea NOT NULL REFERENCES console_sessions (token_hash) ON DELETE CASCADE,
    action      text NOT NULL,
    -- What the action answered, shown again to a re-sent form; NULL while it runs.
    outcome     text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX console_actions_by_session ON console_actions (token_hash);
