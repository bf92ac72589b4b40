-- pgrelay core functions. Repeatable: re-applied by `migrate up` whenever this
-- file changes, so every statement must be safe to run again.

-- Wake-up tickets. Every NOTIFY serialises its transaction's commit with
-- every other notifying commit, so producers must not notify once per row
-- while the sequencer takes a moment to wake up. A capture trigger that
-- finds the sequencer idle draws a ticket and notifies only with one of
-- the first four; the sequencer rewinds the sequence (setval) each time it
-- goes idle. nextval is not transactional and takes no lock that lasts, so
-- drawing costs producers nothing they wait on. A ticket drawn by a
-- transaction that then rolls back or stays open wakes nobody: the
-- sequencer's idle poll (--idle-poll) bounds that delay.
--
-- A sequence, not a column: it holds nothing worth keeping, and it lives
-- here beside the capture functions that use it so that no rollback of a
-- versioned migration can leave them referring to a dropped object. The
-- sequencer's role rewinds it, so every role that may update
-- relay.sequencer may update it (docs/roles.sql grants the same).
CREATE SEQUENCE IF NOT EXISTS relay.wake_tickets AS bigint;
REVOKE ALL ON SEQUENCE relay.wake_tickets FROM PUBLIC;
DO $grant$
DECLARE
    writer text;
BEGIN
    FOR writer IN
        SELECT DISTINCT a.grantee::regrole::text
          FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
         WHERE c.oid = 'relay.sequencer'::regclass
           AND a.privilege_type = 'UPDATE'
           AND a.grantee NOT IN (0, c.relowner)
    LOOP
        EXECUTE format('GRANT UPDATE ON SEQUENCE relay.wake_tickets TO %s', writer);
    END LOOP;
END
$grant$;

-- relay.create_topic turns inserts into a table into events of a topic.
--   topic            name clients subscribe to ([a-z][a-z0-9_]*)
--   source           the table
--   audience         function(source row) RETURNS text[]: the keys an event
--                    is addressed to
--   subscriber_keys  function(subscriber text) RETURNS SETOF text: the keys a
--                    subscriber listens to
--   actor_column     optional column naming the subscriber who wrote the row;
--                    that subscriber never receives the event
-- It generates one trigger function per topic so that the row's audience is
-- computed with a statically planned call (no dynamic SQL on the write path).
CREATE OR REPLACE FUNCTION relay.create_topic(
    topic text,
    source regclass,
    audience regprocedure,
    subscriber_keys regprocedure,
    actor_column name DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    capture_fn  text := 'capture_' || topic;
    actor_expr  text := 'NULL';
    audience_fn text;
BEGIN
    IF topic !~ '^[a-z][a-z0-9_]{0,40}$' THEN
        RAISE EXCEPTION 'invalid topic name %: use lower-case letters, digits and _ (at most 41), starting with a letter', topic
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF actor_column IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pg_attribute
                        WHERE attrelid = source AND attname = actor_column
                          AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION 'actor column % does not exist in %', actor_column, source
                USING ERRCODE = 'undefined_column';
        END IF;
        actor_expr := format('NEW.%I::text', actor_column);
    END IF;

    -- Qualified by hand: regproc's text leaves out a schema on the
    -- caller's search_path, and the capture function runs with its own.
    SELECT format('%I.%I', n.nspname, p.proname) INTO audience_fn
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE p.oid = audience;

    -- The capture function runs as its owner (the one who made the topic),
    -- so producers need no privilege in schema relay and cannot write the
    -- log but through their rows; a fixed search_path keeps the producer's
    -- own objects out of it.
    EXECUTE format($body$
        CREATE OR REPLACE FUNCTION relay.%I() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $capture$
        DECLARE
            idle boolean;
        BEGIN
            -- The sequencer's idle flag is read by the INSERT itself
            -- (RETURNING), not by a statement of its own: one executor
            -- run per row instead of two.
            INSERT INTO relay.events (topic, payload, audience, actor)
            VALUES (%L, to_jsonb(NEW), coalesce(%s(NEW), '{}'), %s)
            RETURNING (SELECT s.idle FROM relay.sequencer s) INTO idle;
            -- Wake the sequencer only when it has gone idle, so a busy
            -- system pays no NOTIFY per row; and only with the first few
            -- tickets drawn since it went idle, so a burst that starts
            -- while it sleeps pays a handful of NOTIFYs, not one per row
            -- until it is back (see relay.wake_tickets above).
            IF idle THEN
                IF pg_catalog.nextval('relay.wake_tickets') <= 4 THEN
                    PERFORM pg_catalog.pg_notify('pgrelay_wake', '');
                END IF;
            END IF;
            RETURN NULL;
        END
        $capture$
    $body$, capture_fn, topic, audience_fn, actor_expr);
    EXECUTE format('REVOKE EXECUTE ON FUNCTION relay.%I() FROM PUBLIC', capture_fn);

    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION relay.%I()',
                   'pgrelay_' || topic, source, capture_fn);

    -- Keep the publication in step (capture mode wal decodes it), and in
    -- wal mode leave the new trigger disabled: the sequencer captures the
    -- table's rows from the WAL, from this transaction's commit on.
    IF to_regclass('relay.capture') IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr
                         JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
                        WHERE p.pubname = 'pgrelay' AND pr.prrelid = source) THEN
            EXECUTE format('ALTER PUBLICATION pgrelay ADD TABLE %s', source);
        END IF;
        IF (SELECT c.mode FROM relay.capture c) = 'wal' THEN
            EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I', source, 'pgrelay_' || topic);
        END IF;
    END IF;

    INSERT INTO relay.topics (topic, source, audience, subscriber_keys, actor_column)
    VALUES (topic, source, audience, subscriber_keys, actor_column)
    ON CONFLICT ON CONSTRAINT topics_pkey DO UPDATE
       SET source = EXCLUDED.source,
           audience = EXCLUDED.audience,
           subscriber_keys = EXCLUDED.subscriber_keys,
           actor_column = EXCLUDED.actor_column;
