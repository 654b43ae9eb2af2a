-- Autovacuum for the tables that churn like queues (issue 26; BENCHMARKS.md, "Posted in
-- milliseconds, not seconds").
--
-- Every posting job is inserted, updated twice (claimed by a fetch, then acknowledged) and later
-- purged, none of it HOT (status and lock_by are indexed), so apalis.jobs collects dead row
-- versions at two or three per job; a job fetch walks the partial fetch index past the dead
-- entries. (A `latency` run had 30,502 dead beside 10,187 live rows, on a server whose
-- autovacuum is off: ferry also vacuums this table itself, src/queue/vacuum.rs.) Vacuum it after a fixed number of dead rows,
-- however large the table, and without the cost-based pause: it is small, and kept small.
ALTER TABLE apalis.jobs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);

-- Each transfer is updated once or twice after its insert (pending → posted), so its dead rows
-- equal its rows; at 20 % of a 10M-row table that is 2M dead rows before the first vacuum.
-- 2 % keeps the posting and intake indexes (pending, updated_at) lean as the ledger grows.
ALTER TABLE transfers SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
