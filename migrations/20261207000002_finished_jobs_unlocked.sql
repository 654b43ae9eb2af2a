-- A finished job lets go of its worker's name (issue 26; BENCHMARKS.md, "Sixth sitting").
--
-- apalis acknowledges jobs with `queries/task/handle_result.sql`, which finds them by
-- `jobs.lock_by = <worker> JOIN <the acknowledged ids, from jsonb_array_elements>`. The planner
-- expects 100 ids from that function and, as apalis keeps `lock_by` on a finished job, every
-- job the worker ever finished matches the worker's name until the purge removes it: the
-- acknowledgement read them all. Measured with `pg_stat_statements` at 1,000 single
-- requests/s: a sequential scan of `apalis.jobs` in every acknowledgement, 2.2 ms each for two
-- or three jobs, the largest single cost in PostgreSQL (more than the intake's insert or
-- posting's entries) and growing with the jobs kept (an hour's worth by default).
--
-- Clearing `lock_by` when a job is done leaves the worker's name on the jobs it holds now, so
-- the name is selective, the index on `lock_by` serves the acknowledgement, and it reads at most
-- the worker's in-flight jobs. Nothing reads `lock_by` of a finished job: apalis's orphan
-- recovery and ferry's rescuer look at `Queued` and `Running` jobs only, and the heartbeat does
-- not count jobs (apalis-postgres's `task-tracking` feature is off). Failed jobs keep it (rare,
-- and the name says which worker failed them).
CREATE FUNCTION finished_job_unlocked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.lock_by := NULL;
    RETURN NEW;
END;
$$;

CREATE TRIGGER finished_job_unlocked
    BEFORE UPDATE OF status ON apalis.jobs
    FOR EACH ROW
    WHEN (NEW.status = 'Done' AND NEW.lock_by IS NOT NULL)
    EXECUTE FUNCTION finished_job_unlocked();

-- Jobs finished before this migration.
UPDATE apalis.jobs SET lock_by = NULL WHERE status = 'Done' AND lock_by IS NOT NULL;
