DROP TABLE IF EXISTS relay.announcement_key;
ALTER TABLE relay.sequencer
    DROP COLUMN IF EXISTS holder_pid,
    DROP COLUMN IF EXISTS holder_started;
-- Back to PostgreSQL's defaults: functions executable by PUBLIC, the schema
-- itself usable by its owner only (as CREATE SCHEMA leaves it).
ALTER DEFAULT PRIVILEGES IN SCHEMA relay GRANT EXECUTE ON FUNCTIONS TO PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA relay TO PUBLIC;