END
$fn$;

-- relay.drop_topic removes a topic's trigger and registration; events already
-- in the log stay until retention prunes them.
CREATE OR REPLACE FUNCTION relay.drop_topic(topic text) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    t relay.topics;
BEGIN
    SELECT * INTO t FROM relay.topics WHERE relay.topics.topic = drop_topic.topic;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown topic %', topic USING ERRCODE = 'undefined_object';
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'pgrelay_' || topic, t.source);
    EXECUTE format('DROP FUNCTION IF EXISTS relay.%I()', 'capture_' || topic);
    DELETE FROM relay.topics WHERE relay.topics.topic = drop_topic.topic;
    IF to_regclass('relay.capture') IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM relay.topics o WHERE o.source = t.source)
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr
                     JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
                    WHERE p.pubname = 'pgrelay' AND pr.prrelid = t.source) THEN
        EXECUTE format('ALTER PUBLICATION pgrelay DROP TABLE %s', t.source);
    END IF;
END
$fn$;

-- relay.check_wal_level refuses capture mode wal on a server whose
-- wal_level (given) cannot decode changes.
CREATE OR REPLACE FUNCTION relay.check_wal_level(wal_level text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    IF wal_level IS DISTINCT FROM 'logical' THEN
        RAISE EXCEPTION 'capture mode wal needs wal_level = logical, and this server has wal_level = %', wal_level
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL (docs/operations.md, "Capture from the WAL")';
    END IF;
END
$fn$;

-- relay.capture_slot_name is the replication slot of this database (slot
-- names are the server's, not the database's).
CREATE OR REPLACE FUNCTION relay.capture_slot_name() RETURNS name
LANGUAGE sql STABLE AS $fn$
    SELECT ('pgrelay_' || d.oid)::name FROM pg_catalog.pg_database d WHERE d.datname = current_database()
$fn$;

-- relay.switch_capture makes a mode the one in force, inside the caller's
-- transaction: the switch point is that transaction's commit.
--
-- Enabling or disabling a trigger locks its table against inserts (SHARE
-- ROW EXCLUSIVE), so the switch waits for every transaction that has
-- inserted into a topic's table to end and holds new inserts until it
-- commits: every row committed before the switch was captured the old way,
-- every row committed after it the new way (a trigger's state is read from
-- the catalog, not from the inserting transaction's snapshot, so not even a
-- repeatable-read transaction that began earlier sees the old state). The
-- row this writes to relay.capture_switches is decoded at exactly that
-- point of the commit order, so the decoder knows from which transaction on
-- it captures, and up to which.
--
-- relay.capture.last_switch names the switch row, so that the decoder can
-- tell when it has reached the last switch (decoded_switch): only then is a
-- slot drained after a switch back.
CREATE OR REPLACE FUNCTION relay.switch_capture(want text, slot name) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    t  relay.topics;
    id bigint;
BEGIN
    FOR t IN SELECT * FROM relay.topics ORDER BY relay.topics.topic LOOP
        EXECUTE format('ALTER TABLE %s %s TRIGGER %I', t.source,
                       CASE want WHEN 'wal' THEN 'DISABLE' ELSE 'ENABLE' END, 'pgrelay_' || t.topic);
    END LOOP;
    -- The decoder applies the switch at this row's place in the stream,
    -- which is this transaction's commit: after every change above.
    INSERT INTO relay.capture_switches (mode) VALUES (want) RETURNING relay.capture_switches.id INTO id;
    UPDATE relay.capture c
       SET mode = want,
           slot_name = coalesce(slot, c.slot_name),
           -- A new slot starts before this switch, in trigger mode.
           decoded_mode = CASE WHEN c.slot_name IS NULL THEN 'trigger' ELSE c.decoded_mode END,
           last_switch = id,
           -- A switch ends any pending step back to triggers.
           switch_back_pending = false,
           settle_xmax = CASE WHEN c.reset_pending IS NULL THEN NULL ELSE c.settle_xmax END,
           changed_at = now();
END
$fn$;

-- relay.set_capture chooses how committed rows reach the log: 'trigger'
-- (the capture triggers, the default) or 'wal' (logical decoding by the
-- sequencer; needs wal_level = logical). Same events, ids and guarantees in
-- both; nothing is lost or repeated by a switch in either direction. Run
-- it as the owner of the topics' tables. It returns the mode in force.
--
-- Both directions are completed by the sequencer (`migrate status` shows
-- where a switch stands):
--   * to wal: the replication slot must exist before the switch point, and
--     a slot cannot be created inside a function (nor by a role without
--     REPLICATION). The call records the request; the sequencer creates the
--     slot and completes the switch (relay.complete_capture_switch) within
--     a second. Until then the triggers keep capturing.
--   * back to trigger: while wal is in force, the horizon ignores the
--     transactions of roles that cannot write the log, so delivery may
--     already be past a producer's older transaction; with its triggers
--     enabled, that transaction could still write an event behind every
--     subscriber. So the call only makes the switch pending: readers return
--     to the full horizon at its commit, the triggers stay disabled and the
--     sequencer keeps appending, and once every transaction that was running
--     then has ended the sequencer enables the triggers. A long transaction
--     delays the switch, not delivery.
CREATE OR REPLACE FUNCTION relay.set_capture(mode text) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    want text := lower(btrim(mode));
    cur  relay.capture;
BEGIN
    IF want IS NULL OR want NOT IN ('trigger', 'wal') THEN
        RAISE EXCEPTION 'unknown capture mode %: use ''trigger'' or ''wal''', coalesce(quote_literal(mode), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF want = 'wal' THEN
        PERFORM relay.check_wal_level(current_setting('wal_level'));
    END IF;
    SELECT * INTO cur FROM relay.capture FOR UPDATE;
    -- Any call acknowledges a slot loss reported since the last one.
    UPDATE relay.capture SET requested = want, slot_lost_at = NULL, changed_at = now();
    IF cur.mode = want THEN
        IF want = 'wal' AND cur.switch_back_pending THEN
            -- Called off before the triggers were enabled: wal goes on.
            UPDATE relay.capture SET switch_back_pending = false, settle_xmax = NULL;
        END IF;
        RETURN want;
    END IF;
    IF want = 'trigger' THEN
        IF NOT cur.switch_back_pending THEN
            UPDATE relay.capture SET switch_back_pending = true, settle_xmax = NULL;
            RAISE NOTICE 'capture mode trigger requested: the sequencer enables the triggers once every transaction running now has ended, and captures from the slot until then';
        END IF;
        RETURN 'wal';
    END IF;
    -- A slot not yet drained since the last switch back serves again.
    IF cur.slot_name IS NOT NULL
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s
                    WHERE s.slot_name = cur.slot_name AND s.wal_status IS DISTINCT FROM 'lost') THEN
        PERFORM relay.switch_capture('wal', cur.slot_name);
        RETURN 'wal';
    END IF;
    RAISE NOTICE 'capture mode wal requested: the sequencer creates replication slot % and completes the switch; the triggers capture until then', relay.capture_slot_name();
    RETURN 'trigger';
END
$fn$;

-- relay.complete_capture_switch is the sequencer's half of a switch, called
-- while one is asked for. It returns whether it switched (or wrote the
-- pending reset marker). As the owner: the relay's role can neither alter
-- the topics' tables nor write the log.
--
-- To wal: the sequencer has created the slot, and this makes wal the mode
-- in force; false if the slot is still being created (by another relay that
-- was the sequencer before).
--
-- Back to trigger, and the reset marker of a slot lost while wal was in
-- force: both wait until no transaction that was running when the step
-- committed (set_capture, capture_slot_lost) can still write the log. The
-- first call after the step records the next xid to be assigned
-- (settle_xmax): its snapshot sees the step committed, so every transaction
-- that was running then has a smaller xid. A later call whose horizon has
-- passed settle_xmax finds them all ended, and completes.
CREATE OR REPLACE FUNCTION relay.complete_capture_switch() RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    cur  relay.capture;
    slot name := relay.capture_slot_name();
BEGIN
    SELECT * INTO cur FROM relay.capture FOR UPDATE;
    IF cur.switch_back_pending OR cur.reset_pending IS NOT NULL THEN
        IF cur.settle_xmax IS NULL THEN
            UPDATE relay.capture SET settle_xmax = pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
            RETURN false;
        END IF;
        IF relay.horizon(NULL) < cur.settle_xmax THEN
            RETURN false;
        END IF;
        IF cur.reset_pending IS NOT NULL THEN
            INSERT INTO relay.events (topic, payload) VALUES ('pgrelay.reset', cur.reset_pending);
        END IF;
        IF cur.switch_back_pending AND cur.mode = 'wal' THEN
            PERFORM relay.switch_capture('trigger', NULL);
        END IF;
        UPDATE relay.capture SET switch_back_pending = false, reset_pending = NULL, settle_xmax = NULL;
        RETURN true;
    END IF;
    IF cur.requested <> 'wal' OR cur.mode = 'wal' THEN
        RETURN false;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s
                    WHERE s.slot_name = slot AND s.database = current_database()
                      AND s.plugin = 'pgoutput' AND s.wal_status IS DISTINCT FROM 'lost') THEN
        RAISE EXCEPTION 'replication slot % does not exist', slot USING ERRCODE = 'undefined_object';
    END IF;
    -- A slot shows in pg_replication_slots as soon as its creation begins,
    -- and decodes only transactions that commit after the creation ends
    -- (once every transaction running when it began has ended). Until then
    -- the session creating it holds it (active) and it has no confirmed
    -- position: a switch now would precede the slot's start, and the
    -- decoder would never see it nor the rows after it. Not yet, then.
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s
                WHERE s.slot_name = slot AND (s.active OR s.confirmed_flush_lsn IS NULL)) THEN
        RETURN false;
    END IF;
    PERFORM relay.switch_capture('wal', slot);
    RETURN true;
