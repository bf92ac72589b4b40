-- The roles of a pgrelay deployment and their privileges, for one database.
-- Run as the database owner (the role that runs `migrate up`), after
-- `migrate up`:
--
--   psql "$DATABASE_URL" -f docs/roles.sql
--   psql "$DATABASE_URL" -f examples/templates/roles.sql   # with the example app
--
-- Change the role names to your own and set passwords (\password NAME).
-- docs/operations.md explains each grant; the test suite runs its attack
-- tests with exactly these roles.

-- The relay's role: every relay logs in with it (all relays of a database
-- use the same role, so that they can see each other's sessions and elect
-- a sequencer). It reads the log, the topics and the announcement key,
-- elects the sequencer, prunes the log, and reads filters through
-- relay.filters, which runs as the owner.
CREATE ROLE pgrelay_relay LOGIN;
GRANT USAGE ON SCHEMA relay TO pgrelay_relay;
GRANT SELECT ON relay.events, relay.topics, relay.subscriber_source,
                relay.retention, relay.sequencer, relay.announcement_key
   TO pgrelay_relay;
GRANT UPDATE ON relay.sequencer, relay.retention TO pgrelay_relay;
-- The sequencer rewinds the wake-up tickets when it goes idle.
GRANT UPDATE ON SEQUENCE relay.wake_tickets TO pgrelay_relay;
GRANT DELETE ON relay.events TO pgrelay_relay;
GRANT EXECUTE ON FUNCTION relay.filters(text[]), relay.horizon(bigint[]),
                          relay.horizon(), relay.foreign_xids()
   TO pgrelay_relay;
-- Capture mode wal (relay.set_capture('wal')): the sequencer creates,
-- streams and drops the database's replication slot, appends the decoded
-- events and records how far it got. Streaming a slot needs the REPLICATION
-- attribute, which only a superuser can give (managed services have their
-- own: rds_replication on RDS, the REPLICATION flag through the console or
-- ALTER ROLE on others); run this as one if you use wal mode:
--   ALTER ROLE pgrelay_relay REPLICATION;
GRANT SELECT, UPDATE ON relay.capture TO pgrelay_relay;
GRANT EXECUTE ON FUNCTION relay.append_captured(text, jsonb), relay.complete_capture_switch(),
                          relay.capture_slot_name(), relay.capture_slot_lost(name, text)
   TO pgrelay_relay;
-- Lets the relay tell other databases' transactions from this one's, so a
-- long transaction elsewhere on the server does not hold delivery back.
GRANT pg_read_all_stats TO pgrelay_relay;
-- A producer: the application's own role. It reads and writes the app's
-- tables (grant it what your app needs on them; for the example app,
-- examples/templates/roles.sql) and has no privilege at all in schema
-- relay: the capture and filter-change triggers run as their owner.
CREATE ROLE app_producer LOGIN;

-- Only these roles (and the owner) may connect to this database. An open
-- transaction of any session connected to it holds delivery back (see
-- docs/guarantees.md, "Threat model"), so keep CONNECT to those who need it.
DO $$
BEGIN
    EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO pgrelay_relay, app_producer', current_database());
END
$$;
