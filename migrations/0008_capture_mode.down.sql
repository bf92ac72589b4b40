-- The slot and the publication live outside schema relay: remove them here,
-- so that `down` to zero leaves nothing behind (a slot left over would keep
-- WAL on the server for ever). A relay still streaming the slot is
-- disconnected first.
DO $down$
DECLARE
    slot record;
BEGIN
    FOR slot IN
        SELECT s.slot_name, s.active_pid
          FROM pg_catalog.pg_replication_slots s
         WHERE s.database = current_database()
           AND (s.slot_name = (SELECT c.slot_name FROM relay.capture c)
                OR s.slot_name = 'pgrelay_' || (SELECT d.oid FROM pg_catalog.pg_database d
                                                 WHERE d.datname = current_database()))
    LOOP
        IF slot.active_pid IS NOT NULL THEN
            PERFORM pg_catalog.pg_terminate_backend(slot.active_pid, 5000);
        END IF;
        PERFORM pg_catalog.pg_drop_replication_slot(slot.slot_name);
    END LOOP;
END
$down$;
DROP PUBLICATION IF EXISTS pgrelay;
DROP TABLE IF EXISTS relay.capture_switches;
DROP TABLE IF EXISTS relay.capture;
