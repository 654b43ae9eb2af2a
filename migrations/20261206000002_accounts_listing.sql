-- `GET /v1/accounts` (README, HTTP API): a ledger's accounts by id, paged with `id > after`,
-- narrowed by status, currency, metadata and creation time (`store::accounts::list`).
--
-- The primary key (ledger, id) already serves the plain listing and every later page. A
-- condition that matches few accounts would make that scan read most of the ledger for one
-- page, so the selective ones get an index each and the planner picks the narrowest:
--   * status: frozen and closed accounts are few. (ledger, status, id) also keeps id order,
--     so "the frozen ones, next page" reads only frozen rows.
--   * created_after: "accounts opened since yesterday" is a small recent slice.
--   * metadata: a customer's or an owner's accounts among many (containment, `@>`, which is
--     what jsonb_path_ops indexes, smaller than the default GIN operator class).
-- Currency has none: a ledger holds a handful of currencies, so it narrows by a small factor
-- and the primary-key scan with a filter stays cheap.
--
-- EXPLAIN ANALYZE on 200,000 accounts (1 % frozen, 5 % EUR, 5,000 owners): a later plain page
-- and a later page of frozen ones are index-only scans of 100 rows (0.06 / 0.18 ms); one
-- owner's 40 accounts a bitmap scan of the GIN index (5.7 ms); the last 100 s of creations an
-- index scan of 98 rows (0.2 ms); EUR the primary key with 1,900 rows filtered (0.3 ms).
--
-- None of these columns is written by posting (balances and reservations are), so posting's
-- updates of accounts stay HOT (fillfactor 70, migration posting_speed).
CREATE INDEX accounts_by_status ON accounts (ledger, status, id);
CREATE INDEX accounts_by_created_at ON accounts (ledger, created_at);
CREATE INDEX accounts_by_metadata ON accounts USING gin (metadata jsonb_path_ops);
