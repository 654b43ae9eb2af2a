-- apalis's tables lose the indexes they carry twice (issue 26; BENCHMARKS.md, "Seventh sitting").
--
-- apalis-postgres 1.0.0's first migration made `unique_job_id (id)` and `LIdx (lock_by)` on
-- `apalis.jobs`, and `unique_worker_id (id)`, `LSIdx (last_seen)` and `WTIdx (worker_type)` on
-- `apalis.workers`. Later migrations added a primary key on each table and
-- `idx_apalis_jobs_lock_by`, `idx_apalis_workers_last_seen` and `idx_apalis_workers_worker_type`,
-- and `streamline_indices` dropped the other old indexes (`TIdx`, `SIdx`, `JTIdx`, `Idx`) but not
-- these five. So each job row is written into six indexes where four hold every entry, and it is
-- written three times (the insert, then `Queued` and `Done`, neither a HOT update because both
-- change indexed columns): six index entries per job that nothing reads, and vacuum cleans them
-- again. Upstream text: docs/upstream/apalis-postgres-duplicate-indexes.md.
--
-- Each is dropped only if its twin is there, so a future apalis that renames its indexes never
-- leaves a table without one, and only if no constraint rests on it: `unique_worker_id` stays,
-- as apalis's foreign key from `jobs.lock_by` was bound to it (a table of a few rows, written by
-- heartbeats). Nothing names the others: apalis's `ON CONFLICT (id)` infers the primary key
-- as well.
DO $$
DECLARE
    twins CONSTANT text[][] := ARRAY[
        ['unique_job_id',    'jobs_pkey'],
        ['lidx',             'idx_apalis_jobs_lock_by'],
        ['unique_worker_id', 'workers_pkey'],
        ['lsidx',            'idx_apalis_workers_last_seen'],
        ['wtidx',            'idx_apalis_workers_worker_type']
    ];
    twin text[];
BEGIN
    FOREACH twin SLICE 1 IN ARRAY twins LOOP
        -- to_regclass: NULL, so no row, for an index that is not there.
        IF EXISTS (
               SELECT 1
               FROM pg_index a, pg_index b
               WHERE a.indexrelid = to_regclass('apalis.' || twin[1])
                 AND b.indexrelid = to_regclass('apalis.' || twin[2])
                 AND a.indrelid = b.indrelid
                 AND a.indkey::text = b.indkey::text
                 AND a.indclass::text = b.indclass::text
                 AND a.indoption::text = b.indoption::text
                 AND a.indpred IS NULL AND b.indpred IS NULL
                 AND a.indexprs IS NULL AND b.indexprs IS NULL
                 AND (b.indisunique OR NOT a.indisunique)
           )
           AND NOT EXISTS (
               SELECT 1 FROM pg_constraint WHERE conindid = to_regclass('apalis.' || twin[1])
           )
        THEN
            EXECUTE format('DROP INDEX apalis.%I', twin[1]);
        END IF;
    END LOOP;
END
$$;
