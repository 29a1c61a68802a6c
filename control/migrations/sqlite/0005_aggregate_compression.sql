-- Outpost control schema, version 5 (SQLite): nothing to do. The PostgreSQL migration of the
-- same name picks the compression of aggregate rows; SQLite does not compress rows.
SELECT 1;
