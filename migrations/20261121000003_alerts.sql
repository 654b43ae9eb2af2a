-- Alerts: what happened (alerts) and its delivery to each configured sink (alert_deliveries),
-- with every attempt recorded (alert_attempts).

CREATE TABLE alerts (
    id          uuid PRIMARY KEY,
    -- Same key for a problem's trigger and its resolve (PagerDuty dedup_key).
    dedup_key   text NOT NULL CHECK (length(dedup_key) BETWEEN 1 AND 255),
    action      text NOT NULL CHECK (action IN ('trigger', 'resolve')),
    event_type  text NOT NULL,
    severity    text NOT NULL CHECK (severity IN ('info', 'medium', 'critical')),
    summary     text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_newest ON alerts (created_at DESC);

CREATE TABLE alert_deliveries (
    id              uuid PRIMARY KEY,          -- the webhook-id: stable across retries
    alert_id        uuid NOT NULL REFERENCES alerts (id),
    sink            text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    last_status     integer,
    last_error      text,
    next_attempt_at timestamptz,
    delivered_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (alert_id, sink)
);

CREATE TABLE alert_attempts (
    delivery_id uuid NOT NULL REFERENCES alert_deliveries (id),
    attempt     integer NOT NULL,
    status_code integer,
    latency_ms  integer NOT NULL,
    outcome     text NOT NULL,
    error       text,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (delivery_id, attempt)
);
