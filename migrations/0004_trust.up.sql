-- Only the relay's role and the database owner may touch schema relay.
--
-- NOTIFY and advisory locks need no privilege, so nothing a relay trusts may
-- rest on them: the sequencer is elected by writing relay.sequencer (a table
-- only the relay's role may update), and what the sequencer announces on the
-- events channel is sealed with a key only the relay's role may read. Capture
-- and filter-change triggers run as their owner (SECURITY DEFINER), so a
-- producer needs no privilege in schema relay at all. docs/roles.sql has the
-- grants of each role of a deployment.

REVOKE ALL ON SCHEMA relay FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA relay FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA relay FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA relay FROM PUBLIC;
-- Functions created later by the owner (repeatable definitions, capture
-- functions of new topics) start closed too.
ALTER DEFAULT PRIVILEGES IN SCHEMA relay REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- The sequencer is the session named here while that session is alive:
-- holder_started tells a reused process id from the original session.
ALTER TABLE relay.sequencer
    ADD COLUMN holder_pid     integer,
    ADD COLUMN holder_started timestamptz;

-- The key sealing announcements (AES-256-GCM). gen_random_uuid draws on the
-- server's strong random source; hashing two of them gives 32 bytes.
CREATE TABLE relay.announcement_key (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    key        bytea       NOT NULL CHECK (octet_length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON relay.announcement_key FROM PUBLIC;
INSERT INTO relay.announcement_key (key)
VALUES (sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')));
