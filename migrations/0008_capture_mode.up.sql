-- Capture mode: how committed rows of the topics' tables reach the log.
--   trigger  each topic's capture trigger appends its event inside the
--            producer's transaction (the default; any PostgreSQL);
--   wal      the triggers are disabled, and the elected sequencer reads the
--            changes from a logical replication slot (pgoutput, publication
--            pgrelay) and appends the events itself, in commit order.
-- relay.set_capture (triggers/10_relay.sql) switches; docs/design.md has the
-- switch point and the exactly-once bookkeeping.
CREATE TABLE relay.capture (
    singleton    boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The mode in force: the capture triggers' state follows it.
    mode         text        NOT NULL DEFAULT 'trigger' CHECK (mode IN ('trigger', 'wal')),
    -- What set_capture last asked for. A switch to wal needs the slot
    -- first, which the sequencer creates; it then completes the switch.
    requested    text        NOT NULL DEFAULT 'trigger' CHECK (requested IN ('trigger', 'wal')),
    -- The replication slot while one exists (created by the sequencer for
    -- a switch to wal, dropped by it once it has decoded the switch back).
    slot_name    name,
    -- Where the decoder stands: every source transaction that committed at
    -- or before applied_lsn (its end LSN) has its events in the log, and
    -- decoded_mode is the mode in force in the decoded stream just after
    -- it. Written in the same transaction as the events it accounts for, so
    -- a sequencer killed at any point neither loses nor repeats a
    -- transaction: what is re-streamed at or below applied_lsn is skipped.
    applied_lsn  pg_lsn      NOT NULL DEFAULT '0/0',
    decoded_mode text        NOT NULL DEFAULT 'trigger' CHECK (decoded_mode IN ('trigger', 'wal')),
    -- Set when the slot was found invalidated (WAL it needed was removed):
    -- events were lost, and subscribers get a reset.
    slot_lost_at timestamptz,
    changed_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO relay.capture DEFAULT VALUES;
REVOKE ALL ON relay.capture FROM PUBLIC;

-- One row per switch, written by set_capture after the triggers changed. The
-- table is in the publication, so the decoder sees each switch at its place
-- in commit order: that place is the switch point.
CREATE TABLE relay.capture_switches (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mode        text        NOT NULL CHECK (mode IN ('trigger', 'wal')),
    switched_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON relay.capture_switches FROM PUBLIC;

-- The publication the slot decodes: the switches and every topic's table
-- (relay.create_topic and drop_topic keep it in step). It exists before any
-- slot does, in every mode: pgoutput looks the publication up as of each
-- decoded transaction, and one created after the slot would not be found
-- for the transactions in between. Inserts only: pgrelay publishes inserts.
CREATE PUBLICATION pgrelay FOR TABLE relay.capture_switches WITH (publish = 'insert');
DO $pub$
DECLARE
    src regclass;
BEGIN
    FOR src IN SELECT t.source FROM relay.topics t LOOP
        EXECUTE format('ALTER PUBLICATION pgrelay ADD TABLE %s', src);
    END LOOP;
END
$pub$;
