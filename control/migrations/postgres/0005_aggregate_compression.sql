-- Outpost control schema, version 5 (PostgreSQL): how aggregate rows are compressed. Keep the
-- file name in step with ../sqlite/0005_aggregate_compression.sql.

-- Every merge rewrites an aggregate row's `window_json` (several kB: histograms of every
-- feature), and the default TOAST compression (pglz) then costs more than all the rest of
-- ingest. lz4 compresses the same text several times faster. A server built without lz4 (or
-- older than PostgreSQL 14) keeps the default.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE device_aggregates ALTER COLUMN window_json SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE cohort_aggregates ALTER COLUMN window_json SET COMPRESSION lz4';
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'aggregate rows keep the default compression: %', SQLERRM;
END
$$;