END
$fn$;

-- relay.capture_slot_lost is the sequencer's answer to a replication slot
-- that can no longer give the changes after applied_lsn (invalidated past
-- max_slot_wal_keep_size, or dropped): the rows committed between the last
-- appended transaction and now will never reach the log. In one
-- transaction it
--   * appends a reset marker (topic 'pgrelay.reset', no audience), which
--     every relay turns into `event: reset` for every stream that passes its
--     position, live or replayed: no subscriber crosses the gap silently.
--     If wal was in force, the marker is left pending instead, and
--     relay.complete_capture_switch writes it once every transaction running
--     at this commit has ended (see there);
--   * falls back to the capture triggers if wal was in force, so the gap
--     ends at this commit: every row committed later is captured (the switch
--     locks the topics' tables as any switch does);
--   * forgets the slot, records the loss (slot_lost_at, until the next
--     set_capture call acknowledges it) and keeps `requested`: if wal is
--     still asked for, the sequencer creates a new slot and completes the
--     switch as for any switch to wal.
-- It returns false, doing nothing, if relay.capture no longer names that
-- slot (the loss was handled already). As the owner: the relay's role
-- cannot alter the topics' tables nor write the log.
CREATE OR REPLACE FUNCTION relay.capture_slot_lost(lost name, detail text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    cur    relay.capture;
    marker jsonb;
BEGIN
    SELECT * INTO cur FROM relay.capture FOR UPDATE;
    IF cur.slot_name IS DISTINCT FROM lost THEN
        RETURN false;
    END IF;
    marker := jsonb_build_object('reason', 'capture slot lost', 'slot', lost,
                                 'applied_lsn', cur.applied_lsn::text, 'detail', detail);
    IF cur.mode = 'wal' THEN
        PERFORM relay.switch_capture('trigger', NULL);
        -- Delivery may be past a producer's transaction that is still
        -- open (the horizon ignored it while wal was in force), which can
        -- now write through the enabled trigger, behind every subscriber.
        -- The marker waits until every transaction running now has ended
        -- (relay.complete_capture_switch), so that it follows those rows
        -- too: a subscriber reset there reloads after they committed.
        UPDATE relay.capture SET reset_pending = marker, settle_xmax = NULL;
    ELSE
        INSERT INTO relay.events (topic, payload) VALUES ('pgrelay.reset', marker);
    END IF;
    UPDATE relay.capture
       SET slot_name = NULL, decoded_mode = 'trigger', slot_lost_at = now(), changed_at = now();
    RETURN true;
END
$fn$;

-- relay.append_captured appends the events of rows decoded from the WAL:
-- rows is a JSON array of objects, column name to the column's text (or,
-- for json and jsonb columns, its JSON), in commit order. It computes each
-- row's audience with the topic's function and its actor as the capture
-- trigger does, and runs as its owner for the same reason: the relay's role
-- needs no privilege on the tables the audience function reads.
CREATE OR REPLACE FUNCTION relay.append_captured(topic text, rows jsonb) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    t           relay.topics;
    audience_fn text;
    appended    bigint;
BEGIN
    SELECT * INTO t FROM relay.topics WHERE relay.topics.topic = append_captured.topic;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown topic %', topic USING ERRCODE = 'undefined_object';
    END IF;
    SELECT format('%I.%I', n.nspname, p.proname) INTO audience_fn
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE p.oid = t.audience;
    EXECUTE format($q$
        INSERT INTO relay.events (topic, payload, audience, actor)
        SELECT %L, to_jsonb(r), coalesce(%s(r), '{}'), %s
          FROM jsonb_array_elements($1) WITH ORDINALITY AS e(j, n),
               LATERAL jsonb_populate_record(NULL::%s, e.j) AS r
         ORDER BY e.n
    $q$, t.topic, audience_fn,
         CASE WHEN t.actor_column IS NULL THEN 'NULL' ELSE format('r.%I::text', t.actor_column) END,
         t.source) USING rows;
    GET DIAGNOSTICS appended = ROW_COUNT;
    RETURN appended;
END
$fn$;

-- relay.set_subscriber_source names the table whose ids are subscribers
-- (the `sub` claim of a token must be one of them).
CREATE OR REPLACE FUNCTION relay.set_subscriber_source(relation regclass, id_column name)
RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = relation AND attname = id_column
                      AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION 'column % does not exist in %', id_column, relation
            USING ERRCODE = 'undefined_column';
    END IF;
    INSERT INTO relay.subscriber_source (relation, id_column)
    VALUES (relation, id_column)
    ON CONFLICT (singleton) DO UPDATE
       SET relation = EXCLUDED.relation, id_column = EXCLUDED.id_column;
END
$fn$;

-- relay.filters returns, for each of the given subscribers that exists, one
-- row with topic and key NULL (it exists) and one row per (topic, key) it
-- listens to. The relay calls it for connected subscribers only: at every
-- stream open, in batches, and for every filter change.
--
-- relay.build_filters writes relay.filters anew from relay.subscriber_source
-- and relay.topics; a trigger on both calls it on every change, however the
-- change was made. A function of fixed text has its queries planned once per
-- session and kept; built with EXECUTE at each call, as it once was, the
-- planning of the subscriber_keys queries cost ten times their run, about
-- 0.3 ms of the database's CPU per stream open, and a reconnect storm is
-- thousands of opens. force_generic_plan keeps the plan: for an array
-- parameter PostgreSQL would otherwise plan each call anew, judging a
-- custom plan cheaper.
CREATE OR REPLACE FUNCTION relay.build_filters() RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    src  record;
    t    record;
    body text;
BEGIN
    -- Names qualified by hand: the text of a regclass or regproc leaves out
    -- a schema on the caller's search_path, and relay.filters runs with its
    -- own.
    SELECT format('%I.%I', n.nspname, c.relname) AS relation, s.id_column INTO src
      FROM relay.subscriber_source s
      JOIN pg_catalog.pg_class c ON c.oid = s.relation
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace;
    IF NOT FOUND THEN
        -- A regclass holds no dependency: the table can be dropped under it.
        IF EXISTS (SELECT 1 FROM relay.subscriber_source) THEN
            RAISE WARNING 'the subscriber source table (oid %) no longer exists: no stream can open until one is set',
                (SELECT s.relation::oid FROM relay.subscriber_source s)
                USING HINT = 'call relay.set_subscriber_source(''public.users'', ''id'')';
        END IF;
        body := $b$
        RAISE EXCEPTION 'no subscriber source is configured'
            USING HINT = 'call relay.set_subscriber_source(''public.users'', ''id'')';$b$;
    ELSE
        body := format($b$
        RETURN QUERY SELECT s.sub, NULL::text, NULL::text
                       FROM unnest(subscribers) AS s(sub)
                      WHERE EXISTS (SELECT 1 FROM %s x WHERE x.%I::text = s.sub);$b$,
            src.relation, src.id_column);
        -- OFFSET 0 keeps each subscriber's keys a lookup of its own: inlined
        -- and joined as a whole, a subscriber_keys function over a view of
        -- the users (the example's) is hashed in full, every user read to
        -- load one filter.
        FOR t IN SELECT tp.topic, format('%I.%I', n.nspname, p.proname) AS keys_fn
                   FROM relay.topics tp
                   JOIN pg_catalog.pg_proc p ON p.oid = tp.subscriber_keys
                   JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                  ORDER BY tp.topic LOOP
            body := body || format($b$
        RETURN QUERY SELECT s.sub, %L::text, f.k::text
                       FROM unnest(subscribers) AS s(sub),
                            LATERAL (SELECT k FROM %s(s.sub) AS k OFFSET 0) AS f;$b$,
                t.topic, t.keys_fn);
        END LOOP;
        -- Nor does a regprocedure: a topic whose keys function was dropped
        -- cannot be in the filters, and its subscribers receive none of
        -- its events until it is created again. Say so where it happens.
        FOR t IN SELECT tp.topic, tp.subscriber_keys::oid AS fn
                   FROM relay.topics tp
                  WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p WHERE p.oid = tp.subscriber_keys)
                  ORDER BY tp.topic LOOP
            RAISE WARNING 'topic % is left out of the filters: its subscriber_keys function (oid %) no longer exists', t.topic, t.fn
                USING HINT = format('create the topic again with relay.create_topic(%L, ...)', t.topic);
        END LOOP;
    END IF;
    -- As the owner: the relay's role reads filters without any privilege on
    -- the tables the subscriber_keys functions read.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION relay.filters(subscribers text[])
        RETURNS TABLE (subscriber text, topic text, key text)
        LANGUAGE plpgsql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $filters$
        BEGIN%s
        END
        $filters$
    $f$, body);
