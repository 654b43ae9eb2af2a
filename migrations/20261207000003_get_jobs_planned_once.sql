-- apalis's job fetch, planned once per connection instead of on every call (issue 26;
-- BENCHMARKS.md, "Sixth sitting"; docs/upstream/apalis-postgres-get-jobs-planning.md).
--
-- apalis-postgres 1.0.0 defines `apalis.get_jobs` in `LANGUAGE sql` with a data-modifying
-- CTE as its body: PostgreSQL 15 neither inlines such a function nor caches its body's plan,
-- so every fetch parses and plans the statement again. Measured with `pg_stat_statements` at
-- 1,000 single requests/s: 17,823 fetches (2.2 per job), each planned (0.17 ms of 0.36 ms).
-- The same statement in PL/pgSQL is planned once per connection and then runs the cached
-- generic plan, which is the partial fetch index's scan whatever the arguments (`EXPLAIN`
-- through `auto_explain`); `pgbench` of an empty fetch: 0.41 → 0.19 ms with the round trip.
--
-- Only the language changes: the body below is apalis-postgres 1.0.0's
-- (`migrations/20260902075949_remove_pl_in_get_jobs.sql`) word for word. apalis's migrations
-- run before ferry's, so if a later apalis changes this function, the check below stops the
-- migration instead of putting the old body back: compare, then carry the change over here.
DO $$
BEGIN
    IF (SELECT md5(prosrc) FROM pg_proc
        WHERE oid = 'apalis.get_jobs(text, text, integer)'::regprocedure)
       IS DISTINCT FROM '7340bb3df05fa0446625ae1197ba31c2' THEN
        RAISE EXCEPTION 'apalis.get_jobs is not apalis-postgres 1.0.0''s: review ferry''s '
            'migration 20261207000003_get_jobs_planned_once.sql against the new one';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION apalis.get_jobs(
    worker_id TEXT,
    v_job_type TEXT,
    v_job_count INTEGER DEFAULT 5
)
RETURNS SETOF apalis.jobs
LANGUAGE plpgsql
VOLATILE
AS $$
BEGIN
    RETURN QUERY
    WITH jobs AS (
        SELECT id
        FROM apalis.jobs
        WHERE
            (
                status = 'Pending'
                OR (
                    status = 'Failed'
                    AND attempts < max_attempts
                )
            )
            AND run_at < now()
            AND job_type = v_job_type
        ORDER BY priority DESC, run_at ASC
        LIMIT v_job_count
        FOR UPDATE SKIP LOCKED
    )
    UPDATE apalis.jobs j
    SET
        status = 'Queued',
        lock_by = worker_id,
        lock_at = now()
    FROM jobs
    WHERE j.id = jobs.id
    RETURNING j.*;
END;
$$;
