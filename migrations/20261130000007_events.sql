-- Producer events and webhooks (README, "Events and webhooks").
--
-- Every change a producer cares about is an `events` row written in the transaction that makes
-- the change (a transactional outbox). Each ledger numbers its events 1, 2, 3, … with no gaps:
-- the number comes from the ledger's `event_counters` row, updated in the writing transaction,
-- so a second writer waits on that row lock until the first commits. Sequence order is
-- therefore commit order: once a reader has seen `seq = N`, every event with a smaller `seq`
-- is already visible, and a cursor `after = N` never skips one that commits later.

CREATE TABLE event_counters (
    ledger   text PRIMARY KEY REFERENCES ledgers (name),
    last_seq bigint NOT NULL CHECK (last_seq >= 0)
);

CREATE TABLE events (
    id         uuid PRIMARY KEY,
    ledger     text NOT NULL REFERENCES ledgers (name),
    seq        bigint NOT NULL CHECK (seq > 0),
    type       text NOT NULL CHECK (type IN (
        'transfer.posted', 'transfer.failed', 'transfer.in_review', 'anomaly.flagged',
        'account.frozen', 'account.closed')),
    -- What the event is about, as `<kind>:<id>` (`transfer:<uuid>`, `account:<id>`).
    subject    text NOT NULL,
    -- The resource as the API showed it when the change committed.
    payload    json NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (ledger, seq)
);
-- Two indexes only: posting writes a row per transfer. Retention purges by the primary key
-- (UUIDv7 ids sort by creation time), not by an index on `created_at`.

CREATE TABLE webhook_endpoints (
    id           uuid PRIMARY KEY,
    ledger       text NOT NULL REFERENCES ledgers (name),
    url          text NOT NULL,
    event_types  text[] NOT NULL CHECK (cardinality(event_types) > 0),
    -- The signing secret (`whsec_…`), shown once when the endpoint is created.
    secret       text NOT NULL,
    status       text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    disabled_reason text,
    disabled_at  timestamptz,
    -- Fan-out has created deliveries for this ledger's events up to here.
    fanned_out_through bigint NOT NULL CHECK (fanned_out_through >= 0),
    -- Set by the first failed attempt after a success, cleared by a success: an endpoint
    -- failing for three days is disabled.
    failing_since timestamptz,
    created_by   uuid REFERENCES api_keys (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'disabled') = (disabled_at IS NOT NULL))
);
CREATE INDEX webhook_endpoints_by_ledger ON webhook_endpoints (ledger, created_at, id);

-- One row per (endpoint, event): the delivery job. It is due at `next_attempt_at`; a worker
-- claims it by moving `next_attempt_at` past its lease, so a worker that dies mid-delivery
-- leaves it due again when the lease ends (at-least-once).
CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    last_error      text,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);

-- Every HTTP attempt, listed per endpoint.
CREATE TABLE webhook_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id  bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    endpoint_id  uuid NOT NULL,
    event_id     uuid NOT NULL,
    attempted_at timestamptz NOT NULL DEFAULT now(),
    outcome      text NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed', 'gone')),
    status_code  integer,
    error        text,
    duration_ms  integer NOT NULL
);
CREATE INDEX webhook_attempts_by_endpoint ON webhook_attempts (endpoint_id, id);
CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id);