END
$fn$;

CREATE OR REPLACE FUNCTION relay.rebuild_filters() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM relay.build_filters();
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE TRIGGER relay_topics_build_filters
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON relay.topics
    FOR EACH STATEMENT EXECUTE FUNCTION relay.rebuild_filters();
CREATE OR REPLACE TRIGGER relay_subscriber_source_build_filters
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON relay.subscriber_source
    FOR EACH STATEMENT EXECUTE FUNCTION relay.rebuild_filters();

SELECT relay.build_filters();

-- relay.filters_changed tells every relay that the filters of these
-- subscribers may have changed (NULL: possibly everyone's). Call it from
-- triggers on whatever tables subscriber_keys functions read.
CREATE OR REPLACE FUNCTION relay.filters_changed(subscribers text[]) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    payload text;
BEGIN
    IF subscribers IS NOT NULL AND cardinality(subscribers) = 0 THEN
        RETURN;
    END IF;
    payload := CASE WHEN subscribers IS NULL THEN '{"all":true}'
                    ELSE json_build_object('subscribers', subscribers)::text END;
    -- NOTIFY payloads are limited to 8000 bytes: too many ids means
    -- "refresh everyone", which is always correct.
    IF octet_length(payload) > 7000 THEN
        payload := '{"all":true}';
    END IF;
    PERFORM pg_notify('pgrelay_filters', payload);
END
$fn$;

-- relay.foreign_xids returns the ids (low 32 bits) of the transactions
-- running now that cannot write this database's log, in two kinds:
--   * below 2^32: transactions of other databases (their sessions in
--     pg_stat_activity, their prepared transactions), which never can;
--   * 2^32 plus the id: transactions of this database whose role cannot
--     write the log while capture mode wal is in force, when no capture
--     trigger fires; relay.horizon ignores them only then.
-- The roles that can are the members (direct or not, inheriting or not:
-- SET ROLE counts) of any role that is a superuser, may insert into
-- relay.events, may run the functions that write it as their owner
-- (relay.append_captured, capture_slot_lost, complete_capture_switch: the
-- relay's role), owns this database, or owns a topic's table (it could
-- enable a capture trigger). Every other login, producers included,
-- cannot: its rows reach the log through the slot, in the sequencer's
-- transactions. (A SECURITY DEFINER function of your own that wrote
-- relay.events on behalf of other roles would make them writers this
-- cannot see: write the log only through pgrelay's functions.)
--
-- Reading pg_stat_activity costs far more than the rest of a log read, so
-- relays call this every few hundred milliseconds and pass the result to
-- relay.horizon(foreign_xids): a transaction never changes database or
-- login, so a stale list is still right, it only misses newer transactions
-- (which then count until the next call). Where a session's xid cannot be
-- seen (the caller lacks pg_read_all_stats), it is in neither kind, and
-- counts.
CREATE OR REPLACE FUNCTION relay.foreign_xids() RETURNS bigint[]
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
    RETURN (WITH writers AS MATERIALIZED (
        -- Looked up once per call, not once per session.
        SELECT g.oid
          FROM pg_roles g
         WHERE g.rolsuper
            OR has_table_privilege(g.oid, 'relay.events', 'INSERT')
            OR has_function_privilege(g.oid, 'relay.append_captured(text, jsonb)', 'EXECUTE')
            OR has_function_privilege(g.oid, 'relay.capture_slot_lost(name, text)', 'EXECUTE')
            OR has_function_privilege(g.oid, 'relay.complete_capture_switch()', 'EXECUTE')
            OR g.oid = (SELECT d.datdba FROM pg_database d WHERE d.datname = current_database())
            OR g.oid IN (SELECT c.relowner FROM relay.topics t JOIN pg_class c ON c.oid = t.source))
    SELECT coalesce(array_agg(xid32), '{}') FROM (
        SELECT backend_xid::text::bigint AS xid32
          FROM pg_stat_activity
         WHERE backend_xid IS NOT NULL
           AND datname IS DISTINCT FROM current_database()
        UNION ALL
        SELECT transaction::text::bigint
          FROM pg_prepared_xacts
         WHERE database <> current_database()
        UNION ALL
        SELECT 4294967296 + here.xid32
          FROM (SELECT a.backend_xid::text::bigint AS xid32, a.usesysid AS role
                  FROM pg_stat_activity a
                 WHERE a.backend_xid IS NOT NULL AND a.datname = current_database()
                UNION ALL
                SELECT p.transaction::text::bigint, r.oid
                  FROM pg_prepared_xacts p JOIN pg_roles r ON r.rolname = p.owner
                 WHERE p.database = current_database()) AS here
         WHERE here.role IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM writers w WHERE pg_has_role(here.role, w.oid, 'MEMBER'))
    ) AS cannot_write);
END
$fn$;

-- relay.horizon returns the position below which the log is settled: every
-- transaction with a smaller xid that could have written to this database
-- has ended, so no event can appear there any more. It is the oldest
-- transaction still running in the current snapshot, ignoring the given
-- transactions that cannot write the log (relay.foreign_xids; NULL: look
-- them up now): those of other databases always, so a long transaction in
-- another database of the same server does not hold delivery back, and
-- those of roles that cannot write the log while capture mode wal is in
-- force and no switch back is pending (as this statement's snapshot sees
-- relay.capture), so a producer's or another login's long transaction does
-- not hold delivery back in wal mode. Transactions whose database or role
-- cannot be seen (the role lacks pg_read_all_stats, or the session ended
-- meanwhile) count: the horizon errs towards waiting, never towards
-- skipping.
--
-- STABLE, so it sees the calling statement's snapshot: the horizon and the
-- rows the statement reads must come from the same snapshot. So does the
-- mode: a read that sees the step back to triggers committed applies the
-- full horizon, and the triggers are enabled only once every transaction
-- that was running at that step has ended (relay.complete_capture_switch).
--
-- PL/pgSQL, not SQL: it runs in every log read, hundreds of times a second,
-- and a SQL function that is not inlined is planned again on every call
-- (about 3 ms here, mostly planning the pg_stat_activity view it might
-- call), where PL/pgSQL keeps its plans for the session (about 65 µs).
CREATE OR REPLACE FUNCTION relay.horizon(foreign_xids bigint[]) RETURNS bigint
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    snap    pg_snapshot := pg_current_snapshot();
    wal     boolean := false;
    ignored bigint[];
    oldest  bigint;
BEGIN
    IF foreign_xids IS NULL THEN
        foreign_xids := relay.foreign_xids();
    END IF;
    -- A deployment that has not granted SELECT on relay.capture to the
    -- reading role keeps the full horizon.
    IF pg_catalog.has_table_privilege('relay.capture', 'SELECT') THEN
        SELECT c.mode = 'wal' AND NOT c.switch_back_pending INTO wal FROM relay.capture c;
    END IF;
    SELECT coalesce(array_agg(f % 4294967296), '{}') INTO ignored
      FROM unnest(foreign_xids) AS f
     WHERE f < 4294967296 OR coalesce(wal, false);
    -- xid is 32 bits in pg_stat_activity and 64 in the snapshot: compare
    -- the low half.
    SELECT min(x::text::bigint) INTO oldest
      FROM pg_snapshot_xip(snap) AS x
     WHERE NOT (x::text::bigint % 4294967296 = ANY (ignored));
    RETURN coalesce(oldest, pg_snapshot_xmax(snap)::text::bigint);
END
$fn$;

CREATE OR REPLACE FUNCTION relay.horizon() RETURNS bigint
LANGUAGE sql STABLE AS $fn$
    SELECT relay.horizon(NULL)
$fn$;

-- Capture functions are generated: make every registered topic's anew, so
-- that what changed above reaches topics created before.
SELECT relay.create_topic(t.topic, t.source, t.audience, t.subscriber_keys, t.actor_column)
  FROM relay.topics t;

-- Nothing here is for PUBLIC (see migrations/0004_trust.up.sql); repeated so
-- that functions this file creates anew start closed whoever runs it.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA relay FROM PUBLIC;
