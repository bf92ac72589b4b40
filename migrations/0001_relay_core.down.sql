-- The runner drops the whole relay schema (capture functions, the topic
-- triggers that depend on them, bookkeeping) once no migration is applied;
-- this only removes what 0001 created.
DROP TABLE IF EXISTS relay.retention;
DROP TABLE IF EXISTS relay.sequencer;
DROP TABLE IF EXISTS relay.subscriber_source;
DROP TABLE IF EXISTS relay.topics;
DROP TABLE IF EXISTS relay.events;
